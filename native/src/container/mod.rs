//! A container's first process: everything between fork() in the monitor and
//! execve() of the user's command. Runs single-threaded in a freshly forked child.

pub mod rootfs;

use crate::failure::{Failure, FailureKind};
use crate::kernel::{Kernel, Linux};
use crate::spec::{ContainerSpec, NsMode};
use caps::{CapSet, Capability, CapsHashSet};
use nix::sched::CloneFlags;
use nix::unistd::{execve, setresgid, setresuid, Gid, Uid};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Failure>;

/// Capabilities a container gets by default (the set containerd and CRI-O grant).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Paths masked from unprivileged containers (as containerd's defaults).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in unprivileged containers (as containerd's defaults).
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn join_ns(k: &impl Kernel, path: &Path, flag: CloneFlags) -> Result<()> {
    let f = File::open(path)
        .map_err(|e| Failure::precondition(format!("open namespace {}: {e}", path.display())))?;
    k.setns(f.as_fd(), flag)
        .map_err(|e| Failure::internal(format!("setns {}", path.display()), e))
}

/// Enters the pod's namespaces and makes the container's own ones. The pid
/// namespace is not handled here: the monitor chose it before forking us.
pub fn enter_namespaces(k: &impl Kernel, spec: &ContainerSpec) -> Result<()> {
    let mut flags = CloneFlags::CLONE_NEWNS;
    for (mode, flag) in [
        (&spec.namespaces.ipc, CloneFlags::CLONE_NEWIPC),
        (&spec.namespaces.uts, CloneFlags::CLONE_NEWUTS),
        (&spec.namespaces.net, CloneFlags::CLONE_NEWNET),
    ] {
        match mode {
            NsMode::Host => {}
            NsMode::New => flags |= flag,
            NsMode::Join(p) => join_ns(k, p, flag)?,
        }
    }
    k.unshare(flags)
        .map_err(|e| Failure::internal("unshare", e))?;
    if spec.namespaces.uts == NsMode::New && !spec.hostname.is_empty() {
        k.sethostname(&spec.hostname)
            .map_err(|e| Failure::internal("sethostname", e))?;
    }
    Ok(())
}

fn parse_caps(names: &[String]) -> Result<CapsHashSet> {
    let mut set = CapsHashSet::new();
    for n in names {
        let upper = n.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap: Capability = full
            .parse()
            .map_err(|_| Failure::invalid(format!("unknown capability {n:?}")))?;
        set.insert(cap);
    }
    Ok(set)
}

/// Switches to the container's user and capability set.
pub fn drop_privileges(spec: &ContainerSpec) -> Result<()> {
    let p = &spec.process;
    let keep = if spec.privileged {
        caps::all()
    } else {
        parse_caps(&p.capabilities)?
    };
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities this kernel does not know are simply absent.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    // SAFETY: PR_SET_KEEPCAPS takes an integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(Failure::internal(
            "PR_SET_KEEPCAPS",
            std::io::Error::last_os_error(),
        ));
    }
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| Failure::internal("setgroups", e))?;
    let gid = Gid::from_raw(p.gid);
    setresgid(gid, gid, gid).map_err(|e| Failure::internal("setresgid", e))?;
    let uid = Uid::from_raw(p.uid);
    setresuid(uid, uid, uid).map_err(|e| Failure::internal("setresuid", e))?;
    let keep_now: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| caps::has_cap(None, CapSet::Bounding, *c).unwrap_or(false))
        .collect();
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::set(None, set, &keep_now).map_err(|e| Failure::internal("capset", e))?;
    }
    if p.no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(Failure::internal(
                "PR_SET_NO_NEW_PRIVS",
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Finds `cmd` in the container's PATH (from its environment) like execvp would.
pub fn find_executable(cmd: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if cmd.is_empty() {
        return Err(Failure::invalid(
            "no command to run: the request and the image give none",
        ));
    }
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(cmd);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Failure::invalid(format!(
        "executable file {cmd:?} not found in $PATH ({path})"
    )))
}

fn cstrings<'a>(it: impl Iterator<Item = &'a [u8]>) -> Result<Vec<CString>> {
    it.map(|b| {
        CString::new(b)
            .map_err(|_| Failure::invalid("argument or environment entry contains a NUL byte"))
    })
    .collect()
}

