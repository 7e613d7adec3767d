//! The runtime's objects in CRI terms: statuses, list items, limits, images
//! and stats, shaped for the answers.

use crate::images::ImageRecord;
use crate::proto::cri;
use crate::service::{ContainerUsage, PodUsage};
use crate::store::container::{ContainerMeta, State, Status};
use crate::store::pod::{PodMeta, PodStatus};
use sycri_native::cgroup::Resources;

/// The CRI state: Stopping still runs; Removing has stopped.
pub fn container_state(s: &Status) -> i32 {
    let st = match s.state {
        _ if s.exited() => cri::ContainerState::ContainerExited,
        State::Created => cri::ContainerState::ContainerCreated,
        State::Running | State::Stopping => cri::ContainerState::ContainerRunning,
        State::Exited | State::Removing => cri::ContainerState::ContainerExited,
    };
    st as i32
}

pub fn container_status(m: &ContainerMeta, s: &Status) -> cri::ContainerStatus {
    let c = &m.config;
    let (exit_code, finished, reason) = match &s.exit {
        Some(e) => (
            e.exit_code,
            e.finished_at_ns,
            if s.start_error.is_some() {
                "StartError"
            } else if s.lost {
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
        id: m.id.clone(),
        metadata: c.metadata.clone(),
        state: container_state(s),
        created_at: m.created_at_ns,
        started_at: s.started_at_ns.unwrap_or(0),
        finished_at: finished,
        exit_code,
        image: c.image.clone(),
        image_ref: m.image_id.clone(),
        image_id: m.image_id.clone(),
        reason: reason.to_string(),
        message: if let Some(e) = &s.start_error {
            e.clone()
        } else if s.lost {
            "the container's monitor ended without recording an exit status".into()
        } else {
            String::new()
        },
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        mounts: c.mounts.clone(),
        log_path: m
            .log_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        resources: Some(cri::ContainerResources {
            linux: Some(limits(&s.resources)),
            windows: None,
        }),
        user: None,
        stop_signal: c.stop_signal,
    }
}

pub fn container(m: &ContainerMeta, s: &Status) -> cri::Container {
    let c = &m.config;
    cri::Container {
        id: m.id.clone(),
        pod_sandbox_id: m.pod_id.clone(),
        metadata: c.metadata.clone(),
        image: c.image.clone(),
        image_ref: m.image_id.clone(),
        state: container_state(s),
        created_at: m.created_at_ns,
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        image_id: m.image_id.clone(),
    }
}

pub fn pod_state(s: &PodStatus) -> i32 {
    if s.ready {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

pub fn pod_status(m: &PodMeta, s: &PodStatus) -> cri::PodSandboxStatus {
    let c = &m.config;
    let ns_opts = c
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    cri::PodSandboxStatus {
        id: m.id.clone(),
        metadata: c.metadata.clone(),
        state: pod_state(s),
        created_at: m.created_at_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: s.ips.first().map(|a| a.to_string()).unwrap_or_default(),
            additional_ips: s
                .ips
                .iter()
                .skip(1)
                .map(|a| cri::PodIp { ip: a.to_string() })
                .collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace { options: ns_opts }),
        }),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        runtime_handler: m.runtime_handler.clone(),
    }
}

pub fn pod(m: &PodMeta, s: &PodStatus) -> cri::PodSandbox {
    let c = &m.config;
    cri::PodSandbox {
        id: m.id.clone(),
        metadata: c.metadata.clone(),
        state: pod_state(s),
        created_at: m.created_at_ns,
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        runtime_handler: m.runtime_handler.clone(),
    }
}

/// The engine's limits as the CRI reports them.
pub fn limits(r: &Resources) -> cri::LinuxContainerResources {
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

pub fn image(rec: &ImageRecord) -> cri::Image {
    let user = rec
        .config
        .as_ref()
        .map(|c| c.user.clone())
        .unwrap_or_default();
    let user = user.split(':').next().unwrap_or("").to_string();
    let (uid, username) = match user.parse::<i64>() {
        Ok(n) => (Some(cri::Int64Value { value: n }), String::new()),
        Err(_) if user.is_empty() => (None, String::new()),
        Err(_) => (None, user),
    };
    cri::Image {
        id: rec.id.clone(),
        repo_tags: rec.tags.clone(),
        repo_digests: rec.digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn u64v(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

pub fn container_stats(u: &ContainerUsage) -> cri::ContainerStats {
    let m = &u.container.meta;
    let (s, ts) = (&u.usage.cgroups, u.timestamp);
    let available = match (s.memory_limit, s.memory_working_set) {
        (Some(l), Some(w)) => Some(l.saturating_sub(w)),
        _ => None,
    };
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: m.id.clone(),
            metadata: m.config.metadata.clone(),
            labels: m.config.labels.clone(),
            annotations: m.config.annotations.clone(),
        }),
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
                mountpoint: u.container.upper_dir().to_string_lossy().into_owned(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.usage.disk_bytes,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.usage.disk_inodes,
            }),
        }),
        swap: None,
        io: None,
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

/// A pod's stats: the sum over its containers.
pub fn pod_stats(u: &PodUsage) -> cri::PodSandboxStats {
    let containers: Vec<cri::ContainerStats> = u.containers.iter().map(container_stats).collect();
    let ts = u.timestamp;
    let mut cpu = cri::CpuUsage {
        timestamp: ts,
        ..Default::default()
    };
    let mut mem = cri::MemoryUsage {
        timestamp: ts,
        ..Default::default()
    };
    for c in &containers {
        if let Some(x) = &c.cpu {
            cpu.usage_core_nano_seconds =
                add(cpu.usage_core_nano_seconds, &x.usage_core_nano_seconds);
        }
        if let Some(m) = &c.memory {
            mem.working_set_bytes = add(mem.working_set_bytes, &m.working_set_bytes);
            mem.usage_bytes = add(mem.usage_bytes, &m.usage_bytes);
            mem.rss_bytes = add(mem.rss_bytes, &m.rss_bytes);
            mem.page_faults = add(mem.page_faults, &m.page_faults);
            mem.major_page_faults = add(mem.major_page_faults, &m.major_page_faults);
        }
    }
    let m = &u.pod.meta;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: m.id.clone(),
            metadata: m.config.metadata.clone(),
            labels: m.config.labels.clone(),
            annotations: m.config.annotations.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(limits(&crate::service::limits(&r)), r);
    }
}
