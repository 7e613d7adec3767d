//! Streaming exec: the `__exec` helper's stdio pumped to and from a session.

use super::backend::Backend;
use super::request::ExecParams;
use super::session::{Outcome, Session, STDERR, STDOUT};
use super::spdy::Chunk;
use crate::fdio::Fd;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long output may still flow after the command exited (a process it
/// left behind may hold the pipes or the terminal open).
const DRAIN: Duration = Duration::from_secs(2);

fn pump_out(fd: Arc<Fd>, s: &Session, ch: u8) -> JoinHandle<()> {
    let out = s.out.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match fd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !out.send(ch, &buf[..n]).await {
                        break;
                    }
                }
            }
        }
    })
}

fn wrap(fd: Option<OwnedFd>) -> Option<Arc<Fd>> {
    fd.and_then(|f| match Fd::new(f) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::warn!(error = %e, "exec: cannot watch a descriptor");
            None
        }
    })
}

pub async fn run(backend: Arc<dyn Backend>, p: ExecParams, mut s: Session) -> Outcome {
    let mut proc = match backend.exec(&p).await {
        Ok(proc) => proc,
        Err(e) => return Outcome::Failed(e),
    };
    tracing::debug!(container = %p.container_id, tty = p.tty, "streaming exec started");
    let pty = wrap(proc.pty.take());
    let stdout = pty.clone().or_else(|| wrap(proc.stdout.take()));
    let stderr = wrap(proc.stderr.take());
    // With a pty, input goes to the master; otherwise to the stdin pipe.
    let stdin_fd = match &pty {
        Some(m) => Some(m.clone()),
        None => wrap(proc.stdin.take()),
    };

    let mut outputs = Vec::new();
    if let Some(fd) = stdout {
        outputs.push(pump_out(fd, &s, STDOUT));
    }
    if let Some(fd) = stderr {
        outputs.push(pump_out(fd, &s, STDERR));
    }
    let stdin_task = match (s.stdin.take(), stdin_fd) {
        (Some(mut rx), Some(fd)) => Some(tokio::spawn(async move {
            while let Some(Chunk::Data(d)) = rx.recv().await {
                if fd.write_all(&d).await.is_err() {
                    break;
                }
            }
            // Dropping our end closes the pipe: the command reads end of file.
            drop(fd);
        })),
        _ => None,
    };
    let resize_task = match (s.resize.take(), pty.clone()) {
        (Some(mut rx), Some(master)) => Some(tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                // SAFETY: the master stays open while `master` (an Arc) lives.
                let fd = unsafe { BorrowedFd::borrow_raw(master.raw()) };
                if let Err(e) = sycri_native::exec::set_winsize(fd, size.width, size.height) {
                    tracing::debug!(error = %e, "exec: resize failed");
                }
            }
        })),
        _ => None,
    };
    drop(pty);

    let mut gone = s.gone.clone();
    let code = tokio::select! {
        code = proc.control.wait() => Some(code),
        _ = super::session::client_gone(&mut gone) => None,
    };
    let outcome = match code {
        Some(code) => {
            tracing::debug!(code, "streaming exec ended");
            Outcome::Exited(code)
        }
        None => {
            tracing::debug!("exec client went away: ending the command");
            proc.control.kill().await;
            Outcome::Failed("the client went away".into())
        }
    };
    let deadline = tokio::time::Instant::now() + DRAIN;
    for t in outputs {
        let abort = t.abort_handle();
        if tokio::time::timeout_at(deadline, t).await.is_err() {
            abort.abort();
        }
    }
    for t in [stdin_task, resize_task].into_iter().flatten() {
        t.abort();
    }
    drop(proc);
    outcome
}
