//! WebSocket (RFC 6455, server side) for the streaming server.
//!
//! Exec and attach: `v4.channel.k8s.io` and `v5.channel.k8s.io` put one byte
//! of channel in front of each binary message (0 stdin, 1 stdout, 2 stderr,
//! 3 error, 4 resize); v5 adds channel 255, `[255, ch]`, with which the
//! client closes one channel (stdin). The server ends all channels by closing
//! the connection. The `base64.` variants send text
//! messages: the channel as an ASCII digit, then the data in base64.
//!
//! Port-forward: `SPDY/3.1+portforward.k8s.io` carries a whole SPDY connection
//! in binary messages (client-go's tunnel), served by the SPDY code; plain
//! `portforward.k8s.io` has two channels per requested port (`?port=` in the
//! URL): data `2i` and error `2i+1`, each starting with the port as u16
//! little-endian in the server's first message.

use super::remotecommand::{self, Opts, Outcome, Session, Target};
use super::spdy::Chunk;
use super::{portforward, Pending, PORTFORWARD_WS_TUNNEL};
use crate::runtime::Runtime;
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;
/// Largest message we accept from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// Largest payload of one message we send.
const MAX_SEND: usize = 32 * 1024;
/// The channel that closes another channel (v5).
const CLOSE_CHANNEL: u8 = 255;

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut s = key.as_bytes().to_vec();
    s.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(super::sha1::sha1(&s))
}

enum WsOut {
    Message { op: u8, data: Vec<u8> },
}

/// Sends messages on the connection; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WsOut>,
    base64: bool,
}

impl Writer {
    /// Data on channel `ch`; false once the connection is gone.
    pub async fn channel(&self, ch: u8, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        for chunk in data.chunks(MAX_SEND) {
            let msg = if self.base64 {
                let mut m = vec![b'0' + ch];
                m.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(chunk)
                        .as_bytes(),
                );
                WsOut::Message {
                    op: OP_TEXT,
                    data: m,
                }
            } else {
                let mut m = Vec::with_capacity(chunk.len() + 1);
                m.push(ch);
                m.extend_from_slice(chunk);
                WsOut::Message {
                    op: OP_BINARY,
                    data: m,
                }
            };
            if self.tx.send(msg).await.is_err() {
                return false;
            }
        }
        true
    }

    async fn raw(&self, op: u8, data: Vec<u8>) -> bool {
        self.tx.send(WsOut::Message { op, data }).await.is_ok()
    }
}

fn frame(op: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 10);
    f.push(0x80 | op);
    match data.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(data);
    f
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<WsOut>) {
    while let Some(WsOut::Message { op, data }) = rx.recv().await {
        if wr.write_all(&frame(op, &data)).await.is_err() {
            break;
        }
        if rx.is_empty() && wr.flush().await.is_err() {
            break;
        }
        if op == OP_CLOSE {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

/// One complete message from the client.
struct Message {
    op: u8,
    data: Vec<u8>,
}

/// Reads the next message (reassembling fragments, unmasking); answers pings
/// through `w`. None at the end of the connection or at a close message.
async fn read_message<R: AsyncRead + Unpin>(rd: &mut R, w: &Writer) -> Option<Message> {
    let mut msg: Option<Message> = None;
    loop {
        let mut h = [0u8; 2];
        rd.read_exact(&mut h).await.ok()?;
        let fin = h[0] & 0x80 != 0;
        let op = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                rd.read_exact(&mut b).await.ok()?;
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                rd.read_exact(&mut b).await.ok()?;
                usize::try_from(u64::from_be_bytes(b)).ok()?
            }
            n => n as usize,
        };
        if len > MAX_MESSAGE {
            return None;
        }
        let mut mask = [0u8; 4];
        if masked {
            rd.read_exact(&mut mask).await.ok()?;
        }
        let mut data = vec![0u8; len];
        rd.read_exact(&mut data).await.ok()?;
        if masked {
            for (i, b) in data.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match op {
            OP_PING => {
                w.raw(OP_PONG, data).await;
                continue;
            }
            OP_PONG => continue,
            OP_CLOSE => {
                w.raw(OP_CLOSE, data.get(..2).unwrap_or(&[]).to_vec()).await;
                return None;
            }
            OP_CONT => {
                let m = msg.as_mut()?;
                if m.data.len() + data.len() > MAX_MESSAGE {
                    return None;
                }
                m.data.extend_from_slice(&data);
            }
            OP_TEXT | OP_BINARY => msg = Some(Message { op, data }),
            _ => return None,
        }
        if fin {
            return msg;
        }
    }
}

/// Serves one request over an upgraded WebSocket connection.
pub async fn serve<IO>(rt: Arc<Runtime>, pending: Pending, proto: &str, query: &str, io: IO)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (tx, rx) = mpsc::channel(64);
    let writer_task = tokio::spawn(write_loop(wr, rx));
    let w = Writer {
        tx,
        base64: proto.starts_with("base64."),
    };
    // Messages from the client, read by a task of their own (reading a frame
    // is not cancel-safe); the channel ends with the connection.
    let (msg_tx, mut messages) = mpsc::channel::<Message>(16);
    let w0 = w.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = read_message(&mut rd, &w0).await {
            if msg_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    match pending {
        Pending::PortForward(p) if proto == PORTFORWARD_WS_TUNNEL => {
            // SPDY inside binary messages: a pipe between the two.
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
            let conn = super::spdy::serve(theirs);
            let w2 = w.clone();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_SEND];
                loop {
                    match from_spdy.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !w2.raw(OP_BINARY, buf[..n].to_vec()).await {
                                break;
                            }
                        }
                    }
                }
            });
            let down = tokio::spawn(async move {
                while let Some(m) = messages.recv().await {
                    if to_spdy.write_all(&m.data).await.is_err() {
                        break;
                    }
                }
                let _ = to_spdy.shutdown().await;
            });
            portforward::serve_spdy(rt, p, conn).await;
            down.abort();
            let _ = up.await;
        }
        Pending::PortForward(p) => {
            serve_portforward_channels(rt, p, query, &mut messages, &w).await;
        }
        Pending::Exec(p) => {
            let opts = Opts {
                stdin: p.stdin,
                stdout: p.stdout,
                stderr: p.stderr,
                tty: p.tty,
            };
            serve_remotecommand(&mut messages, &w, opts, Target::Exec(rt, p)).await;
        }
        Pending::Attach(p) => {
            let opts = Opts {
                stdin: p.stdin,
                stdout: p.stdout,
                stderr: p.stderr,
                tty: p.tty,
            };
            serve_remotecommand(&mut messages, &w, opts, Target::Attach(rt, p)).await;
        }
    }
    w.raw(OP_CLOSE, 1000u16.to_be_bytes().to_vec()).await;
    drop(w);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    reader.abort();
}

