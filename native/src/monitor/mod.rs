//! The per-container monitor: a small, single-threaded process (sycri re-executed)
//! that forks the container, owns its stdio and log file, serves a control socket
//! (start, reopen-log, state) and records the exit status. It outlives the server.
//!
//! Life: the server spawns `sycri __monitor <spec.json>` with stdout on a pipe. The
//! monitor forks the container's first process, waits until its rootfs is ready,
//! writes one JSON line (`{"pid":N}` or a [`Failure`]) on stdout, closes it, and
//! serves until the container exits.
//!
//! Attach: a control-socket connection whose request is [`Request::Attach`]
//! gets `{"ok":true}` and then becomes a stream of frames (see [`attach`]): the
//! container's output goes to every attached client as well as to the log, and
//! stdin frames go to the container's stdin (held here when the container was
//! created with stdin). With `stdin_once`, the first client that closes stdin
//! closes the container's stdin. A client that does not keep up is
//! disconnected: buffers are bounded and the monitor never blocks on a client.
//!
//! Here: the monitor process and its poll loop. The wire protocol is in
//! `protocol.rs`, an attached client's buffers in `clients.rs`.

mod clients;
pub mod protocol;

// The protocol at its old paths, for the server.
use protocol::{attach, Ready, Request, Response};

use crate::cgroup::fork::Forked;
use crate::container;
use crate::crilog::{CriLog, Stream};
use crate::failure::{Failure, FailureKind};
use crate::spec::{ContainerSpec, ExitStatus, NsMode};
use crate::util::{now_ns, redirect_to_devnull, write_atomic};
use clients::Client;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, setsid, Pid};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
        let pty = nix::pty::openpty(None, None).map_err(|e| Failure::internal("openpty", e))?;
        let slave = pty.slave;
        let s1 = slave.try_clone().map_err(|e| Failure::internal("dup", e))?;
        let s2 = slave.try_clone().map_err(|e| Failure::internal("dup", e))?;
        let master = pty.master;
        set_cloexec(master.as_raw_fd());
        let stdin = if p.stdin {
            Some(
                master
                    .try_clone()
                    .map_err(|e| Failure::internal("dup", e))?,
            )
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
    let (out_r, out_w) = pipe2(flags).map_err(|e| Failure::internal("pipe", e))?;
    let (err_r, err_w) = pipe2(flags).map_err(|e| Failure::internal("pipe", e))?;
    let (in_child, in_ours) = if p.stdin {
        let (r, w) = pipe2(flags).map_err(|e| Failure::internal("pipe", e))?;
        (r, Some(w))
    } else {
        let null = File::open("/dev/null").map_err(|e| Failure::internal("open /dev/null", e))?;
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
        NsMode::New => {
            unshare(CloneFlags::CLONE_NEWPID).map_err(|e| Failure::internal("unshare pid", e))
        }
        NsMode::Join(p) => {
            let f = File::open(p).map_err(|e| {
                Failure::caused(
                    FailureKind::FailedPrecondition,
                    format!("open pid namespace {}", p.display()),
                    e,
                )
            })?;
            setns(f, CloneFlags::CLONE_NEWPID).map_err(|e| Failure::internal("setns pid", e))
        }
    }
}

