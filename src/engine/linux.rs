//! The engine on a Linux host: `sycri-native` calls for mounts and cgroups
//! (run on the blocking pool), and the `sycri-engine` helpers for everything
//! that needs a single-threaded process (namespaces, the container's first
//! process, exec, port-forward).

use super::monitor::{self, AttachOpts, AttachStream};
use super::portforward::PortForwarder;
use super::process::{self, ExitCode, Group, PidFd, ProcId, Reaper};
use super::{Engine, ExecOutput, ExecProcess, ExecRequest, Spawned, Usage, MAX_EXEC_OUTPUT};
use crate::error::{Error, Result};
use crate::util::{blocking, random_hex};
use std::collections::HashSet;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use sycri_native::cgroup::{Cgroups, Layout, Resources};
use sycri_native::exec::ExecSpec;
use sycri_native::monitor::protocol::{Ready, Request};
use sycri_native::sandbox::SandboxReady;
use sycri_native::spec::{ContainerSpec, SandboxSpec};
use sycri_native::util::write_atomic;

/// Helpers get a plain PATH and nothing else of the server's environment.
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct LinuxEngine {
    /// The binary that runs the helpers (see [`super::binary::select`]).
    binary: PathBuf,
    reaper: Reaper,
    cgroups: Layout,
}

fn encode<T: serde::Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Internal(format!("encode {what}: {e}")))
}

impl LinuxEngine {
    /// An engine whose helpers run from `binary`, reaped by `reaper`, with
    /// containers' cgroups under `cgroup_parent` by default.
    pub fn new(binary: PathBuf, reaper: Reaper, cgroup_parent: &str) -> LinuxEngine {
        let layout = sycri_native::cgroup::layout();
        if let Err(e) = layout.prepare(cgroup_parent) {
            tracing::warn!("cgroups: {e}; CreateContainer will fail where it must make them");
        }
        let missing: Vec<&str> = ["cpu", "cpuacct", "memory", "cpuset", "pids"]
            .into_iter()
            .filter(|c| {
                let v2 = if *c == "cpuacct" { "cpu" } else { c };
                !layout.v1.iter().any(|(x, _)| x == c)
                    && !layout.v2_controllers.iter().any(|x| x == v2)
            })
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                ?missing,
                "cgroup controllers missing: limits on them are refused, their usage is not reported"
            );
        }
        tracing::info!(v2 = ?layout.v2, v2_controllers = ?layout.v2_controllers, v1 = ?layout.v1, "cgroup hierarchies");
        LinuxEngine {
            binary,
            reaper,
            cgroups: layout,
        }
    }

    pub fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// Runs `<engine> <mode> <spec>` and returns its pid and the JSON line it
    /// prints on stdout once it is ready (it may keep running: a monitor does).
    async fn run_helper(&self, mode: &str, spec: &Path) -> Result<(i32, String)> {
        let mut child = self
            .reaper
            .spawn(
                Command::new(&self.binary)
                    .arg(mode)
                    .arg(spec)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .env_clear()
                    .env("PATH", HELPER_PATH),
                Group::Keep,
            )
            .map_err(|e| Error::io(format!("start {mode} helper"), e))?;
        let pid = child.id() as i32;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("helper has no stdout".into()))?;
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

    /// Runs the sandbox helper on `spec` to its end.
    async fn sandbox_helper(
        &self,
        what: &str,
        spec: &SandboxSpec,
        file: &Path,
    ) -> Result<SandboxReady> {
        write_atomic(file, &encode(what, spec)?)
            .map_err(|e| Error::io(format!("write {what} spec"), e))?;
        let (helper, line) = self.run_helper(sycri_native::SANDBOX_ARG, file).await?;
        let code = self.reaper.wait(helper).await;
        let ready: SandboxReady = serde_json::from_str(line.trim()).map_err(|e| {
            Error::Internal(format!("{what} helper (exit {code}) said {line:?}: {e}"))
        })?;
        match ready.error {
            Some(f) => Err(Error::from(f)),
            None => Ok(ready),
        }
    }

    /// Writes the exec helper's spec for `req`; its path.
    fn write_exec_spec(req: &ExecRequest) -> Result<PathBuf> {
        let container: ContainerSpec = serde_json::from_slice(
            &std::fs::read(&req.container_spec).map_err(|e| Error::io("read container spec", e))?,
        )
        .map_err(|e| Error::Internal(format!("container spec: {e}")))?;
        let spec = ExecSpec {
            pid: req.pid,
            container,
            args: req.args.clone(),
            tty: req.tty,
        };
        let path = req.work_dir.join(format!("exec-{}.json", random_hex(8)));
        write_atomic(&path, &encode("exec spec", &spec)?)
            .map_err(|e| Error::io("write exec spec", e))?;
        Ok(path)
    }

    fn exec_command(&self, spec: &Path) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg(sycri_native::EXEC_ARG)
            .arg(spec)
            .env_clear()
            .process_group(0);
        c
    }
}