async fn serve_remotecommand(
    messages: &mut mpsc::Receiver<Message>,
    w: &Writer,
    opts: Opts,
    target: Target,
) {
    let (stdin_tx, stdin_rx) = mpsc::channel::<Chunk>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Chunk>(4);
    let (gone_tx, gone_rx) = watch::channel(false);
    let session = Session {
        opts,
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then(|| remotecommand::sizes(resize_rx)),
        out: remotecommand::Output::Ws(w.clone()),
        gone: gone_rx,
    };
    let run = target.run(session);
    tokio::pin!(run);
    let mut stdin_tx = Some(stdin_tx);
    let base64 = w.base64;
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            m = messages.recv() => {
                let Some(m) = m else {
                    let _ = gone_tx.send(true);
                    // Let the backend end what it started.
                    break run.await;
                };
                let (ch, data) = match decode(base64, &m) {
                    Some(x) => x,
                    None => continue,
                };
                match ch {
                    remotecommand::STDIN => {
                        if let Some(tx) = &stdin_tx {
                            if !data.is_empty() && tx.send(Chunk::Data(data)).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    remotecommand::RESIZE => {
                        let _ = resize_tx.send(Chunk::Data(data)).await;
                    }
                    CLOSE_CHANNEL if data.first() == Some(&remotecommand::STDIN) => {
                        stdin_tx = None;
                    }
                    _ => {}
                }
            }
        }
    };
    let status = match outcome {
        Outcome::Failed(ref m) if m == "the client went away" => None,
        ref o => Some(remotecommand::status_json(o)),
    };
    remotecommand::Output::Ws(w.clone()).finish(status).await;
}

/// (channel, data) of a client message in the binary or base64 encoding.
fn decode(base64: bool, m: &Message) -> Option<(u8, Vec<u8>)> {
    let (&first, rest) = m.data.split_first()?;
    if base64 && m.op == OP_TEXT {
        let ch = first.checked_sub(b'0')?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        return Some((ch, data));
    }
    Some((first, rest.to_vec()))
}

/// `portforward.k8s.io` over WebSocket: one connection per requested port.
async fn serve_portforward_channels(
    rt: Arc<Runtime>,
    p: super::PortForwardParams,
    query: &str,
    messages: &mut mpsc::Receiver<Message>,
    w: &Writer,
) {
    let mut ports: Vec<u16> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .filter_map(|v| v.parse().ok())
        .collect();
    if ports.is_empty() {
        ports = p
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
    }
    let connector = match portforward::Connector::for_pod(&rt, &p.pod_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(pod = %p.pod_id, error = %e, "port-forward refused");
            return;
        }
    };
    let mut sinks: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let err_ch = data_ch + 1;
        let prefix = port.to_le_bytes();
        w.raw(OP_BINARY, vec![data_ch, prefix[0], prefix[1]]).await;
        w.raw(OP_BINARY, vec![err_ch, prefix[0], prefix[1]]).await;
        match connector.connect(*port).await {
            Ok(tcp) => {
                let (mut r, wr) = tcp.into_split();
                sinks.push(Some(wr));
                let w = w.clone();
                readers.spawn(async move {
                    let mut buf = vec![0u8; MAX_SEND];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut m = Vec::with_capacity(n + 1);
                                m.push(data_ch);
                                m.extend_from_slice(&buf[..n]);
                                if !w.raw(OP_BINARY, m).await {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => {
                let mut m = vec![err_ch];
                m.extend_from_slice(e.as_bytes());
                w.raw(OP_BINARY, m).await;
                sinks.push(None);
            }
        }
    }
    // The client's first message on each channel repeats the port: skip it.
    let mut seen = vec![false; sinks.len()];
    loop {
        tokio::select! {
            m = messages.recv() => {
                let Some(m) = m else { break };
                let Some((&ch, data)) = m.data.split_first() else { continue };
                if ch % 2 == 1 {
                    continue;
                }
                let i = usize::from(ch / 2);
                let Some(sink) = sinks.get_mut(i) else { continue };
                let data = if !seen[i] {
                    seen[i] = true;
                    data.get(2..).unwrap_or_default()
                } else {
                    data
                };
                if let Some(s) = sink {
                    if !data.is_empty() && s.write_all(data).await.is_err() {
                        *sink = None;
                    }
                }
            }
            r = readers.join_next(), if !readers.is_empty() => {
                if r.is_none() {
                    continue;
                }
                if readers.is_empty() {
                    break;
                }
            }
        }
    }
    readers.shutdown().await;
}
