//! What a container can see of sycri's own processes, and how little that is.
//!
//! A container sees, in its pid namespace, processes of ours that run the
//! engine binary before they exec anything of the container's: its own first
//! process while it waits for StartContainer, the child of an `__exec` helper
//! until it execs the command, and, in a pod whose containers share a pid
//! namespace, the pod's init (for the pod's whole life) and every sibling's
//! first process. Through /proc/<pid>/exe, /fd/*, /root and /cwd of such a
//! process a container could reach host files: the engine binary, a log
//! file, the host's root (CVE-2019-5736 and its kind).
//!
//! Every helper that forks a process into a container's pid namespace first
//! makes itself non-dumpable ([`not_dumpable`]), so the child is non-dumpable
//! from its first instant; the kernel then refuses those /proc links (and
//! ptrace) to anyone without CAP_SYS_PTRACE. execve of the container's command
//! makes the process dumpable again, as any other process: by then its exe is
//! the container's own file and its descriptors are the container's. The child
//! also drops, right after fork, every descriptor but the ones the container
//! is given and its set-up pipes ([`close_fds_except`]), so that nothing of
//! the host is held even where the first defence does not reach.
//!
//! The engine binary itself is not copied (runc execs a sealed memfd copy of
//! itself, or a read-only overlay view of it). Reasons:
//! - Without CAP_SYS_PTRACE, the default, a container cannot follow the exe
//!   link of a non-dumpable process at all.
//! - With CAP_SYS_PTRACE it can, and it can also ptrace a sibling's process
//!   during its set-up: in a pod that shares its pid namespace, granting it
//!   makes the pod one trust domain, whatever the binary is. What must not
//!   follow is a write to the host's binary, and the kernel refuses to open a
//!   file for writing while any process executes it (ETXTBSY). Every container
//!   has a monitor that executes the engine for the container's whole life and
//!   ends the container's cgroup before it exits, so no process of a container
//!   outlives the last execution of the binary that its handle names. (An
//!   upgrade replaces the binary by rename; a handle on the old file then
//!   names a file the host no longer runs.)
//! - A container file that names `/proc/self/exe` as its interpreter runs the
//!   engine inside the container with the container's rights only, and the
//!   binary is then executing: ETXTBSY again.
//! - A memfd copy costs each long-lived monitor a private copy of the whole
//!   binary in memory, where a monitor should map a few hundred kilobytes of
//!   shared code; runc's init lives for milliseconds, our monitors for the
//!   container's life.
//!
//! The pod's init needs more: it lives as long as the pod, so it leaves the
//! host's mount namespace for an empty read-only root and gives up every
//! capability (see the sandbox helper).

use crate::failure::Failure;
use std::os::fd::RawFd;

/// Makes the calling process non-dumpable (PR_SET_DUMPABLE 0): its /proc
/// links and memory are closed to processes without CAP_SYS_PTRACE, and so
/// are those of its children until they exec.
pub fn not_dumpable() -> Result<(), Failure> {
    // SAFETY: PR_SET_DUMPABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(Failure::internal(
            "PR_SET_DUMPABLE",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether the calling process is dumpable.
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointer and returns an integer.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// Closes every descriptor of the process except `keep`.
///
/// For a freshly forked, single-threaded child that never returns to the
/// code that owns the descriptors it inherited (it execs or exits): their
/// owners' destructors never run, so nothing closes a number twice.
pub fn close_fds_except(keep: &[RawFd]) -> Result<(), Failure> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from = 0u32;
    for k in keep.into_iter().chain(std::iter::once(u32::MAX)) {
        if k > from {
            close_range(from, k - 1)?;
        }
        from = k.saturating_add(1);
    }
    Ok(())
}

fn close_range(first: u32, last: u32) -> Result<(), Failure> {
    // SAFETY: close_range(2) takes integers only; see close_fds_except for
    // why closing descriptors other code may hold is sound here.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(Failure::internal("close_range", e));
    }
    close_one_by_one(first, last)
}

