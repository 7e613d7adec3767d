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
use sycri_native::cgroup::Resources;
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

/// The limits in force after an update: a field the update leaves zero or
/// empty keeps its value, as it does in the cgroup files (the engine writes
/// only what is set).
fn merged(old: &Resources, new: &Resources) -> Resources {
    let pick = |n: i64, o: i64| if n != 0 { n } else { o };
    let pick_s = |n: &String, o: &String| if n.is_empty() { o.clone() } else { n.clone() };
    let mut hugepages = old.hugepage_limits.clone();
    for (size, limit) in &new.hugepage_limits {
        match hugepages.iter_mut().find(|(s, _)| s == size) {
            Some(h) => h.1 = *limit,
            None => hugepages.push((size.clone(), *limit)),
        }
    }
    let mut unified = old.unified.clone();
    unified.extend(new.unified.iter().map(|(k, v)| (k.clone(), v.clone())));
    Resources {
        cpu_period: pick(new.cpu_period, old.cpu_period),
        cpu_quota: pick(new.cpu_quota, old.cpu_quota),
        cpu_shares: pick(new.cpu_shares, old.cpu_shares),
        memory_limit_in_bytes: pick(new.memory_limit_in_bytes, old.memory_limit_in_bytes),
        memory_swap_limit_in_bytes: pick(
            new.memory_swap_limit_in_bytes,
            old.memory_swap_limit_in_bytes,
        ),
        cpuset_cpus: pick_s(&new.cpuset_cpus, &old.cpuset_cpus),
        cpuset_mems: pick_s(&new.cpuset_mems, &old.cpuset_mems),
        hugepage_limits: hugepages,
        unified,
        // Not a cgroup setting: the process's own, reported as last given.
        oom_score_adj: new.oom_score_adj,
    }
}

/// Containers whose usage is read at once (see `list_container_usage`).
const USAGE_AT_ONCE: usize = 4;

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
        let given = limits(&linux);
        self.engine.set_limits(&c.meta.cgroups, &given).await?;
        c.update(|s| s.resources = merged(&s.resources, &given))?;
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

    /// The usage of every container `selected` picks. A few at a time: each
    /// is a walk of files on the blocking pool, and one after another they
    /// left the second core idle (ListContainerStats of 100 containers took
    /// about 10 ms here); more at once would only add threads.
    pub async fn list_container_usage(
        &self,
        selected: impl Fn(&ContainerMeta) -> bool,
    ) -> Vec<ContainerUsage> {
        use futures_util::StreamExt;
        let picked: Vec<Arc<Container>> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| selected(&c.meta))
            .collect();
        futures_util::stream::iter(picked)
            .map(|c| self.usage_of(c))
            .buffered(USAGE_AT_ONCE)
            .collect()
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_what_it_does_not_set() {
        let old = Resources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            cpuset_cpus: "0".into(),
            hugepage_limits: vec![("2MB".into(), 0)],
            unified: [("memory.high".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let update = Resources {
            memory_limit_in_bytes: 128 << 20,
            hugepage_limits: vec![("1GB".into(), 0)],
            unified: [("pids.max".to_string(), "10".to_string())].into(),
            ..Default::default()
        };
        let m = merged(&old, &update);
        assert_eq!(m.memory_limit_in_bytes, 128 << 20);
        assert_eq!((m.cpu_period, m.cpu_quota), (100_000, 50_000));
        assert_eq!(m.cpuset_cpus, "0");
        assert_eq!(m.hugepage_limits.len(), 2);
        assert_eq!(m.unified.len(), 2);
        // No quota (-1) is a value, not "unset".
        let unlimited = Resources {
            cpu_quota: -1,
            ..Default::default()
        };
        assert_eq!(merged(&old, &unlimited).cpu_quota, -1);
    }
}
