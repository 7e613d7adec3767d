//! The runtime's operations: what each CRI call does, in terms of the stores
//! (what exists), the engine (what is done to the host), the image store, the
//! puller and CNI. [`Runtime`] is the one object the CRI faces call; its
//! fields are private, and every `impl Runtime` is in this module's files.

mod container_spec;
mod containers;
mod exec;
mod images;
mod network;
mod pod_spec;
mod pods;
mod pull;
mod recover;
mod resources;
mod spare_net;
mod stream;
#[cfg(test)]
mod tests;

pub use container_spec::limits;
pub use containers::ContainerInfo;
pub use images::FsUsage;
pub use pods::PodInfo;
pub use resources::{ContainerUsage, PodUsage};

use crate::cni::Cni;
use crate::config::Config;
use crate::engine::{Engine, Reaper};
use crate::error::{Error, Result};
use crate::images::ImageStore;
use crate::pull::Puller;
use crate::store::container::Container;
use crate::store::pod::Pod;
use crate::store::{NameIndex, Store};
use crate::streaming::Streaming;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Runtime {
    cfg: Config,
    state_dir: PathBuf,
    run_dir: PathBuf,
    images: Arc<ImageStore>,
    puller: Puller,
    pods: Store<Pod>,
    containers: Store<Container>,
    /// CRI names of pods and containers, each unique.
    names: NameIndex,
    /// Serializes mounting and releasing images' root filesystems.
    image_mounts: tokio::sync::Mutex<()>,
    /// Images pinned by creations in flight, and their scheduled releases.
    image_use: crate::store::image_use::ImageUse,
    engine: Arc<dyn Engine>,
    /// Pod networking: CNI configs and plugins (run through `reaper`).
    cni: Cni,
    reaper: Reaper,
    /// The streaming server's token registry (None: no streaming server).
    streaming: Option<Arc<Streaming>>,
    /// Network namespaces made ahead for the next pods.
    spares: crate::store::spare_net::SpareNets,
}

impl Runtime {
    /// Opens the stores, finds every pod, container and image left on disk,
    /// finishes or undoes what a crash left half done (see `recover.rs`), and
    /// watches the containers that still run.
    pub async fn open(
        cfg: Config,
        engine: Arc<dyn Engine>,
        reaper: Reaper,
        streaming: Option<Arc<Streaming>>,
    ) -> Result<Arc<Runtime>> {
        let (state_dir, run_dir) = (cfg.state_dir(), cfg.run_dir.clone());
        for d in [
            state_dir.join("pods"),
            state_dir.join("containers"),
            run_dir.join("pods"),
            run_dir.join("c"),
            cfg.storage_dir.clone(),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        // Real paths: the kernel names mount points by them (a run directory
        // under /var/run is /run/...), and the mounts made here must be found
        // again by what they are called.
        let real = |p: &Path| {
            std::fs::canonicalize(p).map_err(|e| Error::io(format!("resolve {}", p.display()), e))
        };
        let (state_dir, run_dir) = (real(&state_dir)?, real(&run_dir)?);
        let images = Arc::new(ImageStore::open(&real(&cfg.storage_dir)?, &run_dir)?);
        let puller = Puller::new(&cfg)?;
        let cni = Cni::new(cfg.cni_conf_dir.clone(), cfg.cni_bin_dirs.clone());
        let spares = crate::store::spare_net::SpareNets::new(&run_dir, &state_dir, cfg.spare_netns);
        let rt = Arc::new(Runtime {
            cfg,
            state_dir,
            run_dir,
            images,
            puller,
            pods: Store::new("pod sandbox"),
            containers: Store::new("container"),
            names: NameIndex::default(),
            image_mounts: tokio::sync::Mutex::new(()),
            image_use: Default::default(),
            engine,
            cni,
            reaper,
            streaming,
            spares,
        });
        // Pods a crash left half made are undone first: their DEL may still
        // find the spare their ADD ran on.
        rt.recover().await?;
        rt.sweep_spare_nets().await;
        Ok(rt)
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn cni(&self) -> &Cni {
        &self.cni
    }

    fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    fn pod_run_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("pods").join(id)
    }

    fn container_state_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }

    fn container_run_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("c").join(id)
    }

    /// Why this host cannot run containers with sycri's engine, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        for needed in ["squashfs", "overlay"] {
            if !fs
                .lines()
                .any(|l| l.split_whitespace().last() == Some(needed))
            {
                return Some(format!("the kernel has no {needed} filesystem"));
            }
        }
        if !Path::new("/dev/loop-control").exists() {
            return Some("/dev/loop-control is missing (no loop device support)".into());
        }
        for d in [&self.run_dir, &self.state_dir] {
            if !d.is_dir() {
                return Some(format!("{} is missing", d.display()));
            }
        }
        None
    }
}
