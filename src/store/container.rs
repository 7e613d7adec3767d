//! A container as the runtime keeps it: immutable metadata, a status cell with
//! its own short lock, and an operation guard.
//!
//! Reads (List, Status, stats) take only the status cell's lock, for as long
//! as a copy takes; they never touch the disk and never wait for an operation.
//! Start, Remove and resource updates hold the operation guard so they do not
//! overlap; Stop holds it only to move the container to `Stopping`, then
//! waits for the exit without any lock, so a long grace period delays nobody.

use super::record;
use super::Keyed;
use crate::engine::ProcId;
use crate::error::Result;
use crate::proto::cri;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use sycri_native::cgroup::{Cgroups, Resources};
use sycri_native::spec::ExitStatus;
use tokio::sync::watch;

/// The record file (`container.json`). Its fields keep the names of the
/// records older servers wrote, so an upgraded server finds their containers.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name_key: String,
    pub image_id: String,
    /// The image as the request named it.
    pub image_ref: String,
    pub created_at_ns: i64,
    #[serde(default)]
    pub started_at_ns: Option<i64>,
    pub pid: Option<i32>,
    pub pid_start: Option<u64>,
    pub log_path: Option<PathBuf>,
    pub stop_signal: i32,
    pub control_socket: PathBuf,
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    /// Why the container ended when the monitor could not say (it was lost).
    #[serde(default)]
    pub lost: bool,
    #[serde(default)]
    pub monitor_pid: Option<i32>,
    #[serde(default)]
    pub monitor_start: Option<u64>,
    /// The container's cgroup (v2), which holds every process of it.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Its v1 cgroups, (controller, directory), for the controllers v2 lacks.
    #[serde(default)]
    pub cgroups_v1: Vec<(String, PathBuf)>,
    /// The limits in force (CreateContainer's, then UpdateContainerResources').
    #[serde(default)]
    pub resources: Resources,
    /// Why StartContainer failed, if it did.
    #[serde(default)]
    pub start_error: Option<String>,
    /// RemoveContainer has begun: a restarted server finishes it.
    #[serde(default)]
    pub removing: bool,
    /// CreateContainer has begun and not finished (the intent, written before
    /// anything is made): a restarted server undoes what it finds of it.
    #[serde(default)]
    pub creating: bool,
    /// StartContainer told the monitor to start at this time and has not
    /// recorded the answer: a restarted server asks again.
    #[serde(default)]
    pub starting_at_ns: Option<i64>,
}

/// What never changes once the container exists.
#[derive(Clone, Debug)]
pub struct ContainerMeta {
    pub id: String,
    pub pod_id: String,
    /// The CRI name it reserves (`name_pod_attempt_podid`).
    pub name_key: String,
    pub image_id: String,
    pub image_ref: String,
    pub created_at_ns: i64,
    pub log_path: Option<PathBuf>,
    pub stop_signal: i32,
    pub control_socket: PathBuf,
    /// The container's first process.
    pub init: Option<ProcId>,
    /// Its monitor (`sycri-engine __monitor`).
    pub monitor: Option<ProcId>,
    pub cgroups: Cgroups,
    pub config: cri::ContainerConfig,
    /// Its state directory (record, config, spec, exit status, writable layer).
    pub dir: PathBuf,
}

/// A container's life. `Stopping` is a running container that was told to
/// stop; `Removing` one whose removal has begun.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Created,
    Running,
    Stopping,
    Exited,
    Removing,
}

/// What changes: the status cell.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    pub started_at_ns: Option<i64>,
    pub exit: Option<ExitStatus>,
    pub lost: bool,
    pub resources: Resources,
    pub start_error: Option<String>,
    /// A start in progress: when it told the monitor (see the record's field).
    pub starting_at_ns: Option<i64>,
}

impl Status {
    /// Whether the container's processes have ended (whatever else goes on).
    pub fn exited(&self) -> bool {
        self.exit.is_some()
    }
}

