//! Resource limits and usage: CreateContainer's limits land in the
//! container's cgroups (v2, or v1 for the controllers a hybrid host keeps
//! there), UpdateContainerResources changes them, ContainerStats and
//! ListContainerStats report CPU, memory and the writable layer, the OOM
//! killer shows as OOMKilled, and no cgroup outlives its container.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri_native::cgroup::{layout, Cgroups};
use sycri_native::testing::skip;
use tonic::Code;

/// The cgroups sycri gives container `id` of a pod with cgroup parent `parent`.
fn cgroups_of(parent: &str, id: &str) -> Cgroups {
    layout().cgroups(parent, id)
}

/// A controller's file of the container, v1 name first, then the v2 one.
fn read_limit(cg: &Cgroups, controller: &str, v1: &str, v2: &str) -> Option<String> {
    let (dir, is_v2) = cg.dir_for(controller)?;
    let file = if is_v2 { v2 } else { v1 };
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

fn with_resources(
    mut c: cri::ContainerConfig,
    r: cri::LinuxContainerResources,
) -> cri::ContainerConfig {
    c.linux.get_or_insert_with(Default::default).resources = Some(r);
    c
}

fn has_memory_controller() -> bool {
    let l = layout();
    l.v1.iter().any(|(c, _)| c == "memory") || l.v2_controllers.iter().any(|c| c == "memory")
}

async fn stats(rt: &mut Rt, id: &str) -> cri::ContainerStats {
    rt.container_stats(cri::ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .expect("ContainerStats")
    .into_inner()
    .stats
    .expect("stats")
}

/// A server with the busybox image and a pod, or None (and why) when this
/// host cannot run the test.
async fn setup(
    test: &str,
    pod_cfg: impl FnOnce(&Server) -> cri::PodSandboxConfig,
) -> Option<(Server, String, cri::PodSandboxConfig, String)> {
    if !is_root() {
        skip(test, "needs root");
        return None;
    }
    if !has_memory_controller() {
        skip(test, "this host has no memory cgroup controller");
        return None;
    }
    let sif = busybox_sif(test)?;
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let cfg = pod_cfg(&s);
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    Some((s, image, cfg, pod))
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_updates_and_usage() {
    let Some((mut s, image, pod_cfg, pod)) = setup("limits_updates_and_usage", |s| {
        pod_config("res", &s.log_dir())
    })
    .await
    else {
        return;
    };

    let mut cfg = with_resources(
        container_config(
            "busy",
            &image,
            // Some CPU time and a 1 MiB file in the writable layer, then wait.
            &[
                "sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                 dd if=/dev/zero of=/blob bs=1024 count=1024 2>/dev/null; sleep 1000",
            ],
        ),
        cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        },
    );
    cfg.labels = [("tier".to_string(), "busy".to_string())].into();
    let id = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    let cg = cgroups_of(&s.cgroup_parent(), &id);

    // The limits are there before the container starts.
    assert_eq!(
        read_limit(&cg, "memory", "memory.limit_in_bytes", "memory.max").as_deref(),
        Some("67108864")
    );
    // A quota needs the cpu controller (CreateContainer refuses it without),
    // so the files are there.
    let v = read_limit(&cg, "cpu", "cpu.cfs_quota_us", "cpu.max").expect("cpu quota file");
    assert!(v == "50000" || v == "50000 100000", "cpu quota {v}");
    let v = read_limit(&cg, "cpu", "cpu.shares", "cpu.weight").expect("cpu weight file");
    assert!(v == "512" || v == "20", "cpu shares/weight {v}");
    let st = status(&mut s.rt, &id).await;
    let reported = st
        .resources
        .and_then(|r| r.linux)
        .expect("resources in the status");
    assert_eq!(reported.memory_limit_in_bytes, 64 << 20);
    assert_eq!(reported.cpu_quota, 50_000);

    start(&mut s.rt, &id).await.expect("start");
    let pid = container_pid(&mut s.rt, &id).await.expect("pid");
    // The container's process is in its memory cgroup.
    let (mem_dir, _) = cg.dir_for("memory").expect("memory cgroup");
    let procs = std::fs::read_to_string(mem_dir.join("cgroup.procs")).expect("cgroup.procs");
    assert!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} in {}: {procs}",
        mem_dir.display()
    );

    // Usage: CPU time, memory and the 1 MiB written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = stats(&mut s.rt, &id).await;
        let written = st
            .writable_layer
            .as_ref()
            .and_then(|w| w.used_bytes.as_ref())
            .map_or(0, |u| u.value);
        if written >= 1 << 20 {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the writable layer never showed 1 MiB: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        st.attributes.as_ref().map(|a| a.id.as_str()),
        Some(id.as_str())
    );
    let cpu = st
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref());
    assert!(cpu.is_some_and(|c| c.value > 0), "cpu usage {cpu:?}");
    let mem = st.memory.as_ref().expect("memory");
    assert!(
        mem.working_set_bytes.as_ref().is_some_and(|w| w.value > 0),
        "working set {mem:?}"
    );
    assert!(mem
        .available_bytes
        .as_ref()
        .is_some_and(|a| a.value <= 64 << 20));

    // ListContainerStats: by label, by pod, and nothing for another label.
    let list = |f: cri::ContainerStatsFilter| cri::ListContainerStatsRequest { filter: Some(f) };
    let by_label =
        s.rt.list_container_stats(list(cri::ContainerStatsFilter {
            label_selector: [("tier".to_string(), "busy".to_string())].into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert_eq!(by_label.len(), 1);
    let none =
        s.rt.list_container_stats(list(cri::ContainerStatsFilter {
            label_selector: [("tier".to_string(), "other".to_string())].into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .stats;
    assert!(none.is_empty());
    let pod_stats =
        s.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .expect("PodSandboxStats")
        .into_inner()
        .stats
        .and_then(|p| p.linux)
        .expect("linux pod stats");
    assert_eq!(pod_stats.containers.len(), 1);

    // UpdateContainerResources changes the limit and the status says so.
    s.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("update");
    assert_eq!(
        read_limit(&cg, "memory", "memory.limit_in_bytes", "memory.max").as_deref(),
        Some("134217728")
    );
    let reported = status(&mut s.rt, &id)
        .await
        .resources
        .and_then(|r| r.linux)
        .expect("resources");
    assert_eq!(reported.memory_limit_in_bytes, 128 << 20);

    // Bad updates are refused and change nothing.
    for (what, r, code) in [
        (
            "a period of 5 us",
            cri::LinuxContainerResources {
                cpu_period: 5,
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "a unified key leaving the cgroup",
            cri::LinuxContainerResources {
                unified: [("../../memory.max".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ] {
        let r =
            s.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(r),
                ..Default::default()
            })
            .await;
        assert_eq!(r.map(|_| ()).map_err(|e| e.code()), Err(code), "{what}");
    }
    let r =
        s.rt.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: "no-such-container".into(),
            linux: Some(Default::default()),
            ..Default::default()
        })
        .await;
    assert_eq!(r.map(|_| ()).map_err(|e| e.code()), Err(Code::NotFound));
    assert_eq!(
        read_limit(&cg, "memory", "memory.limit_in_bytes", "memory.max").as_deref(),
        Some("134217728")
    );

    // After removal no cgroup of the container is left in any hierarchy.
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    let left: Vec<PathBuf> = cg
        .dirs()
        .filter(|d| d.exists())
        .map(PathBuf::from)
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    assert_no_leaks(s.dir.path(), &[pid]);
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_memory_is_oomkilled() {
    // A pod cgroup parent of its own, as the kubelet gives one.
    let parent = format!("sycri-test-{}", std::process::id());
    let Some((mut s, image, pod_cfg, pod)) = setup("out_of_memory_is_oomkilled", |s| {
        let mut c = pod_config("oom", &s.log_dir());
        c.linux.get_or_insert_with(Default::default).cgroup_parent = format!("/{parent}");
        c
    })
    .await
    else {
        return;
    };
    let cfg = with_resources(
        // tail keeps a line it never finds the end of: memory grows until
        // the limit.
        container_config("hog", &image, &["tail", "/dev/zero"]),
        cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            memory_swap_limit_in_bytes: 16 << 20,
            ..Default::default()
        },
    );
    let id = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    let cg = cgroups_of(&parent, &id);
    assert!(
        cg.dir_for("memory").is_some_and(|(d, _)| d.exists()),
        "the container's memory cgroup is under the pod's cgroup parent: {cg:?}"
    );
    start(&mut s.rt, &id).await.expect("start");
    let st = wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 137, "{st:?}");
    assert_eq!(st.reason, "OOMKilled", "{st:?}");

    remove_container(&mut s.rt, &id).await.expect("remove");
    let left: Vec<PathBuf> = cg
        .dirs()
        .filter(|d| d.exists())
        .map(PathBuf::from)
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    // The pod parent was made for this test; the kubelet owns real ones.
    let parents = layout().cgroups(&parent, "");
    for d in parents.dirs() {
        let _ = std::fs::remove_dir(d);
    }
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread")]
async fn oom_score_adj_is_applied() {
    let Some((mut s, image, pod_cfg, pod)) = setup("oom_score_adj_is_applied", |s| {
        pod_config("oomadj", &s.log_dir())
    })
    .await
    else {
        return;
    };
    let cfg = with_resources(
        container_config(
            "adj",
            &image,
            &["sh", "-c", "cat /proc/self/oom_score_adj; sleep 1000"],
        ),
        cri::LinuxContainerResources {
            oom_score_adj: 734,
            ..Default::default()
        },
    );
    let id = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    let lines = wait_log_line(&s.log_dir().join("adj.log"), "734").await;
    assert!(lines.iter().any(|(_, l)| l == "734"), "{lines:?}");
    // A process exec'd into the container gets it too.
    let out =
        s.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/proc/self/oom_score_adj".into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "734");
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
