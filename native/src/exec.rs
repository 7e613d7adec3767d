//! `sycri __exec <spec.json>`: runs a command inside a running container. The
//! helper joins the container's namespaces (pid last, mount namespace after
//! every /proc path is opened), forks so that the command is inside the pid
//! namespace, takes on the container's user and capabilities, and execs. It
//! exits with the command's status (128 + signal when it was killed).
//!
//! The command's stdio is the helper's: pipes, or (`tty`) the slave side of a
//! pseudo-terminal that the server opened with [`open_pty`]; the command then
//! becomes a session leader with that terminal as its controlling terminal.
//! The command dies with the helper (parent-death signal), so ending the
//! helper ends the command even when it left the helper's process group.
//!
//! `sycri __portforward <netns>` ([`portforward_main`]) connects to ports on a
//! pod's loopback from inside its network namespace, and hands the connected
//! sockets back to the server.

use crate::cgroup::fork::Forked;
use crate::container;
use crate::failure::Failure;
use crate::spec::ContainerSpec;
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ExecSpec {
    /// The container's first process; its namespaces are joined.
    pub pid: i32,
    /// The container as it was created (user, capabilities, environment, cwd).
    pub container: ContainerSpec,
    pub args: Vec<String>,
    #[serde(default)]
    pub tty: bool,
}

/// Exit code used when the helper itself fails before the command runs.
pub const EXEC_FAILED: i32 = 126;

fn join(pid: i32) -> Result<(), Failure> {
    // Open every namespace first: after joining the mount namespace, /proc is
    // the container's.
    let mut fds = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let same = match (
            std::fs::metadata(&theirs),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            (Err(e), _) => {
                return Err(Failure::precondition(format!(
                    "container process {pid} is gone ({e})"
                )))
            }
            _ => false,
        };
        if !same {
            fds.push((
                File::open(&theirs).map_err(|e| Failure::internal(&theirs, e))?,
                flag,
                name,
            ));
        }
    }
    for (f, flag, name) in fds {
        setns(f, flag).map_err(|e| Failure::internal(format!("join {name} namespace"), e))?;
    }
    Ok(())
}

fn run_child(spec: &ExecSpec, parent: i32) -> ! {
    // The command gets our stdio and nothing else the helper was given.
    if let Err(f) = crate::exposure::close_fds_except(&[0, 1, 2]) {
        eprintln!("sycri exec: {f}");
        std::process::exit(EXEC_FAILED);
    }
    // Die with the helper: the server ends a command by ending its helper.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The helper may have died before that: then we were reparented. (Our
    // parent lives outside the container's pid namespace, where getppid says 0.)
    // SAFETY: getppid has no arguments and cannot fail.
    let ppid = unsafe { libc::getppid() };
    if ppid != 0 && ppid != parent {
        std::process::exit(EXEC_FAILED);
    }
    let mut c = spec.container.clone();
    c.process.args = spec.args.clone();
    if spec.tty {
        // A session of its own with the pty (our stdin) as controlling terminal.
        let _ = nix::unistd::setsid();
        // SAFETY: TIOCSCTTY on fd 0 with an integer argument.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        if !c.process.env.iter().any(|e| e.starts_with("TERM=")) {
            c.process.env.push("TERM=xterm".into());
        }
    }
    let err = match container::exec(&c) {
        Err(f) => f,
        Ok(never) => match never {},
    };
    eprintln!("sycri exec: {err}");
    // As shells do: 127 when the command does not exist, 126 when it cannot run.
    let code = if err.message.contains("not found") || err.message.contains("ENOENT") {
        127
    } else {
        EXEC_FAILED
    };
    std::process::exit(code)
}

/// Entry point of `sycri __exec <spec.json>`.
pub fn main(spec_path: &Path) -> i32 {
    // The command's process is in the container's pid namespace from its
    // fork until it execs: non-dumpable by inheritance (see crate::exposure).
    if let Err(f) = crate::exposure::not_dumpable() {
        eprintln!("sycri exec: {f}");
        return EXEC_FAILED;
    }
    let spec: ExecSpec = match std::fs::read(spec_path)
        .map_err(|e| Failure::internal("read exec spec", e))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| Failure::internal("parse exec spec", e))
        }) {
        Ok(s) => s,
        Err(f) => {
            eprintln!("sycri exec: {f}");
            return EXEC_FAILED;
        }
    };
    // The command must run in the container's cgroups: we join the v1 ones
    // (by `tasks`, single-threaded: see crate::cgroup::fork) and the command
    // is born in the v2 one where the kernel can; the v2 directory is opened
    // now, while its path is still the host's.
    let joined = spec
        .container
        .cgroups_v1
        .iter()
        .try_for_each(|cg| crate::cgroup::fork::join_v1_thread(cg))
        .and_then(|()| {
            spec.container
                .cgroup
                .as_deref()
                .map(crate::cgroup::fork::Target::open)
                .transpose()
        });
    let v2 = match joined {
        Ok(v2) => v2,
        Err(f) => {
            eprintln!("sycri exec: {f}");
            return EXEC_FAILED;
        }
    };
    if let Err(f) = join(spec.pid) {
        eprintln!("sycri exec: {f}");
        return EXEC_FAILED;
    }
    let me = std::process::id() as i32;
    // SAFETY: the helper is single-threaded; the child may run arbitrary code.
    match unsafe { crate::cgroup::fork::fork_into(v2.as_ref()) } {
        Err(e) => {
            eprintln!("sycri exec: {e}");
            EXEC_FAILED
        }
        Ok(Forked::Child { join }) => {
            if let Some(Err(f)) = join.map(|t| t.join()) {
                eprintln!("sycri exec: {f}");
                std::process::exit(EXEC_FAILED);
            }
            run_child(&spec, me)
        }
        Ok(Forked::Parent(child)) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return code,
                Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("sycri exec: wait: {e}");
                    return EXEC_FAILED;
                }
            }
        },
    }
}

