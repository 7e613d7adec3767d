//! Container resources and usage: limits from CreateContainer and
//! UpdateContainerResources written to the container's cgroups, and the
//! ContainerStats / PodSandboxStats family read back from them.

use crate::containers::{Container, State};
use crate::error::{Error, Result};
use crate::pods::Pod;
use crate::proto::cri;
use crate::runtime::{blocking, id_selected, labels_selected, read_lock, Runtime};
use sycri_native::cgroup::{Cgroups, Resources};
use sycri_native::util::now_ns;

/// The cgroup group that holds containers whose pod names no cgroup parent.
pub const CGROUP_PARENT: &str = "sycri";

/// Where a pod's containers get their cgroups: the pod's `cgroup_parent`
/// (as the kubelet sets it with the cgroupfs driver) relative to each
/// hierarchy's root, else [`CGROUP_PARENT`].
pub fn cgroup_parent(pod: &cri::PodSandboxConfig) -> Result<String> {
    let parent = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.trim_matches('/'))
        .unwrap_or("");
    if parent.is_empty() {
        return Ok(CGROUP_PARENT.to_string());
    }
    let ok = parent
        .split('/')
        .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    if !ok || parent.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "cgroup_parent {parent:?} must be a plain path inside the cgroup hierarchy"
        )));
    }
    // sycri's own group holds containers: a pod placed inside one would
    // share its limits, die with it and keep it from being removed.
    if parent == CGROUP_PARENT || parent.starts_with(&format!("{CGROUP_PARENT}/")) {
        return Err(Error::InvalidArgument(format!(
            "cgroup_parent {parent:?} is inside sycri's own cgroup {CGROUP_PARENT:?}"
        )));
    }
    Ok(parent.to_string())
}

/// The CRI's limits in the engine's terms.
pub fn from_cri(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        oom_score_adj: r.oom_score_adj,
    }
}

pub fn to_cri(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(size, limit)| cri::HugepageLimit {
                page_size: size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r
            .unified
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

impl Container {
    /// The container's cgroups, as created.
    pub fn cgroups(&self) -> Cgroups {
        Cgroups {
            v2: self.rec.cgroup.clone(),
            v1: self.rec.cgroups_v1.clone(),
        }
    }

    fn attributes(&self) -> cri::ContainerAttributes {
        cri::ContainerAttributes {
            id: self.rec.id.clone(),
            metadata: self.config.metadata.clone(),
            labels: self.config.labels.clone(),
            annotations: self.config.annotations.clone(),
        }
    }
}

/// What the usage of one container is read from, taken under its lock so
/// that the reading itself (cgroup files, a walk of the writable layer) does
/// not hold Stop, Exec or Status up.
struct StatsSource {
    attributes: cri::ContainerAttributes,
    cgroups: Cgroups,
    upper: std::path::PathBuf,
}

impl StatsSource {
    fn of(c: &Container) -> StatsSource {
        StatsSource {
            attributes: c.attributes(),
            cgroups: c.cgroups(),
            upper: c.dir.join("upper"),
        }
    }

    /// Blocking: reads cgroup files and walks the writable layer.
    fn read(self) -> cri::ContainerStats {
        let ts = now_ns();
        let s = sycri_native::cgroup::stats(&self.cgroups);
        let (used, inodes) = sycri_native::util::disk_usage(&self.upper);
        let available = match (s.memory_limit, s.memory_working_set) {
            (Some(l), Some(w)) => Some(l.saturating_sub(w)),
            _ => None,
        };
        cri::ContainerStats {
            attributes: Some(self.attributes),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: u64v(s.cpu_usage_ns),
                usage_nano_cores: None,
                psi: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: u64v(s.memory_working_set),
                available_bytes: u64v(available),
                usage_bytes: u64v(s.memory_usage),
                rss_bytes: u64v(s.memory_rss),
                page_faults: u64v(s.page_faults),
                major_page_faults: u64v(s.major_page_faults),
                psi: None,
            }),
            writable_layer: Some(cri::FilesystemUsage {
                timestamp: ts,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.upper.to_string_lossy().into_owned(),
                }),
                used_bytes: Some(cri::UInt64Value { value: used }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }),
            swap: None,
            io: None,
        }
    }
}

fn add(a: Option<cri::UInt64Value>, b: &Option<cri::UInt64Value>) -> Option<cri::UInt64Value> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(cri::UInt64Value {
            value: a.map_or(0, |v| v.value) + b.as_ref().map_or(0, |v| v.value),
        }),
    }
}

