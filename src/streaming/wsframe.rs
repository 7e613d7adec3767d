//! WebSocket framing (RFC 6455, server side): messages out through a
//! [`Writer`] (one task writes the connection), messages in through
//! [`read_message`] (fragments joined, masks removed, pings answered), and
//! the k8s channel encodings (binary with a channel byte, or base64 text).

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;
/// Largest message we accept from a client.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Largest payload of one message we send.
pub const MAX_SEND: usize = 32 * 1024;
/// The channel that closes another channel (v5).
pub const CLOSE_CHANNEL: u8 = 255;

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &str) -> String {
    let mut s = key.as_bytes().to_vec();
    s.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(super::sha1::sha1(&s))
}

pub enum WsOut {
    Message { op: u8, data: Vec<u8> },
}

/// Sends messages on the connection; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<WsOut>,
    /// The `base64.` subprotocols: text messages.
    pub base64: bool,
}

impl Writer {
    /// A writer whose messages `write_loop` sends on the connection.
    pub fn new(base64: bool) -> (Writer, mpsc::Receiver<WsOut>) {
        let (tx, rx) = mpsc::channel(64);
        (Writer { tx, base64 }, rx)
    }
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

    pub async fn raw(&self, op: u8, data: Vec<u8>) -> bool {
        self.tx.send(WsOut::Message { op, data }).await.is_ok()
    }
}

pub fn frame(op: u8, data: &[u8]) -> Vec<u8> {
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

pub async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<WsOut>) {
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
pub struct Message {
    pub op: u8,
    pub data: Vec<u8>,
}

/// Reads the next message (reassembling fragments, unmasking); answers pings
/// through `w`. None at the end of the connection or at a close message.
pub async fn read_message<R: AsyncRead + Unpin>(rd: &mut R, w: &Writer) -> Option<Message> {
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

/// (channel, data) of a client message in the binary or base64 encoding.
pub fn decode(base64: bool, m: &Message) -> Option<(u8, Vec<u8>)> {
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
