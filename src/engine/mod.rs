//! The engine interface: everything the server does to the host's kernel
//! state, and every helper process it starts or monitor it talks to, behind
//! one trait. [`LinuxEngine`] does it for real (through `sycri-native` and
//! the `sycri-engine` helpers); `fake::FakeEngine` records it for the
//! service's unit tests, which need no root.
//!
//! The service decides *what* (specs, limits, which process); the engine
//! knows *how* (spec files, helper arguments, the monitor protocol, pidfds).

pub mod binary;
#[cfg(test)]
pub mod fake;
mod linux;
pub mod monitor;
pub mod portforward;
pub mod process;

pub use binary::EngineError;
pub use linux::LinuxEngine;
pub use monitor::{AttachOpts, AttachStream};
pub use portforward::PortForwarder;
pub use process::{ExitCode, ProcId, Reaper};

use crate::error::Result;
use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sycri_native::cgroup::{Cgroups, Resources, Stats};
use sycri_native::spec::{ContainerSpec, SandboxSpec};

/// Most exec output kept per stream; the rest is read and dropped. Both
/// streams together stay below the 16 MiB gRPC message limit kubelet uses.
pub const MAX_EXEC_OUTPUT: usize = 6 << 20;

/// A container's monitor and first process, as spawned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spawned {
    pub monitor: ProcId,
    pub init: ProcId,
}

/// A command to run in a running container.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    /// The container's spec (its namespaces, root, identity, seccomp).
    pub container_spec: PathBuf,
    /// The container's first process, whose namespaces the command joins.
    pub pid: i32,
    pub args: Vec<String>,
    pub tty: bool,
    /// Where the helper's own spec file goes (removed when it is done).
    pub work_dir: PathBuf,
}

pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// A running exec helper with the server's ends of its stdio. Waiting and
/// killing go through [`Engine::wait_exec`] and [`Engine::kill_exec`].
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
        if !self.spec.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.spec);
        }
    }
}

/// What a container uses, read from its cgroups and its writable layer.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cgroups: Stats,
    pub disk_bytes: u64,
    pub disk_inodes: u64,
}

#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    // --- pod sandboxes ---

    /// Makes a pod's namespaces (pinned in `spec.ns_dir`) and, for a shared
    /// pid namespace, its init; the init when there is one.
    async fn run_sandbox(&self, spec: &SandboxSpec, spec_file: &Path) -> Result<Option<ProcId>>;
    /// Applies `spec.sysctls` inside the pod's pinned namespaces.
    async fn apply_sysctls(&self, spec: &SandboxSpec, spec_file: &Path) -> Result<()>;
    /// A tmpfs of `size` bytes at `dir` (the pod's /dev/shm).
    async fn mount_shm(&self, dir: &Path, size: u64) -> Result<()>;
    /// Ends the pod's init, unpins its namespaces, unmounts its shm. Idempotent.
    async fn release_sandbox(
        &self,
        ns_dir: &Path,
        shm: Option<&Path>,
        init: Option<ProcId>,
    ) -> Result<()>;

    // --- images ---

    /// Mounts the squashfs at `offset`/`size` of `blob` read-only at `target`;
    /// an image already mounted there is kept (adopted), not mounted again.
    async fn mount_image(&self, blob: &Path, offset: u64, size: u64, target: &Path) -> Result<()>;
    /// Unmounts `target` if it is mounted.
    async fn unmount(&self, target: &Path) -> Result<()>;

    // --- cgroups ---

    /// A container's cgroups under `parent` in every hierarchy (paths only).
    fn cgroups_for(&self, parent: &str, name: &str) -> Cgroups;
    /// Makes `parent` and lets it pass the controllers on.
    async fn prepare_cgroup_parent(&self, parent: &str) -> Result<()>;
    /// Makes a container's cgroups with their limits, before any process joins.
    async fn create_cgroups(&self, cg: &Cgroups, limits: &Resources) -> Result<()>;
    /// Writes new limits.
    async fn set_limits(&self, cg: &Cgroups, limits: &Resources) -> Result<()>;
    /// Kills every process in the cgroups.
    async fn kill_cgroups(&self, cg: &Cgroups) -> Result<()>;
    /// Removes the (empty) cgroups. Idempotent.
    async fn remove_cgroups(&self, cg: &Cgroups) -> Result<()>;
    /// Removes the container cgroups under `parent` (64-hex names) that are
    /// not in `keep`, in every hierarchy: what a crash or an unreadable
    /// record left. How many.
    async fn remove_stray_cgroups(&self, parent: &str, keep: &HashSet<String>) -> usize;
    /// Usage of the cgroups and of the writable layer at `upper`.
    async fn usage(&self, cg: &Cgroups, upper: &Path) -> Usage;

    // --- containers ---

    /// Writes `spec` to `spec_file` and starts the container's monitor, which
    /// forks the container's first process; returns once it is ready.
    async fn spawn_monitor(&self, spec: &ContainerSpec, spec_file: &Path) -> Result<Spawned>;
    /// Lets the container's first process exec its command.
    async fn start(&self, control_socket: &Path) -> Result<()>;
    /// Makes the monitor reopen the container's log file.
    async fn reopen_log(&self, control_socket: &Path) -> Result<()>;
    /// An attach stream to the container's stdio.
    async fn attach(&self, control_socket: &Path, opts: AttachOpts) -> Result<AttachStream>;

    // --- exec and port-forward ---

    /// Runs a command to its end (or `timeout`), output collected with bounds.
    async fn exec_sync(&self, req: &ExecRequest, timeout: Option<Duration>) -> Result<ExecOutput>;
    /// Starts a command with its stdio on pipes (stdin only when `stdin`) or
    /// on a new pseudo-terminal (`req.tty`).
    async fn spawn_exec(&self, req: &ExecRequest, stdin: bool) -> Result<ExecProcess>;
    /// Waits for a spawned exec to end; its exit code. Without a tty what it
    /// left in its process group is ended with it.
    async fn wait_exec(&self, pid: i32) -> ExitCode;
    /// Ends a spawned exec and everything it started, and waits for it.
    async fn kill_exec(&self, pid: i32) -> ExitCode;
    /// Connections to ports in the network namespace `netns` (None: the host's).
    async fn port_forward(&self, netns: Option<&Path>) -> Result<PortForwarder>;

    // --- processes ---

    /// Whether `p` is alive and still the process recorded.
    fn alive(&self, p: ProcId) -> bool;
    /// Sends `sig` to `p` if it is still the process recorded.
    fn signal(&self, p: ProcId, sig: i32) -> bool;
    /// Resolves once `p` has ended (at once when it is not there).
    async fn wait_gone(&self, p: ProcId);
    /// Kills every helper process running on `spec_file` (a monitor and the
    /// container's first process it forked, a sandbox helper and its pod
    /// init), for what a crash left before their pids were recorded; how many.
    async fn kill_helpers(&self, spec_file: &Path) -> usize;
}
