//! Spawning sycri's helper processes and reaping every child.
//!
//! The server never forks to do namespace or mount work itself: it execs a helper
//! (`sycri-engine`, or its own binary) in a helper mode. The server is a child subreaper, so
//! monitors and pod inits that outlive their parents come back to it; one task
//! reaps all children with `waitpid(-1)` and hands exit statuses to whoever waits.

use crate::error::{Error, Result};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub use sycri_native::{EXEC_ARG, MONITOR_ARG, PORTFORWARD_ARG, SANDBOX_ARG};

/// Reads `r` to its end and keeps at most `max` bytes: a child's output must
/// be drained (or it blocks on a full pipe) but not held without bound.
pub fn read_bounded(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

/// SIGKILL to the process group `pgid` (children started with
/// `process_group(0)` lead their own), so that nothing a helper or plugin
/// started outlives it or keeps its pipes open.
pub fn kill_group(pgid: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with integer arguments only; a negative pid names
        // the group, and pgid > 0 rules out kill(0) and kill(-1).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// Exit of a child: the code, or 128 + signal.
pub type ExitCode = i32;

#[derive(Default)]
struct Waiters {
    waiting: HashMap<i32, oneshot::Sender<ExitCode>>,
    /// Exits that came before anyone asked.
    early: HashMap<i32, ExitCode>,
}

/// Reaps every child of the server.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Waiters>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts the reaping task.
    pub fn start() -> Result<Reaper> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(Error::io(
                "become child subreaper",
                std::io::Error::last_os_error(),
            ));
        }
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
            .map_err(|e| Error::io("watch SIGCHLD", e))?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) => (p.as_raw(), c),
                Ok(WaitStatus::Signaled(p, s, _)) => (p.as_raw(), 128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            tracing::trace!(pid, code, "reaped child");
            let mut w = match self.inner.lock() {
                Ok(w) => w,
                Err(p) => p.into_inner(),
            };
            match w.waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(code);
                }
                None => {
                    // Keep the status for a short-lived helper that has not asked
                    // yet; orphans adopted from earlier servers never ask, so bound it.
                    if w.early.len() > 4096 {
                        w.early.clear();
                    }
                    w.early.insert(pid, code);
                }
            }
        }
    }

    /// Waits for child `pid` to exit.
    pub async fn wait(&self, pid: i32) -> ExitCode {
        let rx = {
            let mut w = match self.inner.lock() {
                Ok(w) => w,
                Err(p) => p.into_inner(),
            };
            if let Some(code) = w.early.remove(&pid) {
                return code;
            }
            let (tx, rx) = oneshot::channel();
            w.waiting.insert(pid, tx);
            rx
        };
        // A SIGCHLD may have come between the spawn and our registration.
        self.reap_all();
        rx.await.unwrap_or(-1)
    }

    /// Forgets a child whose exit nobody will ask about (e.g. a long-lived monitor).
    pub fn forget(&self, pid: i32) {
        let mut w = match self.inner.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        w.early.remove(&pid);
    }
}

static ENGINE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The binary that runs helpers, as [`select_engine`] chose it; the server's
/// own binary (which dispatches the helpers as well) until then.
pub fn self_exe() -> &'static Path {
    ENGINE
        .get()
        .map(PathBuf::as_path)
        .unwrap_or(Path::new("/proc/self/exe"))
}

/// Why a `sycri-engine` binary was not used.
#[derive(thiserror::Error, Debug)]
pub enum EngineError {
    #[error("engine binary {path}: cannot run it: {source}")]
    Run {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "engine binary {path} is from another build (its sources {found:?}, this server's {want}); \
         rebuild and install both"
    )]
    Mismatch {
        path: PathBuf,
        found: String,
        want: &'static str,
    },
}

/// Asks `path` for its build fingerprint and checks it against ours.
fn check_engine(path: &Path) -> std::result::Result<(), EngineError> {
    let out = Command::new(path)
        .arg(sycri_native::ENGINE_BUILD_ARG)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .env_clear()
        .output()
        .map_err(|source| EngineError::Run {
            path: path.to_path_buf(),
            source,
        })?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && found == sycri_native::ENGINE_BUILD {
        Ok(())
    } else {
        Err(EngineError::Mismatch {
            path: path.to_path_buf(),
            found,
            want: sycri_native::ENGINE_BUILD,
        })
    }
}

/// Chooses the binary that runs the helpers, once, before any child is
/// started (it waits for its probe itself, so it must run before the Reaper).
///
/// `configured` (the `engine_binary` setting) must be a matching engine. Else
/// `sycri-engine` beside the server's binary is used when it matches (a small,
/// ideally static binary: each monitor lives as long as its container); a
/// stale one is reported and passed over; else the server runs the helpers
/// from its own binary.
pub fn select_engine(configured: Option<&Path>) -> std::result::Result<&'static Path, EngineError> {
    let chosen = match configured {
        Some(path) => {
            check_engine(path)?;
            path.to_path_buf()
        }
        None => {
            let beside = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join("sycri-engine")))
                .filter(|p| p.is_file());
            match beside {
                Some(path) => match check_engine(&path) {
                    Ok(()) => path,
                    Err(e) => {
                        tracing::warn!("{e}; running the helpers from sycri itself");
                        PathBuf::from("/proc/self/exe")
                    }
                },
                None => PathBuf::from("/proc/self/exe"),
            }
        }
    };
    tracing::info!(engine = %chosen.display(), "helper binary");
    Ok(ENGINE.get_or_init(|| chosen).as_path())
}

/// Runs `sycri <mode> <spec>` and returns the JSON line it prints on stdout once
/// it is ready. The helper may keep running afterwards (a monitor does).
pub async fn run_helper(mode: &str, spec: &Path) -> Result<(i32, String)> {
    let mut cmd = Command::new(self_exe());
    cmd.arg(mode)
        .arg(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("start {mode} helper"), e))?;
    let pid = child.id() as i32;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Internal("helper has no stdout".into()))?;
    // The child is reaped by the Reaper, never through `child`.
    drop(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    })
    .await
    .map_err(|e| Error::Internal(format!("{mode} helper reader: {e}")))?
    .map_err(|e| Error::io(format!("read {mode} helper"), e))?;
    Ok((pid, line))
}
