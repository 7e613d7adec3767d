//! The per-container monitor: a small, single-threaded process (sycri re-executed)
//! that forks the container, owns its stdio and log file, serves a control socket
//! (start, reopen-log, state) and records the exit status. It outlives the server.
//!
//! Life: the server spawns `sycri __monitor <spec.json>` with stdout on a pipe. The
//! monitor forks the container's first process, waits until its rootfs is ready,
//! writes one JSON line (`{"pid":N}` or a [`Failure`]) on stdout, closes it, and
//! serves until the container exits.

use crate::container;
use crate::crilog::{CriLog, Stream};
use crate::spec::{ContainerSpec, ExitStatus, Failure, FailureKind, NsMode};
use crate::util::{now_ns, redirect_to_devnull, write_atomic};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe2, setsid, ForkResult, Pid};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A request on the monitor's control socket (one JSON line per connection).
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Let the container's process exec its command.
    Start,
    /// Reopen the log file at its path (after rotation).
    ReopenLog,
}

/// The answer to a [`Request`].
#[derive(Serialize, Deserialize, Debug)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<Failure>,
}

/// The monitor's first and only line on stdout.
#[derive(Serialize, Deserialize, Debug)]
pub struct Ready {
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub error: Option<Failure>,
}

fn fail(kind: FailureKind, what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(kind, format!("{what}: {e}"))
}

fn internal(what: &str, e: impl std::fmt::Display) -> Failure {
    fail(FailureKind::Internal, what, e)
}

struct Stdio {
    /// Ends the container gets as fds 0, 1, 2.
    child: [Option<OwnedFd>; 3],
    /// Our ends: stdin writer, stdout reader, stderr reader (or the pty master as stdout).
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: bool,
}

fn make_stdio(spec: &ContainerSpec) -> Result<Stdio, Failure> {
    let p = &spec.process;
    if p.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| internal("openpty", e))?;
        let slave = pty.slave;
        let s1 = slave.try_clone().map_err(|e| internal("dup", e))?;
        let s2 = slave.try_clone().map_err(|e| internal("dup", e))?;
        let master = pty.master;
        set_cloexec(master.as_raw_fd());
        let stdin = if p.stdin {
            Some(master.try_clone().map_err(|e| internal("dup", e))?)
        } else {
            None
        };
        return Ok(Stdio {
            child: [Some(slave), Some(s1), Some(s2)],
            stdin,
            stdout: Some(master),
            stderr: None,
            tty: true,
        });
    }
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (out_r, out_w) = pipe2(flags).map_err(|e| internal("pipe", e))?;
    let (err_r, err_w) = pipe2(flags).map_err(|e| internal("pipe", e))?;
    let (in_child, in_ours) = if p.stdin {
        let (r, w) = pipe2(flags).map_err(|e| internal("pipe", e))?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").map_err(|e| internal("open /dev/null", e))?;
        (OwnedFd::from(null), None)
    };
    Ok(Stdio {
        child: [Some(in_child), Some(out_w), Some(err_w)],
        stdin: in_ours,
        stdout: Some(out_r),
        stderr: Some(err_r),
        tty: false,
    })
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own, with integer arguments only.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn enter_pid_namespace(spec: &ContainerSpec) -> Result<(), Failure> {
    match &spec.namespaces.pid {
        NsMode::Host => Ok(()),
        NsMode::New => unshare(CloneFlags::CLONE_NEWPID).map_err(|e| internal("unshare pid", e)),
        NsMode::Join(p) => {
            let f = File::open(p).map_err(|e| {
                fail(
                    FailureKind::FailedPrecondition,
                    &format!("open pid namespace {}", p.display()),
                    e,
                )
            })?;
            setns(f, CloneFlags::CLONE_NEWPID).map_err(|e| internal("setns pid", e))
        }
    }
}

