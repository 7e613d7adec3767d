//! Containers: create, start, stop, remove, status, list, reopen-log. Each
//! container is driven by its monitor (`sycri __monitor`), which outlives us.

use crate::error::{Error, Result};
use crate::helpers::{run_helper, MONITOR_ARG};
use crate::images::{random_hex, ImageConfig, ImageRecord};
use crate::pods::Pod;
use crate::proto::cri;
use crate::runtime::{
    blocking, process_alive, process_start_time, read_lock, read_optional, signal_process,
    write_lock, Runtime,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sycri_native::container::{DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use sycri_native::monitor::{Ready, Request, Response};
use sycri_native::spec::{
    BindMount, ContainerSpec, ExitStatus, Namespaces, NsMode, ProcessSpec, Propagation,
};
use sycri_native::util::{now_ns, write_atomic};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

#[derive(Serialize, Deserialize, Clone, Debug)]
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
    pub resources: sycri_native::cgroup::Resources,
    /// Why StartContainer failed, if it did.
    #[serde(default)]
    pub start_error: Option<String>,
}

/// What CreateContainer has reserved for a container before making it.
struct NewContainer<'a> {
    id: &'a str,
    name_key: &'a str,
    cgroups: &'a sycri_native::cgroup::Cgroups,
}

pub struct Container {
    pub rec: ContainerRecord,
    pub config: cri::ContainerConfig,
    pub dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Created,
    Running,
    Exited,
}

impl Container {
    pub fn load(dir: &Path) -> Result<Container> {
        let (rec, config) = crate::runtime::load_record(dir, "container.json")?;
        Ok(Container {
            rec,
            config,
            dir: dir.to_path_buf(),
        })
    }

    pub fn save(&self) -> Result<()> {
        crate::runtime::save_record(&self.dir, "container.json", &self.rec)
    }

    fn exit_file(&self) -> PathBuf {
        self.dir.join("exit.json")
    }

    /// Brings the record up to date with what the monitor wrote, and notices a
    /// container whose monitor vanished without a word.
    pub fn refresh(&mut self) -> State {
        if self.rec.exit.is_none() {
            if let Ok(Some(b)) = read_optional(&self.exit_file()) {
                if let Ok(st) = serde_json::from_slice::<ExitStatus>(&b) {
                    self.rec.exit = Some(st);
                    let _ = self.save();
                }
            } else if self.monitor_gone() {
                // Look once more: the monitor may have written it just now.
                if let Ok(Some(b)) = read_optional(&self.exit_file()) {
                    if let Ok(st) = serde_json::from_slice::<ExitStatus>(&b) {
                        self.rec.exit = Some(st);
                    }
                }
                if self.rec.exit.is_none() {
                    self.rec.exit = Some(ExitStatus {
                        exit_code: 255,
                        signal: None,
                        finished_at_ns: now_ns(),
                        oom_killed: false,
                    });
                    self.rec.lost = true;
                }
                let _ = self.save();
            }
        }
        self.state()
    }

    pub fn state(&self) -> State {
        if self.rec.exit.is_some() {
            State::Exited
        } else if self.rec.started_at_ns.is_some() {
            State::Running
        } else {
            State::Created
        }
    }

    pub fn cri_state(&self) -> i32 {
        match self.state() {
            State::Created => cri::ContainerState::ContainerCreated as i32,
            State::Running => cri::ContainerState::ContainerRunning as i32,
            State::Exited => cri::ContainerState::ContainerExited as i32,
        }
    }

