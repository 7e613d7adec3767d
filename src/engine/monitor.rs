//! The server's side of the monitor protocol (`sycri_native::monitor`): one
//! JSON request line per connection to a container's control socket, one
//! JSON answer line; an attach request turns the connection into a stream of
//! frames.

use crate::error::{Error, Result};
use std::path::Path;
use std::time::Duration;
use sycri_native::monitor::protocol::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long a monitor may take to answer a request.
const ANSWER: Duration = Duration::from_secs(30);

/// Sends `req` and reads the answer; the connection, positioned after it.
async fn exchange(sock: &Path, req: &Request) -> Result<BufReader<UnixStream>> {
    let mut stream = UnixStream::connect(sock).await.map_err(|e| {
        Error::FailedPrecondition(format!(
            "container monitor is not reachable at {}: {e}",
            sock.display()
        ))
    })?;
    let mut line = serde_json::to_vec(req)
        .map_err(|e| Error::Internal(format!("encode monitor request: {e}")))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| Error::io("talk to container monitor", e))?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let n = tokio::time::timeout(ANSWER, reader.read_line(&mut answer))
        .await
        .map_err(|_| Error::DeadlineExceeded("container monitor did not answer".into()))?
        .map_err(|e| Error::io("read container monitor answer", e))?;
    if n == 0 {
        return Err(Error::FailedPrecondition(
            "container monitor closed the connection without an answer".into(),
        ));
    }
    let resp: Response = serde_json::from_str(answer.trim())
        .map_err(|e| Error::Internal(format!("container monitor answered {answer:?}: {e}")))?;
    match resp.error {
        Some(f) => Err(Error::from(f)),
        None if resp.ok => Ok(reader),
        None => Err(Error::Internal(
            "container monitor refused without a reason".into(),
        )),
    }
}

/// Start, ReopenLog: a request with nothing after the answer.
pub async fn request(sock: &Path, req: &Request) -> Result<()> {
    exchange(sock, req).await.map(drop)
}

/// What an attach asks the monitor for.
#[derive(Clone, Copy, Debug)]
pub struct AttachOpts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// An attach stream: the monitor's frames (see `sycri_native::monitor::protocol::attach`)
/// both ways. `early` holds what the monitor sent right after its answer,
/// before the stream's first read.
pub struct AttachStream {
    pub early: Vec<u8>,
    pub stream: UnixStream,
}

pub async fn attach(sock: &Path, o: AttachOpts) -> Result<AttachStream> {
    let reader = exchange(
        sock,
        &Request::Attach {
            stdin: o.stdin,
            stdout: o.stdout,
            stderr: o.stderr,
            tty: o.tty,
        },
    )
    .await?;
    Ok(AttachStream {
        early: reader.buffer().to_vec(),
        stream: reader.into_inner(),
    })
}
