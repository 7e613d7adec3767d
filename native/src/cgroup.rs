//! One cgroup (v2) per container: every process of the container joins it, so
//! that stopping or removing the container ends all of them (`cgroup.kill`),
//! whatever pid namespace they share. Works on a pure v2 host and on a hybrid
//! one (v2 mounted at e.g. /sys/fs/cgroup/unified) without any controller.

use crate::spec::{Failure, FailureKind};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::Internal, format!("{what}: {e}"))
}

/// Where the cgroup v2 hierarchy is mounted, if it is.
pub fn v2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mounts = crate::mounts::parse_mountinfo(&info);
    // Prefer the canonical place on a pure v2 host.
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup2")
        .min_by_key(|m| m.mount_point.components().count())
        .map(|m| m.mount_point.clone())
}

/// Creates the cgroup directory (and its parents).
pub fn create(path: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(path)
        .map_err(|e| internal(&format!("create cgroup {}", path.display()), e))
}

/// Moves the calling process into the cgroup.
pub fn join(path: &Path) -> Result<(), Failure> {
    let procs = path.join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .and_then(|mut f| f.write_all(b"0"))
        .map_err(|e| internal(&format!("join cgroup {}", path.display()), e))
}

/// Pids in the cgroup.
pub fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup (`cgroup.kill`, or SIGKILL to each pid on
/// kernels before 5.14). A missing cgroup is fine.
pub fn kill(path: &Path) -> Result<(), Failure> {
    if !path.exists() {
        return Ok(());
    }
    let via_file = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if via_file.is_err() {
        for pid in pids(path) {
            // SAFETY: kill(2) with integer arguments only.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    Ok(())
}

/// Kills what is left, waits for the cgroup to empty and removes it.
pub fn remove(path: &Path) -> Result<(), Failure> {
    if !path.exists() {
        return Ok(());
    }
    kill(path)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(internal(&format!("remove cgroup {}", path.display()), e));
                }
                // Busy until the killed processes are gone.
                std::thread::sleep(Duration::from_millis(5));
                kill(path)?;
            }
        }
    }
}
