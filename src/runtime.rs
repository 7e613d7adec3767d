//! The runtime's state: pods, containers and images, in memory and on disk, and
//! the operations the CRI services call. Pod and container operations live in
//! `pods.rs` and `containers.rs`; this file holds the shared machinery.

use crate::config::Config;
use crate::containers::Container;
use crate::error::{Error, Result};
use crate::helpers::Reaper;
use crate::images::ImageStore;
use crate::pods::Pod;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, RwLock};
use tokio::sync::Mutex;

pub type Shared<T> = Arc<Mutex<T>>;

pub struct Runtime {
    pub cfg: Config,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub images: Arc<ImageStore>,
    pub puller: crate::pull::Puller,
    pub pods: RwLock<HashMap<String, Shared<Pod>>>,
    pub containers: RwLock<HashMap<String, Shared<Container>>>,
    /// Reserved pod and container names (CRI requires them to be unique).
    names: StdMutex<HashMap<String, String>>,
    /// Serializes mounting and releasing images' root filesystems.
    pub image_mounts: Mutex<()>,
    pub reaper: Reaper,
    /// The host's cgroup hierarchies, where containers get their cgroups.
    pub cgroups: sycri_native::cgroup::Layout,
    /// Pod networking: CNI configs and plugins.
    pub cni: crate::cni::Cni,
    /// The streaming server's tokens and URL, once it listens.
    pub streaming: std::sync::OnceLock<Arc<crate::streaming::Streaming>>,
}

/// The CRI list filters' rules: an id given as a prefix ("" = any) ...
pub fn id_selected(id: &str, wanted: &str) -> bool {
    wanted.is_empty() || id.starts_with(wanted)
}

/// ... and a label selector whose every pair must be on the object.
pub fn labels_selected(
    labels: &HashMap<String, String>,
    selector: &HashMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(crate) fn read_lock<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn write_lock<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Runs blocking engine work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

impl Runtime {
    /// Opens the stores and finds every pod, container and image left on disk.
    pub fn open(cfg: Config, reaper: Reaper) -> Result<Arc<Runtime>> {
        let state_dir = cfg.state_dir();
        let run_dir = cfg.run_dir.clone();
        for d in [
            state_dir.join("pods"),
            state_dir.join("containers"),
            run_dir.join("pods"),
            run_dir.join("c"),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let images = Arc::new(ImageStore::open(&cfg.storage_dir, &run_dir)?);
        let puller = crate::pull::Puller::new(&cfg)?;
        let cni = crate::cni::Cni::new(cfg.cni_conf_dir.clone(), cfg.cni_bin_dirs.clone());
        let rt = Runtime {
            cfg,
            state_dir,
            run_dir,
            images,
            puller,
            pods: RwLock::new(HashMap::new()),
            containers: RwLock::new(HashMap::new()),
            names: StdMutex::new(HashMap::new()),
            image_mounts: Mutex::new(()),
            reaper,
            cgroups: {
                let layout = sycri_native::cgroup::layout();
                if let Err(e) = layout.prepare(crate::resources::CGROUP_PARENT) {
                    tracing::warn!(
                        "cgroups: {e}; CreateContainer will fail where it must make them"
                    );
                }
                let missing: Vec<&str> = ["cpu", "cpuacct", "memory", "cpuset", "pids"]
                    .into_iter()
                    .filter(|c| {
                        let v2 = if *c == "cpuacct" { "cpu" } else { c };
                        !layout.v1.iter().any(|(x, _)| x == c)
                            && !layout.v2_controllers.iter().any(|x| x == v2)
                    })
                    .collect();
                if !missing.is_empty() {
                    tracing::warn!(
                        ?missing,
                        "cgroup controllers missing: limits on them are refused, their usage is not reported"
                    );
                }
                tracing::info!(v2 = ?layout.v2, v2_controllers = ?layout.v2_controllers, v1 = ?layout.v1, "cgroup hierarchies");
                layout
            },
            cni,
            streaming: std::sync::OnceLock::new(),
        };
        rt.recover()?;
        Ok(Arc::new(rt))
    }

    fn recover(&self) -> Result<()> {
        let mut pods = 0;
        for (id, dir) in list_dirs(&self.state_dir.join("pods")) {
            match Pod::load(&dir) {
                Ok(pod) => {
                    self.reserve_name(&pod.rec.name_key, &id)?;
                    write_lock(&self.pods).insert(id, Arc::new(Mutex::new(pod)));
                    pods += 1;
                }
                Err(e) => tracing::warn!(pod = %id, error = %e, "skipping unreadable pod state"),
            }
        }
        let mut containers = 0;
        for (id, dir) in list_dirs(&self.state_dir.join("containers")) {
            match Container::load(&dir) {
                Ok(c) => {
                    self.reserve_name(&c.rec.name_key, &id)?;
                    write_lock(&self.containers).insert(id, Arc::new(Mutex::new(c)));
                    containers += 1;
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "skipping unreadable container state")
                }
            }
        }
        tracing::info!(
            pods,
            containers,
            images = self.images.list().len(),
            "recovered state"
        );
        Ok(())
    }

    /// The image store, for blocking work on another thread.
    pub fn images_handle(&self) -> Arc<ImageStore> {
        self.images.clone()
    }

    pub fn reserve_name(&self, key: &str, id: &str) -> Result<()> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        match names.get(key) {
            Some(owner) if owner != id => Err(Error::AlreadyExists(format!(
                "name {key:?} is reserved by {owner}"
            ))),
            _ => {
                names.insert(key.to_string(), id.to_string());
                Ok(())
            }
        }
    }

    pub fn release_name(&self, key: &str, id: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.get(key).map(String::as_str) == Some(id) {
            names.remove(key);
        }
    }

    /// Finds an object by full id or unique id prefix.
    pub fn find<T>(
        map: &RwLock<HashMap<String, Shared<T>>>,
        id: &str,
    ) -> Option<(String, Shared<T>)> {
        let m = read_lock(map);
        if let Some(v) = m.get(id) {
            return Some((id.to_string(), v.clone()));
        }
        if id.is_empty() {
            return None;
        }
        let mut it = m.iter().filter(|(k, _)| k.starts_with(id));
        match (it.next(), it.next()) {
            (Some((k, v)), None) => Some((k.clone(), v.clone())),
            _ => None,
        }
    }

    pub fn pod_state_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("pods").join(id)
    }

    pub fn pod_run_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("pods").join(id)
    }

    pub fn container_state_dir(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(id)
    }

    pub fn container_run_dir(&self, id: &str) -> PathBuf {
        self.run_dir.join("c").join(id)
    }

    /// Whether any container still uses image `image_id`.
    pub async fn image_in_use(&self, image_id: &str, except: Option<&str>) -> bool {
        let all: Vec<(String, Shared<Container>)> = read_lock(&self.containers)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, c) in all {
            if Some(id.as_str()) == except {
                continue;
            }
            if c.lock().await.rec.image_id == image_id {
                return true;
            }
        }
        false
    }
}

