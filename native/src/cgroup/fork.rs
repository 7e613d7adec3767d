//! Putting a new process into its container's cgroups without waiting on the
//! kernel's global cgroup lock.
//!
//! Moving a process into a cgroup by writing its pid (or 0) to `cgroup.procs`
//! takes `cgroup_threadgroup_rwsem` for writing, and the first writer waits
//! out an RCU grace period: 7-10 ms on the development machine, most of a
//! CreateContainer. Two ways avoid it:
//!
//! - cgroup v2: `clone3(CLONE_INTO_CGROUP)` (Linux 5.7) creates the child in
//!   the cgroup, under the same lock taken for reading as any fork;
//! - cgroup v1: a single-threaded process moving itself by writing 0 to a
//!   hierarchy's `tasks` file moves one thread, for which the kernel (6.x)
//!   skips the lock; for a single-threaded process that is the whole process.
//!
//! Where clone3 or CLONE_INTO_CGROUP is missing (an old kernel, a seccomp
//! filter of our own host), the child is forked plainly and moves itself into
//! the v2 cgroup through `cgroup.procs`, as before.

use crate::failure::Failure;
use nix::unistd::{ForkResult, Pid};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// `CLONE_INTO_CGROUP` (include/uapi/linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// A v2 cgroup directory, opened before the caller changes its mount
/// namespace (after that the path may name another directory, or none).
pub struct Target(OwnedFd);

impl Target {
    pub fn open(dir: &Path) -> Result<Target, Failure> {
        std::fs::File::open(dir)
            .map(|f| Target(f.into()))
            .map_err(|e| Failure::internal(format!("open cgroup {}", dir.display()), e))
    }

    /// Moves the calling process into this cgroup through `cgroup.procs`
    /// (the slow way, for a child that `fork_into` could not place).
    pub fn join(&self) -> Result<(), Failure> {
        let procs = nix::fcntl::openat(
            &self.0,
            "cgroup.procs",
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| Failure::internal("open cgroup.procs", e))?;
        let mut f = std::fs::File::from(procs);
        f.write_all(b"0")
            .map_err(|e| Failure::internal("join cgroup", e))
    }
}

/// What `fork_into` returns to each side.
pub enum Forked<'a> {
    Parent(Pid),
    /// `join`: the cgroup the child must still join itself (it could not be
    /// born in it).
    Child {
        join: Option<&'a Target>,
    },
}

/// Forks, the child born in `into` when the kernel can.
///
/// # Safety
/// As `fork`: the caller must be single-threaded, so that the child may run
/// arbitrary code.
pub unsafe fn fork_into(into: Option<&Target>) -> Result<Forked<'_>, Failure> {
    if let Some(t) = into {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: t.0.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: clone3 without CLONE_VM and without a stack is fork: the
        // child runs on its own copy of our memory, returning here with 0.
        // The caller is single-threaded (this function's contract), so no
        // lock is held by a thread the child lacks. glibc's fork would also
        // set the child's cached thread id; glibc (2.34 and later) asks the
        // kernel for it where it matters (raise, abort), and the child only
        // sets itself up and execs.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match r {
            0 => return Ok(Forked::Child { join: None }),
            pid if pid > 0 => return Ok(Forked::Parent(Pid::from_raw(pid as i32))),
            _ => {
                let e = nix::errno::Errno::last();
                // No clone3, or no CLONE_INTO_CGROUP: fork as before. Other
                // errors (EAGAIN, ENOMEM, a cgroup that takes no process)
                // would fail the plain fork or the join the same way.
                if !matches!(
                    e,
                    nix::errno::Errno::ENOSYS
                        | nix::errno::Errno::E2BIG
                        | nix::errno::Errno::EINVAL
                        | nix::errno::Errno::EPERM
                ) {
                    return Err(Failure::internal("clone3 into the cgroup", e));
                }
            }
        }
    }
    // SAFETY: the caller is single-threaded (this function's contract).
    match unsafe { nix::unistd::fork() }.map_err(|e| Failure::internal("fork", e))? {
        ForkResult::Child => Ok(Forked::Child { join: into }),
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
    }
}

/// Moves the calling single-threaded process into a v1 hierarchy's cgroup by
/// its `tasks` file (see the module's note: no wait on the global lock).
pub fn join_v1_thread(dir: &Path) -> Result<(), Failure> {
    super::group::write_file(&dir.join("tasks"), "0")
}
