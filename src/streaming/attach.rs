//! Streaming attach: the container's monitor serves it on its control socket
//! (so attach works after a server restart); we relay between the session and
//! that connection, which the backend opens. Framing: see
//! `sycri_native::monitor::protocol::attach`.

use super::backend::Backend;
use super::request::AttachParams;
use super::session::{Outcome, Session, STDERR, STDOUT};
use super::spdy::Chunk;
use std::sync::Arc;
use sycri_native::monitor::protocol::attach as frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub async fn run(backend: Arc<dyn Backend>, p: AttachParams, mut s: Session) -> Outcome {
    let session = match backend.attach(&p).await {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(e),
    };
    let id = &p.container_id;
    let (rd, mut wr) = session.stream.into_split();
    // What the monitor sent right after its answer comes first.
    let mut rd = std::io::Cursor::new(session.early).chain(rd);
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
            _ = super::session::client_gone(&mut gone) => {
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
