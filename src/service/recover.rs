//! What a restarted server does with what it finds: every pod and container
//! on disk goes back into the stores, and whatever a crash left half done is
//! finished or undone, so that each object is either listed (and removable)
//! or gone, with nothing of it left on the host.
//!
//! Operations write their intent before their first side effect: a record
//! marked `creating` (CreateContainer, RunPodSandbox), `starting_at_ns`
//! (StartContainer), `removing` (RemoveContainer, RemovePodSandbox). Here a
//! creation found half made is undone (its helper processes found by the
//! spec file they run on, since their pids may never have been recorded); a
//! start is asked again; a removal is finished. Image mounts no container
//! uses are adopted and released after the delay (a crash between a
//! container's removal and its image's release would otherwise keep them
//! mounted for ever).

use super::Runtime;
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::store::container::{self, Container, ContainerRecord, State};
use crate::store::pod::{self, Pod, PodRecord};
use crate::store::record;
use std::path::Path;
use std::sync::Arc;
use sycri_native::cgroup::Cgroups;

impl Runtime {
    pub(super) async fn recover(self: &Arc<Self>) -> Result<()> {
        let mut removing_pods = Vec::new();
        for (id, dir) in record::list_dirs(&self.state_dir.join("pods")) {
            if !dir.join(pod::RECORD).exists() {
                // Killed between making the directory and writing the intent.
                self.undo_pod_dir(&id, &dir).await;
                continue;
            }
            match record::load::<PodRecord, cri::PodSandboxConfig>(&dir, pod::RECORD) {
                Ok((rec, config)) if rec.creating => self.undo_pod(rec, config, &dir).await?,
                Ok((rec, config)) => {
                    let pod = Pod::from_record(rec, config, &dir);
                    self.names.reserve(&pod.meta.name_key, &id)?;
                    if pod.status().removing {
                        removing_pods.push(id.clone());
                    }
                    self.pods.insert(Arc::new(pod));
                }
                Err(e) => tracing::warn!(pod = %id, error = %e, "skipping unreadable pod state"),
            }
        }
        let (mut removing, mut starting) = (Vec::new(), Vec::new());
        for (id, dir) in record::list_dirs(&self.state_dir.join("containers")) {
            if !dir.join(container::RECORD).exists() {
                self.undo_container_dir(&id, &dir, None).await;
                continue;
            }
            match record::load::<ContainerRecord, cri::ContainerConfig>(&dir, container::RECORD) {
                Ok((rec, _)) if rec.creating => {
                    let cgroups = Cgroups {
                        v2: rec.cgroup.clone(),
                        v1: rec.cgroups_v1.clone(),
                    };
                    self.undo_container_dir(&id, &dir, Some(&cgroups)).await;
                }
                Ok((rec, config)) => {
                    let c = Arc::new(Container::from_record(rec, config, &dir));
                    self.names.reserve(&c.meta.name_key, &id)?;
                    let s = c.status();
                    if s.state == State::Removing {
                        removing.push(id.clone());
                    } else if s.starting_at_ns.is_some() && s.state == State::Created {
                        starting.push(c.clone());
                    }
                    self.containers.insert(c.clone());
                    self.watch(c);
                }
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "skipping unreadable container state")
                }
            }
        }
        for c in starting {
            self.finish_start(&c).await;
        }
        for id in removing {
            if let Err(e) = self.remove_container(&id).await {
                tracing::warn!(container = %id, error = %e, "finishing a removal a crash interrupted");
            }
        }
        for id in removing_pods {
            if let Err(e) = self.remove_pod(&id).await {
                tracing::warn!(pod = %id, error = %e, "finishing a removal a crash interrupted");
            }
        }
        // Adopted: released after the delay as if their last container had
        // just gone.
        self.release_unused_image_mounts(false).await;
        let known: std::collections::HashSet<String> = self
            .containers
            .list()
            .iter()
            .map(|c| c.meta.id.clone())
            .collect();
        let stray = self
            .engine
            .remove_stray_cgroups(self.cfg.cgroup_parent_path(), &known)
            .await;
        if stray > 0 {
            tracing::info!(stray, "removed container cgroups no record names");
        }
        tracing::info!(
            pods = self.pods.len(),
            containers = self.containers.len(),
            images = self.images.list().len(),
            "recovered state"
        );
        Ok(())
    }

    /// Undoes a container that CreateContainer had begun: its monitor and
    /// first process (by their spec file), its cgroups, its directories.
    async fn undo_container_dir(&self, id: &str, dir: &Path, cgroups: Option<&Cgroups>) {
        let killed = self.engine.kill_helpers(&dir.join("spec.json")).await;
        if let Some(cg) = cgroups {
            if let Err(e) = self.engine.remove_cgroups(cg).await {
                // Its record, which names them, stays for the next start.
                tracing::warn!(container = %id, error = %e, "removing the cgroups of a half-made container");
                return;
            }
        }
        for d in [self.container_run_dir(id), dir.to_path_buf()] {
            if let Err(e) = record::remove_dir(&d) {
                tracing::warn!(container = %id, error = %e, "removing a half-made container");
            }
        }
        tracing::info!(container = %id, killed, "undid a container a crash left half made");
    }

    /// Undoes a pod that RunPodSandbox had begun: its helpers and pod init,
    /// its network, namespaces and shm, its directories. A pod whose network
    /// cannot be detached now stays, not ready, so that its removal retries.
    async fn undo_pod(
        &self,
        rec: PodRecord,
        config: cri::PodSandboxConfig,
        dir: &Path,
    ) -> Result<()> {
        let id = rec.id.clone();
        let run = self.pod_run_dir(&id);
        let mut killed = 0;
        for spec in ["sandbox.json", "sysctls.json"] {
            killed += self.engine.kill_helpers(&run.join(spec)).await;
        }
        if let Err(e) = self.teardown_network(dir, &rec.ns_dir.join("net")).await {
            tracing::warn!(pod = %id, error = %e, "a half-made pod keeps its network: it stays, not ready, for its removal to retry");
            let pod = Pod::from_record(
                PodRecord {
                    creating: false,
                    ready: false,
                    ..rec
                },
                config,
                dir,
            );
            pod.save()?;
            self.names.reserve(&pod.meta.name_key, &id)?;
            self.pods.insert(Arc::new(pod));
            return Ok(());
        }
        let pod = Pod::from_record(rec, config, dir);
        let m = &pod.meta;
        if let Err(e) = self
            .engine
            .release_sandbox(&m.ns_dir, m.shm.as_deref(), m.init)
            .await
        {
            tracing::warn!(pod = %id, error = %e, "releasing the namespaces of a half-made pod");
        }
        for d in [run, dir.to_path_buf()] {
            record::remove_dir(&d)?;
        }
        tracing::info!(pod = %id, killed, "undid a pod a crash left half made");
        Ok(())
    }

    /// A pod directory without even its intent: only helpers can be left.
    async fn undo_pod_dir(&self, id: &str, dir: &Path) {
        let run = self.pod_run_dir(id);
        self.engine.kill_helpers(&run.join("sandbox.json")).await;
        for d in [run, dir.to_path_buf()] {
            let _ = record::remove_dir(&d);
        }
    }

    /// A start that a crash interrupted: the monitor is asked again; one
    /// that says it has started already did get the first request.
    async fn finish_start(&self, c: &Container) {
        let Some(at) = c.status().starting_at_ns else {
            return;
        };
        if !c.meta.init.is_some_and(|p| self.engine.alive(p)) {
            let _ = c.update(|s| s.starting_at_ns = None);
            return;
        }
        let started = match self.engine.start(&c.meta.control_socket).await {
            Ok(()) => true,
            Err(Error::FailedPrecondition(m)) if m.contains("already started") => true,
            Err(e) => {
                tracing::warn!(container = %c.meta.id, error = %e, "finishing a start a crash interrupted");
                false
            }
        };
        let res = c.update(|s| {
            s.starting_at_ns = None;
            if started {
                s.started_at_ns = Some(at);
                if s.state == State::Created {
                    s.state = State::Running;
                }
            }
        });
        if let Err(e) = res {
            tracing::warn!(container = %c.meta.id, error = %e, "recording a finished start");
        }
    }
}