/// Runs in the forked child: wire stdio, restore signals, become the container.
fn child(
    spec: &ContainerSpec,
    stdio: &mut Stdio,
    sync: OwnedFd,
    start: OwnedFd,
    report_fd: RawFd,
) -> ! {
    // Join the container's cgroup first, so that everything the container ever
    // starts can be found and ended.
    if let Some(cg) = &spec.cgroup {
        if let Err(e) = crate::cgroup::join(cg) {
            let mut sync = File::from(sync);
            container::report(&mut sync, &Err(e));
            std::process::exit(127);
        }
    }
    // The server reads the monitor's report pipe until EOF; our copy must not keep
    // it open while we wait for the start signal.
    // SAFETY: closes a descriptor this process never touches again; we never
    // return from this function, so its owner's destructor does not run here.
    unsafe { libc::close(report_fd) };
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for (i, fd) in stdio.child.iter_mut().enumerate() {
        if let Some(fd) = fd.take() {
            let target = i as RawFd;
            if fd.as_raw_fd() != target {
                // SAFETY: dup2 onto 0..2 in a single-threaded child; the old fds
                // are replaced as intended.
                unsafe { libc::dup2(fd.as_raw_fd(), target) };
            } else {
                // Keep it: clear close-on-exec.
                // SAFETY: integer-only fcntl on fd 0..2.
                unsafe { libc::fcntl(target, libc::F_SETFD, 0) };
                std::mem::forget(fd);
            }
        }
    }
    stdio.stdin.take();
    stdio.stdout.take();
    stdio.stderr.take();
    if stdio.tty {
        let _ = setsid();
        // SAFETY: TIOCSCTTY on fd 0 (the pty slave) with an integer argument.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
    container::run(spec, sync, start)
}

/// Entry point of `sycri __monitor <spec.json>`. Returns the process exit code.
pub fn main(spec_path: &Path) -> i32 {
    // Our stdout is the server's pipe; keep it separate from anything we print later.
    let mut report = File::from(match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return 1,
    });
    let spec: ContainerSpec = match std::fs::read(spec_path)
        .map_err(|e| internal("read spec", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| internal("parse spec", e)))
    {
        Ok(s) => s,
        Err(f) => {
            send_ready(&mut report, None, Some(f));
            return 1;
        }
    };
    match run(&spec, &mut report) {
        Ok(code) => code,
        Err(f) => {
            send_ready(&mut report, None, Some(f));
            1
        }
    }
}

fn send_ready(report: &mut File, pid: Option<i32>, error: Option<Failure>) {
    let line = serde_json::to_string(&Ready { pid, error }).unwrap_or_default();
    let _ = report.write_all(line.as_bytes());
    let _ = report.write_all(b"\n");
}

fn detach_stdio() {
    redirect_to_devnull(&[0, 1, 2]);
}

