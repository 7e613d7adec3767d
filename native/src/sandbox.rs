//! Pod sandboxes without a pause image: `sycri __sandbox <spec.json>` makes the
//! pod's namespaces, pins each one on a file (a bind mount of its nsfs inode) so
//! it outlives every process and a server restart, and, when the pod shares a
//! pid namespace, leaves a tiny init (pid 1 of that namespace) that reaps orphans.

use crate::failure::{Failure, FailureKind};
use crate::kernel::{Kernel, Linux};
use crate::spec::SandboxSpec;
use caps::CapSet;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, sethostname, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
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
    if let (true, Some(spare)) = (spec.share_net, &spec.net_from) {
        // The server's own file: its absence is the server's fault, not the pod's.
        let f = fs::File::open(spare).map_err(|e| {
            Failure::internal(
                format!("open spare network namespace {}", spare.display()),
                e,
            )
        })?;
        setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| Failure::internal("enter the spare network namespace", e))?;
        flags.remove(CloneFlags::CLONE_NEWNET);
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
    // The init says on this pipe whether it could shut itself in.
    let (said_r, said_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::internal("pipe", e))?;
    // SAFETY: this helper is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.map_err(|e| Failure::internal("fork", e))? {
        ForkResult::Child => pod_init(&spec.ns_dir, said_w),
        ForkResult::Parent { child } => {
            drop(said_w);
            let mut said = Vec::new();
            let _ = fs::File::from(said_r).read_to_end(&mut said);
            if said != [INIT_READY] {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                let why = String::from_utf8_lossy(&said);
                return Err(Failure::internal(
                    "start the pod's init",
                    if why.is_empty() { "it ended" } else { &why },
                ));
            }
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

/// What the pod's init writes on its pipe once it is shut in.
const INIT_READY: u8 = 0;

/// pid 1 of a pod's pid namespace: reaps orphans, ends on SIGTERM/SIGINT.
///
/// Every container of the pod sees it for the pod's whole life, so first it
/// keeps nothing a container could reach through its /proc entry (see
/// crate::exposure): no descriptor (but `said` until it has reported), an
/// empty read-only root in a mount namespace of its own instead of the
/// host's, no capability. It is non-dumpable already (the helper is).
fn pod_init(empty: &Path, said: std::os::fd::OwnedFd) -> ! {
    let mut said = fs::File::from(said);
    let shut = crate::exposure::close_fds_except(&[said.as_raw_fd()])
        .and_then(|()| shut_in(&Linux, empty))
        .and_then(|()| drop_all_capabilities());
    if let Err(f) = shut {
        let _ = said.write_all(f.message.as_bytes());
        std::process::exit(1);
    }
    let _ = said.write_all(&[INIT_READY]);
    drop(said);
    let _ = nix::unistd::setsid();
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

/// Leaves the host's mount namespace for one whose only mount is an empty,
/// read-only tmpfs, mounted over `dir` (any directory: the mount is ours
/// alone) and made the root. The host's mounts, copied by unshare, are
/// detached at once, so that this long-lived process holds none of them.
fn shut_in(k: &impl Kernel, dir: &Path) -> Result<(), Failure> {
    k.unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| Failure::internal("unshare mount namespace", e))?;
    // Nothing we do here may reach the host, nor anything of it reach us.
    k.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| Failure::internal("make the mounts private", e))?;
    k.mount(
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0555"),
    )
    .map_err(|e| Failure::internal("mount an empty root", e))?;
    k.chdir(dir)
        .map_err(|e| Failure::internal("chdir to the empty root", e))?;
    k.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| Failure::internal("pivot_root", e))?;
    // The old root is stacked on the new one at ".".
    k.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| Failure::internal("detach the host's root", e))?;
    k.chdir(Path::new("/"))
        .map_err(|e| Failure::internal("chdir /", e))
}

/// Gives up every capability, for good: bounding set, then no_new_privs,
/// then the effective, permitted and inheritable sets (ambient follows).
fn drop_all_capabilities() -> Result<(), Failure> {
    for cap in caps::all() {
        // Capabilities this kernel does not know are absent anyway.
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Failure::internal(
            "PR_SET_NO_NEW_PRIVS",
            std::io::Error::last_os_error(),
        ));
    }
    let none = caps::CapsHashSet::new();
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::set(None, set, &none).map_err(|e| Failure::internal("capset", e))?;
    }
    Ok(())
}

/// Entry point of `sycri __sandbox <spec.json>`.
pub fn main(spec_path: &Path) -> i32 {
    // Before anything is forked: the pod's init is non-dumpable from its
    // first instant (see crate::exposure).
    let result = crate::exposure::not_dumpable()
        .and_then(|()| fs::read(spec_path).map_err(|e| Failure::internal("read sandbox spec", e)))
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

#[cfg(test)]
mod init_tests {
    use super::*;
    use crate::kernel::recording::{Call, Recording};
    use nix::errno::Errno;

    #[test]
    fn the_pod_init_is_shut_in_an_empty_root_of_its_own() {
        let k = Recording::new();
        let dir = Path::new("/run/sycri/pods/p1/ns");
        shut_in(&k, dir).expect("shut in");
        let here = Path::new(".");
        assert_eq!(
            k.calls(),
            vec![
                Call::Unshare(CloneFlags::CLONE_NEWNS),
                Call::mount(
                    None,
                    Path::new("/"),
                    None,
                    MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                    None
                ),
                Call::mount(
                    Some(Path::new("tmpfs")),
                    dir,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some("size=4k,mode=0555"),
                ),
                Call::Chdir(dir.into()),
                Call::PivotRoot {
                    new_root: here.into(),
                    put_old: here.into(),
                },
                Call::Umount2 {
                    target: here.into(),
                    flags: MntFlags::MNT_DETACH,
                },
                Call::Chdir("/".into()),
            ]
        );
    }

    #[test]
    fn a_failed_pivot_leaves_the_host_root_attached_and_says_so() {
        let k = Recording::new();
        k.fail(|c| matches!(c, Call::PivotRoot { .. }), Errno::EINVAL);
        let e = shut_in(&k, Path::new("/x")).expect_err("fails");
        assert_eq!(e.message, format!("pivot_root: {}", Errno::EINVAL));
        assert!(matches!(k.calls().last(), Some(Call::PivotRoot { .. })));
    }

    #[test]
    fn the_pod_init_keeps_no_capability() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            crate::testing::skip("the_pod_init_keeps_no_capability", "needs root");
            return;
        }
        let (r, w) = nix::unistd::pipe().expect("pipe");
        // SAFETY: the child drops capabilities, reads a /proc file and
        // leaves with _exit, never returning into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                drop(r);
                let mut w = fs::File::from(w);
                let r = drop_all_capabilities();
                let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
                let _ = write!(w, "{r:?}\n{status}");
                // SAFETY: ends the child without running the harness's code.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => {
                drop(w);
                let mut out = String::new();
                fs::File::from(r).read_to_string(&mut out).expect("read");
                let _ = waitpid(child, None);
                assert!(out.starts_with("Ok(())\n"), "{out}");
                for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                    let line = out
                        .lines()
                        .find(|l| l.starts_with(&format!("{field}:")))
                        .unwrap_or_else(|| panic!("no {field} in {out}"));
                    assert!(line.ends_with("0000000000000000"), "{line}");
                }
                assert!(out.lines().any(|l| l == "NoNewPrivs:\t1"), "{out}");
            }
        }
    }
}
