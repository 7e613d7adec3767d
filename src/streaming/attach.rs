//! Streaming attach: the container's monitor serves it on its control socket
//! (so attach works after a server restart); we relay between the session and
//! that socket. Framing: see `sycri_native::monitor::attach`.

use super::remotecommand::{Outcome, Session, STDERR, STDOUT};
use super::spdy::Chunk;
use super::AttachParams;
use crate::containers::State;
use crate::runtime::Runtime;
use std::sync::Arc;
use std::time::Duration;
use sycri_native::monitor::{attach as frame, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

pub async fn run(rt: Arc<Runtime>, p: AttachParams, mut s: Session) -> Outcome {
    let Some((id, c)) = Runtime::find(&rt.containers, &p.container_id) else {
        return Outcome::Failed(format!("container {:?} not found", p.container_id));
    };
    let socket = {
        let mut c = c.lock().await;
        if c.refresh() != State::Running {
            return Outcome::Failed(format!("container {id} is not running"));
        }
        c.rec.control_socket.clone()
    };
    let conn = match tokio::net::UnixStream::connect(&socket).await {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!(
                "container monitor is not reachable at {}: {e}",
                socket.display()
            ))
        }
    };
    let (rd, mut wr) = conn.into_split();
    let req = Request::Attach {
        stdin: p.stdin,
        stdout: p.stdout,
        stderr: p.stderr,
        tty: p.tty,
    };
    let mut line = match serde_json::to_vec(&req) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    line.push(b'\n');
    if let Err(e) = wr.write_all(&line).await {
        return Outcome::Failed(format!("talk to container monitor: {e}"));
    }
    let mut rd = BufReader::new(rd);
    let mut answer = String::new();
    match tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut answer)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return Outcome::Failed("container monitor did not answer".into()),
    }
    match serde_json::from_str::<Response>(&answer) {
        Ok(Response { ok: true, .. }) => {}
        Ok(Response { error, .. }) => {
            return Outcome::Failed(
                error
                    .map(|f| f.message)
                    .unwrap_or_else(|| "container monitor refused".into()),
            )
        }
        Err(e) => return Outcome::Failed(format!("container monitor answered {answer:?}: {e}")),
    }
    tracing::debug!(container = %id, "attached");

    // Output: frames from the monitor straight to the client, in a task of its
    // own so that a container that does not read its stdin never stalls it.
    let out = s.out.clone();
    let mut output = tokio::spawn(async move {
        let mut head = [0u8; frame::HEADER];
        let mut buf = Vec::new();
        loop {
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let (ch, len) = frame::parse_header(&head);
            if len > frame::MAX_PAYLOAD {
                tracing::warn!(len, "attach: oversized frame from monitor");
                return;
            }
            buf.resize(len, 0);
            if rd.read_exact(&mut buf).await.is_err() {
                return;
            }
            let ch = match ch {
                frame::STDOUT => STDOUT,
                frame::STDERR => STDERR,
                _ => continue,
            };
            if !out.send(ch, &buf).await {
                return;
            }
        }
    });

    let mut stdin = s.stdin.take();
    let mut resize = s.resize.take();
    let mut gone = s.gone.clone();
    loop {
        tokio::select! {
            _ = &mut output => return Outcome::Done,
            _ = super::remotecommand::client_gone(&mut gone) => {
                output.abort();
                return Outcome::Failed("the client went away".into());
            }
            c = async { match stdin.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                let f = match c {
                    Some(Chunk::Data(d)) => frame::encode_all(frame::STDIN, &d),
                    Some(Chunk::Reset) | None => {
                        stdin = None;
                        frame::encode(frame::CLOSE_STDIN, &[])
                    }
                };
                if wr.write_all(&f).await.is_err() {
                    // The monitor is going away; output tells us when it is over.
                    stdin = None;
                    resize = None;
                }
            }
            r = async { match resize.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match r {
                    Some(size) => {
                        let f = frame::encode(frame::RESIZE, &frame::resize_payload(size.width, size.height));
                        let _ = wr.write_all(&f).await;
                    }
                    None => resize = None,
                }
            }
        }
    }
}
