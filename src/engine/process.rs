//! Processes: the server's children (reaped by one [`Reaper`]) and handles on
//! processes it did not start or no longer parents (monitors and pod inits
//! found again after a restart), which are reached through pidfds so that a
//! signal never lands on a process that merely reuses a recorded pid.
//!
//! The server is a child subreaper: monitors, pod inits and helpers' orphans
//! come back to it. One task reaps every child. Children started through
//! [`Reaper::spawn`] may ask for their whole process group to be killed when
//! they exit: that happens while the exited leader is still an unreaped
//! zombie, so its pid (the group's id) cannot have been given to anyone else.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A process as recorded: its pid and its start time (field 22 of
/// /proc/pid/stat), which tells it from a later process with the same pid.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    pub start: Option<u64>,
}

impl ProcId {
    /// The process `pid` as it is now (its start time read from /proc).
    pub fn of(pid: i32) -> ProcId {
        ProcId {
            pid,
            start: start_time(pid),
        }
    }
}

pub use sycri_native::pidfd::start_time;

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// A pidfd on one recorded process (`sycri_native::pidfd`): it names that
/// process and no other, whatever happens to its pid number later.
pub struct PidFd {
    id: ProcId,
    fd: sycri_native::pidfd::PidFd,
}

impl PidFd {
    /// A handle on `id`, if that very process still exists (a zombie counts:
    /// it has ended but holds its pid).
    pub fn open(id: ProcId) -> Option<PidFd> {
        let fd = sycri_native::pidfd::PidFd::open_checked(id.pid, id.start)?;
        Some(PidFd { id, fd })
    }

    pub fn id(&self) -> ProcId {
        self.id
    }

    /// Sends `sig`; false when the process is gone.
    pub fn signal(&self, sig: i32) -> bool {
        self.fd.signal(sig)
    }

    /// Whether the process has ended.
    pub fn exited(&self) -> bool {
        self.fd.exited()
    }

