//! CreateContainer, StartContainer, StopContainer, RemoveContainer,
//! ContainerStatus, ListContainers, ReopenContainerLog, and the watcher that
//! records each container's exit. Each container is driven by its monitor,
//! which outlives the server.

use super::container_spec as spec;
use super::Runtime;
use crate::error::{Error, Result};
use crate::images::ImageRecord;
use crate::proto::cri;
use crate::store::container::{self, Container, ContainerMeta, ContainerRecord, State, Status};
use crate::store::pod::Pod;
use crate::store::record;
use crate::util::random_hex;
use std::sync::Arc;
use std::time::Duration;
use sycri_native::cgroup::{Cgroups, Resources};
use sycri_native::spec::{BindMount, ContainerSpec, ExitStatus, Namespaces, ProcessSpec};
use sycri_native::util::now_ns;

/// How long a container gets to die after SIGKILL before Stop gives up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Everything about a new container that needs neither its image mounted
/// nor anything made on the host: worked out (and checked) first.
struct Plan {
    id: String,
    name_key: String,
    config: cri::ContainerConfig,
    sc: cri::LinuxContainerSecurityContext,
    image: ImageRecord,
    namespaces: Namespaces,
    mounts: Vec<BindMount>,
    masked: Vec<String>,
    readonly: Vec<String>,
    log_path: Option<std::path::PathBuf>,
    limits: Resources,
    oom_score_adj: Option<i32>,
    capabilities: Vec<String>,
    seccomp: Option<sycri_native::seccomp::Filter>,
    cgroups: Cgroups,
    /// The image as the request names it.
    image_ref: String,
    /// When CreateContainer took the request: the same in the intent record
    /// and the container's.
    created_at_ns: i64,
}

/// A container with a copy of its status (and, verbose, its `info`).
pub struct ContainerInfo {
    pub container: Arc<Container>,
    pub status: Status,
    pub info: std::collections::HashMap<String, String>,
}