/// close_range for kernels before Linux 5.9: the descriptors in
/// `first..=last` that are open, one by one. /proc lists them, so a huge
/// descriptor limit costs nothing; without /proc, every number up to the
/// limit.
fn close_one_by_one(first: u32, last: u32) -> Result<(), Failure> {
    let numbers: Vec<u32> = match open_fds() {
        Some(open) => open
            .into_iter()
            .filter_map(|fd| u32::try_from(fd).ok())
            .filter(|fd| (first..=last).contains(fd))
            .collect(),
        None => {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit into our local.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
                return Err(Failure::internal(
                    "getrlimit",
                    std::io::Error::last_os_error(),
                ));
            }
            let top = u32::try_from(lim.rlim_cur.saturating_sub(1)).unwrap_or(u32::MAX);
            (first..=last.min(top)).collect()
        }
    };
    for fd in numbers {
        // SAFETY: as above; EBADF for numbers not in use is expected.
        unsafe { libc::close(fd as RawFd) };
    }
    Ok(())
}

/// The descriptors open in this process, in order, from /proc/self/fd
/// (without the one that lists them); None without /proc.
pub(crate) fn open_fds() -> Option<Vec<RawFd>> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    let mut listed: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    listed.sort_unstable();
    // The directory's own descriptor was among them and is closed now:
    // whatever is listed and still open is what the process holds.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    Some(
        listed
            .into_iter()
            .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// The descriptors below 64 that are open (probed, so that listing them
    /// opens none).
    fn probed_fds() -> Vec<RawFd> {
        // SAFETY: F_GETFD on any number only reads its flags.
        (0..64)
            .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1)
            .collect()
    }

    /// Runs `f` in a forked child and returns what it wrote to the pipe.
    fn in_child(f: impl FnOnce(&mut std::fs::File)) -> String {
        use nix::unistd::{fork, pipe, ForkResult};
        use std::io::Read;
        let (r, w) = pipe().expect("pipe");
        // SAFETY: the child only does file and prctl work and exits with
        // _exit, never returning into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(r);
                let mut w = std::fs::File::from(w);
                f(&mut w);
                // SAFETY: _exit ends the child without running the parent's
                // destructors or atexit handlers.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut out = String::new();
                std::fs::File::from(r)
                    .read_to_string(&mut out)
                    .expect("read");
                let _ = nix::sys::wait::waitpid(child, None);
                out
            }
        }
    }

    #[test]
    fn only_the_kept_descriptors_stay_open() {
        let out = in_child(|w| {
            use std::io::Write;
            let a = std::fs::File::open("/dev/null").expect("open");
            let b = std::fs::File::open("/dev/null").expect("open");
            let c = std::fs::File::open("/dev/null").expect("open");
            let mut kept = vec![1, b.as_raw_fd(), w.as_raw_fd()];
            kept.sort_unstable();
            let r = close_fds_except(&kept);
            let left = probed_fds();
            let _ = write!(w, "{r:?} {}", left == kept);
            // Closed already: their destructors must not run.
            std::mem::forget((a, b, c));
        });
        assert_eq!(out, "Ok(()) true");
    }

    #[test]
    fn without_close_range_only_the_open_descriptors_in_range_are_closed() {
        let out = in_child(|w| {
            use std::io::Write;
            let a = std::fs::File::open("/dev/null").expect("open");
            let b = std::fs::File::open("/dev/null").expect("open");
            let c = std::fs::File::open("/dev/null").expect("open");
            let listed = super::open_fds()
                .map(|v| v.into_iter().filter(|fd| *fd < 64).collect::<Vec<_>>())
                == Some(probed_fds());
            let bn = b.as_raw_fd() as u32;
            let r = close_one_by_one(bn, bn);
            let left = probed_fds();
            let _ = write!(
                w,
                "{listed} {r:?} {} {} {}",
                left.contains(&a.as_raw_fd()),
                left.contains(&b.as_raw_fd()),
                left.contains(&c.as_raw_fd())
            );
            // b is closed already: its destructor must not run.
            std::mem::forget(b);
        });
        assert_eq!(out, "true Ok(()) true false true");
    }

    #[test]
    fn not_dumpable_is_inherited_by_a_child() {
        let out = in_child(|w| {
            use std::io::Write;
            let before = is_dumpable();
            let r = not_dumpable();
            let child = in_child(|w2| {
                let _ = write!(w2, "{}", is_dumpable());
            });
            let _ = write!(w, "{before} {r:?} {} {child}", is_dumpable());
        });
        assert_eq!(out, "true Ok(()) false false");
    }
}