    /// Resolves once the process has ended.
    pub async fn wait(self) {
        // SAFETY: the AsyncFd owns the pidfd for its whole life; nothing
        // else closes or replaces the descriptor.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                self.fd.into_fd(),
                tokio::io::Interest::READABLE,
            )
        };
        match registered {
            Ok(afd) => {
                let _ = afd.readable().await;
            }
            Err(e) => {
                // Not pollable (cannot happen on Linux): poll /proc.
                tracing::debug!(error = %e.into_parts().1, "pidfd not pollable; polling");
                while !is_zombie(self.id.pid) && start_time(self.id.pid) == self.id.start {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// A process's arguments (/proc/pid/cmdline), empty when it is gone.
pub fn cmdline(pid: i32) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `args` run one of the engine's helpers on `spec_file`
/// (`<engine> __monitor <spec_file>`, `__sandbox`, `__exec`).
pub fn runs_helper_on(args: &[Vec<u8>], spec_file: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let helper = |a: &[u8]| {
        [
            sycri_native::MONITOR_ARG,
            sycri_native::SANDBOX_ARG,
            sycri_native::EXEC_ARG,
        ]
        .iter()
        .any(|m| m.as_bytes() == a)
    };
    matches!(args, [_, mode, spec, ..] if helper(mode) && spec.as_slice() == spec_file.as_os_str().as_bytes())
}

/// The processes running a helper on `spec_file`.
pub fn helpers_on(spec_file: &std::path::Path) -> Vec<ProcId> {
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if runs_helper_on(&cmdline(pid), spec_file) {
            found.push(ProcId::of(pid));
        }
    }
    found
}

/// Whether `id` is alive and still the process it was.
pub fn alive(id: ProcId) -> bool {
    PidFd::open(id).is_some_and(|p| !p.exited() && !is_zombie(id.pid))
}

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

/// Exit of a child: the code, or 128 + signal.
pub type ExitCode = i32;

/// What to do with a child's process group when the child exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Leave it (the child does not lead a group of its own, or what it left
    /// behind must live on: a monitor's container).
    Keep,
    /// SIGKILL the group the child leads (started with `process_group(0)`):
    /// nothing it started may outlive it or hold its pipes.
    KillOnExit,
}

struct Tracked {
    group: Group,
    /// Nobody will ask for the exit: drop it when it comes.
    forgotten: bool,
    exit: Option<ExitCode>,
    waiter: Option<oneshot::Sender<ExitCode>>,
}

/// Reaps every child of the server and hands exit codes to whoever waits.
#[derive(Clone, Default)]
pub struct Reaper {
    children: Arc<Mutex<HashMap<i32, Tracked>>>,
}

impl Reaper {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Tracked>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes this process a child subreaper and starts the reaping task.
    pub fn start() -> std::io::Result<Reaper> {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer and touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let reaper = Reaper::default();
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
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

    /// Starts `cmd` and tracks the child. The child is reaped here, never
    /// through the returned `Child` (drop it after taking its pipes).
    pub fn spawn(&self, cmd: &mut Command, group: Group) -> std::io::Result<Child> {
        // Held across the spawn so that the reaper cannot reap the child
        // before it is known (and skip its group kill).
        let mut children = self.lock();
        let child = cmd.spawn()?;
        children.insert(
            child.id() as i32,
            Tracked {
                group,
                forgotten: false,
                exit: None,
                waiter: None,
            },
        );
        Ok(child)
    }

    /// Reaps every child that has exited.
    fn reap_all(&self) {
        loop {
            // SAFETY: siginfo_t is plain data; zeroed is its "no child" value.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // Look without reaping: the group of an exited leader is killed
            // while the leader still holds its pid.
            // SAFETY: waitid writes into our siginfo_t.
            let r = unsafe {
                libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: si_pid is valid for the SIGCHLD siginfo waitid fills.
            let pid = unsafe { info.si_pid() };
            if r != 0 || pid == 0 {
                return;
            }
            let mut children = self.lock();
            if let Some(t) = children.get(&pid) {
                if t.group == Group::KillOnExit {
                    // SAFETY: kill(2) with integers; pid > 0 so -pid names
                    // the group this unreaped child leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
            }
            let mut status = 0;
            // SAFETY: waitpid on a child we know has exited; status into a local.
            let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if got != pid {
                continue;
            }
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status)
            } else {
                libc::WEXITSTATUS(status)
            };
            tracing::trace!(pid, code, "reaped child");
            match children.get_mut(&pid) {
                Some(t) if t.forgotten => {
                    children.remove(&pid);
                }
                Some(t) => match t.waiter.take() {
                    Some(tx) => {
                        children.remove(&pid);
                        let _ = tx.send(code);
                    }
                    None => t.exit = Some(code),
                },
                // An orphan that came to us (a helper's child): nobody waits.
                None => {}
            }
        }
    }

    /// Waits for child `pid` (started with [`Reaper::spawn`]) to exit.
    pub async fn wait(&self, pid: i32) -> ExitCode {
        let rx = {
            let mut children = self.lock();
            let Some(t) = children.get_mut(&pid) else {
                return -1;
            };
            if let Some(code) = t.exit {
                children.remove(&pid);
                return code;
            }
            let (tx, rx) = oneshot::channel();
            t.waiter = Some(tx);
            rx
        };
        // A SIGCHLD may have come before we registered.
        self.reap_all();
        rx.await.unwrap_or(-1)
    }

    /// Sends `sig` to child `pid`, or to the group it leads, if the child has
    /// not been reaped (so the number is still its own). False otherwise.
    pub fn signal(&self, pid: i32, sig: i32, group: bool) -> bool {
        let children = self.lock();
        match children.get(&pid) {
            Some(t) if t.exit.is_none() && pid > 0 => {
                let target = if group { -pid } else { pid };
                // SAFETY: kill(2) with integers; the child is unreaped (the
                // reaper takes this lock to reap), so `pid` is still ours.
                unsafe { libc::kill(target, sig) == 0 }
            }
            _ => false,
        }
    }

    /// Nobody will wait for `pid` (a monitor that outlives us): its exit is
    /// dropped when it comes.
    pub fn forget(&self, pid: i32) {
        let mut children = self.lock();
        match children.get_mut(&pid) {
            Some(t) if t.exit.is_some() => {
                children.remove(&pid);
            }
            Some(t) => t.forgotten = true,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcId::of(std::process::id() as i32);
        assert!(me.start.is_some());
        assert!(alive(me));
        let p = PidFd::open(me).expect("pidfd on ourselves");
        assert!(!p.exited());
        // Same pid, another start time: not the process recorded.
        let other = ProcId {
            pid: me.pid,
            start: me.start.map(|s| s + 1),
        };
        assert!(PidFd::open(other).is_none());
        assert!(!alive(other));
    }

    #[test]
    fn helpers_are_known_by_their_spec_file() {
        let a = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        let spec = std::path::Path::new("/var/lib/s/state/containers/c1/spec.json");
        assert!(runs_helper_on(
            &a(&[
                "/usr/local/bin/sycri-engine",
                "__monitor",
                "/var/lib/s/state/containers/c1/spec.json"
            ]),
            spec
        ));
        assert!(runs_helper_on(
            &a(&[
                "sycri",
                "__sandbox",
                "/var/lib/s/state/containers/c1/spec.json"
            ]),
            spec
        ));
        assert!(!runs_helper_on(
            &a(&[
                "sycri-engine",
                "__monitor",
                "/var/lib/s/state/containers/c2/spec.json"
            ]),
            spec
        ));
        assert!(!runs_helper_on(
            &a(&["cat", "/var/lib/s/state/containers/c1/spec.json"]),
            spec
        ));
        assert!(!runs_helper_on(&a(&["sycri-engine", "__monitor"]), spec));
        // Our own test process runs no helper.
        assert!(!runs_helper_on(&cmdline(std::process::id() as i32), spec));
        assert!(helpers_on(spec).is_empty());
    }

    #[test]
    fn bounded_reads_keep_the_start() {
        let data = vec![7u8; 100_000];
        let kept = read_bounded(&data[..], 10);
        assert_eq!(kept, vec![7u8; 10]);
    }
}