/// (name, path) of each subdirectory.
pub fn list_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
    }
    v
}

/// The start time of process `pid` (field 22 of /proc/pid/stat), to tell a
/// process from a later one that reused its pid.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after ')' are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process that started at `start`.
pub fn process_alive(pid: i32, start: Option<u64>) -> bool {
    match (process_start_time(pid), start) {
        (Some(now), Some(then)) => now == then && !is_zombie(pid),
        (Some(_), None) => !is_zombie(pid),
        _ => false,
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Sends `sig` to `pid` if it is still the same process.
pub fn signal_process(pid: i32, start: Option<u64>, sig: i32) -> bool {
    if !process_alive(pid, start) {
        return false;
    }
    // SAFETY: kill(2) with integer arguments only.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Reads a persisted object: its record (`<name>` JSON) and its CRI config
/// (`config.pb`, protobuf) from `dir`.
pub fn load_record<R: serde::de::DeserializeOwned, C: prost::Message + Default>(
    dir: &Path,
    name: &str,
) -> Result<(R, C)> {
    let rec = serde_json::from_slice(
        &std::fs::read(dir.join(name)).map_err(|e| Error::io(format!("read {name}"), e))?,
    )
    .map_err(|e| Error::Internal(format!("{name}: {e}")))?;
    let config = C::decode(
        std::fs::read(dir.join("config.pb"))
            .map_err(|e| Error::io("read config.pb", e))?
            .as_slice(),
    )
    .map_err(|e| Error::Internal(format!("config.pb: {e}")))?;
    Ok((rec, config))
}

/// Writes a persisted object's record (`<name>` JSON in `dir`), atomically.
pub fn save_record<R: serde::Serialize>(dir: &Path, name: &str, rec: &R) -> Result<()> {
    let data = serde_json::to_vec_pretty(rec)
        .map_err(|e| Error::Internal(format!("encode {name}: {e}")))?;
    sycri_native::util::write_atomic(&dir.join(name), &data)
        .map_err(|e| Error::io(format!("write {name}"), e))
}

/// Reads a file that may not exist.
pub fn read_optional(p: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}