impl Runtime {
    /// Writes new limits into a created or running container's cgroups and
    /// records them.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<()> {
        let (id, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let Some(linux) = linux else {
            return Ok(());
        };
        let mut c = c.lock().await;
        if c.refresh() == State::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has exited; its resources cannot change"
            )));
        }
        let wanted = from_cri(&linux);
        let cgroups = c.cgroups();
        let to_apply = wanted.clone();
        blocking(move || sycri_native::cgroup::apply(&cgroups, &to_apply).map_err(Error::from))
            .await?;
        c.rec.resources = wanted;
        c.save()?;
        tracing::info!(container = %id, "container resources updated");
        Ok(())
    }

    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats> {
        let (_, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        let source = {
            let mut c = c.lock().await;
            c.refresh();
            StatsSource::of(&c)
        };
        blocking(move || Ok(source.read())).await
    }

    pub async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let all: Vec<_> = read_lock(&self.containers).values().cloned().collect();
        let mut sources = Vec::new();
        for c in all {
            let mut c = c.lock().await;
            c.refresh();
            let selected = filter.as_ref().is_none_or(|f| {
                id_selected(&c.rec.id, &f.id)
                    && id_selected(&c.rec.pod_id, &f.pod_sandbox_id)
                    && labels_selected(&c.config.labels, &f.label_selector)
            });
            if !selected {
                continue;
            }
            sources.push(StatsSource::of(&c));
        }
        blocking(move || Ok(sources.into_iter().map(StatsSource::read).collect()))
            .await
            .unwrap_or_default()
    }

    /// A pod's usage: the sum over its containers.
    async fn pod_stats(&self, pod: &Pod) -> cri::PodSandboxStats {
        let containers = self
            .list_container_stats(Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.rec.id.clone(),
                ..Default::default()
            }))
            .await;
        let ts = now_ns();
        let mut cpu = cri::CpuUsage {
            timestamp: ts,
            ..Default::default()
        };
        let mut mem = cri::MemoryUsage {
            timestamp: ts,
            ..Default::default()
        };
        for c in &containers {
            if let Some(u) = &c.cpu {
                cpu.usage_core_nano_seconds =
                    add(cpu.usage_core_nano_seconds, &u.usage_core_nano_seconds);
            }
            if let Some(m) = &c.memory {
                mem.working_set_bytes = add(mem.working_set_bytes, &m.working_set_bytes);
                mem.usage_bytes = add(mem.usage_bytes, &m.usage_bytes);
                mem.rss_bytes = add(mem.rss_bytes, &m.rss_bytes);
                mem.page_faults = add(mem.page_faults, &m.page_faults);
                mem.major_page_faults = add(mem.major_page_faults, &m.major_page_faults);
            }
        }
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: pod.rec.id.clone(),
                metadata: pod.config.metadata.clone(),
                labels: pod.config.labels.clone(),
                annotations: pod.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cpu),
                memory: Some(mem),
                network: None,
                process: None,
                containers,
                io: None,
            }),
            windows: None,
        }
    }

    pub async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats> {
        let (_, pod) = Runtime::find(&self.pods, id)
            .ok_or_else(|| Error::NotFound(format!("pod sandbox {id:?} not found")))?;
        let pod = pod.lock().await;
        Ok(self.pod_stats(&pod).await)
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let all: Vec<_> = read_lock(&self.pods).values().cloned().collect();
        let mut out = Vec::new();
        for p in all {
            let pod = p.lock().await;
            let selected = filter.as_ref().is_none_or(|f| {
                id_selected(&pod.rec.id, &f.id)
                    && labels_selected(&pod.config.labels, &f.label_selector)
            });
            if !selected {
                continue;
            }
            out.push(self.pod_stats(&pod).await);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_stay_inside_the_hierarchy() {
        let pod = |p: &str| cri::PodSandboxConfig {
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: p.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(cgroup_parent(&pod("")).ok().as_deref(), Some(CGROUP_PARENT));
        assert_eq!(
            cgroup_parent(&pod("/kubepods/burstable/pod1"))
                .ok()
                .as_deref(),
            Some("kubepods/burstable/pod1")
        );
        for bad in [
            "/kubepods/../../etc",
            "a/./b",
            "..",
            "a//b",
            "/sycri/0123abcd",
            "sycri",
        ] {
            assert!(
                matches!(cgroup_parent(&pod(bad)), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn limits_round_trip_through_the_cri_form() {
        let r = cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 100,
            cpuset_cpus: "0".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            memory_swap_limit_in_bytes: 128 << 20,
        };
        assert_eq!(to_cri(&from_cri(&r)), r);
    }
}
