//! Pod sandboxes without a pause image: `sycri __sandbox <spec.json>` makes the
//! pod's namespaces, pins each one on a file (a bind mount of its nsfs inode) so
//! it outlives every process and a server restart, and, when the pod shares a
//! pid namespace, leaves a tiny init (pid 1 of that namespace) that reaps orphans.

use crate::failure::{Failure, FailureKind};
use crate::spec::SandboxSpec;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, sethostname, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// What the sandbox helper prints on stdout, one JSON line.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct SandboxReady {
    /// The pod's init process (pid 1 of its pid namespace), when it has one.
    #[serde(default)]
    pub init_pid: Option<i32>,
    #[serde(default)]
    pub error: Option<Failure>,
}

/// Namespace files pinned for a pod, by name.
pub const NS_NAMES: &[&str] = &["net", "ipc", "uts", "pid"];

/// Bind-mounts `/proc/<pid>/ns/<name>` on `<dir>/<name>`.
pub fn pin_namespace(proc_ns: &Path, dir: &Path, name: &str) -> Result<PathBuf, Failure> {
    let target = dir.join(name);
    fs::File::create(&target)
        .map_err(|e| Failure::internal(format!("create {}", target.display()), e))?;
    mount(
        Some(proc_ns),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| Failure::internal(format!("pin {name} namespace"), e))?;
    Ok(target)
}

/// Undoes [`pin_namespace`] for every namespace file in `dir`; missing ones are fine.
pub fn unpin_all(dir: &Path) -> Result<(), Failure> {
    for name in NS_NAMES {
        let p = dir.join(name);
        if !p.exists() {
            continue;
        }
        match umount2(&p, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(Failure::internal(format!("unpin {}", p.display()), e)),
        }
        let _ = fs::remove_file(&p);
    }
    Ok(())
}

