//! What the server hands to the engine: a complete, resolved description of one
//! container or one pod sandbox. The server writes it as JSON into the container's
//! directory; the monitor (a re-executed, single-threaded sycri) reads it back.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How a container or pod gets one kind of namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NsMode {
    /// The host's namespace (NamespaceMode NODE).
    Host,
    /// A fresh namespace of its own.
    #[default]
    New,
    /// Join the namespace pinned at this path (a bind-mounted nsfs file).
    Join(PathBuf),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Namespaces {
    pub ipc: NsMode,
    pub uts: NsMode,
    pub net: NsMode,
    pub pid: NsMode,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    #[default]
    Private,
    /// Host mounts propagate into the container (rslave).
    Slave,
    /// Both ways (rshared).
    Shared,
}

/// A bind mount from the host into the container.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct BindMount {
    pub source: PathBuf,
    /// Path inside the container; resolved inside the rootfs, never outside it.
    pub destination: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default)]
    pub propagation: Propagation,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ProcessSpec {
    /// argv; args[0] is looked up in the container's PATH when it has no '/'.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Capability names as in capabilities(7), e.g. "CAP_CHOWN". Everything else is dropped.
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// The seccomp filter, compiled by the server; installed right before
    /// execve.
    #[serde(default)]
    pub seccomp: Option<crate::seccomp::Filter>,
    /// Written to /proc/self/oom_score_adj before the privileges go; None
    /// keeps what the process inherited.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ContainerSpec {
    pub id: String,
    /// The image's squashfs, already mounted read-only on the host; overlay lowerdir.
    pub image_rootfs: PathBuf,
    /// Persistent per-container directory; holds the overlay's upper/ and work/.
    pub layer_dir: PathBuf,
    /// Empty directory where the container's root is assembled (in its own mount namespace).
    pub rootfs_mountpoint: PathBuf,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub privileged: bool,
    pub hostname: String,
    pub namespaces: Namespaces,
    /// The pod's shared /dev/shm (a tmpfs on the host), if any.
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// Size of a private /dev/shm when `shm` is None, in bytes.
    #[serde(default)]
    pub shm_size: Option<u64>,
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    pub process: ProcessSpec,
    /// CRI log file; None discards output.
    #[serde(default)]
    pub log_path: Option<PathBuf>,
    /// The monitor's control socket.
    pub control_socket: PathBuf,
    /// The container's own cgroup (v2), which every process of it joins.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Its v1 cgroups (for the controllers that v2 lacks on a hybrid host),
    /// which every process of it joins too.
    #[serde(default)]
    pub cgroups_v1: Vec<PathBuf>,
    /// Where the monitor records the exit status.
    pub exit_file: PathBuf,
}

/// What the pod sandbox helper needs.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct SandboxSpec {
    pub id: String,
    pub hostname: String,
    /// Directory that receives the pinned namespace files (net, ipc, uts, pid).
    pub ns_dir: PathBuf,
    pub share_net: bool,
    pub share_ipc: bool,
    pub share_uts: bool,
    pub share_pid: bool,
    /// Namespaced sysctls (`net.ipv4.ip_forward` or `net/ipv4/ip_forward`) to
    /// write under /proc/sys from inside the pod's namespaces. The server has
    /// already checked that each one belongs to a namespace the pod owns.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Make nothing: enter the namespaces already pinned in `ns_dir` (net and
    /// ipc, as `share_net`/`share_ipc` say) and only apply `sysctls`. Used once
    /// the pod's network is set up, so interface sysctls find their interface.
    #[serde(default)]
    pub apply_only: bool,
    /// With `share_net`: enter this pinned network namespace (a spare made
    /// ahead of time, whose CNI ADD may already be running) instead of
    /// making a new one; it is pinned in `ns_dir` like a new one.
    #[serde(default)]
    pub net_from: Option<PathBuf>,
}

/// The exit status the monitor records for a container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub exit_code: i32,
    /// The signal that ended the process, if any (exit_code is then 128 + signal).
    #[serde(default)]
    pub signal: Option<i32>,
    pub finished_at_ns: i64,
    #[serde(default)]
    pub oom_killed: bool,
}
