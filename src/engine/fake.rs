//! A fake engine for the service's unit tests: it keeps, in memory, what a
//! real engine would have made on the host (mounts, cgroups, pinned
//! namespaces, processes), records every call in order, plays a container's
//! life (a monitor that writes the exit status when the container's process
//! ends), and fails the call a test names. No root, no kernel state.
//!
//! Container commands steer the fake process: `["ignore-term", ...]` ignores
//! SIGTERM (only SIGKILL ends it); anything else ends on its stop signal.

use super::monitor::{AttachOpts, AttachStream};
use super::portforward::PortForwarder;
use super::process::{ExitCode, ProcId};
use super::{Engine, ExecOutput, ExecProcess, ExecRequest, Spawned, Usage};
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use sycri_native::cgroup::{Cgroups, Resources};
use sycri_native::spec::{ContainerSpec, ExitStatus, SandboxSpec};
use tokio::sync::watch;

struct FakeContainer {
    monitor: i32,
    exit_file: PathBuf,
    control_socket: PathBuf,
    cgroup: Option<PathBuf>,
    ignores_term: bool,
    started: bool,
}

#[derive(Default)]
struct State {
    calls: Vec<String>,
    /// Methods whose next call fails.
    fail: HashSet<&'static str>,
    next_pid: i32,
    alive: HashSet<i32>,
    /// By the container's first process.
    containers: HashMap<i32, FakeContainer>,
    mounts: BTreeSet<PathBuf>,
    cgroups: BTreeSet<PathBuf>,
    /// Pinned namespace directories.
    sandboxes: BTreeSet<PathBuf>,
    /// Delay for `start`, to hold a start in progress.
    start_delay: Option<Duration>,
    /// Methods whose next call never returns (a server killed there).
    hold: HashSet<&'static str>,
    /// Processes by the helper spec file they run on.
    helpers: HashMap<PathBuf, Vec<i32>>,
}

pub struct FakeEngine {
    state: Mutex<State>,
    /// Bumped at every process exit, for `wait_gone`.
    exits: watch::Sender<u64>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        FakeEngine {
            state: Mutex::new(State {
                next_pid: 1000,
                ..State::default()
            }),
            exits: watch::channel(0).0,
        }
    }
}

const CGROUP_ROOT: &str = "/fake-cgroup";

impl FakeEngine {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `call`, or fails it when the test asked for that.
    fn enter(&self, method: &'static str, detail: impl std::fmt::Display) -> Result<()> {
        let mut s = self.lock();
        s.calls.push(format!("{method} {detail}"));
        if s.fail.remove(method) {
            return Err(Error::Internal(format!("fake failure of {method}")));
        }
        Ok(())
    }

    /// Never returns when the test holds `method`: the call has done its
    /// work, and its caller never hears of it (as when the server is killed
    /// right then).
    async fn after(&self, method: &'static str) {
        if self.lock().hold.remove(method) {
            std::future::pending::<()>().await;
        }
    }

    /// Makes the next call of `method` do its work and then never return.
    pub fn hold(&self, method: &'static str) {
        self.lock().hold.insert(method);
    }

    /// Whether `method` has been called.
    pub fn called(&self, method: &str) -> bool {
        self.methods().iter().any(|m| m == method)
    }

    fn new_pid(s: &mut State) -> i32 {
        s.next_pid += 1;
        let pid = s.next_pid;
        s.alive.insert(pid);
        pid
    }

    fn proc(pid: i32) -> ProcId {
        ProcId {
            pid,
            start: Some(1),
        }
    }

    /// Makes the next call of `method` fail.
    pub fn fail_next(&self, method: &'static str) {
        self.lock().fail.insert(method);
    }

    /// Makes `start` take `d`.
    pub fn delay_start(&self, d: Duration) {
        self.lock().start_delay = Some(d);
    }

