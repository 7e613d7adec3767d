//! A small SPDY/3.1 client of the tests' own (independent of the server's
//! code): the HTTP upgrade, SYN_STREAM with compressed headers, DATA, FIN.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sycri::streaming::dictionary::DICTIONARY;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What arrives on one stream.
#[derive(Debug)]
pub enum Event {
    Reply,
    Data(Vec<u8>),
    Fin,
    Reset(u32),
}

/// The answer to the HTTP upgrade request.
pub struct Upgrade {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Upgrade {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Inner {
    wr: tokio::sync::Mutex<(OwnedWriteHalf, Compress)>,
    streams: Mutex<HashMap<u32, mpsc::UnboundedSender<Event>>>,
}

pub struct Client {
    inner: Arc<Inner>,
    next_id: u32,
    pub protocol: String,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    /// Closes the connection (once no stream of it is left either).
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub struct Stream {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<Event>,
    inner: Arc<Inner>,
    pub fin: bool,
}

/// Splits `http://host:port/path`.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let slash = rest.find('/').expect("path in URL");
    (rest[..slash].to_string(), rest[slash..].to_string())
}

/// Sends the upgrade request; returns the answer and, on 101, the connection.
pub async fn upgrade(
    url: &str,
    method: &str,
    extra: &[(&str, &str)],
) -> (Upgrade, Option<TcpStream>) {
    let (host, path) = split_url(url);
    let mut tcp = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.expect("send request");
    // Read the head byte by byte: SPDY frames may follow it at once.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.expect("read response") == 0 {
            break;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut up = Upgrade {
        status,
        headers,
        body: String::new(),
    };
    if status == 101 {
        return (up, Some(tcp));
    }
    let len: usize = up
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = tcp.read_exact(&mut body).await;
    up.body = String::from_utf8_lossy(&body).into_owned();
    (up, None)
}

fn encode_headers(c: &mut Compress, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (k, v) in headers {
        raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
        raw.extend_from_slice(k.to_lowercase().as_bytes());
        raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    let mut out = Vec::with_capacity(raw.len() + 1024);
    c.compress_vec(&raw, &mut out, FlushCompress::Sync)
        .expect("compress headers");
    out
}

fn inflate(d: &mut Decompress, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut pos = 0;
    loop {
        let before = d.total_in();
        out.reserve(4096);
        match d.decompress_vec(&block[pos..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            Err(e) if e.needs_dictionary().is_some() => {
                d.set_dictionary(&DICTIONARY).expect("dictionary");
            }
            Err(e) => panic!("inflate: {e}"),
        }
        pos += (d.total_in() - before) as usize;
        if pos >= block.len() && out.capacity() > out.len() {
            return out;
        }
    }
}

impl Client {
    /// Upgrades `url` to SPDY with the given protocol versions.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Client, Upgrade> {
        let mut extra = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            extra.push(("X-Stream-Protocol-Version", p));
        }
        let (up, tcp) = upgrade(url, "POST", &extra).await;
        let Some(tcp) = tcp else {
            return Err(up);
        };
        let protocol = up
            .header("x-stream-protocol-version")
            .unwrap_or("")
            .to_string();
        let (mut rd, wr) = tcp.into_split();
        let mut comp = Compress::new(Compression::default(), true);
        comp.set_dictionary(&DICTIONARY).expect("dictionary");
        let inner = Arc::new(Inner {
            wr: tokio::sync::Mutex::new((wr, comp)),
            streams: Mutex::new(HashMap::new()),
        });
        let inner2 = inner.clone();
        let reader = tokio::spawn(async move {
            let mut d = Decompress::new(true);
            loop {
                let mut h = [0u8; 8];
                if rd.read_exact(&mut h).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
                let mut p = vec![0u8; len];
                if rd.read_exact(&mut p).await.is_err() {
                    break;
                }
                let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                let send = |id: u32, ev: Event| {
                    if let Some(tx) = inner2.streams.lock().expect("lock").get(&id) {
                        let _ = tx.send(ev);
                    }
                };
                if word & 0x8000_0000 == 0 {
                    let id = word & 0x7fff_ffff;
                    if !p.is_empty() {
                        send(id, Event::Data(p));
                    }
                    if h[4] & 1 != 0 {
                        send(id, Event::Fin);
                    }
                    continue;
                }
                let id = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                match word & 0xffff {
                    2 => {
                        inflate(&mut d, &p[4..]);
                        send(id, Event::Reply);
                    }
                    3 => send(
                        id,
                        Event::Reset(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
                    ),
                    _ => {}
                }
            }
            // The connection ended: every stream ends.
            inner2.streams.lock().expect("lock").clear();
        });
        Ok(Client {
            inner,
            next_id: 1,
            protocol,
            reader,
        })
    }

    async fn write(&self, frame: &[u8]) {
        let mut w = self.inner.wr.lock().await;
        let _ = w.0.write_all(frame).await;
    }

    /// Opens a stream and waits for the server's reply.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> Stream {
        let id = self.next_id;
        self.next_id += 2;
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.inner.streams.lock().expect("lock").insert(id, tx);
        {
            let mut w = self.inner.wr.lock().await;
            let block = encode_headers(&mut w.1, headers);
            let mut p = Vec::new();
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&0u32.to_be_bytes());
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&block);
            let mut f = vec![0x80, 3, 0, 1, 0];
            f.extend_from_slice(&(p.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(&p);
            w.0.write_all(&f).await.expect("send SYN_STREAM");
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Event::Reply)) => {}
            other => panic!("stream {id} {headers:?}: no SYN_REPLY: {other:?}"),
        }
        Stream {
            id,
            rx,
            inner: self.inner.clone(),
            fin: false,
        }
    }