/// Sets the OOM killer's bias for this process (and what it execs). Lowering
/// it below the inherited value needs CAP_SYS_RESOURCE; without it the
/// inherited value stays, as containerd's restrict_oom_score_adj does.
fn set_oom_score_adj(adj: i32) -> Result<()> {
    if !(-1000..=1000).contains(&adj) {
        return Err(Failure::invalid(format!(
            "oom_score_adj {adj} is outside -1000..1000"
        )));
    }
    match std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EPERM) =>
        {
            Ok(())
        }
        Err(e) => Err(Failure::internal("write oom_score_adj", e)),
    }
}

/// A process ready to exec: everything done but the last step.
pub struct Prepared {
    exe: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    exe_path: PathBuf,
    /// The filter still to install (with no_new_privs it goes on last).
    late_seccomp: Option<crate::seccomp::Filter>,
}

/// Working directory, executable lookup, seccomp (unless it must wait for
/// no_new_privs), user and capabilities: all that can happen before the
/// start signal, so that StartContainer only pays for execve.
pub fn prepare_exec(spec: &ContainerSpec) -> Result<Prepared> {
    let p = &spec.process;
    let cwd = if p.cwd.is_empty() { "/" } else { &p.cwd };
    std::fs::create_dir_all(cwd)
        .map_err(|e| Failure::internal(format!("create working dir {cwd}"), e))?;
    nix::unistd::chdir(cwd).map_err(|e| Failure::internal(format!("chdir {cwd}"), e))?;
    let first = p.args.first().map(String::as_str).unwrap_or("");
    let exe_path = find_executable(first, &p.env)?;
    let argv = cstrings(p.args.iter().map(|s| s.as_bytes()))?;
    let envp = cstrings(p.env.iter().map(|s| s.as_bytes()))?;
    let exe = cstrings(std::iter::once(exe_path.as_os_str().as_bytes()))?
        .pop()
        .ok_or_else(|| Failure::internal("exec", "empty path"))?;
    if let Some(adj) = p.oom_score_adj {
        set_oom_score_adj(adj)?;
    }
    // A filter needs no_new_privs or CAP_SYS_ADMIN to install: without the
    // first, it goes on while we are still root with every capability (and
    // then also judges the privilege drop); with it, as late as possible.
    if let Some(f) = p.seccomp.as_ref().filter(|_| !p.no_new_privileges) {
        crate::seccomp::install(f)?;
    }
    drop_privileges(spec)?;
    Ok(Prepared {
        exe,
        argv,
        envp,
        exe_path,
        late_seccomp: p.seccomp.clone().filter(|_| p.no_new_privileges),
    })
}

/// The last step: the late seccomp filter and execve.
pub fn finish_exec(p: Prepared) -> Result<std::convert::Infallible> {
    if let Some(f) = &p.late_seccomp {
        crate::seccomp::install(f)?;
    }
    match execve(&p.exe, &p.argv, &p.envp) {
        Err(e) => {
            let kind = match e {
                nix::errno::Errno::ENOENT => FailureKind::InvalidArgument,
                nix::errno::Errno::EACCES | nix::errno::Errno::EPERM => {
                    FailureKind::PermissionDenied
                }
                _ => FailureKind::Internal,
            };
            Err(Failure::new(
                kind,
                format!("exec {}: {e}", p.exe_path.display()),
            ))
        }
        Ok(never) => match never {},
    }
}

/// Prepares and execs at once (exec'd processes have no start signal).
pub fn exec(spec: &ContainerSpec) -> Result<std::convert::Infallible> {
    finish_exec(prepare_exec(spec)?)
}

/// Namespaces, then the root file system, then the switch into it: all the
/// kernel state a container's first process sets up before it waits to start.
pub fn set_up(k: &impl Kernel, spec: &ContainerSpec) -> Result<()> {
    enter_namespaces(k, spec)?;
    rootfs::build(k, spec)?;
    rootfs::pivot(k, spec)
}

