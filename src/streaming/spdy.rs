//! The server side of SPDY/3.1, as far as Kubernetes' streaming protocols use it:
//! the peer opens streams (SYN_STREAM), we accept each at once (SYN_REPLY), and
//! both sides send DATA with FIN to half-close. PING is echoed; SETTINGS and
//! WINDOW_UPDATE are read and ignored: flow control windows are never enforced
//! (the Go client never sends WINDOW_UPDATE, so honouring windows would stall).
//!
//! Frame layout (all big-endian):
//! - control: `1 | version(15) = 3`, `type(16)`, `flags(8)`, `length(24)`, payload
//! - data: `0 | stream id(31)`, `flags(8)`, `length(24)`, payload
//!
//! Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib streams, one per
//! direction for the whole connection, primed with the SPDY/3 dictionary and
//! sync-flushed after each block.
//!
//! [`serve`] splits a connection into a reader task (frames in, streams out) and
//! a writer task (the only one that touches the socket's write half and the
//! header compressor, so compressed blocks leave in the order they were made).

use super::dictionary::DICTIONARY;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;
pub const FLAG_FIN: u8 = 1;
/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;
/// Largest DATA payload we send; larger writes are split.
pub const MAX_DATA: usize = 32 * 1024;
/// Largest decompressed header block we accept.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest frame payload we accept (the 24-bit length allows 16 MiB).
const MAX_FRAME: usize = 1 << 20;
/// Streams one connection may open.
const MAX_STREAMS: usize = 4096;

#[derive(thiserror::Error, Debug)]
pub enum SpdyError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("header compression: {0}")]
    Compression(String),
}

/// Header names (lowercase) and values, in the order received.
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (compared without case).
pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// What the peer sent on a stream: data, or an abrupt end (RST_STREAM).
#[derive(Debug)]
pub enum Chunk {
    Data(Vec<u8>),
    Reset,
}

/// A stream the peer opened. `data` ends (None) at the peer's FIN.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub data: mpsc::Receiver<Chunk>,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

enum Out {
    Reply(u32),
    Data { id: u32, data: Vec<u8>, fin: bool },
    Reset { id: u32, status: u32 },
    Ping(u32),
    GoAway,
}

/// Sends on the connection; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Out>,
}

impl Writer {
    /// Sends `data` on stream `id` (split into frames); false once the
    /// connection is gone.
    pub async fn data(&self, id: u32, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_DATA) {
            let out = Out::Data {
                id,
                data: chunk.to_vec(),
                fin: false,
            };
            if self.tx.send(out).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Half-closes stream `id` from our side (empty DATA with FIN).
    pub async fn close(&self, id: u32) -> bool {
        let out = Out::Data {
            id,
            data: Vec::new(),
            fin: true,
        };
        self.tx.send(out).await.is_ok()
    }

    pub async fn reset(&self, id: u32, status: u32) -> bool {
        self.tx.send(Out::Reset { id, status }).await.is_ok()
    }
}

/// One SPDY connection: new streams arrive on `incoming`; `gone` turns true
/// when the peer's side of the connection has ended.
pub struct Conn {
    pub incoming: mpsc::Receiver<Stream>,
    pub writer: Writer,
    pub gone: watch::Receiver<bool>,
    reader: AbortOnDrop,
    writer_task: JoinHandle<()>,
}

impl Conn {
    /// Ends the connection politely: our frames are flushed, the peer gets
    /// `linger` to close its side (so nothing it sent late turns into a reset
    /// that could destroy data still in flight to it), then the socket closes.
    pub async fn finish(self, linger: Duration) {
        let Conn {
            incoming,
            writer,
            mut gone,
            reader,
            writer_task,
        } = self;
        drop(incoming);
        let _ = writer.tx.send(Out::GoAway).await;
        drop(writer);
        let _ = tokio::time::timeout(linger, async {
            let _ = gone.wait_for(|g| *g).await;
        })
        .await;
        reader.0.abort();
        drop(reader);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts serving SPDY/3.1 on an upgraded connection.
pub fn serve<IO>(io: IO) -> Conn
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(64);
    let (new_tx, new_rx) = mpsc::channel(16);
    let (gone_tx, gone_rx) = watch::channel(false);
    let writer = Writer { tx: out_tx };
    let writer_task = tokio::spawn(write_loop(wr, out_rx));
    let w = writer.clone();
    let reader = tokio::spawn(async move {
        if let Err(e) = read_loop(rd, w, new_tx).await {
            tracing::debug!(error = %e, "spdy connection ended");
        }
        let _ = gone_tx.send(true);
    });
    Conn {
        incoming: new_rx,
        writer,
        gone: gone_rx,
        reader: AbortOnDrop(reader),
        writer_task,
    }
}

/// The zlib stream of one direction's header blocks.
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
    deflate_primed: bool,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        HeaderCodec {
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            deflate_primed: false,
        }
    }
}