    /// Sends a PING; the server must echo it (not checked here).
    pub async fn ping(&self, n: u32) {
        let mut f = vec![0x80, 3, 0, 6, 0, 0, 0, 4];
        f.extend_from_slice(&n.to_be_bytes());
        self.write(&f).await;
    }
}

impl Stream {
    pub async fn write(&self, data: &[u8]) {
        self.send(data, false).await;
    }

    /// Half-closes the stream (empty DATA with FIN).
    pub async fn close(&self) {
        self.send(&[], true).await;
    }

    async fn send(&self, data: &[u8], fin: bool) {
        let mut f = (self.id & 0x7fff_ffff).to_be_bytes().to_vec();
        f.push(u8::from(fin));
        f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(data);
        let mut w = self.inner.wr.lock().await;
        let _ = w.0.write_all(&f).await;
    }

    /// Next data chunk; None at FIN, reset or end of connection.
    pub async fn next(&mut self) -> Option<Vec<u8>> {
        if self.fin {
            return None;
        }
        match self.rx.recv().await {
            Some(Event::Data(d)) => Some(d),
            _ => {
                self.fin = true;
                None
            }
        }
    }

    /// Everything until FIN, within `limit`.
    pub async fn read_to_end(&mut self, limit: Duration) -> Vec<u8> {
        let mut all = Vec::new();
        let r = tokio::time::timeout(limit, async {
            while let Some(d) = self.next().await {
                all.extend_from_slice(&d);
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "stream {} did not end within {limit:?}; got {:?}",
            self.id,
            String::from_utf8_lossy(&all)
        );
        all
    }

    /// Reads until the data so far contains `want`, within `limit`.
    pub async fn read_until(&mut self, want: &[u8], limit: Duration) -> Vec<u8> {
        let mut all = Vec::new();
        let r = tokio::time::timeout(limit, async {
            while !all.windows(want.len().max(1)).any(|w| w == want) {
                match self.next().await {
                    Some(d) => all.extend_from_slice(&d),
                    None => break,
                }
            }
        })
        .await;
        assert!(
            r.is_ok() && all.windows(want.len().max(1)).any(|w| w == want),
            "stream {} never showed {:?}; got {:?}",
            self.id,
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&all)
        );
        all
    }
}