    pub fn status(&self) -> cri::ContainerStatus {
        let c = &self.config;
        let (exit_code, finished, reason) = match &self.rec.exit {
            Some(e) => (
                e.exit_code,
                e.finished_at_ns,
                if self.rec.start_error.is_some() {
                    "StartError"
                } else if self.rec.lost {
                    "Unknown"
                } else if e.oom_killed {
                    "OOMKilled"
                } else if e.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                },
            ),
            None => (0, 0, ""),
        };
        cri::ContainerStatus {
            id: self.rec.id.clone(),
            metadata: c.metadata.clone(),
            state: self.cri_state(),
            created_at: self.rec.created_at_ns,
            started_at: self.rec.started_at_ns.unwrap_or(0),
            finished_at: finished,
            exit_code,
            image: c.image.clone(),
            image_ref: self.rec.image_id.clone(),
            image_id: self.rec.image_id.clone(),
            reason: reason.to_string(),
            message: if let Some(e) = &self.rec.start_error {
                e.clone()
            } else if self.rec.lost {
                "the container's monitor ended without recording an exit status".into()
            } else {
                String::new()
            },
            labels: c.labels.clone(),
            annotations: c.annotations.clone(),
            mounts: c.mounts.clone(),
            log_path: self
                .rec
                .log_path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            resources: Some(cri::ContainerResources {
                linux: Some(crate::resources::to_cri(&self.rec.resources)),
                windows: None,
            }),
            user: None,
            stop_signal: c.stop_signal,
        }
    }

    /// Whether the container's monitor is gone (it records the exit before it
    /// goes, so a gone monitor and no exit file means it was lost).
    fn monitor_gone(&self) -> bool {
        match self.rec.monitor_pid {
            Some(m) => !process_alive(m, self.rec.monitor_start),
            // Records without a monitor pid: judge by the container process.
            None => self
                .rec
                .pid
                .is_some_and(|p| !process_alive(p, self.rec.pid_start)),
        }
    }

    fn alive_pid(&self) -> Option<i32> {
        self.rec
            .pid
            .filter(|p| process_alive(*p, self.rec.pid_start))
    }
}

