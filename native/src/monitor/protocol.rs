//! The monitor's control-socket protocol, which the server speaks as the
//! client: one JSON [`Request`] line per connection, one JSON [`Response`]
//! line back, and for an attach request the [`attach`] framing after that;
//! and [`Ready`], the monitor's one line on stdout once the container's
//! rootfs is ready.

use crate::failure::Failure;
use serde::{Deserialize, Serialize};

/// A request on the monitor's control socket (one JSON line per connection).
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Let the container's process exec its command.
    Start,
    /// Reopen the log file at its path (after rotation).
    ReopenLog,
    /// Turn this connection into an attach stream (see [`attach`]).
    Attach {
        #[serde(default)]
        stdin: bool,
        #[serde(default)]
        stdout: bool,
        #[serde(default)]
        stderr: bool,
        /// What the client expects; the container's own setting decides.
        #[serde(default)]
        tty: bool,
    },
}

/// The attach stream's framing, both directions: a 5-byte header (channel,
/// then payload length as u32 big-endian) and the payload.
///
/// Client to monitor: [`STDIN`] data; [`CLOSE_STDIN`] (empty) when the client's
/// stdin ended; [`RESIZE`] with width and height as u16 big-endian (tty only).
/// Monitor to client: [`STDOUT`] and [`STDERR`] data (a tty has stdout only).
/// The monitor closes the connection when the container's output has ended
/// (the container exited) or when the client is too slow.
pub mod attach {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const CLOSE_STDIN: u8 = 3;
    pub const RESIZE: u8 = 4;
    pub const HEADER: usize = 5;
    /// Largest payload of one frame.
    pub const MAX_PAYLOAD: usize = 32 * 1024;

    /// One frame; `data` must not exceed [`MAX_PAYLOAD`].
    pub fn encode(ch: u8, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(HEADER + data.len());
        push(&mut f, ch, data);
        f
    }

    /// As many frames as `data` needs.
    pub fn encode_all(ch: u8, data: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(HEADER * 2 + data.len());
        for chunk in data.chunks(MAX_PAYLOAD) {
            push(&mut f, ch, chunk);
        }
        f
    }

    pub fn push(out: &mut Vec<u8>, ch: u8, data: &[u8]) {
        out.push(ch);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// (channel, payload length) from a header.
    pub fn parse_header(h: &[u8; HEADER]) -> (u8, usize) {
        (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
    }

    pub fn resize_payload(width: u16, height: u16) -> [u8; 4] {
        let w = width.to_be_bytes();
        let h = height.to_be_bytes();
        [w[0], w[1], h[0], h[1]]
    }
}

/// The answer to a [`Request`].
#[derive(Serialize, Deserialize, Debug)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<Failure>,
}

/// The monitor's first and only line on stdout.
#[derive(Serialize, Deserialize, Debug)]
pub struct Ready {
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub error: Option<Failure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_requests_and_frames() {
        let r: Request = serde_json::from_str(
            r#"{"op":"attach","stdin":true,"stdout":true,"stderr":false,"tty":false}"#,
        )
        .expect("parse attach");
        assert!(matches!(
            r,
            Request::Attach {
                stdin: true,
                stdout: true,
                stderr: false,
                ..
            }
        ));
        let big = vec![7u8; attach::MAX_PAYLOAD + 10];
        let f = attach::encode_all(attach::STDIN, &big);
        assert_eq!(f.len(), big.len() + 2 * attach::HEADER);
        let mut h = [0u8; attach::HEADER];
        h.copy_from_slice(&f[..attach::HEADER]);
        assert_eq!(
            attach::parse_header(&h),
            (attach::STDIN, attach::MAX_PAYLOAD)
        );
        assert_eq!(attach::resize_payload(0x0102, 0x0304), [1, 2, 3, 4]);
    }
}
