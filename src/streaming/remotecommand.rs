//! The remotecommand protocol (exec and attach), independent of the transport:
//! a [`Session`] carries stdin and terminal sizes in and output out; the
//! backend ([`Target`]) runs and says how it ended ([`Outcome`]), which goes
//! to the client on the error channel.
//!
//! Over SPDY the client opens one stream per channel, named by the
//! `streamType` header: `error` (always), `stdin`, `stdout`, `stderr` (not with
//! a tty) and `resize` (with a tty, v3 and later). Resize data is a series of
//! JSON objects `{"Width":w,"Height":h}`, one per line. Stdin ends with an
//! empty DATA frame with FIN. When the command ends we send the status on
//! `error` (v4: a metav1.Status JSON object; v2/v3: the error text), then FIN
//! on stdout, stderr and error: the client reads output to its end, then the
//! error stream.

use super::spdy::{self, Chunk};
use super::{websocket, AttachParams, ExecParams, STREAM_CREATION_TIMEOUT};
use crate::runtime::Runtime;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
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
    Ws(websocket::Writer),
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

/// The v4/v5 error-channel message for an outcome (a metav1.Status object).
pub fn status_json(o: &Outcome) -> Vec<u8> {
    let v = match o {
        Outcome::Exited(0) | Outcome::Done => {
            serde_json::json!({"metadata": {}, "status": "Success"})
        }
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(msg) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "code": 500,
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The v2/v3 error-channel message: the error text, or nothing on success.
pub fn status_text(o: &Outcome) -> Option<Vec<u8>> {
    match o {
        Outcome::Exited(0) | Outcome::Done => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(msg) => Some(msg.clone().into_bytes()),
    }
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

/// What a session runs.
pub enum Target {
    Exec(Arc<Runtime>, ExecParams),
    Attach(Arc<Runtime>, AttachParams),
}

impl Target {
    pub async fn run(self, s: Session) -> Outcome {
        match self {
            Target::Exec(rt, p) => super::exec::run(rt, p, s).await,
            Target::Attach(rt, p) => super::attach::run(rt, p, s).await,
        }
    }
}

/// Exec or attach over SPDY with subprotocol `proto`.
pub async fn serve_spdy(mut conn: spdy::Conn, proto: &str, opts: Opts, target: Target) {
    let version = match proto {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        _ => 2,
    };
    let want_resize = opts.tty && version >= 3;
    let (mut error, mut stdin, mut stdout, mut stderr, mut resize) = (None, None, None, None, None);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    loop {
        let complete = error.is_some()
            && (!opts.stdin || stdin.is_some())
            && (!opts.stdout || stdout.is_some())
            && (!opts.stderr || opts.tty || stderr.is_some())
            && (!want_resize || resize.is_some());
        if complete {
            break;
        }
        let s: spdy::Stream = match tokio::time::timeout_at(deadline, conn.incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::debug!("remotecommand: client left before opening its streams");
                return;
            }
            Err(_) => {
                tracing::warn!("remotecommand: client did not open its streams in time");
                conn.finish(Duration::ZERO).await;
                return;
            }
        };
        let slot = match s.header("streamtype").unwrap_or("") {
            "error" => &mut error,
            "stdin" => &mut stdin,
            "stdout" => &mut stdout,
            "stderr" => &mut stderr,
            "resize" => &mut resize,
            other => {
                tracing::debug!(stream_type = other, "remotecommand: unexpected stream");
                conn.writer.reset(s.id, spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        };
        *slot = Some(s);
    }
    // No more streams are expected.
    conn.incoming.close();
    let out = Output::Spdy {
        w: conn.writer.clone(),
        stdout: stdout.as_ref().map(|s| s.id),
        stderr: stderr.as_ref().map(|s| s.id),
        error: error.as_ref().map(|s| s.id),
    };
    let extra: Vec<u32> = [&stdin, &resize]
        .into_iter()
        .flatten()
        .map(|s| s.id)
        .collect();
    let session = Session {
        opts,
        stdin: stdin.map(|s| s.data),
        resize: resize.map(|s| sizes(s.data)),
        out: out.clone(),
        gone: conn.gone.clone(),
    };
    let outcome = target.run(session).await;
    tracing::debug!(?outcome, "remotecommand session ended");
    let status = if version >= 4 {
        Some(status_json(&outcome))
    } else {
        status_text(&outcome)
    };
    out.finish(status).await;
    for id in extra {
        conn.writer.close(id).await;
    }
    drop(out);
    conn.finish(Duration::from_secs(10)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_what_client_go_decodes() {
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(0))).unwrap_or_default();
        assert_eq!(v["status"], "Success");
        let v: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(3))).unwrap_or_default();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert_eq!(status_text(&Outcome::Exited(0)), None);
    }

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