/// Removes a file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[async_trait::async_trait]
impl Engine for LinuxEngine {
    async fn run_sandbox(&self, spec: &SandboxSpec, spec_file: &Path) -> Result<Option<ProcId>> {
        let ready = self.sandbox_helper("sandbox", spec, spec_file).await?;
        Ok(ready.init_pid.map(ProcId::of))
    }

    async fn apply_sysctls(&self, spec: &SandboxSpec, spec_file: &Path) -> Result<()> {
        let _rm = Remove(spec_file.to_path_buf());
        self.sandbox_helper("sysctl", spec, spec_file)
            .await
            .map(drop)
    }

    async fn mount_shm(&self, dir: &Path, size: u64) -> Result<()> {
        let dir = dir.to_path_buf();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io("create pod shm", e))?;
            sycri_native::mounts::mount_tmpfs(&dir, size)
                .map_err(|e| Error::Internal(e.to_string()))
        })
        .await
    }

    async fn release_sandbox(
        &self,
        ns_dir: &Path,
        shm: Option<&Path>,
        init: Option<ProcId>,
    ) -> Result<()> {
        if let Some(p) = init.and_then(PidFd::open) {
            if p.signal(libc::SIGKILL) {
                // Wait (briefly) for it to die so that the pid namespace goes too.
                let _ = tokio::time::timeout(Duration::from_secs(1), p.wait()).await;
            }
        }
        let (ns_dir, shm) = (ns_dir.to_path_buf(), shm.map(Path::to_path_buf));
        blocking(move || {
            sycri_native::sandbox::unpin_all(&ns_dir).map_err(Error::from)?;
            if let Some(shm) = &shm {
                sycri_native::mounts::unmount(shm).map_err(|e| Error::Internal(e.to_string()))?;
            }
            Ok(())
        })
        .await
    }

    async fn mount_image(&self, blob: &Path, offset: u64, size: u64, target: &Path) -> Result<()> {
        let (blob, target) = (blob.to_path_buf(), target.to_path_buf());
        blocking(move || {
            if sycri_native::mounts::is_mounted(&target)
                .map_err(|e| Error::Internal(e.to_string()))?
            {
                return Ok(());
            }
            std::fs::create_dir_all(&target)
                .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
            sycri_native::mounts::mount_squashfs(&blob, offset, size, &target)
                .map_err(|e| Error::Internal(format!("mount image {}: {e}", blob.display())))
        })
        .await
    }

    async fn unmount(&self, target: &Path) -> Result<()> {
        let target = target.to_path_buf();
        blocking(move || {
            // Everything mounted there, also mounts stacked by older servers.
            for _ in 0..64 {
                let mounted = sycri_native::mounts::is_mounted(&target)
                    .map_err(|e| Error::Internal(e.to_string()))?;
                if !mounted {
                    return Ok(());
                }
                sycri_native::mounts::unmount(&target)
                    .map_err(|e| Error::Internal(e.to_string()))?;
            }
            Err(Error::Internal(format!(
                "{} is still mounted after 64 unmounts",
                target.display()
            )))
        })
        .await
    }

    fn cgroups_for(&self, parent: &str, name: &str) -> Cgroups {
        self.cgroups.cgroups(parent, name)
    }

    async fn remove_stray_cgroups(&self, parent: &str, keep: &HashSet<String>) -> usize {
        let dirs: Vec<PathBuf> = self
            .cgroups
            .v2
            .iter()
            .chain(self.cgroups.v1.iter().map(|(_, d)| d))
            .map(|root| root.join(parent))
            .collect();
        let keep = keep.clone();
        blocking(move || {
            let mut n = 0;
            for dir in dirs {
                let Ok(rd) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let container = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                    if container && !keep.contains(&name) && e.path().is_dir() {
                        match sycri_native::cgroup::remove(&e.path()) {
                            Ok(()) => n += 1,
                            Err(err) => tracing::warn!(cgroup = %e.path().display(), error = %err, "removing a stray cgroup"),
                        }
                    }
                }
            }
            Ok(n)
        })
        .await
        .unwrap_or(0)
    }

    async fn prepare_cgroup_parent(&self, parent: &str) -> Result<()> {
        let (layout, parent) = (self.cgroups.clone(), parent.to_string());
        blocking(move || layout.prepare(&parent).map_err(Error::from)).await
    }

    async fn create_cgroups(&self, cg: &Cgroups, limits: &Resources) -> Result<()> {
        let (cg, limits) = (cg.clone(), limits.clone());
        blocking(move || {
            sycri_native::cgroup::create_all(&cg)?;
            sycri_native::cgroup::apply(&cg, &limits)?;
            Ok(())
        })
        .await
    }

    async fn set_limits(&self, cg: &Cgroups, limits: &Resources) -> Result<()> {
        let (cg, limits) = (cg.clone(), limits.clone());
        blocking(move || sycri_native::cgroup::apply(&cg, &limits).map_err(Error::from)).await
    }

    async fn kill_cgroups(&self, cg: &Cgroups) -> Result<()> {
        let cg = cg.clone();
        blocking(move || sycri_native::cgroup::kill_all(&cg).map_err(Error::from)).await
    }

    async fn remove_cgroups(&self, cg: &Cgroups) -> Result<()> {
        let cg = cg.clone();
        blocking(move || sycri_native::cgroup::remove_all(&cg).map_err(Error::from)).await
    }

    async fn usage(&self, cg: &Cgroups, upper: &Path) -> Usage {
        let (cg, upper) = (cg.clone(), upper.to_path_buf());
        blocking(move || {
            let (disk_bytes, disk_inodes) = sycri_native::util::disk_usage(&upper);
            Ok(Usage {
                cgroups: sycri_native::cgroup::stats(&cg),
                disk_bytes,
                disk_inodes,
            })
        })
        .await
        .unwrap_or_default()
    }

    async fn spawn_monitor(&self, spec: &ContainerSpec, spec_file: &Path) -> Result<Spawned> {
        write_atomic(spec_file, &encode("container spec", spec)?)
            .map_err(|e| Error::io("write container spec", e))?;
        let (monitor, line) = self
            .run_helper(sycri_native::MONITOR_ARG, spec_file)
            .await?;
        let ready: Ready = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                let code = self.reaper.wait(monitor).await;
                return Err(Error::Internal(format!(
                    "container monitor (exit {code}) said {line:?}: {e}"
                )));
            }
        };
        if let Some(f) = ready.error {
            self.reaper.wait(monitor).await;
            return Err(Error::from(f));
        }
        let monitor_id = ProcId::of(monitor);
        // The monitor lives on; nobody waits for its exit here.
        self.reaper.forget(monitor);
        let Some(pid) = ready.pid else {
            // A monitor that forked nothing it can name must not live on.
            if let Some(p) = PidFd::open(monitor_id) {
                p.signal(libc::SIGKILL);
            }
            return Err(Error::Internal("container monitor reported no pid".into()));
        };
        Ok(Spawned {
            monitor: monitor_id,
            init: ProcId::of(pid),
        })
    }

    async fn start(&self, control_socket: &Path) -> Result<()> {
        monitor::request(control_socket, &Request::Start).await
    }

    async fn reopen_log(&self, control_socket: &Path) -> Result<()> {
        monitor::request(control_socket, &Request::ReopenLog).await
    }

    async fn attach(&self, control_socket: &Path, opts: AttachOpts) -> Result<AttachStream> {
        monitor::attach(control_socket, opts).await
    }

    async fn exec_sync(&self, req: &ExecRequest, timeout: Option<Duration>) -> Result<ExecOutput> {
        let spec = Remove(LinuxEngine::write_exec_spec(req)?);
        let mut child = self
            .reaper
            .spawn(
                self.exec_command(&spec.0)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
                // What the command left in its group would hold the pipes.
                Group::KillOnExit,
            )
            .map_err(|e| Error::io("start exec helper", e))?;
        let pid = child.id() as i32;
        let out = child.stdout.take();
        let err = child.stderr.take();
        drop(child);
        let out = tokio::task::spawn_blocking(move || {
            out.map(|r| process::read_bounded(r, MAX_EXEC_OUTPUT))
                .unwrap_or_default()
        });
        let err = tokio::task::spawn_blocking(move || {
            err.map(|r| process::read_bounded(r, MAX_EXEC_OUTPUT))
                .unwrap_or_default()
        });
        let wait = self.reaper.wait(pid);
        let code = match timeout {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(code) => code,
                Err(_) => {
                    // The whole group: the helper and the command it runs.
                    self.reaper.signal(pid, libc::SIGKILL, true);
                    self.reaper.wait(pid).await;
                    return Err(Error::DeadlineExceeded(format!(
                        "command timed out after {}s",
                        limit.as_secs()
                    )));
                }
            },
            None => wait.await,
        };
        let stdout = out.await.map_err(|e| Error::Internal(e.to_string()))?;
        let stderr = err.await.map_err(|e| Error::Internal(e.to_string()))?;
        Ok(ExecOutput {
            stdout,
            stderr,
            exit_code: code,
        })
    }

    async fn spawn_exec(&self, req: &ExecRequest, stdin: bool) -> Result<ExecProcess> {
        let spec = LinuxEngine::write_exec_spec(req)?;
        let mut proc = ExecProcess {
            pid: 0,
            stdin: None,
            stdout: None,
            stderr: None,
            pty: None,
            spec: spec.clone(),
        };
        let mut command = self.exec_command(&spec);
        if req.tty {
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
        // Without a tty, whatever the command left in its group holds the pipes.
        let group = if req.tty {
            Group::Keep
        } else {
            Group::KillOnExit
        };
        let mut child = self
            .reaper
            .spawn(&mut command, group)
            .map_err(|e| Error::io("start exec helper", e))?;
        // Our copies of the pty slave are in `command`: close them, so that the
        // master reads end of file once the command's side is closed.
        drop(command);
        proc.pid = child.id() as i32;
        proc.stdin = child.stdin.take().map(OwnedFd::from);
        proc.stdout = child.stdout.take().map(OwnedFd::from);
        proc.stderr = child.stderr.take().map(OwnedFd::from);
        drop(child);
        Ok(proc)
    }

    async fn wait_exec(&self, pid: i32) -> ExitCode {
        self.reaper.wait(pid).await
    }

    async fn kill_exec(&self, pid: i32) -> ExitCode {
        self.reaper.signal(pid, libc::SIGKILL, true);
        self.reaper.wait(pid).await
    }

    async fn port_forward(&self, netns: Option<&Path>) -> Result<PortForwarder> {
        match netns {
            None => Ok(PortForwarder::Host),
            Some(ns) => PortForwarder::spawn(&self.binary, &self.reaper, ns),
        }
    }

    fn alive(&self, p: ProcId) -> bool {
        process::alive(p)
    }

    fn signal(&self, p: ProcId, sig: i32) -> bool {
        PidFd::open(p).is_some_and(|h| h.signal(sig))
    }

    async fn wait_gone(&self, p: ProcId) {
        if let Some(h) = PidFd::open(p) {
            h.wait().await;
        }
    }

    async fn kill_helpers(&self, spec_file: &Path) -> usize {
        let spec = spec_file.to_path_buf();
        let found = blocking(move || Ok(process::helpers_on(&spec)))
            .await
            .unwrap_or_default();
        let mut killed = Vec::new();
        for id in found {
            // Checked again through the pidfd: that process, still a helper
            // on this spec, and nobody who took its number since the scan.
            let Some(p) = PidFd::open(id) else { continue };
            if process::runs_helper_on(&process::cmdline(id.pid), spec_file)
                && p.signal(libc::SIGKILL)
            {
                tracing::info!(pid = id.pid, spec = %spec_file.display(), "killed a helper a crash left behind");
                killed.push(p);
            }
        }
        let n = killed.len();
        for p in killed {
            let _ = tokio::time::timeout(Duration::from_secs(2), p.wait()).await;
        }
        n
    }
}
