//! `sycri __exec <spec.json>`: runs a command inside a running container. The
//! helper joins the container's namespaces (pid last, mount namespace after
//! every /proc path is opened), forks so that the command is inside the pid
//! namespace, takes on the container's user and capabilities, and execs. It
//! exits with the command's status (128 + signal when it was killed).

use crate::container;
use crate::spec::{ContainerSpec, Failure, FailureKind};
use nix::sched::{setns, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
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

fn fail(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(FailureKind::Internal, format!("{what}: {e}"))
}

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
                return Err(Failure::new(
                    FailureKind::FailedPrecondition,
                    format!("container process {pid} is gone ({e})"),
                ))
            }
            _ => false,
        };
        if !same {
            fds.push((
                File::open(&theirs).map_err(|e| fail(&theirs, e))?,
                flag,
                name,
            ));
        }
    }
    for (f, flag, name) in fds {
        setns(f, flag).map_err(|e| fail(&format!("join {name} namespace"), e))?;
    }
    Ok(())
}

fn run_child(spec: &ExecSpec) -> ! {
    let mut c = spec.container.clone();
    c.process.args = spec.args.clone();
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
    let spec: ExecSpec = match std::fs::read(spec_path)
        .map_err(|e| fail("read exec spec", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| fail("parse exec spec", e)))
    {
        Ok(s) => s,
        Err(f) => {
            eprintln!("sycri exec: {f}");
            return EXEC_FAILED;
        }
    };
    if let Some(cg) = &spec.container.cgroup {
        if let Err(f) = crate::cgroup::join(cg) {
            eprintln!("sycri exec: {f}");
            return EXEC_FAILED;
        }
    }
    if let Err(f) = join(spec.pid) {
        eprintln!("sycri exec: {f}");
        return EXEC_FAILED;
    }
    // SAFETY: the helper is single-threaded; the child may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("sycri exec: fork: {e}");
            EXEC_FAILED
        }
        Ok(ForkResult::Child) => run_child(&spec),
        Ok(ForkResult::Parent { child }) => loop {
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