/// argv from the CRI request and the image, the way kubelet expects: command
/// replaces the entrypoint, args replace the image's Cmd.
fn command_line(
    config: &cri::ContainerConfig,
    image: Option<&ImageConfig>,
    rootfs: &Path,
) -> Result<Vec<String>> {
    if !config.command.is_empty() {
        return Ok(config.command.iter().chain(&config.args).cloned().collect());
    }
    let entrypoint = image.and_then(|i| i.entrypoint.clone()).unwrap_or_default();
    let cmd = if !config.args.is_empty() {
        config.args.clone()
    } else {
        image.and_then(|i| i.cmd.clone()).unwrap_or_default()
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if !argv.is_empty() {
        return Ok(argv);
    }
    // No OCI config: the Singularity way, the image's run action.
    for (probe, argv0) in [
        (
            "/.singularity.d/actions/run",
            vec!["/.singularity.d/actions/run"],
        ),
        (
            "/.singularity.d/runscript",
            vec!["/bin/sh", "/.singularity.d/runscript"],
        ),
    ] {
        if sycri_native::resolve::resolve_in_root(rootfs, Path::new(probe))
            .map(|p| p.exists())
            .unwrap_or(false)
        {
            return Ok(argv0
                .into_iter()
                .map(String::from)
                .chain(config.args.iter().cloned())
                .collect());
        }
    }
    Err(Error::InvalidArgument(
        "no command: the request gives none and the image has no entrypoint, cmd or run action"
            .into(),
    ))
}

/// Image env, then the request's env (a later key replaces an earlier one).
fn environment(
    image: Option<&ImageConfig>,
    config: &cri::ContainerConfig,
    hostname: &str,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    set("HOSTNAME", hostname);
    if let Some(i) = image {
        for kv in &i.env {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            set(k, v);
        }
    }
    for kv in &config.envs {
        set(&kv.key, &String::from_utf8_lossy(&kv.value));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn capabilities(sc: &cri::LinuxContainerSecurityContext) -> Vec<String> {
    let norm = |c: &str| {
        let u = c.to_ascii_uppercase();
        if u.starts_with("CAP_") || u == "ALL" {
            u
        } else {
            format!("CAP_{u}")
        }
    };
    let mut caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if let Some(c) = &sc.capabilities {
        let add: Vec<String> = c.add_capabilities.iter().map(|s| norm(s)).collect();
        let drop: HashSet<String> = c.drop_capabilities.iter().map(|s| norm(s)).collect();
        if add.iter().any(|a| a == "ALL") {
            caps = caps::all().into_iter().map(|c| c.to_string()).collect();
        } else {
            for a in add {
                if !caps.contains(&a) {
                    caps.push(a);
                }
            }
        }
        if drop.contains("ALL") {
            caps.retain(|c| c.is_empty());
        } else {
            caps.retain(|c| !drop.contains(c));
        }
    }
    caps
}

fn stop_signal(config: &cri::ContainerConfig, image: Option<&ImageConfig>) -> i32 {
    if config.stop_signal != 0 {
        if let Some(sig) = cri::Signal::try_from(config.stop_signal)
            .ok()
            .and_then(|s| signal_number(s.as_str_name()))
        {
            return sig;
        }
    }
    image
        .map(|i| i.stop_signal.as_str())
        .filter(|s| !s.is_empty())
        .and_then(signal_number)
        .unwrap_or(libc::SIGTERM)
}

fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return Some(n);
    }
    let n = name.to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    format!("SIG{n}")
        .parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

impl Runtime {
    pub async fn create_container(
        self: &Arc<Self>,
        req: cri::CreateContainerRequest,
    ) -> Result<String> {
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("CreateContainer needs a config".into()))?;
        let md = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config needs metadata".into()))?;
        if md.name.is_empty() {
            return Err(Error::InvalidArgument(
                "container metadata needs a name".into(),
            ));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| Error::InvalidArgument("container config names no image".into()))?;
        let (pod_id, pod) = Runtime::find(&self.pods, &req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        let image = self.images.get(&image_name).ok_or_else(|| {
            Error::NotFound(format!("image {image_name:?} not found; pull it first"))
        })?;
        for m in &config.mounts {
            if m.image.is_some() {
                return Err(Error::Unimplemented(
                    "image volume mounts are not supported yet".into(),
                ));
            }
            if m.recursive_read_only {
                return Err(Error::Unimplemented(
                    "recursive read-only mounts are not supported yet".into(),
                ));
            }
            if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
                return Err(Error::Unimplemented(
                    "id-mapped mounts are not supported yet".into(),
                ));
            }
        }
        let pod_guard = pod.lock().await;
        if !pod_guard.rec.ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        let pod_name = pod_guard
            .config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let name_key = format!("{}_{}_{}", md.name, pod_name, md.attempt);
        let name_key = format!("{name_key}_{pod_id}");
        let id = random_hex(32);
        let parent = crate::resources::cgroup_parent(&pod_guard.config)?;
        let cgroups = self.cgroups.cgroups(&parent, &id);
        if parent != crate::resources::CGROUP_PARENT {
            // Normally the kubelet's pod cgroup; make sure it passes the
            // controllers on (sycri's own group was prepared at start).
            let layout = self.cgroups.clone();
            blocking(move || layout.prepare(&parent).map_err(Error::from)).await?;
        }
        self.reserve_name(&name_key, &id)?;
        let result = self
            .create_container_inner(
                NewContainer {
                    id: &id,
                    name_key: &name_key,
                    cgroups: &cgroups,
                },
                &pod_guard,
                config,
                &image,
                image_name,
            )
            .await;
        drop(pod_guard);
        match result {
            Ok(c) => {
                write_lock(&self.containers).insert(id.clone(), Arc::new(Mutex::new(c)));
                tracing::info!(container = %id, pod = %pod_id, "container created");
                Ok(id)
            }
            Err(e) => {
                self.release_name(&name_key, &id);
                let _ = blocking(move || {
                    sycri_native::cgroup::remove_all(&cgroups).map_err(Error::from)
                })
                .await;
                let _ = std::fs::remove_dir_all(self.container_state_dir(&id));
                let _ = std::fs::remove_dir_all(self.container_run_dir(&id));
                self.release_image_if_unused(&image.id, Some(&id)).await;
                Err(e)
            }
        }
    }

    async fn create_container_inner(
        self: &Arc<Self>,
        new: NewContainer<'_>,
        pod: &Pod,
        config: cri::ContainerConfig,
        image: &ImageRecord,
        image_ref: String,
    ) -> Result<Container> {
        let NewContainer {
            id,
            name_key,
            cgroups,
        } = new;
        if let Some(sc) = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
        {
            // A group without a user would pair it with the image's user, which
            // the kubelet never means (as containerd and CRI-O, refuse it).
            if sc.run_as_group.is_some()
                && sc.run_as_user.is_none()
                && sc.run_as_username.is_empty()
            {
                return Err(Error::InvalidArgument(
                    "run_as_group is set without run_as_user or run_as_username".into(),
                ));
            }
        }
        let rootfs = {
            let _g = self.image_mounts.lock().await;
            let (rt, rec) = (self.clone(), image.clone());
            blocking(move || rt.images.ensure_mounted(&rec)).await?
        };
        let state = self.container_state_dir(id);
        let run = self.container_run_dir(id);
        for d in [&state, &run.join("rootfs")] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let img_cfg = image.config.as_ref();
        let linux = config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();

        // Who runs the process.
        let mut ident = match (&sc.run_as_user, sc.run_as_username.as_str()) {
            (Some(u), _) => {
                let uid = u32::try_from(u.value).map_err(|_| {
                    Error::InvalidArgument(format!("run_as_user {} is out of range", u.value))
                })?;
                crate::userdb::resolve(&rootfs, &uid.to_string())?
            }
            (None, name) if !name.is_empty() => crate::userdb::resolve(&rootfs, name)?,
            _ => crate::userdb::resolve(&rootfs, img_cfg.map(|c| c.user.as_str()).unwrap_or(""))?,
        };
        if let Some(g) = &sc.run_as_group {
            ident.gid = u32::try_from(g.value).map_err(|_| {
                Error::InvalidArgument(format!("run_as_group {} is out of range", g.value))
            })?;
        }
        for g in &sc.supplemental_groups {
            let g = u32::try_from(*g).map_err(|_| {
                Error::InvalidArgument(format!("supplemental group {g} is out of range"))
            })?;
            if !ident.additional_gids.contains(&g) {
                ident.additional_gids.push(g);
            }
        }

        let args = command_line(&config, img_cfg, &rootfs)?;
        let env = environment(img_cfg, &config, &pod.rec.hostname);
        let cwd = if !config.working_dir.is_empty() {
            config.working_dir.clone()
        } else {
            img_cfg
                .map(|c| c.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into())
        };

        // Namespaces: the pod's, unless the request says otherwise.
        let ns = sc.namespace_options.clone().unwrap_or_default();
        let pod_ns = |own: bool, name: &str| {
            if own {
                NsMode::Join(pod.ns_path(name))
            } else {
                NsMode::Host
            }
        };
        let pid = match cri::NamespaceMode::try_from(ns.pid)
            .unwrap_or(cri::NamespaceMode::Container)
        {
            cri::NamespaceMode::Node => NsMode::Host,
            cri::NamespaceMode::Pod if pod.rec.own_pid => NsMode::Join(pod.ns_path("pid")),
            cri::NamespaceMode::Target => {
                let (_, target) =
                    Runtime::find(&self.containers, &ns.target_id).ok_or_else(|| {
                        Error::NotFound(format!("target container {:?} not found", ns.target_id))
                    })?;
                let t = target.lock().await;
                let tpid = t.alive_pid().ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "target container {} is not running",
                        ns.target_id
                    ))
                })?;
                NsMode::Join(PathBuf::from(format!("/proc/{tpid}/ns/pid")))
            }
            _ => NsMode::New,
        };
        let namespaces = Namespaces {
            ipc: if ns.ipc == cri::NamespaceMode::Node as i32 {
                NsMode::Host
            } else {
                pod_ns(pod.rec.own_ipc, "ipc")
            },
            uts: pod_ns(pod.rec.own_uts, "uts"),
            net: if ns.network == cri::NamespaceMode::Node as i32 {
                NsMode::Host
            } else {
                pod_ns(pod.rec.own_net, "net")
            },
            pid,
        };

        // Mounts: the request's, then the pod's /etc files where the request has none.
        let mut mounts = Vec::new();
        let mut targets = HashSet::new();
        for m in &config.mounts {
            if m.container_path.is_empty() || m.host_path.is_empty() {
                return Err(Error::InvalidArgument(
                    "a mount needs host_path and container_path".into(),
                ));
            }
            if !Path::new(&m.container_path).is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "mount destination {:?} is not absolute",
                    m.container_path
                )));
            }
            let source = PathBuf::from(&m.host_path);
            if !source.exists() {
                return Err(Error::NotFound(format!(
                    "mount source {} does not exist",
                    m.host_path
                )));
            }
            let propagation = match cri::MountPropagation::try_from(m.propagation) {
                Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::Slave,
                Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Shared,
                _ => Propagation::Private,
            };
            if propagation != Propagation::Private {
                check_propagation(&source, propagation)?;
            }
            targets.insert(PathBuf::from(&m.container_path));
            mounts.push(BindMount {
                source,
                destination: PathBuf::from(&m.container_path),
                readonly: m.readonly,
                propagation,
            });
        }
        // Devices (device plugins, GPUs): the host's node bound in, which
        // keeps working on the nodev /dev; "r" without "w" binds read-only.
        for d in &config.devices {
            let dest = Path::new(&d.container_path);
            if !dest.is_absolute() {
                return Err(Error::InvalidArgument(format!(
                    "device path {:?} in the container is not absolute",
                    d.container_path
                )));
            }
            let is_device = std::fs::metadata(&d.host_path).map(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_char_device() || m.file_type().is_block_device()
            });
            match is_device {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::InvalidArgument(format!(
                        "{} is not a device",
                        d.host_path
                    )))
                }
                Err(_) => {
                    return Err(Error::NotFound(format!(
                        "device {} does not exist",
                        d.host_path
                    )))
                }
            }
            targets.insert(dest.to_path_buf());
            mounts.push(BindMount {
                source: PathBuf::from(&d.host_path),
                destination: dest.to_path_buf(),
                readonly: !d.permissions.is_empty() && !d.permissions.contains('w'),
                propagation: Propagation::Private,
            });
        }
        for name in ["hostname", "hosts", "resolv.conf"] {
            let dest = PathBuf::from("/etc").join(name);
            if !targets.contains(&dest) {
                mounts.push(BindMount {
                    source: pod.rec.etc_dir.join(name),
                    destination: dest,
                    readonly: sc.readonly_rootfs,
                    propagation: Propagation::Private,
                });
            }
        }

        let privileged = sc.privileged;
        let masked = if !sc.masked_paths.is_empty() || privileged {
            sc.masked_paths.clone()
        } else {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        };
        let readonly = if !sc.readonly_paths.is_empty() || privileged {
            sc.readonly_paths.clone()
        } else {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let log_path = if config.log_path.is_empty() {
            None
        } else {
            let dir = pod.config.log_directory.as_str();
            if dir.is_empty() {
                Some(PathBuf::from(&config.log_path))
            } else {
                Some(Path::new(dir).join(&config.log_path))
            }
        };
        let control_socket = run.join("ctl.sock");
        // The cgroups and their limits exist before any process of the
        // container does.
        let resources = linux
            .resources
            .as_ref()
            .map(crate::resources::from_cri)
            .unwrap_or_default();
        {
            let (cgs, res) = (cgroups.clone(), resources.clone());
            blocking(move || {
                sycri_native::cgroup::create_all(&cgs)?;
                sycri_native::cgroup::apply(&cgs, &res)?;
                Ok(())
            })
            .await?;
        }
        // Out of range is the request's mistake; said, not clamped.
        let resources_oom_adj = match linux.resources.as_ref().map(|r| r.oom_score_adj) {
            None => None,
            Some(v) => Some(
                i32::try_from(v)
                    .ok()
                    .filter(|v| (-1000..=1000).contains(v))
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("oom_score_adj {v} is outside -1000..1000"))
                    })?,
            ),
        };
        let cgroup = cgroups.v2.clone();
        let caps = if privileged {
            Vec::new()
        } else {
            capabilities(&sc)
        };
        let seccomp = crate::seccomp::filter(&sc, privileged, &caps)?;
        let spec = ContainerSpec {
            id: id.to_string(),
            image_rootfs: rootfs,
            layer_dir: state.clone(),
            rootfs_mountpoint: run.join("rootfs"),
            readonly_rootfs: sc.readonly_rootfs,
            privileged,
            hostname: pod.rec.hostname.clone(),
            namespaces,
            shm: if ns.ipc == cri::NamespaceMode::Node as i32 {
                Some(PathBuf::from("/dev/shm"))
            } else {
                pod.rec.shm.clone()
            },
            shm_size: None,
            mounts,
            masked_paths: masked,
            readonly_paths: readonly,
            process: ProcessSpec {
                args,
                env,
                cwd,
                uid: ident.uid,
                gid: ident.gid,
                additional_gids: ident.additional_gids,
                capabilities: caps.clone(),
                no_new_privileges: sc.no_new_privs,
                tty: config.tty,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
                seccomp,
                oom_score_adj: resources_oom_adj,
            },
            log_path: log_path.clone(),
            control_socket: control_socket.clone(),
            cgroup: cgroup.clone(),
            cgroups_v1: cgroups.v1.iter().map(|(_, d)| d.clone()).collect(),
            exit_file: state.join("exit.json"),
        };
        write_atomic(&state.join("config.pb"), &config.encode_to_vec())
            .map_err(|e| Error::io("write container config", e))?;
        let spec_path = state.join("spec.json");
        write_atomic(
            &spec_path,
            &serde_json::to_vec_pretty(&spec).map_err(|e| Error::Internal(e.to_string()))?,
        )
        .map_err(|e| Error::io("write container spec", e))?;

        let (monitor, line) = run_helper(MONITOR_ARG, &spec_path).await?;
        let ready: Ready = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                let code = self.reaper.wait(monitor).await;
                return Err(Error::Internal(format!(
                    "container monitor (exit {code}) said {line:?}: {e}"
                )));
            }
        };
        if let Some(f) = ready.error {
            self.reaper.wait(monitor).await;
            return Err(Error::from(f));
        }
        // The monitor lives on; its exit is collected by the reaper later.
        self.reaper.forget(monitor);
        let pid = ready
            .pid
            .ok_or_else(|| Error::Internal("container monitor reported no pid".into()))?;
        let c = Container {
            rec: ContainerRecord {
                id: id.to_string(),
                pod_id: pod.rec.id.clone(),
                name_key: name_key.to_string(),
                image_id: image.id.clone(),
                image_ref,
                created_at_ns: now_ns(),
                started_at_ns: None,
                pid: Some(pid),
                pid_start: process_start_time(pid),
                log_path,
                stop_signal: stop_signal(&config, img_cfg),
                control_socket,
                exit: None,
                lost: false,
                monitor_pid: Some(monitor),
                monitor_start: process_start_time(monitor),
                cgroup,
                cgroups_v1: cgroups.v1.clone(),
                resources,
                start_error: None,
            },
            config,
            dir: state,
        };
        if let Err(e) = c.save() {
            signal_process(pid, c.rec.pid_start, libc::SIGKILL);
            return Err(e);
        }
        Ok(c)
    }

    async fn monitor_request(sock: &Path, req: &Request) -> Result<()> {
        let mut stream = tokio::net::UnixStream::connect(sock).await.map_err(|e| {
            Error::FailedPrecondition(format!(
                "container monitor is not reachable at {}: {e}",
                sock.display()
            ))
        })?;
        let mut line = serde_json::to_vec(req).map_err(|e| Error::Internal(e.to_string()))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .await
            .map_err(|e| Error::io("talk to container monitor", e))?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut answer))
            .await
            .map_err(|_| Error::DeadlineExceeded("container monitor did not answer".into()))?
            .map_err(|e| Error::io("read container monitor answer", e))?;
        let resp: Response = serde_json::from_str(answer.trim())
            .map_err(|e| Error::Internal(format!("container monitor answered {answer:?}: {e}")))?;
        match resp.error {
            Some(f) => Err(Error::from(f)),
            None if resp.ok => Ok(()),
            None => Err(Error::Internal(
                "container monitor refused without a reason".into(),
            )),
        }
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let (id, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let mut c = c.lock().await;
        match c.refresh() {
            State::Created => {}
            State::Running => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is already running"
                )))
            }
            State::Exited => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} has exited; containers cannot be restarted"
                )))
            }
        }
        let started = now_ns();
        if let Err(e) = Runtime::monitor_request(&c.rec.control_socket, &Request::Start).await {
            c.rec.start_error = Some(e.to_string());
            let _ = c.save();
            return Err(e);
        }
        c.rec.started_at_ns = Some(started);
        c.save()?;
        tracing::info!(container = %id, "container started");
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout` seconds.
    /// Unknown and already stopped containers are fine.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some((id, c)) = Runtime::find(&self.containers, id) else {
            return Ok(());
        };
        let mut c = c.lock().await;
        if c.refresh() == State::Exited {
            return Ok(());
        }
        let Some(pid) = c.rec.pid else {
            return Ok(());
        };
        let start = c.rec.pid_start;
        if c.state() == State::Running && timeout > 0 {
            signal_process(pid, start, c.rec.stop_signal);
            if wait_exit(&mut c, Duration::from_secs(timeout.unsigned_abs())).await {
                kill_cgroup(&c).await;
                tracing::info!(container = %id, "container stopped");
                return Ok(());
            }
        }
        signal_process(pid, start, libc::SIGKILL);
        if !wait_exit(&mut c, Duration::from_secs(10)).await {
            return Err(Error::DeadlineExceeded(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        kill_cgroup(&c).await;
        tracing::info!(container = %id, "container killed");
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let Some((id, c)) = Runtime::find(&self.containers, id) else {
            return Ok(());
        };
        self.stop_container(&id, 0).await?;
        let c = c.lock().await;
        let cgroups = c.cgroups();
        blocking(move || sycri_native::cgroup::remove_all(&cgroups).map_err(Error::from)).await?;
        for d in [self.container_run_dir(&id), c.dir.clone()] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", d.display()), e)),
            }
        }
        self.release_name(&c.rec.name_key, &id);
        let image_id = c.rec.image_id.clone();
        drop(c);
        write_lock(&self.containers).remove(&id);
        self.release_image_if_unused(&image_id, None).await;
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// Unmounts an image's root filesystem when no container uses it any more.
    pub async fn release_image_if_unused(&self, image_id: &str, except: Option<&str>) {
        let _g = self.image_mounts.lock().await;
        if self.image_in_use(image_id, except).await {
            return;
        }
        if let Err(e) = self.images.release_mount(image_id) {
            tracing::warn!(image = %image_id, error = %e, "could not release image mount");
        }
    }

    /// Status, and with `verbose` an `info` entry in JSON (pid, pod, monitor socket).
    pub async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<(cri::ContainerStatus, HashMap<String, String>)> {
        let (_, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let mut c = c.lock().await;
        c.refresh();
        let mut info = HashMap::new();
        if verbose {
            let v = serde_json::json!({
                "pid": c.alive_pid(),
                "sandboxID": c.rec.pod_id,
                "controlSocket": c.rec.control_socket,
                "imageID": c.rec.image_id,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok((c.status(), info))
    }

    pub async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Vec<cri::Container> {
        let all: Vec<_> = read_lock(&self.containers).values().cloned().collect();
        let mut out = Vec::new();
        for c in all {
            let mut c = c.lock().await;
            c.refresh();
            let s = c.status();
            if let Some(f) = &filter {
                let selected = crate::runtime::id_selected(&s.id, &f.id)
                    && crate::runtime::id_selected(&c.rec.pod_id, &f.pod_sandbox_id)
                    && f.state.as_ref().is_none_or(|st| st.state == s.state)
                    && crate::runtime::labels_selected(&s.labels, &f.label_selector);
                if !selected {
                    continue;
                }
            }
            out.push(cri::Container {
                id: s.id,
                pod_sandbox_id: c.rec.pod_id.clone(),
                metadata: s.metadata,
                image: s.image,
                image_ref: s.image_ref,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                image_id: s.image_id,
            });
        }
        out.sort_by_key(|c| c.created_at);
        out
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let (id, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let mut c = c.lock().await;
        if c.refresh() != State::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Runtime::monitor_request(&c.rec.control_socket, &Request::ReopenLog).await
    }
}

/// A mount that is to receive the host's mounts must sit on a shared or
/// slave mount, and one that is to send them back on a shared one; else the
/// propagation asked for could not happen, and the container would quietly
/// see an island. (The kubelet makes its volume directories shared.)
fn check_propagation(source: &Path, want: Propagation) -> Result<()> {
    let real = std::fs::canonicalize(source)
        .map_err(|e| Error::io(format!("resolve mount source {}", source.display()), e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    let (shared, slave) =
        sycri_native::mounts::propagation_of(&info, &real).unwrap_or((false, false));
    let ok = match want {
        Propagation::Shared => shared,
        Propagation::Slave => shared || slave,
        Propagation::Private => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "mount source {} is not on a {} mount, so the propagation asked for cannot happen",
            source.display(),
            if want == Propagation::Shared {
                "shared"
            } else {
                "shared or slave"
            }
        )))
    }
}

/// Ends whatever the container left running (children in a shared pid namespace).
async fn kill_cgroup(c: &Container) {
    let cgroups = c.cgroups();
    let _ = blocking(move || sycri_native::cgroup::kill_all(&cgroups).map_err(Error::from)).await;
}

/// Waits until the container has exited, up to `limit`.
async fn wait_exit(c: &mut Container, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if c.refresh() == State::Exited {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(command: &[&str], args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn command_follows_kubelet_rules() {
        let img = ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let root = Path::new("/nonexistent");
        assert_eq!(
            command_line(&cfg(&[], &[]), Some(&img), root).ok(),
            Some(vec!["/entry".into(), "default".into()])
        );
        assert_eq!(
            command_line(&cfg(&[], &["x"]), Some(&img), root).ok(),
            Some(vec!["/entry".into(), "x".into()])
        );
        assert_eq!(
            command_line(&cfg(&["sh"], &["-c", "y"]), Some(&img), root).ok(),
            Some(vec!["sh".into(), "-c".into(), "y".into()])
        );
        assert!(command_line(&cfg(&[], &[]), None, root).is_err());
    }

    #[test]
    fn environment_merges_image_then_request() {
        let img = ImageConfig {
            env: vec!["PATH=/img".into(), "A=1".into()],
            ..Default::default()
        };
        let mut c = cfg(&[], &[]);
        c.envs = vec![cri::KeyValue {
            key: "A".into(),
            value: b"2".to_vec(),
        }];
        let env = environment(Some(&img), &c, "h");
        assert!(env.contains(&"PATH=/img".to_string()));
        assert!(env.contains(&"A=2".to_string()));
        assert!(env.contains(&"HOSTNAME=h".to_string()));
        assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    }

    #[test]
    fn capabilities_add_and_drop() {
        let sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["sys_admin".into()],
                drop_capabilities: vec!["CAP_CHOWN".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let caps = capabilities(&sc);
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!caps.contains(&"CAP_CHOWN".to_string()));
        let none = capabilities(&cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(none.is_empty());
    }

    #[test]
    fn stop_signal_names() {
        assert_eq!(signal_number("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(signal_number("usr1"), Some(libc::SIGUSR1));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("NOPE"), None);
    }
}