/// Opens a pseudo-terminal: (master, slave), both close-on-exec from the start
/// (the server is multi-threaded and spawns other helpers concurrently).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd), Failure> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Failure::internal("open a pty", e))?;
    nix::pty::grantpt(&master).map_err(|e| Failure::internal("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| Failure::internal("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| Failure::internal("ptsname", e))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| Failure::internal(format!("open {name}"), e))?;
    // SAFETY: the descriptor of a PtyMaster we own; into_raw_fd hands it over.
    let master = unsafe { OwnedFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(master)) };
    Ok((master, OwnedFd::from(slave)))
}

/// Sets a terminal's size (TIOCSWINSZ); the foreground process gets SIGWINCH.
pub fn set_winsize(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a pointer to our local value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Port-forward helper protocol, over a SOCK_SEQPACKET socket that is the
/// helper's stdin: the server sends a request (2 bytes, port big-endian); the
/// helper answers with one packet: `[0]` carrying the connected socket as
/// SCM_RIGHTS, or `[1, message...]`. The helper exits when the server closes
/// its end.
pub mod portforward {
    pub const OK: u8 = 0;
    pub const ERR: u8 = 1;
}

/// Sends `data` with (optionally) one descriptor on a unix socket.
pub fn send_with_fd(sock: RawFd, data: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // Room for one int of ancillary data, suitably aligned.
    let mut cbuf = [0u64; 4];
    // SAFETY: a zeroed msghdr is a valid empty message; we fill its fields below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf`, which is larger than `space`, so
        // the first header and its data lie inside our buffer.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: msg points at live buffers (iov, cbuf) for the duration of the call.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one packet and the descriptor it carries, if any. Ok((0, None)) at EOF.
pub fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is a valid empty message; we fill its fields below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points at live buffers (iov, cbuf) for the duration of the call.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fd = None;
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed control headers; CMSG_FIRSTHDR/NXTHDR stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
                // The kernel installed this descriptor for us: we own it now.
                let owned = OwnedFd::from_raw_fd(raw);
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, fd))
}

fn connect_loopback(port: u16) -> std::io::Result<std::net::TcpStream> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    let timeout = std::time::Duration::from_secs(10);
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => Ok(s),
        Err(e) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
        }
    }
}

/// Entry point of `sycri __portforward <netns>`: serves connect requests on
/// stdin (see [`portforward`]) from inside network namespace `netns`.
pub fn portforward_main(netns: &Path) -> i32 {
    let ns = match File::open(netns) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sycri portforward: open {}: {e}", netns.display());
            return EXEC_FAILED;
        }
    };
    if let Err(e) = setns(ns, CloneFlags::CLONE_NEWNET) {
        eprintln!("sycri portforward: join network namespace: {e}");
        return EXEC_FAILED;
    }
    let mut buf = [0u8; 16];
    loop {
        let n = match recv_with_fd(0, &mut buf) {
            Ok((0, _)) => return 0,
            Ok((n, _)) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("sycri portforward: read request: {e}");
                return EXEC_FAILED;
            }
        };
        if n != 2 {
            let _ = send_with_fd(0, b"\x01bad request", None);
            continue;
        }
        let port = u16::from_be_bytes([buf[0], buf[1]]);
        let sent = match connect_loopback(port) {
            Ok(s) => send_with_fd(0, &[portforward::OK], Some(s.as_raw_fd())),
            Err(e) => {
                let mut msg = vec![portforward::ERR];
                msg.extend_from_slice(format!("connect to localhost:{port}: {e}").as_bytes());
                send_with_fd(0, &msg, None)
            }
        };
        if sent.is_err() {
            return 0;
        }
    }
}
