//! Process handles that cannot be confused with a later process: a pidfd
//! names the process it was opened on, not its number, so a signal sent
//! through it never reaches a process that reused the number. Opening one on
//! a recorded pid is checked against the recorded start time.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The start time of process `pid` (field 22 of /proc/pid/stat, clock ticks
/// after boot), which tells it from a later process with the same pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

pub struct PidFd {
    pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    /// A handle on the process that has number `pid` now.
    /// Whether the kernel has pidfds (pidfd_open: Linux 5.3).
    pub fn supported() -> bool {
        static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SUPPORTED.get_or_init(|| PidFd::open(std::process::id() as i32).is_some())
    }

    pub fn open(pid: i32) -> Option<PidFd> {
        if pid <= 0 {
            return None;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the syscall returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Some(PidFd { pid, fd })
    }

    /// A handle on `pid` if it is still the process that started at `start`
    /// (checked after the handle pins it; None for `start` checks nothing).
    pub fn open_checked(pid: i32, start: Option<u64>) -> Option<PidFd> {
        let p = PidFd::open(pid)?;
        match start {
            Some(want) if start_time(pid) != Some(want) => None,
            _ => Some(p),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig`; false when the process is gone.
    pub fn signal(&self, sig: i32) -> bool {
        // SAFETY: pidfd_send_signal with our descriptor, a signal number, no
        // siginfo (NULL) and no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    /// Whether the process has ended (a pidfd is readable from then on).
    pub fn exited(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd of ours with a zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r > 0 && (p.revents & libc::POLLIN) != 0
    }

    /// The descriptor, to wait on (readable once the process has ended).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_names_one_process() {
        let me = std::process::id() as i32;
        let start = start_time(me);
        assert!(start.is_some());
        let p = PidFd::open_checked(me, start).expect("pidfd on ourselves");
        assert!(!p.exited());
        assert!(p.signal(0));
        // Same number, another start time: not the process recorded.
        assert!(PidFd::open_checked(me, start.map(|s| s + 1)).is_none());
        assert!(PidFd::open(-1).is_none());
    }

    #[test]
    fn an_ended_process_is_seen_ended_and_not_signalled() {
        let mut child = std::process::Command::new("/bin/true")
            .spawn()
            .expect("spawn true");
        let p = PidFd::open(child.id() as i32).expect("pidfd");
        let _ = child.wait();
        assert!(p.exited());
        assert!(!p.signal(0), "a reaped process took a signal");
    }
}
