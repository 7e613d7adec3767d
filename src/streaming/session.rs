//! One exec or attach session as the backend side sees it, whatever the
//! transport: stdin and terminal sizes in, output out on numbered channels,
//! and how it ended.

use super::spdy::{self, Chunk};
use super::wsframe;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// Channel numbers (the WebSocket protocols' byte prefixes).
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// What the client asked for (from the registered request).
#[derive(Clone, Copy, Debug)]
pub struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size, as the client sends it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Where a session's output goes.
#[derive(Clone)]
pub enum Output {
    Spdy {
        w: spdy::Writer,
        stdout: Option<u32>,
        stderr: Option<u32>,
        error: Option<u32>,
    },
    Ws(wsframe::Writer),
}

impl Output {
    /// Sends `data` on channel `ch` (STDOUT, STDERR or ERROR). False when the
    /// client is gone; data for a channel the client did not open is dropped.
    pub async fn send(&self, ch: u8, data: &[u8]) -> bool {
        match self {
            Output::Spdy {
                w,
                stdout,
                stderr,
                error,
            } => {
                let id = match ch {
                    STDOUT => stdout,
                    STDERR => stderr,
                    _ => error,
                };
                match id {
                    Some(id) => w.data(*id, data).await,
                    None => true,
                }
            }
            Output::Ws(w) => w.channel(ch, data).await,
        }
    }

    /// Ends the session's output: the status on the error channel, then the
    /// end of stdout, stderr and error.
    pub async fn finish(&self, status: Option<Vec<u8>>) {
        match self {
            Output::Spdy {
                w,
                stdout,
                stderr,
                error,
            } => {
                if let (Some(id), Some(s)) = (error, &status) {
                    w.data(*id, s).await;
                }
                for id in [stdout, stderr, error].into_iter().flatten() {
                    w.close(*id).await;
                }
            }
            Output::Ws(w) => {
                // The end of the connection ends every channel; client-go's
                // v5 client does not take close messages from the server.
                if let Some(s) = &status {
                    w.channel(ERROR, s).await;
                }
            }
        }
    }
}

/// One exec or attach, as the backend sees it.
pub struct Session {
    pub opts: Opts,
    /// Client's stdin; ends (None or Reset) when the client closes it.
    pub stdin: Option<mpsc::Receiver<Chunk>>,
    pub resize: Option<mpsc::Receiver<Size>>,
    pub out: Output,
    /// Turns true when the client's connection is gone.
    pub gone: watch::Receiver<bool>,
}

/// Resolves once `gone` turns true (or its sender is dropped).
pub async fn client_gone(gone: &mut watch::Receiver<bool>) {
    let _ = gone.wait_for(|g| *g).await;
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code.
    Exited(i32),
    /// The stream ended without an exit code (attach).
    Done,
    /// It could not run, or broke.
    Failed(String),
}

/// Turns raw resize-channel data (JSON objects, one per line) into sizes.
pub fn sizes(mut rx: mpsc::Receiver<Chunk>) -> mpsc::Receiver<Size> {
    let (tx, out) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(Chunk::Data(d)) = rx.recv().await {
            buf.extend_from_slice(&d);
            let mut parsed = Vec::new();
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if let Ok(s) = serde_json::from_slice::<Size>(&line) {
                    parsed.push(s);
                }
            }
            // A client that sends no newline: take a complete object as it is.
            if !buf.is_empty() {
                if let Ok(s) = serde_json::from_slice::<Size>(&buf) {
                    parsed.push(s);
                    buf.clear();
                }
            }
            if buf.len() > 4096 {
                buf.clear();
            }
            for s in parsed {
                if tx.send(s).await.is_err() {
                    return;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resize_lines_become_sizes() {
        let (tx, rx) = mpsc::channel(4);
        let mut sizes = sizes(rx);
        let _ = tx
            .send(Chunk::Data(
                b"{\"Width\":80,\"Height\":24}\n{\"Width\":1".to_vec(),
            ))
            .await;
        let _ = tx.send(Chunk::Data(b"00,\"Height\":50}\n".to_vec())).await;
        drop(tx);
        assert_eq!(
            sizes.recv().await,
            Some(Size {
                width: 80,
                height: 24
            })
        );
        assert_eq!(
            sizes.recv().await,
            Some(Size {
                width: 100,
                height: 50
            })
        );
        assert_eq!(sizes.recv().await, None);
    }
}
