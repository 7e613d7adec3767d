//! A pod sandbox as the runtime keeps it: immutable metadata (its namespaces,
//! /etc files, shm, pod init), a status cell (ready, IPs) and an operation
//! guard that container creation takes shared and Stop/Remove take alone.

use super::record;
use super::Keyed;
use crate::engine::ProcId;
use crate::error::Result;
use crate::proto::cri;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The record file (`pod.json`); field names as older servers wrote them.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct PodRecord {
    pub id: String,
    pub name_key: String,
    pub created_at_ns: i64,
    pub ready: bool,
    pub hostname: String,
    /// Directory of the pinned namespace files.
    pub ns_dir: PathBuf,
    pub own_net: bool,
    pub own_ipc: bool,
    pub own_uts: bool,
    pub own_pid: bool,
    pub init_pid: Option<i32>,
    pub init_start: Option<u64>,
    /// The pod's shared /dev/shm (a tmpfs), when IPC is per pod.
    pub shm: Option<PathBuf>,
    /// hostname, hosts, resolv.conf for the containers.
    pub etc_dir: PathBuf,
    pub runtime_handler: String,
    /// The pod's IPs from its CNI network (IPv4 first); empty when it has none
    /// or its network is torn down.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// RunPodSandbox has begun and not finished (written before anything is
    /// made): a restarted server undoes what it finds of it.
    #[serde(default)]
    pub creating: bool,
    /// RemovePodSandbox has begun: a restarted server finishes it.
    #[serde(default)]
    pub removing: bool,
}

/// What never changes once the pod exists.
#[derive(Clone, Debug)]
pub struct PodMeta {
    pub id: String,
    pub name_key: String,
    pub created_at_ns: i64,
    pub hostname: String,
    pub ns_dir: PathBuf,
    pub own_net: bool,
    pub own_ipc: bool,
    pub own_uts: bool,
    pub own_pid: bool,
    /// The pod's init, holding a shared pid namespace.
    pub init: Option<ProcId>,
    pub shm: Option<PathBuf>,
    pub etc_dir: PathBuf,
    pub runtime_handler: String,
    pub config: cri::PodSandboxConfig,
    /// Its state directory (record, config, network attachment).
    pub dir: PathBuf,
}

impl PodMeta {
    /// The pinned namespace file of `name` ("net", "ipc", "uts", "pid").
    pub fn ns_path(&self, name: &str) -> PathBuf {
        self.ns_dir.join(name)
    }

    /// The pod's name as its metadata says.
    pub fn name(&self) -> &str {
        self.config
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or("")
    }
}

#[derive(Clone, Debug, Default)]
pub struct PodStatus {
    pub ready: bool,
    pub ips: Vec<IpAddr>,
    /// RemovePodSandbox has begun.
    pub removing: bool,
}

pub struct Pod {
    pub meta: PodMeta,
    status: Mutex<PodStatus>,
    /// Held while a change is written: records reach the disk in order.
    persist: Mutex<()>,
    op: tokio::sync::RwLock<()>,
}

pub const RECORD: &str = "pod.json";

impl Keyed for Pod {
    fn id(&self) -> &str {
        &self.meta.id
    }
}

impl Pod {
    pub fn new(meta: PodMeta, status: PodStatus) -> Pod {
        Pod {
            meta,
            status: Mutex::new(status),
            persist: Mutex::new(()),
            op: tokio::sync::RwLock::new(()),
        }
    }

    pub fn from_record(rec: PodRecord, config: cri::PodSandboxConfig, dir: &Path) -> Pod {
        Pod::new(
            PodMeta {
                init: rec.init_pid.map(|pid| ProcId {
                    pid,
                    start: rec.init_start,
                }),
                id: rec.id,
                name_key: rec.name_key,
                created_at_ns: rec.created_at_ns,
                hostname: rec.hostname,
                ns_dir: rec.ns_dir,
                own_net: rec.own_net,
                own_ipc: rec.own_ipc,
                own_uts: rec.own_uts,
                own_pid: rec.own_pid,
                shm: rec.shm,
                etc_dir: rec.etc_dir,
                runtime_handler: rec.runtime_handler,
                config,
                dir: dir.to_path_buf(),
            },
            PodStatus {
                ready: rec.ready,
                ips: rec.ips,
                removing: rec.removing,
            },
        )
    }

    pub fn load(dir: &Path) -> Result<Pod> {
        let (rec, config) = record::load(dir, RECORD)?;
        Ok(Pod::from_record(rec, config, dir))
    }

    pub fn record_of(meta: &PodMeta, s: &PodStatus) -> PodRecord {
        PodRecord {
            id: meta.id.clone(),
            name_key: meta.name_key.clone(),
            created_at_ns: meta.created_at_ns,
            ready: s.ready,
            hostname: meta.hostname.clone(),
            ns_dir: meta.ns_dir.clone(),
            own_net: meta.own_net,
            own_ipc: meta.own_ipc,
            own_uts: meta.own_uts,
            own_pid: meta.own_pid,
            init_pid: meta.init.map(|p| p.pid),
            init_start: meta.init.and_then(|p| p.start),
            shm: meta.shm.clone(),
            etc_dir: meta.etc_dir.clone(),
            runtime_handler: meta.runtime_handler.clone(),
            ips: s.ips.clone(),
            creating: false,
            removing: s.removing,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PodStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> PodStatus {
        self.lock().clone()
    }

    pub fn save(&self) -> Result<()> {
        let _w = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let rec = Pod::record_of(&self.meta, &self.lock());
        record::save(&self.meta.dir, RECORD, &rec)
    }

    /// Changes the status with `f` and persists it.
    pub fn update<T>(&self, f: impl FnOnce(&mut PodStatus) -> T) -> Result<T> {
        let _w = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let (out, rec) = {
            let mut s = self.lock();
            let out = f(&mut s);
            (out, Pod::record_of(&self.meta, &s))
        };
        record::save(&self.meta.dir, RECORD, &rec)?;
        Ok(out)
    }

    /// Taken shared by CreateContainer (the pod must stay ready while a
    /// container is made in it), alone by Stop and Remove.
    pub async fn shared_op(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.op.read().await
    }

    pub async fn exclusive_op(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.op.write().await
    }
}