    /// Every call so far, "method detail", in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The methods called so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.calls()
            .iter()
            .map(|c| c.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    pub fn mounts(&self) -> Vec<PathBuf> {
        self.lock().mounts.iter().cloned().collect()
    }

    pub fn cgroups(&self) -> Vec<PathBuf> {
        self.lock().cgroups.iter().cloned().collect()
    }

    pub fn sandboxes(&self) -> Vec<PathBuf> {
        self.lock().sandboxes.iter().cloned().collect()
    }

    /// Pids of processes still alive.
    pub fn live(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.lock().alive.iter().copied().collect();
        v.sort();
        v
    }

    /// Ends a container's first process as the monitor would see it: the
    /// monitor records the status and goes.
    pub fn exit(&self, init: i32, code: i32, signal: Option<i32>) {
        let mut s = self.lock();
        FakeEngine::end(&mut s, init, code, signal);
        drop(s);
        self.exits.send_modify(|n| *n += 1);
    }

    fn end(s: &mut State, init: i32, code: i32, signal: Option<i32>) {
        if !s.alive.remove(&init) {
            return;
        }
        if let Some(c) = s.containers.get(&init) {
            let status = ExitStatus {
                exit_code: code,
                signal,
                finished_at_ns: sycri_native::util::now_ns(),
                oom_killed: false,
            };
            if let Ok(data) = serde_json::to_vec(&status) {
                let _ = std::fs::write(&c.exit_file, data);
            }
            let monitor = c.monitor;
            s.alive.remove(&monitor);
        }
    }

    fn spawn_fake_monitor(&self, spec: &ContainerSpec, spec_file: &Path) -> Spawned {
        let mut s = self.lock();
        let monitor = FakeEngine::new_pid(&mut s);
        let init = FakeEngine::new_pid(&mut s);
        s.helpers
            .entry(spec_file.to_path_buf())
            .or_default()
            .extend([monitor, init]);
        s.containers.insert(
            init,
            FakeContainer {
                monitor,
                exit_file: spec.exit_file.clone(),
                control_socket: spec.control_socket.clone(),
                cgroup: spec.cgroup.clone(),
                ignores_term: spec.process.args.first().map(String::as_str) == Some("ignore-term"),
                started: false,
            },
        );
        Spawned {
            monitor: FakeEngine::proc(monitor),
            init: FakeEngine::proc(init),
        }
    }

    async fn start_fake(&self, control_socket: &Path) -> Result<()> {
        let delay = self.lock().start_delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut s = self.lock();
        let c = s
            .containers
            .values_mut()
            .find(|c| c.control_socket == control_socket)
            .ok_or_else(|| Error::FailedPrecondition("no such monitor".into()))?;
        if c.started {
            return Err(Error::FailedPrecondition(
                "container was already started".into(),
            ));
        }
        c.started = true;
        Ok(())
    }

    /// Kills the first process of the container in `cgroup`, if it lives.
    fn kill_in(&self, cgroup: &Path) {
        let mut s = self.lock();
        let inits: Vec<i32> = s
            .containers
            .iter()
            .filter(|(_, c)| c.cgroup.as_deref() == Some(cgroup))
            .map(|(p, _)| *p)
            .collect();
        for p in inits {
            FakeEngine::end(&mut s, p, 128 + libc::SIGKILL, Some(libc::SIGKILL));
        }
        drop(s);
        self.exits.send_modify(|n| *n += 1);
    }
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn run_sandbox(&self, spec: &SandboxSpec, spec_file: &Path) -> Result<Option<ProcId>> {
        self.enter("run_sandbox", spec.ns_dir.display())?;
        let init = {
            let mut s = self.lock();
            s.sandboxes.insert(spec.ns_dir.clone());
            let init = spec.share_pid.then(|| FakeEngine::new_pid(&mut s));
            s.helpers
                .entry(spec_file.to_path_buf())
                .or_default()
                .extend(init);
            init
        };
        self.after("run_sandbox").await;
        Ok(init.map(FakeEngine::proc))
    }

    async fn apply_sysctls(&self, spec: &SandboxSpec, _spec_file: &Path) -> Result<()> {
        self.enter("apply_sysctls", spec.ns_dir.display())
    }

    async fn mount_shm(&self, dir: &Path, _size: u64) -> Result<()> {
        self.enter("mount_shm", dir.display())?;
        self.lock().mounts.insert(dir.to_path_buf());
        self.after("mount_shm").await;
        Ok(())
    }

    async fn release_sandbox(
        &self,
        ns_dir: &Path,
        shm: Option<&Path>,
        init: Option<ProcId>,
    ) -> Result<()> {
        self.enter("release_sandbox", ns_dir.display())?;
        {
            let mut s = self.lock();
            if let Some(p) = init {
                s.alive.remove(&p.pid);
            }
            s.sandboxes.remove(ns_dir);
            if let Some(shm) = shm {
                s.mounts.remove(shm);
            }
        }
        self.exits.send_modify(|n| *n += 1);
        self.after("release_sandbox").await;
        Ok(())
    }

    async fn mount_image(&self, _blob: &Path, _off: u64, _size: u64, target: &Path) -> Result<()> {
        self.enter("mount_image", target.display())?;
        std::fs::create_dir_all(target).map_err(|e| Error::io("create mount point", e))?;
        self.lock().mounts.insert(target.to_path_buf());
        self.after("mount_image").await;
        Ok(())
    }

    async fn unmount(&self, target: &Path) -> Result<()> {
        self.enter("unmount", target.display())?;
        self.lock().mounts.remove(target);
        Ok(())
    }

    fn cgroups_for(&self, parent: &str, name: &str) -> Cgroups {
        Cgroups {
            v2: Some(Path::new(CGROUP_ROOT).join(parent).join(name)),
            v1: Vec::new(),
        }
    }

    async fn remove_stray_cgroups(&self, parent: &str, keep: &HashSet<String>) -> usize {
        let root = Path::new(CGROUP_ROOT).join(parent);
        let mut s = self.lock();
        s.calls
            .push(format!("remove_stray_cgroups {}", root.display()));
        let stray: Vec<PathBuf> = s
            .cgroups
            .iter()
            .filter(|c| c.parent() == Some(root.as_path()))
            .filter(|c| {
                !c.file_name()
                    .is_some_and(|n| keep.contains(&*n.to_string_lossy()))
            })
            .cloned()
            .collect();
        for c in &stray {
            s.cgroups.remove(c);
        }
        stray.len()
    }

    async fn prepare_cgroup_parent(&self, parent: &str) -> Result<()> {
        self.enter("prepare_cgroup_parent", parent)
    }

    async fn create_cgroups(&self, cg: &Cgroups, _limits: &Resources) -> Result<()> {
        let dir = cg.v2.clone().unwrap_or_default();
        self.enter("create_cgroups", dir.display())?;
        self.lock().cgroups.insert(dir);
        self.after("create_cgroups").await;
        Ok(())
    }

    async fn set_limits(&self, cg: &Cgroups, _limits: &Resources) -> Result<()> {
        self.enter("set_limits", cg.v2.clone().unwrap_or_default().display())
    }

    async fn kill_cgroups(&self, cg: &Cgroups) -> Result<()> {
        let dir = cg.v2.clone().unwrap_or_default();
        self.enter("kill_cgroups", dir.display())?;
        self.kill_in(&dir);
        Ok(())
    }

    async fn remove_cgroups(&self, cg: &Cgroups) -> Result<()> {
        let dir = cg.v2.clone().unwrap_or_default();
        self.enter("remove_cgroups", dir.display())?;
        // As the real one: what is left in them is killed first.
        self.kill_in(&dir);
        self.lock().cgroups.remove(&dir);
        self.after("remove_cgroups").await;
        Ok(())
    }

    async fn usage(&self, _cg: &Cgroups, _upper: &Path) -> Usage {
        Usage::default()
    }

    async fn spawn_monitor(&self, spec: &ContainerSpec, spec_file: &Path) -> Result<Spawned> {
        self.enter("spawn_monitor", &spec.id)?;
        let spawned = self.spawn_fake_monitor(spec, spec_file);
        self.after("spawn_monitor").await;
        Ok(spawned)
    }

    async fn start(&self, control_socket: &Path) -> Result<()> {
        self.enter("start", control_socket.display())?;
        let out = self.start_fake(control_socket).await;
        self.after("start").await;
        out
    }

    async fn reopen_log(&self, control_socket: &Path) -> Result<()> {
        self.enter("reopen_log", control_socket.display())
    }

    async fn attach(&self, control_socket: &Path, _opts: AttachOpts) -> Result<AttachStream> {
        self.enter("attach", control_socket.display())?;
        Err(Error::Unimplemented(
            "the fake engine does not attach".into(),
        ))
    }

    async fn exec_sync(&self, req: &ExecRequest, _timeout: Option<Duration>) -> Result<ExecOutput> {
        self.enter("exec_sync", req.args.join(" "))?;
        Ok(ExecOutput {
            stdout: req.args.join(" ").into_bytes(),
            stderr: Vec::new(),
            exit_code: 0,
        })
    }

    async fn spawn_exec(&self, req: &ExecRequest, _stdin: bool) -> Result<ExecProcess> {
        self.enter("spawn_exec", req.args.join(" "))?;
        Err(Error::Unimplemented(
            "the fake engine does not stream".into(),
        ))
    }

    async fn wait_exec(&self, _pid: i32) -> ExitCode {
        0
    }

    async fn kill_exec(&self, _pid: i32) -> ExitCode {
        137
    }

    async fn port_forward(&self, netns: Option<&Path>) -> Result<PortForwarder> {
        self.enter(
            "port_forward",
            netns.map(|p| p.display().to_string()).unwrap_or_default(),
        )?;
        Ok(PortForwarder::Host)
    }

    fn alive(&self, p: ProcId) -> bool {
        self.lock().alive.contains(&p.pid)
    }

    fn signal(&self, p: ProcId, sig: i32) -> bool {
        let mut s = self.lock();
        s.calls.push(format!("signal {} {sig}", p.pid));
        if !s.alive.contains(&p.pid) {
            return false;
        }
        let ignores = s.containers.get(&p.pid).is_some_and(|c| c.ignores_term);
        if sig == libc::SIGKILL || !(ignores && sig == libc::SIGTERM) {
            FakeEngine::end(&mut s, p.pid, 128 + sig, Some(sig));
            drop(s);
            self.exits.send_modify(|n| *n += 1);
        }
        true
    }

    async fn wait_gone(&self, p: ProcId) {
        let mut rx = self.exits.subscribe();
        while self.alive(p) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    async fn kill_helpers(&self, spec_file: &Path) -> usize {
        let mut s = self.lock();
        s.calls
            .push(format!("kill_helpers {}", spec_file.display()));
        let pids = s.helpers.remove(spec_file).unwrap_or_default();
        let mut n = 0;
        for p in pids {
            if s.alive.remove(&p) {
                n += 1;
            }
        }
        drop(s);
        self.exits.send_modify(|n| *n += 1);
        n
    }
}