fn run(spec: &ContainerSpec, report: &mut File) -> Result<i32, Failure> {
    let _ = setsid();
    // SIGCHLD arrives through a signalfd so the loop below sees it with poll.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| internal("block SIGCHLD", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| internal("signalfd", e))?;
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }

    let log = CriLog::open(spec.log_path.as_deref()).map_err(|e| {
        internal(
            &format!(
                "open log file {}",
                spec.log_path.as_deref().unwrap_or(Path::new("")).display()
            ),
            e,
        )
    })?;
    let mut stdio = make_stdio(spec)?;
    let (sync_r, sync_w) = pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e))?;
    let (start_r, start_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| internal("pipe", e))?;

    let _ = std::fs::remove_file(&spec.control_socket);
    let listener = UnixListener::bind(&spec.control_socket).map_err(|e| {
        internal(
            &format!("bind control socket {}", spec.control_socket.display()),
            e,
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| internal("control socket", e))?;

    enter_pid_namespace(spec)?;
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
    let pid = match unsafe { fork() }.map_err(|e| internal("fork", e))? {
        ForkResult::Child => {
            drop(sync_r);
            drop(start_w);
            drop(listener);
            child(spec, &mut stdio, sync_w, start_r, report.as_raw_fd())
        }
        ForkResult::Parent { child } => child,
    };
    drop(sync_w);
    drop(start_r);
    for fd in stdio.child.iter_mut() {
        fd.take();
    }

    let mut sync = BufReader::new(File::from(sync_r));
    match read_message(&mut sync) {
        Some(Ok(())) => {}
        Some(Err(f)) => {
            let _ = waitpid(pid, None);
            let _ = std::fs::remove_file(&spec.control_socket);
            return Err(f);
        }
        None => {
            let status = waitpid(pid, None);
            let _ = std::fs::remove_file(&spec.control_socket);
            return Err(internal(
                "container setup",
                format!("process ended without a report ({status:?})"),
            ));
        }
    }
    send_ready(report, Some(pid.as_raw()), None);
    // The server reads our report until EOF: close every copy of that pipe.
    detach_stdio();
    // `report` is a duplicate of the pipe; point it at /dev/null too (dup2 keeps the
    // descriptor number valid for its owner, so its later drop stays correct).
    redirect_to_devnull(&[report.as_raw_fd()]);

    let mut m = Monitor {
        spec,
        pid,
        log,
        stdio,
        sync: Some(sync),
        start: Some(File::from(start_w)),
        exit: None,
    };
    m.serve(&sigfd, &listener);
    let _ = std::fs::remove_file(&spec.control_socket);
    Ok(0)
}

/// Reads one report from the container's first process: `Some(Ok)` for ready,
/// `Some(Err)` for a failure, `None` at EOF (exec succeeded, or it died).
fn read_message(sync: &mut BufReader<File>) -> Option<Result<(), Failure>> {
    let mut line = String::new();
    match sync.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => {
            if line.contains("\"ready\":true") {
                Some(Ok(()))
            } else {
                Some(Err(serde_json::from_str::<Failure>(&line).unwrap_or_else(
                    |_| Failure::new(FailureKind::Internal, line.trim().to_string()),
                )))
            }
        }
    }
}

struct Monitor<'a> {
    spec: &'a ContainerSpec,
    pid: Pid,
    log: CriLog,
    stdio: Stdio,
    sync: Option<BufReader<File>>,
    start: Option<File>,
    exit: Option<ExitStatus>,
}