pub struct Container {
    pub meta: ContainerMeta,
    status: Mutex<Status>,
    /// Held while a change is written, so that records reach the disk in the
    /// order of the changes (the status lock is not held for the write).
    persist: Mutex<()>,
    /// Told of every change of the status, for those who wait for an exit.
    changed: watch::Sender<()>,
    op: tokio::sync::Mutex<()>,
}

pub const RECORD: &str = "container.json";

impl Keyed for Container {
    fn id(&self) -> &str {
        &self.meta.id
    }
}

impl Container {
    pub fn new(meta: ContainerMeta, status: Status) -> Container {
        Container {
            meta,
            status: Mutex::new(status),
            persist: Mutex::new(()),
            changed: watch::channel(()).0,
            op: tokio::sync::Mutex::new(()),
        }
    }

    /// From a record file and its config.
    pub fn from_record(rec: ContainerRecord, config: cri::ContainerConfig, dir: &Path) -> Self {
        let state = if rec.removing {
            State::Removing
        } else if rec.exit.is_some() {
            State::Exited
        } else if rec.started_at_ns.is_some() {
            State::Running
        } else {
            State::Created
        };
        let proc = |pid: Option<i32>, start| pid.map(|pid| ProcId { pid, start });
        Container::new(
            ContainerMeta {
                init: proc(rec.pid, rec.pid_start),
                monitor: proc(rec.monitor_pid, rec.monitor_start),
                id: rec.id,
                pod_id: rec.pod_id,
                name_key: rec.name_key,
                image_id: rec.image_id,
                image_ref: rec.image_ref,
                created_at_ns: rec.created_at_ns,
                log_path: rec.log_path,
                stop_signal: rec.stop_signal,
                control_socket: rec.control_socket,
                cgroups: Cgroups {
                    v2: rec.cgroup,
                    v1: rec.cgroups_v1,
                },
                config,
                dir: dir.to_path_buf(),
            },
            Status {
                state,
                started_at_ns: rec.started_at_ns,
                exit: rec.exit,
                lost: rec.lost,
                resources: rec.resources,
                start_error: rec.start_error,
                starting_at_ns: rec.starting_at_ns,
            },
        )
    }

    pub fn load(dir: &Path) -> Result<Container> {
        let (rec, config) = record::load(dir, RECORD)?;
        Ok(Container::from_record(rec, config, dir))
    }

    /// The record of `meta` in status `s`.
    pub fn record_of(meta: &ContainerMeta, s: &Status) -> ContainerRecord {
        ContainerRecord {
            id: meta.id.clone(),
            pod_id: meta.pod_id.clone(),
            name_key: meta.name_key.clone(),
            image_id: meta.image_id.clone(),
            image_ref: meta.image_ref.clone(),
            created_at_ns: meta.created_at_ns,
            started_at_ns: s.started_at_ns,
            pid: meta.init.map(|p| p.pid),
            pid_start: meta.init.and_then(|p| p.start),
            log_path: meta.log_path.clone(),
            stop_signal: meta.stop_signal,
            control_socket: meta.control_socket.clone(),
            exit: s.exit.clone(),
            lost: s.lost,
            monitor_pid: meta.monitor.map(|p| p.pid),
            monitor_start: meta.monitor.and_then(|p| p.start),
            cgroup: meta.cgroups.v2.clone(),
            cgroups_v1: meta.cgroups.v1.clone(),
            resources: s.resources.clone(),
            start_error: s.start_error.clone(),
            removing: s.state == State::Removing,
            creating: false,
            starting_at_ns: s.starting_at_ns,
        }
    }