/// Messages from the container's first process to its monitor, over the sync pipe.
pub fn report(pipe: &mut File, result: &std::result::Result<(), Failure>) {
    let msg = match result {
        Ok(()) => "{\"ready\":true}\n".to_string(),
        Err(f) => {
            let mut s = serde_json::to_string(f).unwrap_or_else(|_| "{}".into());
            s.push('\n');
            s
        }
    };
    let _ = pipe.write_all(msg.as_bytes());
}

/// The whole life of the container's first process after fork: namespaces, rootfs,
/// wait for the start signal, exec. Never returns; exits 127 on failure after
/// reporting it on `sync`.
pub fn run(spec: &ContainerSpec, sync: OwnedFd, start: OwnedFd) -> ! {
    let mut sync = File::from(sync);
    let mut start = File::from(start);
    let setup = set_up(&Linux, spec);
    report(&mut sync, &setup);
    if setup.is_err() {
        std::process::exit(127);
    }
    // Everything but execve now; a failure is reported only at start, as
    // the error of StartContainer (like an exec failure).
    let prepared = prepare_exec(spec);
    // Block until the monitor says go (StartContainer) or goes away.
    let mut go = [0u8; 1];
    match start.read(&mut go) {
        Ok(1) => {}
        _ => std::process::exit(127),
    }
    drop(start);
    let err = match prepared.and_then(finish_exec) {
        Err(f) => f,
        Ok(never) => match never {},
    };
    report(&mut sync, &Err(err));
    std::process::exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::recording::{Call, Recording};
    use nix::errno::Errno;

    fn spec_with(ipc: NsMode, uts: NsMode, net: NsMode, hostname: &str) -> ContainerSpec {
        ContainerSpec {
            hostname: hostname.into(),
            namespaces: crate::spec::Namespaces {
                ipc,
                uts,
                net,
                pid: NsMode::New,
            },
            ..Default::default()
        }
    }

    #[test]
    fn pod_namespaces_are_joined_before_the_own_ones_are_made() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = std::fs::canonicalize(d.path()).expect("canonicalize");
        let (ipc, net) = (base.join("ipc"), base.join("net"));
        for p in [&ipc, &net] {
            std::fs::write(p, b"").expect("write");
        }
        let spec = spec_with(
            NsMode::Join(ipc.clone()),
            NsMode::New,
            NsMode::Join(net.clone()),
            "web-0",
        );
        let k = Recording::new();
        enter_namespaces(&k, &spec).expect("enter");
        assert_eq!(
            k.calls(),
            vec![
                Call::Setns {
                    ns: ipc,
                    nstype: CloneFlags::CLONE_NEWIPC
                },
                Call::Setns {
                    ns: net,
                    nstype: CloneFlags::CLONE_NEWNET
                },
                Call::Unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS),
                Call::Sethostname("web-0".into()),
            ]
        );
    }

    #[test]
    fn host_namespaces_keep_only_the_mount_namespace_new() {
        let spec = spec_with(NsMode::Host, NsMode::Host, NsMode::Host, "ignored");
        let k = Recording::new();
        enter_namespaces(&k, &spec).expect("enter");
        // The host's UTS namespace: its hostname is not ours to set.
        assert_eq!(k.calls(), vec![Call::Unshare(CloneFlags::CLONE_NEWNS)]);
    }

    #[test]
    fn a_missing_pod_namespace_is_a_precondition_and_nothing_is_entered() {
        let spec = spec_with(
            NsMode::Join("/nonexistent/sycri/ipc".into()),
            NsMode::New,
            NsMode::New,
            "",
        );
        let k = Recording::new();
        let e = enter_namespaces(&k, &spec).expect_err("fails");
        assert_eq!(e.kind, FailureKind::FailedPrecondition);
        assert!(
            e.message.contains("/nonexistent/sycri/ipc"),
            "{}",
            e.message
        );
        assert!(k.calls().is_empty());
    }

    #[test]
    fn a_refused_unshare_is_reported_and_no_hostname_is_set() {
        let spec = spec_with(NsMode::New, NsMode::New, NsMode::New, "h");
        let k = Recording::new();
        k.fail(|c| matches!(c, Call::Unshare(_)), Errno::EPERM);
        let e = enter_namespaces(&k, &spec).expect_err("fails");
        assert_eq!(e.message, format!("unshare: {}", Errno::EPERM));
        assert_eq!(k.calls().len(), 1);
    }
}
