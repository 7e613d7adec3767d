//! The sycri server under test: either started by the driver (the initramfs
//! guest) or the main process of a systemd unit (the systemd guest). Either
//! can be killed with SIGKILL: the driver then starts its own again, systemd
//! restarts the unit's.

use crate::client::Cri;
use crate::fail::{Context, Fail, Result};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// How long a starting server may take to create its socket.
const START_LIMIT: Duration = Duration::from_secs(180);

pub enum Mode {
    /// Run `binary` (with its default configuration) in the cgroup `cgroup`,
    /// its output appended to `log`.
    Spawn {
        binary: PathBuf,
        log: PathBuf,
        cgroup: Option<PathBuf>,
    },
    /// The server is the main process of this systemd unit, which starts
    /// it again when it dies (Restart=always).
    External { unit: String },
}

pub struct Server {
    pub mode: Mode,
    pub socket: PathBuf,
    pid: Option<i32>,
}

/// Exit statuses of children the reaper collected, by pid.
static EXITS: Mutex<Option<HashMap<i32, i32>>> = Mutex::new(None);
static REAPER: Once = Once::new();

/// Containers outlive a killed server, and their helpers are then re-parented
/// to the nearest subreaper: the driver becomes one and reaps every child
/// that ends (it starts no other processes), noting their statuses.
fn start_reaper() {
    REAPER.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        std::thread::spawn(|| loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status into a local integer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid > 0 {
                if let Ok(mut g) = EXITS.lock() {
                    g.get_or_insert_with(HashMap::new).insert(pid, status);
                }
            } else {
                // No child right now (ECHILD): look again in a moment.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    });
}

fn reaped(pid: i32) -> bool {
    EXITS
        .lock()
        .map(|g| g.as_ref().is_some_and(|m| m.contains_key(&pid)))
        .unwrap_or(false)
}

impl Server {
    pub fn new(mode: Mode, socket: PathBuf) -> Server {
        Server {
            mode,
            socket,
            pid: None,
        }
    }

    /// Whether the driver runs the server itself.
    pub fn owned(&self) -> bool {
        matches!(self.mode, Mode::Spawn { .. })
    }

    /// Starts the server (or waits for the external one) and connects.
    pub async fn start(&mut self) -> Result<Cri> {
        if let Mode::Spawn {
            binary,
            log,
            cgroup,
        } = &self.mode
        {
            start_reaper();
            let _ = std::fs::remove_file(&self.socket);
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .context(format!("open {}", log.display()))?;
            let err = out.try_clone()?;
            let procs = match cgroup {
                Some(dir) => {
                    std::fs::create_dir_all(dir)
                        .context(format!("create cgroup {}", dir.display()))?;
                    Some(
                        CString::new(dir.join("cgroup.procs").to_string_lossy().into_owned())
                            .map_err(|e| Fail(format!("cgroup path: {e}")))?,
                    )
                }
                None => None,
            };
            let mut cmd = Command::new(binary);
            cmd.args(["--log-level", "debug"])
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0);
            if let Some(procs) = procs {
                // SAFETY: the closure runs in the child between fork and exec
                // and only calls open, write and close (async-signal-safe) on
                // a path made before the fork.
                unsafe {
                    cmd.pre_exec(move || {
                        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                        libc::close(fd);
                        if n != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let child = cmd.spawn().context(format!("start {}", binary.display()))?;
            let pid = i32::try_from(child.id()).map_err(|e| Fail(format!("pid: {e}")))?;
            // The reaper thread waits for it; the handle is not needed.
            drop(child);
            self.pid = Some(pid);
        }
        let deadline = Instant::now() + START_LIMIT;
        while !self.socket.exists() {
            if let Some(pid) = self.pid {
                if reaped(pid) {
                    return Err(Fail(format!(
                        "sycri (pid {pid}) exited before it made {}",
                        self.socket.display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Fail(format!(
                    "no socket {} after {START_LIMIT:?}",
                    self.socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Cri::connect(&self.socket, Duration::from_secs(60)).await
    }

    /// The running server's pid: the driver's child, or the unit's main
    /// process.
    pub fn pid(&self) -> Option<i32> {
        match &self.mode {
            Mode::Spawn { .. } => self.pid,
            Mode::External { unit } => main_pid(unit),
        }
    }

    /// SIGKILL to the server, and waits until it is gone. Then [`start`]
    /// starts the driver's own again, or waits for systemd's restart.
    ///
    /// [`start`]: Server::start
    pub async fn kill9(&mut self) -> Result<()> {
        let pid = match &self.mode {
            Mode::Spawn { .. } => self.pid.take(),
            Mode::External { unit } => main_pid(unit),
        }
        .context("the server's pid")?;
        // SAFETY: kill(2) with integer arguments, to the server under test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let gone = |pid: i32| match self.mode {
            Mode::Spawn { .. } => reaped(pid),
            Mode::External { .. } => !crate::audit::pid_alive(pid),
        };
        while !gone(pid) {
            if Instant::now() > deadline {
                return Err(Fail(format!("sycri {pid} still there after SIGKILL")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The main pid of a systemd unit (`systemctl show`), None while it has none.
fn main_pid(unit: &str) -> Option<i32> {
    let out = Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", unit])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}
