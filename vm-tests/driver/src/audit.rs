//! What the guest looks like from the outside of sycri: cgroup files, live
//! processes, mounts, loop devices and network devices, and the check that
//! nothing of a removed pod or container is left.

use crate::fail::{Fail, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where sycri keeps images and state, and its volatile directory (the
/// defaults, which the guest's server runs with).
pub const STORAGE_DIR: &str = "/var/lib/singularity";
pub const RUN_DIR: &str = "/var/run/singularity";

/// The cgroup v2 mount (the guest has no v1 hierarchy at all).
pub fn cgroup_root() -> PathBuf {
    sycri_native::cgroup::layout()
        .v2
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// A file's content, trimmed ("" when it cannot be read).
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
pub fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Pids in a cgroup and all its descendants.
pub fn procs_below(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                v.extend(procs_below(&e.path()));
            }
        }
    }
    v
}

pub use sycri_native::testing::pid_alive;

/// Every live process: (pid, command line).
pub fn processes() -> Vec<(i32, String)> {
    sycri_native::testing::processes()
        .into_iter()
        .map(|(pid, args)| (pid, args.join(" ")))
        .collect()
}

/// Live processes running the helper binary (monitors, pod sandboxes,
/// exec and port-forward helpers).
pub fn helper_processes() -> Vec<(i32, String)> {
    processes()
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().contains("sycri-engine"))
        })
        .collect()
}

/// `dir` as given and as the kernel names it: the guest's /var/run is a
/// link to /run, and mountinfo has the real paths.
fn both_names(dir: &str) -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from(dir)];
    v.extend(std::fs::canonicalize(dir).ok());
    v
}

/// Both names of both of sycri's directories.
fn sycri_dirs() -> Vec<PathBuf> {
    [STORAGE_DIR, RUN_DIR]
        .iter()
        .flat_map(|d| both_names(d))
        .collect()
}

/// Mount points under sycri's directories.
pub fn sycri_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dirs = sycri_dirs();
    sycri_native::mounts::parse_mountinfo(&info)
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect()
}

/// The spare network namespace a running server keeps for its next pod
/// (`spare_netns`, default 1): a pinned file under `<run_dir>/spare-net`.
pub fn is_spare(mount: &Path) -> bool {
    let dir = std::fs::canonicalize(RUN_DIR)
        .unwrap_or_else(|_| PathBuf::from(RUN_DIR))
        .join("spare-net");
    mount.starts_with(dir) && mount.ends_with("ns/net")
}

/// Mounts under sycri's directories but the one spare network namespace
/// the server may keep (all of them when there are more spares than that).
pub fn sycri_mounts_but_the_spare() -> Vec<PathBuf> {
    let all = sycri_mounts();
    let spares = all.iter().filter(|m| is_spare(m)).count();
    all.into_iter()
        .filter(|m| spares > 1 || !is_spare(m))
        .collect()
}

/// Loop devices attached to files under sycri's directories.
pub fn sycri_loops() -> Vec<(u32, PathBuf)> {
    let dirs = sycri_dirs();
    sycri_native::loopdev::attached_devices()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, p)| dirs.iter().any(|d| p.starts_with(d)))
        .collect()
}

/// The host-side interfaces (veths) of the spares the server attached to the
/// network ahead of a pod (`spare_netns_attach`), as their ADD results name
/// them: the server's until a pod takes the spare or the server stops. Their
/// records are `<state_dir>/spare-net/*/network.json`.
pub fn spare_host_interfaces() -> Vec<String> {
    let dir = PathBuf::from(STORAGE_DIR).join("state").join("spare-net");
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("network.json")).ok())
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .flat_map(|v| {
            v["result"]["interfaces"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|i| i.get("sandbox").is_none())
        .filter_map(|i| i["name"].as_str().map(String::from))
        .collect()
}

/// Network devices of the guest's own namespace whose name starts with `veth`.
pub fn veths() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("veth"))
                .collect()
        })
        .unwrap_or_default()
}

/// What must be gone once pods and containers are removed.
#[derive(Default)]
pub struct Gone {
    /// Container and pod processes.
    pub pids: Vec<i32>,
    /// Container cgroups.
    pub cgroups: Vec<PathBuf>,
    /// Whether an image is still pulled (its shared mount and loop device may
    /// stay); false: no mount or loop device of sycri's may be left at all.
    pub image_kept: bool,
}

/// Waits (a while: TCG) until nothing of what `gone` names is left: no
/// process, cgroup, helper, network device, stray mount or loop device.
pub async fn assert_clean(gone: &Gone) -> Result<()> {
    let limit = Duration::from_secs(30);
    let deadline = Instant::now() + limit;
    loop {
        let left = leftovers(gone);
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Fail(format!(
                "left behind after removal ({limit:?}): {}",
                left.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn leftovers(gone: &Gone) -> Vec<String> {
    let mut left = Vec::new();
    for p in gone.pids.iter().filter(|p| pid_alive(**p)) {
        left.push(format!("process {p}"));
    }
    for c in gone.cgroups.iter().filter(|c| c.exists()) {
        left.push(format!("cgroup {}", c.display()));
    }
    for (pid, cmd) in helper_processes() {
        left.push(format!("helper {pid} {cmd}"));
    }
    let root = cgroup_root();
    for group in ["kubepods", "sycri"] {
        for pid in procs_below(&root.join(group)) {
            left.push(format!("process {pid} in {group}/"));
        }
    }
    // The veths of spares attached ahead are the server's, not a pod's.
    let spares = spare_host_interfaces();
    for v in veths().into_iter().filter(|v| !spares.contains(v)) {
        left.push(format!("network device {v}"));
    }
    let images: Vec<PathBuf> = both_names(RUN_DIR)
        .iter()
        .map(|d| d.join("images"))
        .collect();
    for m in sycri_mounts_but_the_spare() {
        if !(gone.image_kept && images.iter().any(|i| m.starts_with(i))) {
            left.push(format!("mount {}", m.display()));
        }
    }
    let stores: Vec<PathBuf> = both_names(STORAGE_DIR)
        .iter()
        .map(|d| d.join("images"))
        .collect();
    for (n, file) in sycri_loops() {
        if !(gone.image_kept && stores.iter().any(|st| file.starts_with(st))) {
            left.push(format!("loop{n} on {}", file.display()));
        }
    }
    left
}

/// Removes a pod's cgroup parent, as the kubelet does once the pod is gone;
/// fails when sycri left anything in it (a non-empty cgroup cannot go).
pub fn remove_pod_cgroup(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir(dir).map_err(|e| {
        let children: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Fail(format!(
            "pod cgroup {} cannot be removed ({e}): child cgroups {children:?}, processes {:?}",
            dir.display(),
            procs_below(dir)
        ))
    })
}