impl HeaderCodec {
    /// Decompresses and parses one header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate_block(block)?;
        parse_headers(&raw)
    }

    fn inflate_block(&mut self, block: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut pos = 0;
        let mut buf = [0u8; 4096];
        loop {
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let r = self
                .inflate
                .decompress(&block[pos..], &mut buf, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            let made = (self.inflate.total_out() - before_out) as usize;
            pos += used;
            out.extend_from_slice(&buf[..made]);
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::Protocol("header block too large".into()));
            }
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if pos >= block.len() && made < buf.len() {
                        break;
                    }
                    if used == 0 && made == 0 {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
        Ok(out)
    }

    /// Serializes and compresses one header block (sync flush).
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, SpdyError> {
        if !self.deflate_primed {
            self.deflate
                .set_dictionary(&DICTIONARY)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            self.deflate_primed = true;
        }
        let raw = serialize_headers(headers)?;
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        let mut buf = [0u8; 4096];
        loop {
            let before_in = self.deflate.total_in();
            let before_out = self.deflate.total_out();
            self.deflate
                .compress(&raw[pos..], &mut buf, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            pos += (self.deflate.total_in() - before_in) as usize;
            let made = (self.deflate.total_out() - before_out) as usize;
            out.extend_from_slice(&buf[..made]);
            // Done when all input is in and the flush did not fill the buffer.
            if pos >= raw.len() && made < buf.len() {
                break;
            }
        }
        Ok(out)
    }
}

fn serialize_headers(headers: &[(&str, &str)]) -> Result<Vec<u8>, SpdyError> {
    let len32 =
        |n: usize| u32::try_from(n).map_err(|_| SpdyError::Protocol("header too long".into()));
    let mut raw = Vec::new();
    raw.extend_from_slice(&len32(headers.len())?.to_be_bytes());
    for (k, v) in headers {
        let k = k.to_ascii_lowercase();
        raw.extend_from_slice(&len32(k.len())?.to_be_bytes());
        raw.extend_from_slice(k.as_bytes());
        raw.extend_from_slice(&len32(v.len())?.to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    Ok(raw)
}

fn parse_headers(raw: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("truncated header block".into());
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Result<usize, SpdyError> {
        let b = raw.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    if count > 1024 {
        return Err(SpdyError::Protocol(format!("{count} headers")));
    }
    let mut h = Vec::with_capacity(count);
    for _ in 0..count {
        let n = u32_at(&mut pos)?;
        let name = raw.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let n = u32_at(&mut pos)?;
        let value = raw.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        h.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(h)
}

fn control_frame(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    let len = payload.len() as u32;
    f.push(flags);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data_frame(id: u32, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Out>) {
    let mut codec = HeaderCodec::default();
    let mut last_stream = 0u32;
    while let Some(out) = rx.recv().await {
        let frame = match out {
            Out::Reply(id) => {
                last_stream = last_stream.max(id);
                match codec.encode(&[]) {
                    Ok(block) => {
                        let mut p = id.to_be_bytes().to_vec();
                        p.extend_from_slice(&block);
                        control_frame(SYN_REPLY, 0, &p)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "spdy: cannot encode a reply");
                        break;
                    }
                }
            }
            Out::Data { id, data, fin } => data_frame(id, fin, &data),
            Out::Reset { id, status } => {
                let mut p = id.to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control_frame(RST_STREAM, 0, &p)
            }
            Out::Ping(n) => control_frame(PING, 0, &n.to_be_bytes()),
            Out::GoAway => {
                let mut p = last_stream.to_be_bytes().to_vec();
                p.extend_from_slice(&0u32.to_be_bytes());
                control_frame(GOAWAY, 0, &p)
            }
        };
        if wr.write_all(&frame).await.is_err() {
            break;
        }
        // Flush when nothing else is queued, so small writes are coalesced.
        if rx.is_empty() && wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

struct Open {
    tx: Option<mpsc::Sender<Chunk>>,
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut rd: R,
    w: Writer,
    new_tx: mpsc::Sender<Stream>,
) -> Result<(), SpdyError> {
    let mut codec = HeaderCodec::default();
    let mut streams: HashMap<u32, Open> = HashMap::new();
    let mut last_id = 0u32;
    let mut payload = Vec::new();
    loop {
        let mut head = [0u8; 8];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(SpdyError::Protocol(format!("frame of {len} bytes")));
        }
        payload.resize(len, 0);
        rd.read_exact(&mut payload).await?;
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if word & 0x8000_0000 == 0 {
            let id = word & 0x7fff_ffff;
            let Some(open) = streams.get_mut(&id) else {
                continue;
            };
            if !payload.is_empty() {
                if let Some(tx) = &open.tx {
                    // Backpressure: wait for the consumer. A consumer that went
                    // away no longer wants the stream.
                    if tx.send(Chunk::Data(payload.clone())).await.is_err() {
                        open.tx = None;
                    }
                }
            }
            if flags & FLAG_FIN != 0 {
                // The peer sends no more on it: forget it, so that a
                // long-lived connection (kubectl port-forward opens two
                // streams per TCP connection) never fills the table.
                streams.remove(&id);
            }
            continue;
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        let kind = (word & 0xffff) as u16;
        if version != VERSION {
            return Err(SpdyError::Protocol(format!("SPDY version {version}")));
        }
        let be32 = |p: &[u8], at: usize| -> Result<u32, SpdyError> {
            p.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| SpdyError::Protocol(format!("short control frame {kind}")))
        };
        match kind {
            SYN_STREAM => {
                let id = be32(&payload, 0)? & 0x7fff_ffff;
                let block = payload
                    .get(10..)
                    .ok_or_else(|| SpdyError::Protocol("short SYN_STREAM".into()))?;
                // Always decode: the zlib stream must see every block.
                let headers = codec.decode(block)?;
                // Stream ids only ever grow (SPDY/3.1 section 2.3.2): a
                // smaller or repeated one is refused even after its stream
                // was forgotten.
                if id <= last_id || streams.len() >= MAX_STREAMS {
                    w.reset(id, RST_PROTOCOL_ERROR).await;
                    continue;
                }
                last_id = id;
                let (tx, rx) = mpsc::channel(16);
                if flags & FLAG_FIN == 0 {
                    streams.insert(id, Open { tx: Some(tx) });
                }
                // Accept at once: the Go client waits for the reply before it
                // opens the next stream.
                if w.tx.send(Out::Reply(id)).await.is_err() {
                    return Ok(());
                }
                let s = Stream {
                    id,
                    headers,
                    data: rx,
                };
                if new_tx.send(s).await.is_err() {
                    // Nobody takes new streams any more.
                    w.reset(id, RST_CANCEL).await;
                    streams.remove(&id);
                }
            }
            HEADERS => {
                let block = payload
                    .get(4..)
                    .ok_or_else(|| SpdyError::Protocol("short HEADERS".into()))?;
                codec.decode(block)?;
            }
            SYN_REPLY => {
                let block = payload
                    .get(4..)
                    .ok_or_else(|| SpdyError::Protocol("short SYN_REPLY".into()))?;
                codec.decode(block)?;
            }
            RST_STREAM => {
                let id = be32(&payload, 0)? & 0x7fff_ffff;
                if let Some(open) = streams.remove(&id) {
                    if let Some(tx) = open.tx {
                        let _ = tx.try_send(Chunk::Reset);
                    }
                }
            }
            PING => {
                let n = be32(&payload, 0)?;
                if w.tx.send(Out::Ping(n)).await.is_err() {
                    return Ok(());
                }
            }
            GOAWAY => return Ok(()),
            SETTINGS | WINDOW_UPDATE => {}
            other => tracing::trace!(kind = other, "spdy: ignoring control frame"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_round_trip_across_frames() {
        let mut ours = HeaderCodec::default();
        let mut theirs = HeaderCodec::default();
        for i in 0..3 {
            let v = format!("value-{i}");
            let block = ours
                .encode(&[("StreamType", "stdout"), ("x", v.as_str())])
                .expect("encode");
            let h = theirs.decode(&block).expect("decode");
            assert_eq!(header(&h, "streamtype"), Some("stdout"));
            assert_eq!(header(&h, "x"), Some(v.as_str()));
        }
    }

    #[test]
    fn truncated_blocks_are_errors() {
        assert!(parse_headers(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(parse_headers(&[0, 0]).is_err());
    }
}