/// Brings up the loopback interface of the current network namespace.
pub fn loopback_up() -> Result<(), Failure> {
    // SAFETY: plain socket(2) call; the fd is wrapped in an OwnedFd right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Failure::internal("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which
    // lives on our stack for the duration of the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(Failure::internal(
                "SIOCGIFFLAGS lo",
                std::io::Error::last_os_error(),
            ));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(Failure::internal(
                "SIOCSIFFLAGS lo",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// The file under /proc/sys for sysctl `name`: dots separate the levels, unless
/// the name has a slash, in which case slashes do and dots are part of a level
/// (`net/ipv4/conf/eth0.100/forwarding`). None for a name that is empty, has an
/// empty level or a level that would leave /proc/sys.
pub fn sysctl_file(name: &str) -> Option<PathBuf> {
    let sep = if name.contains('/') { '/' } else { '.' };
    let mut p = PathBuf::from("/proc/sys");
    for level in name.split(sep) {
        if level.is_empty() || level == "." || level == ".." || level.contains('\0') {
            return None;
        }
        p.push(level);
    }
    (p != Path::new("/proc/sys")).then_some(p)
}

/// Writes each sysctl under /proc/sys. The values are seen in the namespaces of
/// this process (net and ipc sysctls follow the writer's namespaces).
pub fn apply_sysctls(sysctls: &std::collections::BTreeMap<String, String>) -> Result<(), Failure> {
    for (name, value) in sysctls {
        let path = sysctl_file(name)
            .ok_or_else(|| Failure::invalid(format!("invalid sysctl name {name:?}")))?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| {
                let kind = match e.kind() {
                    std::io::ErrorKind::NotFound => FailureKind::InvalidArgument,
                    std::io::ErrorKind::PermissionDenied => FailureKind::InvalidArgument,
                    _ => FailureKind::Internal,
                };
                Failure::new(kind, format!("sysctl {name}: {e}"))
            })?;
        f.write_all(value.as_bytes()).map_err(|e| {
            let kind = match e.raw_os_error() {
                Some(libc::EINVAL) | Some(libc::EPERM) | Some(libc::EACCES) => {
                    FailureKind::InvalidArgument
                }
                _ => FailureKind::Internal,
            };
            Failure::new(kind, format!("sysctl {name}={value:?}: {e}"))
        })?;
    }
    Ok(())
}

/// Enters the pod's pinned net and ipc namespaces and applies its sysctls.
fn apply_only(spec: &SandboxSpec) -> Result<(), Failure> {
    for (share, flag, name) in [
        (spec.share_net, CloneFlags::CLONE_NEWNET, "net"),
        (spec.share_ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
    ] {
        if !share {
            continue;
        }
        let p = spec.ns_dir.join(name);
        let f = fs::File::open(&p).map_err(|e| {
            Failure::not_found(format!("pod {name} namespace {}: {e}", p.display()))
        })?;
        setns(&f, flag).map_err(|e| Failure::internal(format!("enter pod {name} namespace"), e))?;
    }
    apply_sysctls(&spec.sysctls)
}

fn setup(spec: &SandboxSpec) -> Result<Option<i32>, Failure> {
    fs::create_dir_all(&spec.ns_dir)
        .map_err(|e| Failure::internal(format!("create {}", spec.ns_dir.display()), e))?;
    let mut flags = CloneFlags::empty();
    let mut pins = Vec::new();
    for (share, flag, name) in [
        (spec.share_net, CloneFlags::CLONE_NEWNET, "net"),
        (spec.share_ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
        (spec.share_uts, CloneFlags::CLONE_NEWUTS, "uts"),
    ] {
        if share {
            flags |= flag;
            pins.push(name);
        }
    }
    unshare(flags).map_err(|e| Failure::internal("unshare", e))?;
    if spec.share_uts && !spec.hostname.is_empty() {
        sethostname(&spec.hostname).map_err(|e| Failure::internal("sethostname", e))?;
    }
    if spec.share_net {
        loopback_up()?;
    }
    apply_sysctls(&spec.sysctls)?;
    for name in pins {
        pin_namespace(&Path::new("/proc/self/ns").join(name), &spec.ns_dir, name)?;
    }
    if !spec.share_pid {
        return Ok(None);
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Failure::internal("unshare pid", e))?;
    // SAFETY: this helper is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| Failure::internal("fork", e))? {
        ForkResult::Child => pod_init(),
        ForkResult::Parent { child } => {
            pin_namespace(
                &PathBuf::from(format!("/proc/{child}/ns/pid")),
                &spec.ns_dir,
                "pid",
            )
            .inspect_err(|_| {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            })?;
            Ok(Some(child.as_raw()))
        }
    }
}

/// pid 1 of a pod's pid namespace: reaps orphans, ends on SIGTERM/SIGINT.
fn pod_init() -> ! {
    let _ = nix::unistd::setsid();
    crate::util::redirect_to_devnull(&[0, 1, 2]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"sycri-pod-init".as_ptr(), 0, 0, 0) };
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    let _ = set.thread_block();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
            Ok(_) => std::process::exit(0),
            Err(_) => {}
        }
    }
}

/// Entry point of `sycri __sandbox <spec.json>`.
pub fn main(spec_path: &Path) -> i32 {
    let result = fs::read(spec_path)
        .map_err(|e| Failure::internal("read sandbox spec", e))
        .and_then(|b| {
            serde_json::from_slice::<SandboxSpec>(&b)
                .map_err(|e| Failure::internal("parse sandbox spec", e))
        })
        .and_then(|spec| {
            if spec.apply_only {
                return apply_only(&spec).map(|()| None);
            }
            setup(&spec).inspect_err(|_| {
                let _ = unpin_all(&spec.ns_dir);
            })
        });
    let (ready, code) = match result {
        Ok(init_pid) => (
            SandboxReady {
                init_pid,
                error: None,
            },
            0,
        ),
        Err(f) => (
            SandboxReady {
                init_pid: None,
                error: Some(f),
            },
            1,
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &ready);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_sys() {
        assert_eq!(
            sysctl_file("net.ipv4.ip_forward"),
            Some(PathBuf::from("/proc/sys/net/ipv4/ip_forward"))
        );
        assert_eq!(
            sysctl_file("net/ipv4/conf/eth0.100/forwarding"),
            Some(PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/forwarding"))
        );
        for bad in ["", ".", "net..x", "net/../../etc/passwd", "net.", "/net"] {
            assert_eq!(sysctl_file(bad), None, "{bad:?}");
        }
    }
}