impl Runtime {
    pub async fn create_container(
        self: &Arc<Self>,
        req: cri::CreateContainerRequest,
    ) -> Result<String> {
        let began = std::time::Instant::now();
        let _starting = self.spares.starting();
        let config = req
            .config
            .ok_or_else(|| Error::InvalidArgument("CreateContainer needs a config".into()))?;
        spec::check_request(&config)?;
        let image_name = spec::image_name(&config)?;
        let pod = self.pods.get(&req.pod_sandbox_id)?;
        // The pod stays as it is (ready) while its container is made.
        let _pod_op = pod.shared_op().await;
        if !pod.status().ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.meta.id
            )));
        }
        let image = self.images.get(&image_name).ok_or_else(|| {
            Error::NotFound(format!("image {image_name:?} not found; pull it first"))
        })?;
        let parent = self.cgroup_parent(&pod.meta.config)?;
        let plan = self.plan(&pod, config, image, image_name, &parent)?;
        if parent != self.cfg.cgroup_parent_path() {
            // Normally the kubelet's pod cgroup; make sure it passes the
            // controllers on (sycri's own group was prepared at start).
            self.engine.prepare_cgroup_parent(&parent).await?;
        }
        self.names.reserve(&plan.name_key, &plan.id)?;
        if let Err(e) = self.write_intent(&pod, &plan) {
            self.names.release(&plan.name_key, &plan.id);
            let _ = record::remove_dir(&self.container_state_dir(&plan.id));
            return Err(e);
        }
        let (id, name_key, cgroups, image_id) = (
            plan.id.clone(),
            plan.name_key.clone(),
            plan.cgroups.clone(),
            plan.image.id.clone(),
        );
        let pin = self.pin_image(&image_id);
        let planned = began.elapsed();
        match self.make_container(&pod, plan).await {
            Ok(c) => {
                tracing::debug!(
                    container = %id,
                    planned_ms = planned.as_secs_f64() * 1e3,
                    made_ms = began.elapsed().as_secs_f64() * 1e3,
                    "container made"
                );
                let c = Arc::new(c);
                self.containers.insert(c.clone());
                drop(pin);
                self.watch(c);
                tracing::info!(container = %id, pod = %pod.meta.id, "container created");
                Ok(id)
            }
            Err(e) => {
                self.names.release(&name_key, &id);
                let _ = record::remove_dir(&self.container_run_dir(&id));
                match self.engine.remove_cgroups(&cgroups).await {
                    Ok(()) => {
                        let _ = record::remove_dir(&self.container_state_dir(&id));
                    }
                    // The intent record names the cgroups, which may be under
                    // a pod's parent the restart sweep does not look in: it
                    // stays, and the next start undoes the creation again.
                    Err(ce) => tracing::warn!(
                        container = %id, error = %ce,
                        "removing the cgroups of a failed container; its intent record stays"
                    ),
                }
                drop(pin);
                self.release_image_if_unused(&image_id).await;
                Err(e)
            }
        }
    }

    /// Works out the new container from its request, pod and image, and
    /// refuses a bad request before anything is made.
    fn plan(
        &self,
        pod: &Pod,
        config: cri::ContainerConfig,
        image: ImageRecord,
        image_ref: String,
        cgroup_parent: &str,
    ) -> Result<Plan> {
        let created_at_ns = now_ns();
        let sc = spec::security_context(&config);
        let pod_privileged = pod
            .meta
            .config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if sc.privileged && !pod_privileged {
            // As containerd: a privileged container needs a privileged pod
            // (the kubelet checks it too; a hand-made request may not).
            return Err(Error::InvalidArgument(
                "a privileged container needs a privileged pod sandbox".into(),
            ));
        }
        let (limits, oom_score_adj) = spec::resources(&config)?;
        let capabilities = if sc.privileged {
            Vec::new()
        } else {
            spec::capabilities(&sc)
        };
        let seccomp = crate::seccomp::filter(&sc, sc.privileged, &capabilities)?;
        let target_pid = match spec::pid_target(&sc) {
            Some(target) => Some(self.running_pid(target)?),
            None => None,
        };
        let namespaces = spec::namespaces(&sc, &pod.meta, target_pid)?;
        let mountinfo = if config.mounts.iter().any(|m| m.propagation != 0) {
            std::fs::read_to_string("/proc/self/mountinfo")
                .map_err(|e| Error::io("read /proc/self/mountinfo", e))?
        } else {
            String::new()
        };
        let mut mounts = spec::volume_mounts(&config, &mountinfo)?;
        mounts.extend(spec::devices(&config)?);
        let etc = spec::pod_etc_mounts(&pod.meta, &mounts, sc.readonly_rootfs);
        mounts.extend(etc);
        let (masked, readonly) = spec::masked_and_readonly_paths(&sc);
        let md = config.metadata.clone().unwrap_or_default();
        let name_key = format!(
            "{}_{}_{}_{}",
            md.name,
            pod.meta.name(),
            md.attempt,
            pod.meta.id
        );
        let id = random_hex(32);
        let cgroups = self.engine.cgroups_for(cgroup_parent, &id);
        Ok(Plan {
            log_path: spec::log_path(&config, &pod.meta),
            id,
            name_key,
            config,
            sc,
            image,
            namespaces,
            mounts,
            masked,
            readonly,
            limits,
            oom_score_adj,
            capabilities,
            seccomp,
            cgroups,
            image_ref,
            created_at_ns,
        })
    }

    /// Writes the intent before anything is made: a record marked `creating`
    /// that names what will be made (the cgroups, the directories), so that a
    /// server killed half way finds and undoes it (`recover.rs`).
    fn write_intent(&self, pod: &Pod, p: &Plan) -> Result<()> {
        let state = self.container_state_dir(&p.id);
        std::fs::create_dir_all(&state)
            .map_err(|e| Error::io(format!("create {}", state.display()), e))?;
        record::save_config(&state, &p.config)?;
        let intent = ContainerRecord {
            id: p.id.clone(),
            pod_id: pod.meta.id.clone(),
            name_key: p.name_key.clone(),
            image_id: p.image.id.clone(),
            image_ref: p.image_ref.clone(),
            created_at_ns: p.created_at_ns,
            control_socket: self.container_run_dir(&p.id).join("ctl.sock"),
            cgroup: p.cgroups.v2.clone(),
            cgroups_v1: p.cgroups.v1.clone(),
            creating: true,
            ..ContainerRecord::default()
        };
        record::save(&state, container::RECORD, &intent)
    }

    /// The running first process of container `id` (a pid namespace TARGET).
    fn running_pid(&self, id: &str) -> Result<i32> {
        let c = self
            .containers
            .find(id)
            .ok_or_else(|| Error::NotFound(format!("target container {id:?} not found")))?;
        let running = matches!(c.state(), State::Running | State::Stopping);
        match c.meta.init {
            Some(p) if running && self.engine.alive(p) => Ok(p.pid),
            _ => Err(Error::FailedPrecondition(format!(
                "target container {id} is not running"
            ))),
        }
    }

    /// Makes what the plan describes: the image mount, directories, cgroups
    /// with their limits, the monitor with the container's first process,
    /// and the record. The caller undoes it all if this fails.
    async fn make_container(&self, pod: &Pod, p: Plan) -> Result<Container> {
        let rootfs = self.mount_image(&p.image).await?;
        let img_cfg = p.image.config.as_ref();
        let ident = spec::identity(&p.sc, img_cfg, &rootfs)?;
        let args = spec::command_line(&p.config, img_cfg, &rootfs)?;
        let env = spec::environment(img_cfg, &p.config, &pod.meta.hostname);
        let state = self.container_state_dir(&p.id);
        let run = self.container_run_dir(&p.id);
        let rootfs_mountpoint = run.join("rootfs");
        std::fs::create_dir_all(&rootfs_mountpoint)
            .map_err(|e| Error::io(format!("create {}", rootfs_mountpoint.display()), e))?;
        // The cgroups and their limits exist before any process of the
        // container does.
        self.engine.create_cgroups(&p.cgroups, &p.limits).await?;
        let control_socket = run.join("ctl.sock");
        let container_spec = ContainerSpec {
            id: p.id.clone(),
            image_rootfs: rootfs,
            layer_dir: state.clone(),
            rootfs_mountpoint: run.join("rootfs"),
            readonly_rootfs: p.sc.readonly_rootfs,
            privileged: p.sc.privileged,
            hostname: pod.meta.hostname.clone(),
            namespaces: p.namespaces,
            shm: spec::shm(&p.sc, &pod.meta),
            shm_size: None,
            mounts: p.mounts,
            masked_paths: p.masked,
            readonly_paths: p.readonly,
            process: ProcessSpec {
                args,
                env,
                cwd: spec::working_dir(&p.config, img_cfg),
                uid: ident.uid,
                gid: ident.gid,
                additional_gids: ident.additional_gids,
                capabilities: p.capabilities,
                no_new_privileges: p.sc.no_new_privs,
                tty: p.config.tty,
                stdin: p.config.stdin,
                stdin_once: p.config.stdin_once,
                seccomp: p.seccomp,
                oom_score_adj: p.oom_score_adj,
            },
            log_path: p.log_path.clone(),
            control_socket: control_socket.clone(),
            cgroup: p.cgroups.v2.clone(),
            cgroups_v1: p.cgroups.v1.iter().map(|(_, d)| d.clone()).collect(),
            exit_file: state.join("exit.json"),
        };
        let spawned = self
            .engine
            .spawn_monitor(&container_spec, &state.join("spec.json"))
            .await?;
        let c = Container::new(
            ContainerMeta {
                id: p.id,
                pod_id: pod.meta.id.clone(),
                name_key: p.name_key,
                image_id: p.image.id.clone(),
                image_ref: p.image_ref,
                created_at_ns: p.created_at_ns,
                log_path: p.log_path,
                stop_signal: spec::stop_signal(&p.config, img_cfg),
                control_socket,
                init: Some(spawned.init),
                monitor: Some(spawned.monitor),
                cgroups: p.cgroups,
                config: p.config,
                dir: state,
            },
            Status {
                state: State::Created,
                started_at_ns: None,
                exit: None,
                lost: false,
                resources: p.limits,
                start_error: None,
                starting_at_ns: None,
            },
        );
        if let Err(e) = c.save() {
            self.engine.signal(spawned.init, libc::SIGKILL);
            self.engine.signal(spawned.monitor, libc::SIGKILL);
            return Err(e);
        }
        Ok(c)
    }

    /// Records the container's exit when its processes end: the monitor
    /// writes the exit status when it has reaped the container's first
    /// process; a monitor that went without writing one lost the container.
    pub(super) fn watch(self: &Arc<Self>, c: Arc<Container>) {
        if c.status().exited() {
            return;
        }
        let rt = self.clone();
        tokio::spawn(async move { rt.watch_exit(&c).await });
    }

    async fn watch_exit(&self, c: &Container) {
        let (init, monitor) = (c.meta.init, c.meta.monitor);
        let Some(main) = monitor.or(init) else {
            self.record_exit(c, None);
            return;
        };
        match init.filter(|_| monitor.is_some()) {
            Some(i) => {
                tokio::select! {
                    _ = self.engine.wait_gone(i) => {}
                    _ = self.engine.wait_gone(main) => {}
                }
            }
            None => self.engine.wait_gone(main).await,
        }
        loop {
            if let Some(e) = c.read_exit_file() {
                self.record_exit(c, Some(e));
                return;
            }
            if !self.engine.alive(main) {
                // It may have written the status just before it went.
                let e = c.read_exit_file();
                self.record_exit(c, e);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = self.engine.wait_gone(main) => {}
            }
        }
    }

    /// Notes the exit in the container's status (None: it was lost).
    fn record_exit(&self, c: &Container, exit: Option<ExitStatus>) {
        let lost = exit.is_none();
        let exit = exit.unwrap_or_else(|| ExitStatus {
            exit_code: 255,
            signal: None,
            finished_at_ns: now_ns(),
            oom_killed: false,
        });
        let res = c.update(|s| {
            if s.exit.is_none() {
                s.exit = Some(exit);
                s.lost = lost;
            }
            if s.state != State::Removing {
                s.state = State::Exited;
            }
        });
        if let Err(e) = res {
            tracing::warn!(container = %c.meta.id, error = %e, "could not record the exit");
        }
        tracing::debug!(container = %c.meta.id, lost, "container exited");
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let _starting = self.spares.starting();
        let c = self.containers.get(id)?;
        let id = c.meta.id.as_str();
        let _op = c.begin_op().await;
        match c.state() {
            State::Created => {}
            State::Running | State::Stopping => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is already running"
                )))
            }
            State::Exited => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} has exited; containers cannot be restarted"
                )))
            }
            State::Removing => {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is being removed"
                )))
            }
        }
        // The intent first: a server killed after the monitor started the
        // container, before the answer was recorded, asks again (recover.rs).
        let started = now_ns();
        c.update(|s| s.starting_at_ns = Some(started))?;
        if let Err(e) = self.engine.start(&c.meta.control_socket).await {
            let _ = c.update(|s| {
                s.starting_at_ns = None;
                s.start_error = Some(e.to_string());
            });
            return Err(e);
        }
        c.update(|s| {
            s.starting_at_ns = None;
            s.started_at_ns = Some(started);
            if s.state == State::Created {
                s.state = State::Running;
            }
        })?;
        tracing::info!(container = %id, "container started");
        Ok(())
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout`
    /// seconds. Unknown and already stopped containers are fine. No lock is
    /// held while it waits: reads, and a second Stop (say with a shorter
    /// timeout), go on meanwhile.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let Some(c) = self.containers.find(id) else {
            return Ok(());
        };
        let id = c.meta.id.as_str();
        let state = {
            let _op = c.begin_op().await;
            let s = c.status();
            if s.exited() {
                return Ok(());
            }
            if s.state == State::Running {
                c.update_transient(|s| {
                    if s.state == State::Running {
                        s.state = State::Stopping;
                    }
                });
            }
            s.state
        };
        let Some(init) = c.meta.init else {
            return Ok(());
        };
        let running = matches!(state, State::Running | State::Stopping);
        if running && timeout > 0 {
            self.engine.signal(init, c.meta.stop_signal);
            if c.wait_exited(Duration::from_secs(timeout.unsigned_abs()))
                .await
            {
                self.end_leftovers(&c).await;
                tracing::info!(container = %id, "container stopped");
                return Ok(());
            }
        }
        self.engine.signal(init, libc::SIGKILL);
        if !c.wait_exited(KILL_WAIT).await {
            return Err(Error::DeadlineExceeded(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        self.end_leftovers(&c).await;
        tracing::info!(container = %id, "container killed");
        Ok(())
    }

    /// Ends whatever the container left running (children in a shared pid
    /// namespace).
    async fn end_leftovers(&self, c: &Container) {
        if let Err(e) = self.engine.kill_cgroups(&c.meta.cgroups).await {
            tracing::debug!(container = %c.meta.id, error = %e, "killing what the container left");
        }
    }

    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(c) = self.containers.find(id) else {
            return Ok(());
        };
        let id = c.meta.id.clone();
        self.stop_container(&id, 0).await?;
        let _op = c.begin_op().await;
        if self.containers.find(&id).is_none() {
            // Removed by another RemoveContainer while we waited.
            return Ok(());
        }
        c.update(|s| s.state = State::Removing)?;
        self.engine.remove_cgroups(&c.meta.cgroups).await?;
        record::remove_dir(&self.container_run_dir(&id))?;
        record::remove_record_dir(&c.meta.dir, crate::store::container::RECORD)?;
        self.names.release(&c.meta.name_key, &id);
        self.containers.remove(&id);
        self.release_image_if_unused(&c.meta.image_id).await;
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// A container and its status; with `verbose` an `info` entry in JSON
    /// (pid, pod, monitor socket).
    pub fn container_status(&self, id: &str, verbose: bool) -> Result<ContainerInfo> {
        let c = self.containers.get(id)?;
        let status = c.status();
        let mut info = std::collections::HashMap::new();
        if verbose {
            let pid = c
                .meta
                .init
                .filter(|p| !status.exited() && self.engine.alive(*p))
                .map(|p| p.pid);
            let v = serde_json::json!({
                "pid": pid,
                "sandboxID": c.meta.pod_id,
                "controlSocket": c.meta.control_socket,
                "imageID": c.meta.image_id,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(ContainerInfo {
            container: c,
            status,
            info,
        })
    }

    /// Every container with its status (the CRI face filters and orders them).
    pub fn list_containers(&self) -> Vec<(Arc<Container>, Status)> {
        self.containers
            .list()
            .into_iter()
            .map(|c| {
                let s = c.status();
                (c, s)
            })
            .collect()
    }

    /// A running container (or one being stopped, which still runs).
    pub(super) fn running_container(&self, id: &str) -> Result<Arc<Container>> {
        let c = self.containers.get(id)?;
        match c.state() {
            State::Running | State::Stopping => Ok(c),
            _ => Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                c.meta.id
            ))),
        }
    }

    pub async fn reopen_log(&self, id: &str) -> Result<()> {
        let c = self.running_container(id)?;
        self.engine.reopen_log(&c.meta.control_socket).await
    }
}
