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

use super::backend::Backend;
use super::request::{AttachParams, ExecParams, STREAM_CREATION_TIMEOUT};
use super::session::{sizes, Opts, Outcome, Output, Session};
use super::spdy;
use std::sync::Arc;
use std::time::Duration;

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

/// What a session runs.
pub enum Target {
    Exec(Arc<dyn Backend>, ExecParams),
    Attach(Arc<dyn Backend>, AttachParams),
}

impl Target {
    /// The streams the request asked for, and whether it wants a terminal.
    pub fn opts(&self) -> Opts {
        let (stdin, stdout, stderr, tty) = match self {
            Target::Exec(_, p) => (p.stdin, p.stdout, p.stderr, p.tty),
            Target::Attach(_, p) => (p.stdin, p.stdout, p.stderr, p.tty),
        };
        Opts {
            stdin,
            stdout,
            stderr,
            tty,
        }
    }

    pub async fn run(self, s: Session) -> Outcome {
        match self {
            Target::Exec(rt, p) => super::exec::run(rt, p, s).await,
            Target::Attach(rt, p) => super::attach::run(rt, p, s).await,
        }
    }
}

/// Exec or attach over SPDY with subprotocol `proto`.
pub async fn serve_spdy(mut conn: spdy::Conn, proto: &str, target: Target) {
    let opts = target.opts();
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
}