/// Runs in the forked child: wire stdio, drop every other descriptor, restore
/// signals, become the container.
fn child(
    spec: &ContainerSpec,
    stdio: &mut Stdio,
    sync: OwnedFd,
    start: OwnedFd,
    v2: Option<&crate::cgroup::fork::Target>,
) -> ! {
    // Into the container's cgroups before anything else, so that everything
    // the container ever starts can be found and ended: the v2 one we were
    // born in unless `v2` is left to join, each v1 one by its `tasks` file
    // (we are single-threaded; see crate::cgroup::fork for why not
    // cgroup.procs). The v2 directory's descriptor goes with the others below.
    let joined = spec
        .cgroups_v1
        .iter()
        .try_for_each(|cg| crate::cgroup::fork::join_v1_thread(cg))
        .and_then(|()| v2.map_or(Ok(()), |t| t.join()));
    if let Err(e) = joined {
        let mut sync = File::from(sync);
        container::report(&mut sync, &Err(e));
        std::process::exit(127);
    }
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
    // We are in the container's pid namespace, seen by the pod's other
    // containers when they share it, until we exec: hold nothing but the
    // container's stdio and our two set-up pipes (both close-on-exec). This
    // drops the log file, the control socket, the server's report pipe (the
    // server reads it until EOF, so we must not keep it while we wait) and
    // whatever else the monitor holds; none of their owners' destructors
    // runs in this process, which never returns from here.
    if let Err(e) =
        crate::exposure::close_fds_except(&[0, 1, 2, sync.as_raw_fd(), start.as_raw_fd()])
    {
        let mut sync = File::from(sync);
        container::report(&mut sync, &Err(e));
        std::process::exit(127);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
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
        .map_err(|e| Failure::internal("read spec", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| Failure::internal("parse spec", e)))
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
    // Before the fork: the container's first process is non-dumpable from
    // its first instant (see crate::exposure).
    crate::exposure::not_dumpable()?;
    let _ = setsid();
    // SIGCHLD arrives through a signalfd so the loop below sees it with poll.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| Failure::internal("block SIGCHLD", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Failure::internal("signalfd", e))?;
    // SAFETY: setting SIGPIPE to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }

    let log = CriLog::open(spec.log_path.as_deref()).map_err(|e| {
        Failure::internal(
            format!(
                "open log file {}",
                spec.log_path.as_deref().unwrap_or(Path::new("")).display()
            ),
            e,
        )
    })?;
    let mut stdio = make_stdio(spec)?;
    let (sync_r, sync_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Failure::internal("pipe", e))?;
    let (start_r, start_w) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Failure::internal("pipe", e))?;

    let _ = std::fs::remove_file(&spec.control_socket);
    let listener = UnixListener::bind(&spec.control_socket).map_err(|e| {
        Failure::internal(
            format!("bind control socket {}", spec.control_socket.display()),
            e,
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::internal("control socket", e))?;

    enter_pid_namespace(spec)?;
    // The child is born in the container's v2 cgroup where the kernel can
    // (see crate::cgroup::fork): nothing of the container ever runs outside.
    let v2 = spec
        .cgroup
        .as_deref()
        .map(crate::cgroup::fork::Target::open)
        .transpose()?;
    // SAFETY: the monitor is single-threaded, so the child may run arbitrary code.
    let pid = match unsafe { crate::cgroup::fork::fork_into(v2.as_ref()) }? {
        Forked::Child { join } => {
            drop(sync_r);
            drop(start_w);
            drop(listener);
            child(spec, &mut stdio, sync_w, start_r, join)
        }
        Forked::Parent(child) => child,
    };
    drop(v2);
    drop(sync_w);
    drop(start_r);
    for fd in stdio.child.iter_mut() {
        fd.take();
    }
    let mut sync = BufReader::new(File::from(sync_r));
    let message = read_message(&mut sync);
    match message {
        Some(Ok(())) => {}
        Some(Err(f)) => {
            let _ = waitpid(pid, None);
            let _ = std::fs::remove_file(&spec.control_socket);
            return Err(f);
        }
        None => {
            let status = waitpid(pid, None);
            let _ = std::fs::remove_file(&spec.control_socket);
            return Err(Failure::internal(
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
        clients: Vec::new(),
        stdin_buf: Vec::new(),
        stdin_closing: false,
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

/// Most clients attached at once.
const MAX_CLIENTS: usize = 8;
/// Input queued for the container's stdin before clients are no longer read.
const STDIN_QUEUE: usize = 64 * 1024;
/// How long queued output may take to reach clients after the container exited.
const CLIENT_FLUSH: Duration = Duration::from_secs(1);

#[derive(Clone, Copy)]
enum Slot {
    Signal,
    Listener,
    Output(Stream),
    Stdin,
    Client(usize),
}

struct Monitor<'a> {
    spec: &'a ContainerSpec,
    pid: Pid,
    log: CriLog,
    stdio: Stdio,
    sync: Option<BufReader<File>>,
    start: Option<File>,
    exit: Option<ExitStatus>,
    clients: Vec<Client>,
    /// Input waiting for the container's stdin.
    stdin_buf: Vec<u8>,
    /// Close the container's stdin once `stdin_buf` is written.
    stdin_closing: bool,
}

impl Monitor<'_> {
    fn serve(&mut self, sigfd: &SignalFd, listener: &UnixListener) {
        for fd in [&self.stdio.stdout, &self.stdio.stderr, &self.stdio.stdin]
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
            let mut fds = Vec::with_capacity(5 + self.clients.len());
            let mut slots = Vec::with_capacity(5 + self.clients.len());
            fds.push(PollFd::new(sigfd.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Signal);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            slots.push(Slot::Listener);
            if let Some(f) = self.stdio.stdout.as_ref() {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(Stream::Stdout));
            }
            if let Some(f) = self.stdio.stderr.as_ref() {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                slots.push(Slot::Output(Stream::Stderr));
            }
            if !self.stdin_buf.is_empty() {
                if let Some(f) = self.stdio.stdin.as_ref() {
                    fds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
                    slots.push(Slot::Stdin);
                }
            }
            let room = self.stdin_buf.len() < STDIN_QUEUE;
            for (i, c) in self.clients.iter().enumerate() {
                let mut ev = PollFlags::empty();
                if room {
                    ev |= PollFlags::POLLIN;
                }
                if c.pending() > 0 {
                    ev |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.conn.as_fd(), ev));
                slots.push(Slot::Client(i));
            }
            if poll(&mut fds, PollTimeout::NONE).is_err() {
                continue;
            }
            let ready: Vec<(Slot, PollFlags)> = slots
                .into_iter()
                .zip(
                    fds.iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty())),
                )
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);
            for (slot, rev) in ready {
                match slot {
                    Slot::Output(stream) => {
                        self.pump(stream, &mut buf);
                    }
                    Slot::Stdin => self.flush_stdin(),
                    Slot::Client(i) => self.serve_client(i, rev, room, &mut buf),
                    Slot::Listener => {
                        while let Ok((conn, _)) = listener.accept() {
                            self.handle(conn);
                        }
                    }
                    Slot::Signal => {
                        while let Ok(Some(_)) = sigfd.read_signal() {}
                        self.reap();
                    }
                }
            }
            self.drop_dead_clients();
        }
        // Record the exit first: a process the container left behind may hold
        // its output open, and the status must not wait for that.
        if let Some(status) = &self.exit {
            if let Ok(data) = serde_json::to_vec(status) {
                let _ = write_atomic(&self.spec.exit_file, &data);
            }
        }
        // The container is over: nothing of it may outlive it.
        match &self.spec.cgroup {
            Some(cg) => {
                let _ = crate::cgroup::kill(cg);
            }
            None => {
                for cg in &self.spec.cgroups_v1 {
                    let _ = crate::cgroup::kill(cg);
                }
            }
        }
        self.drain(&mut buf);
        self.flush_clients();
    }

    /// Moves what is readable on one stream into the log and to attached
    /// clients. Returns false at EOF.
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
            let data = &buf[..n as usize];
            let _ = self.log.write(stream, data);
            let ch = match stream {
                Stream::Stdout => attach::STDOUT,
                Stream::Stderr => attach::STDERR,
            };
            for c in self.clients.iter_mut() {
                let wants = match stream {
                    Stream::Stdout => c.stdout,
                    Stream::Stderr => c.stderr,
                };
                if wants {
                    c.queue(ch, data);
                    c.flush();
                }
            }
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

    /// After the container's output ended: give attached clients what is
    /// queued for them (bounded in time), then close their connections.
    fn flush_clients(&mut self) {
        let deadline = Instant::now() + CLIENT_FLUSH;
        loop {
            self.clients.retain(|c| !c.dead && c.pending() > 0);
            let left = deadline.saturating_duration_since(Instant::now());
            if self.clients.is_empty() || left.is_zero() {
                break;
            }
            let mut fds: Vec<PollFd> = self
                .clients
                .iter()
                .map(|c| PollFd::new(c.conn.as_fd(), PollFlags::POLLOUT))
                .collect();
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if poll(&mut fds, PollTimeout::from(ms)).unwrap_or(0) == 0 {
                break;
            }
            drop(fds);
            for c in self.clients.iter_mut() {
                c.flush();
            }
        }
        self.clients.clear();
    }

    fn serve_client(&mut self, i: usize, rev: PollFlags, room: bool, buf: &mut [u8]) {
        if rev.contains(PollFlags::POLLOUT) {
            self.clients[i].flush();
        }
        let hangup = rev.intersects(PollFlags::POLLHUP | PollFlags::POLLERR);
        if rev.contains(PollFlags::POLLIN) || (hangup && room) {
            let frames = self.clients[i].read_frames(buf);
            for (ch, data) in frames {
                self.client_frame(i, ch, &data);
            }
        } else if hangup {
            // Gone while we could not take its input: drop it.
            self.clients[i].dead = true;
        }
    }

    fn client_frame(&mut self, i: usize, ch: u8, data: &[u8]) {
        match ch {
            attach::STDIN => {
                let c = &self.clients[i];
                if c.stdin && !c.stdin_closed && !self.stdin_closing && self.stdio.stdin.is_some() {
                    self.stdin_buf.extend_from_slice(data);
                    self.flush_stdin();
                }
            }
            attach::CLOSE_STDIN => self.client_closed_stdin(i),
            attach::RESIZE if self.stdio.tty && data.len() == 4 => {
                let ws = libc::winsize {
                    ws_col: u16::from_be_bytes([data[0], data[1]]),
                    ws_row: u16::from_be_bytes([data[2], data[3]]),
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                if let Some(m) = self.stdio.stdout.as_ref() {
                    // SAFETY: TIOCSWINSZ reads a winsize from our local value;
                    // `m` is the pty master we own.
                    unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
                }
            }
            _ => {}
        }
    }

    /// Client `i` ended its stdin: with stdin_once, so does the container's.
    fn client_closed_stdin(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.stdin || c.stdin_closed {
            return;
        }
        c.stdin_closed = true;
        if self.spec.process.stdin_once && self.stdio.stdin.is_some() && !self.stdin_closing {
            if self.stdio.tty {
                // A terminal has no end of file to close; ^D is how a reader in
                // canonical mode sees one.
                self.stdin_buf.push(0x04);
            }
            self.stdin_closing = true;
            self.flush_stdin();
        }
    }

    /// Writes queued input to the container's stdin without blocking.
    fn flush_stdin(&mut self) {
        let Some(fd) = self.stdio.stdin.as_ref() else {
            self.stdin_buf.clear();
            return;
        };
        while !self.stdin_buf.is_empty() {
            // SAFETY: writing from our own buffer, within its length, to an fd we own.
            let n = unsafe {
                libc::write(
                    fd.as_raw_fd(),
                    self.stdin_buf.as_ptr().cast(),
                    self.stdin_buf.len(),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock {
                    return;
                }
                // The container closed its stdin (EPIPE) or is gone.
                self.stdin_buf.clear();
                self.stdio.stdin = None;
                return;
            }
            self.stdin_buf.drain(..n as usize);
        }
        if self.stdin_closing {
            self.stdio.stdin = None;
        }
    }

    fn drop_dead_clients(&mut self) {
        let mut i = 0;
        while i < self.clients.len() {
            if self.clients[i].dead {
                // A client that leaves has ended its stdin too.
                self.client_closed_stdin(i);
                self.clients.swap_remove(i);
            } else {
                i += 1;
            }
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
                    // The kernel counts the OOM kill before the victim dies.
                    let oom = sig == Signal::SIGKILL
                        && crate::cgroup::oom_killed(
                            self.spec
                                .cgroup
                                .iter()
                                .chain(&self.spec.cgroups_v1)
                                .map(PathBuf::as_path),
                        );
                    self.exit = Some(ExitStatus {
                        exit_code: 128 + sig as i32,
                        signal: Some(sig as i32),
                        finished_at_ns: now_ns(),
                        oom_killed: oom,
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
        let mut attach_req = None;
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Start) => self.start(),
            Ok(Request::ReopenLog) => self
                .log
                .reopen()
                .map_err(|e| Failure::internal("reopen log", e)),
            Ok(Request::Attach {
                stdin,
                stdout,
                stderr,
                tty: _,
            }) => {
                if self.clients.len() >= MAX_CLIENTS {
                    Err(Failure::caused(
                        FailureKind::FailedPrecondition,
                        "attach",
                        format!("{MAX_CLIENTS} clients are attached already"),
                    ))
                } else {
                    attach_req = Some((stdin, stdout, stderr));
                    Ok(())
                }
            }
            Err(e) => Err(Failure::caused(
                FailureKind::InvalidArgument,
                "bad request",
                e,
            )),
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
            if conn.write_all(&data).is_err() {
                return;
            }
        }
        if let Some((stdin, stdout, stderr)) = attach_req {
            if conn.set_nonblocking(true).is_err() {
                return;
            }
            let mut c = Client::new(
                conn,
                stdin,
                stdout,
                // A terminal has one output stream.
                stderr && !self.stdio.tty,
                // Frames the client sent right after its request.
                reader.buffer().to_vec(),
            );
            let frames = c.take_frames();
            self.clients.push(c);
            let i = self.clients.len() - 1;
            for (ch, data) in frames {
                self.client_frame(i, ch, &data);
            }
        }
    }

    fn start(&mut self) -> Result<(), Failure> {
        let Some(mut start) = self.start.take() else {
            return Err(Failure::precondition("container was already started"));
        };
        start
            .write_all(b"1")
            .map_err(|e| Failure::internal("signal the container to start", e))?;
        drop(start);
        let mut sync = self
            .sync
            .take()
            .ok_or_else(|| Failure::internal("start", "no sync pipe"))?;
        match read_message(&mut sync) {
            None => Ok(()),
            Some(Ok(())) => Ok(()),
            Some(Err(f)) => Err(f),
        }
    }
}
