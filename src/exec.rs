//! ExecSync: a command inside a running container, its output collected with
//! bounds and a timeout. The work inside the container is done by the
//! `__exec` helper (our binary re-executed), never by the server itself.
//! Streaming exec ([`Runtime::spawn_exec`]) starts the same helper with its
//! stdio on pipes or a pseudo-terminal for the streaming server to pump.

use crate::containers::State;
use crate::error::{Error, Result};
use crate::helpers::{kill_group, read_bounded, self_exe, EXEC_ARG};
use crate::images::random_hex;
use crate::runtime::Runtime;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use sycri_native::exec::ExecSpec;
use sycri_native::spec::ContainerSpec;
use sycri_native::util::write_atomic;

/// Most output kept per stream; the rest is read and dropped. Both streams
/// together stay below the 16 MiB gRPC message limit kubelet uses.
pub const MAX_OUTPUT: usize = 6 << 20;

/// A running `__exec` helper with the server's ends of its stdio.
pub struct ExecProcess {
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pseudo-terminal's master (tty mode): input and output both.
    pub pty: Option<OwnedFd>,
    /// The helper's spec file; removed when this is dropped.
    pub spec: PathBuf,
}

impl Drop for ExecProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spec);
    }
}

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl Runtime {
    pub async fn exec_sync(&self, id: &str, cmd: Vec<String>, timeout: i64) -> Result<ExecOutput> {
        let path = self.write_exec_spec(id, cmd, false).await?;
        let result = self.run_exec(&path, timeout).await;
        let _ = std::fs::remove_file(&path);
        result
    }

    /// Checks that container `id` runs and writes the `__exec` helper's spec
    /// for `cmd` into the container's run directory; returns its path.
    pub async fn write_exec_spec(&self, id: &str, cmd: Vec<String>, tty: bool) -> Result<PathBuf> {
        if cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        let (id, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let (pid, spec_path) = {
            let mut c = c.lock().await;
            if c.refresh() != State::Running {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is not running"
                )));
            }
            let pid = c
                .rec
                .pid
                .ok_or_else(|| Error::Internal("running container without pid".into()))?;
            (pid, c.dir.join("spec.json"))
        };
        let container: ContainerSpec = serde_json::from_slice(
            &std::fs::read(&spec_path).map_err(|e| Error::io("read container spec", e))?,
        )
        .map_err(|e| Error::Internal(format!("container spec: {e}")))?;
        let spec = ExecSpec {
            pid,
            container,
            args: cmd,
            tty,
        };
        let path = self
            .container_run_dir(&id)
            .join(format!("exec-{}.json", random_hex(8)));
        write_atomic(
            &path,
            &serde_json::to_vec(&spec).map_err(|e| Error::Internal(e.to_string()))?,
        )
        .map_err(|e| Error::io("write exec spec", e))?;
        Ok(path)
    }

    /// Starts the `__exec` helper for a streaming exec: stdin on a pipe (or
    /// /dev/null), output on pipes, or everything on a new pseudo-terminal.
    /// The helper leads its own process group; it is reaped by the reaper.
    pub async fn spawn_exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: bool,
        tty: bool,
    ) -> Result<ExecProcess> {
        let spec = self.write_exec_spec(id, cmd, tty).await?;
        let mut command = Command::new(self_exe());
        command
            .arg(EXEC_ARG)
            .arg(&spec)
            .env_clear()
            .process_group(0);
        let mut proc = ExecProcess {
            pid: 0,
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            spec: spec.clone(),
        };
        if tty {
            let (master, slave) = sycri_native::exec::open_pty().map_err(Error::from)?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(|e| Error::io("dup pty", e));
            command
                .stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            proc.pty = Some(master);
        } else {
            command
                .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&spec);
                return Err(Error::io("start exec helper", e));
            }
        };
        // Our copies of the pty slave are in `command`: close them, so that the
        // master reads end of file once the command's side is closed.
        drop(command);
        proc.pid = child.id() as i32;
        proc.stdin = child.stdin.take().map(OwnedFd::from);
        proc.stdout = child.stdout.take().map(OwnedFd::from);
        proc.stderr = child.stderr.take().map(OwnedFd::from);
        // The child is reaped by the Reaper, never through `child`.
        drop(child);
        Ok(proc)
    }

    async fn run_exec(&self, spec: &std::path::Path, timeout: i64) -> Result<ExecOutput> {
        let mut child = Command::new(self_exe())
            .arg(EXEC_ARG)
            .arg(spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_clear()
            .process_group(0)
            .spawn()
            .map_err(|e| Error::io("start exec helper", e))?;
        let pid = child.id() as i32;
        let out = child.stdout.take();
        let err = child.stderr.take();
        drop(child);
        let out = tokio::task::spawn_blocking(move || {
            out.map(|r| read_bounded(r, MAX_OUTPUT)).unwrap_or_default()
        });
        let err = tokio::task::spawn_blocking(move || {
            err.map(|r| read_bounded(r, MAX_OUTPUT)).unwrap_or_default()
        });
        let wait = self.reaper.wait(pid);
        let code = if timeout > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout.unsigned_abs()), wait).await {
                Ok(code) => code,
                Err(_) => {
                    // The whole process group: the helper and the command it runs.
                    kill_group(pid);
                    self.reaper.wait(pid).await;
                    return Err(Error::DeadlineExceeded(format!(
                        "command timed out after {timeout}s"
                    )));
                }
            }
        } else {
            wait.await
        };
        // The command may have left children holding the pipes; end them.
        kill_group(pid);
        let stdout = out.await.map_err(|e| Error::Internal(e.to_string()))?;
        let stderr = err.await.map_err(|e| Error::Internal(e.to_string()))?;
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: code,
        })
    }
}