    /// Writes the record of the current status.
    pub fn save(&self) -> Result<()> {
        let _w = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let rec = Container::record_of(&self.meta, &self.lock());
        record::save(&self.meta.dir, RECORD, &rec)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the status.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Changes the status with `f` and persists it. The change holds in
    /// memory even when the record cannot be written (the error says so).
    pub fn update<T>(&self, f: impl FnOnce(&mut Status) -> T) -> Result<T> {
        let _w = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let (out, rec) = {
            let mut s = self.lock();
            let out = f(&mut s);
            (out, Container::record_of(&self.meta, &s))
        };
        self.changed.send_replace(());
        record::save(&self.meta.dir, RECORD, &rec)?;
        Ok(out)
    }

    /// Changes the status in memory only (for transient states such as
    /// `Stopping`, which a restarted server need not know).
    pub fn update_transient<T>(&self, f: impl FnOnce(&mut Status) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_replace(());
        out
    }

    /// Serializes lifecycle operations on this container.
    pub async fn begin_op(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.op.lock().await
    }

    /// Waits until the container's processes have ended, up to `limit`.
    pub async fn wait_exited(&self, limit: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let wait = async {
            loop {
                if self.lock().exited() {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok() && self.lock().exited()
    }

    /// Where the monitor records the exit status.
    pub fn exit_file(&self) -> PathBuf {
        self.meta.dir.join("exit.json")
    }

    /// The exit status the monitor recorded, if it has.
    pub fn read_exit_file(&self) -> Option<ExitStatus> {
        let bytes = record::read_optional(&self.exit_file()).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// The container's writable layer (the overlay's upper directory).
    pub fn upper_dir(&self) -> PathBuf {
        self.meta.dir.join("upper")
    }

    pub fn spec_file(&self) -> PathBuf {
        self.meta.dir.join("spec.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(dir: &Path) -> Container {
        Container::new(
            ContainerMeta {
                id: "c1".into(),
                pod_id: "p1".into(),
                name_key: "n".into(),
                image_id: "sha256:aa".into(),
                image_ref: "busybox".into(),
                created_at_ns: 1,
                log_path: None,
                stop_signal: libc::SIGTERM,
                control_socket: dir.join("ctl.sock"),
                init: Some(ProcId {
                    pid: 10,
                    start: Some(5),
                }),
                monitor: Some(ProcId {
                    pid: 9,
                    start: Some(4),
                }),
                cgroups: Cgroups::default(),
                config: cri::ContainerConfig::default(),
                dir: dir.to_path_buf(),
            },
            Status {
                state: State::Running,
                started_at_ns: Some(2),
                exit: None,
                lost: false,
                resources: Resources::default(),
                start_error: None,
                starting_at_ns: None,
            },
        )
    }

    #[test]
    fn records_round_trip_and_keep_the_state() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = container(d.path());
        c.update(|s| s.state = State::Removing).expect("save");
        record::save_config(d.path(), &c.meta.config).expect("config");
        let back = Container::load(d.path()).expect("load");
        assert_eq!(back.state(), State::Removing);
        assert_eq!(back.meta.init, c.meta.init);
        assert_eq!(back.meta.monitor, c.meta.monitor);
        assert_eq!(back.status().started_at_ns, Some(2));
    }

    #[test]
    fn transient_states_are_not_written() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = container(d.path());
        c.save().expect("save");
        c.update_transient(|s| s.state = State::Stopping);
        record::save_config(d.path(), &c.meta.config).expect("config");
        assert_eq!(c.state(), State::Stopping);
        assert_eq!(
            Container::load(d.path()).expect("load").state(),
            State::Running
        );
    }

    #[tokio::test]
    async fn waiting_for_the_exit_ends_when_it_is_recorded() {
        let d = tempfile::tempdir().expect("tempdir");
        let c = std::sync::Arc::new(container(d.path()));
        assert!(!c.wait_exited(Duration::from_millis(20)).await);
        let c2 = c.clone();
        let waiter = tokio::spawn(async move { c2.wait_exited(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.update(|s| {
            s.exit = Some(ExitStatus {
                exit_code: 0,
                signal: None,
                finished_at_ns: 3,
                oom_killed: false,
            });
            s.state = State::Exited;
        })
        .expect("update");
        assert!(waiter.await.expect("join"));
    }
}