impl Monitor<'_> {
    fn serve(&mut self, sigfd: &SignalFd, listener: &UnixListener) {
        for fd in [&self.stdio.stdout, &self.stdio.stderr]
            .into_iter()
            .flatten()
        {
            set_nonblocking(fd.as_raw_fd());
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            if self.exit.is_some() {
                break;
            }
            let mut fds = vec![
                PollFd::new(sigfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            ];
            let out_fd = self.stdio.stdout.as_ref().map(|f| f.as_raw_fd());
            let err_fd = self.stdio.stderr.as_ref().map(|f| f.as_raw_fd());
            let out_b = self.stdio.stdout.as_ref().map(|f| f.as_fd());
            let err_b = self.stdio.stderr.as_ref().map(|f| f.as_fd());
            if let Some(b) = out_b {
                fds.push(PollFd::new(b, PollFlags::POLLIN));
            }
            if let Some(b) = err_b {
                fds.push(PollFd::new(b, PollFlags::POLLIN));
            }
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().map(|r| !r.is_empty()).unwrap_or(false))
                .collect();
            drop(fds);
            let mut idx = 2;
            if out_fd.is_some() {
                if ready[idx] {
                    self.pump(Stream::Stdout, &mut buf);
                }
                idx += 1;
            }
            if err_fd.is_some() && ready[idx] {
                self.pump(Stream::Stderr, &mut buf);
            }
            if ready[1] {
                while let Ok((conn, _)) = listener.accept() {
                    self.handle(conn);
                }
            }
            if ready[0] {
                while let Ok(Some(_)) = sigfd.read_signal() {}
                self.reap();
            }
        }
        // Record the exit first: a process the container left behind may hold
        // its output open, and the status must not wait for that.
        if let Some(status) = &self.exit {
            if let Ok(data) = serde_json::to_vec(status) {
                let _ = write_atomic(&self.spec.exit_file, &data);
            }
        }
        // The container is over: nothing of it may outlive it.
        if let Some(cg) = &self.spec.cgroup {
            let _ = crate::cgroup::kill(cg);
        }
        self.drain(&mut buf);
    }

    /// Moves what is readable on one stream into the log. Returns false at EOF.
    fn pump(&mut self, stream: Stream, buf: &mut [u8]) -> bool {
        let slot = match stream {
            Stream::Stdout => &mut self.stdio.stdout,
            Stream::Stderr => &mut self.stdio.stderr,
        };
        let Some(fd) = slot.as_ref() else {
            return false;
        };
        // SAFETY: reading into our own buffer from an fd we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            let _ = self.log.write(stream, &buf[..n as usize]);
            return true;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
            return true;
        }
        // EOF (or EIO on a pty whose other side is gone).
        slot.take();
        let _ = self.log.finish(stream);
        false
    }

    /// After the container exits: read what is left in the pipes. Processes that
    /// escaped into the pod may still hold a write end, so this is bounded in time.
    fn drain(&mut self, buf: &mut [u8]) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.stdio.stdout.is_some() || self.stdio.stderr.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = Vec::with_capacity(2);
            let mut streams = Vec::with_capacity(2);
            if let Some(f) = self.stdio.stdout.as_ref() {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                streams.push(Stream::Stdout);
            }
            if let Some(f) = self.stdio.stderr.as_ref() {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                streams.push(Stream::Stderr);
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => break,
                Err(_) => break,
                Ok(_) => {}
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().map(|r| !r.is_empty()).unwrap_or(false))
                .collect();
            drop(fds);
            for (s, r) in streams.into_iter().zip(ready) {
                if r {
                    self.pump(s, buf);
                }
            }
        }
        for s in [Stream::Stdout, Stream::Stderr] {
            let _ = self.log.finish(s);
        }
    }

    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == self.pid => {
                    self.exit = Some(ExitStatus {
                        exit_code: code,
                        signal: None,
                        finished_at_ns: now_ns(),
                        oom_killed: false,
                    });
                }
                Ok(WaitStatus::Signaled(p, sig, _)) if p == self.pid => {
                    self.exit = Some(ExitStatus {
                        exit_code: 128 + sig as i32,
                        signal: Some(sig as i32),
                        finished_at_ns: now_ns(),
                        oom_killed: false,
                    });
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    fn handle(&mut self, conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => c,
            Err(_) => return,
        });
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Start) => self.start(),
            Ok(Request::ReopenLog) => self.log.reopen().map_err(|e| internal("reopen log", e)),
            Err(e) => Err(fail(FailureKind::InvalidArgument, "bad request", e)),
        };
        let resp = match resp {
            Ok(()) => Response {
                ok: true,
                error: None,
            },
            Err(f) => Response {
                ok: false,
                error: Some(f),
            },
        };
        let mut conn = conn;
        if let Ok(mut data) = serde_json::to_vec(&resp) {
            data.push(b'\n');
            let _ = conn.write_all(&data);
        }
    }

    fn start(&mut self) -> Result<(), Failure> {
        let Some(mut start) = self.start.take() else {
            return Err(Failure::new(
                FailureKind::FailedPrecondition,
                "container was already started",
            ));
        };
        start
            .write_all(b"1")
            .map_err(|e| internal("signal the container to start", e))?;
        drop(start);
        let mut sync = self
            .sync
            .take()
            .ok_or_else(|| internal("start", "no sync pipe"))?;
        match read_message(&mut sync) {
            None => Ok(()),
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(f),
        }
    }
}
