//! UpdateContainerResources (new limits written to a container's cgroups)
//! and the usage behind the ContainerStats / PodSandboxStats family, read
//! from the cgroups and the writable layer without holding any lock.

use super::container_spec::limits;
use super::Runtime;
use crate::engine::Usage;
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::store::container::{Container, ContainerMeta, State};
use crate::store::pod::{Pod, PodMeta};
use std::sync::Arc;
use sycri_native::util::now_ns;

/// One container's usage, read at `timestamp`.
pub struct ContainerUsage {
    pub container: Arc<Container>,
    pub usage: Usage,
    pub timestamp: i64,
}

/// A pod's usage: its containers'.
pub struct PodUsage {
    pub pod: Arc<Pod>,
    pub containers: Vec<ContainerUsage>,
    pub timestamp: i64,
}

impl Runtime {
    /// Writes new limits into a created or running container's cgroups and
    /// records them.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let c = self.containers.get(id)?;
        let Some(linux) = linux else {
            return Ok(());
        };
        let _op = c.begin_op().await;
        if c.status().exited() || c.state() == State::Removing {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited; its resources cannot change",
                c.meta.id
            )));
        }
        let wanted = limits(&linux);
        self.engine.set_limits(&c.meta.cgroups, &wanted).await?;
        c.update(|s| s.resources = wanted)?;
        tracing::info!(container = %c.meta.id, "container resources updated");
        Ok(())
    }

    async fn usage_of(&self, c: Arc<Container>) -> ContainerUsage {
        let usage = self.engine.usage(&c.meta.cgroups, &c.upper_dir()).await;
        ContainerUsage {
            container: c,
            usage,
            timestamp: now_ns(),
        }
    }

    pub async fn container_usage(&self, id: &str) -> Result<ContainerUsage> {
        let c = self.containers.get(id)?;
        Ok(self.usage_of(c).await)
    }

    /// The usage of every container `selected` picks.
    pub async fn list_container_usage(
        &self,
        selected: impl Fn(&ContainerMeta) -> bool,
    ) -> Vec<ContainerUsage> {
        let mut out = Vec::new();
        for c in self.containers.list() {
            if selected(&c.meta) {
                out.push(self.usage_of(c).await);
            }
        }
        out
    }

    async fn usage_of_pod(&self, pod: Arc<Pod>) -> PodUsage {
        let containers = self.list_container_usage(|m| m.pod_id == pod.meta.id).await;
        PodUsage {
            pod,
            containers,
            timestamp: now_ns(),
        }
    }

    pub async fn pod_usage(&self, id: &str) -> Result<PodUsage> {
        let pod = self.pods.get(id)?;
        Ok(self.usage_of_pod(pod).await)
    }

    /// The usage of every pod `selected` picks.
    pub async fn list_pod_usage(&self, selected: impl Fn(&PodMeta) -> bool) -> Vec<PodUsage> {
        let mut out = Vec::new();
        for p in self.pods.list() {
            if selected(&p.meta) {
                out.push(self.usage_of_pod(p).await);
            }
        }
        out
    }
}
