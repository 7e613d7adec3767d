//! Memory, CPU and pids limits on pure cgroup v2: written before the
//! container starts, enforced by the kernel (the OOM killer, CFS bandwidth
//! throttling, refused forks), read back by ContainerStatus and
//! ContainerStats, and changed by UpdateContainerResources.

use super::Ctx;
use crate::audit::{keyed, read};
use crate::client::{container_config, wait_log, with_resources};
use crate::fail::{Context, Result};
use crate::{check, check_eq};
use std::path::Path;
use std::time::{Duration, Instant};
use sycri::proto::cri;

const MIB: i64 = 1 << 20;

pub async fn memory(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("mem").await?;

    // tail keeps a line that never ends: it grows until the OOM killer.
    let limits = cri::LinuxContainerResources {
        memory_limit_in_bytes: 16 * MIB,
        memory_swap_limit_in_bytes: 16 * MIB,
        ..Default::default()
    };
    let hog_cfg = container_config("hog", &image, &["tail", "/dev/zero"]);
    let hog = ctx
        .create(&mut pod, with_resources(hog_cfg, limits))
        .await?;
    let hog_cg = pod.cgroup_of(&hog);
    check_eq!(
        read(&hog_cg.join("memory.max")),
        (16 * MIB).to_string(),
        "memory.max before the start"
    );
    if hog_cg.join("memory.swap.max").exists() {
        check_eq!(
            read(&hog_cg.join("memory.swap.max")),
            "0",
            "memory.swap.max (swap limit = memory limit: no swap)"
        );
    }
    let reported = ctx.cri.reported_resources(&hog).await?;
    check_eq!(
        reported.memory_limit_in_bytes,
        16 * MIB,
        "ContainerStatus's memory limit"
    );
    ctx.cri.start(&hog).await?;
    let hog_pid = ctx.cri.pid(&hog).await.ok();
    let st = ctx.cri.wait_exited(&hog, 240).await?;
    check!(
        st.exit_code == 137 && st.reason == "OOMKilled",
        "the hog ended with {} {:?}, want 137 OOMKilled",
        st.exit_code,
        st.reason
    );
    // memory.events counts it, in the container's group and (hierarchical)
    // in the pod's, where the kubelet looks.
    let kills = keyed(&hog_cg.join("memory.events"), "oom_kill").unwrap_or(0);
    check!(
        kills >= 1,
        "memory.events oom_kill {kills} in {}",
        hog_cg.display()
    );
    let pod_kills = keyed(&pod.cgroup.join("memory.events"), "oom_kill").unwrap_or(0);
    check!(pod_kills >= 1, "pod memory.events oom_kill {pod_kills}");
    ctx.note(format!(
        "hog OOMKilled, memory.events oom_kill {kills}, peak {}",
        read(&hog_cg.join("memory.peak"))
    ));
    ctx.cri.remove(&hog).await?;

    // Usage and limit read back while a container holds 4 MiB of shm.
    let holder_cfg = container_config(
        "holder",
        &image,
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1048576 count=4 2>/dev/null; echo filled; exec sleep 1000",
        ],
    );
    let limits = cri::LinuxContainerResources {
        memory_limit_in_bytes: 32 * MIB,
        ..Default::default()
    };
    let holder = ctx
        .create(&mut pod, with_resources(holder_cfg, limits))
        .await?;
    ctx.cri.start(&holder).await?;
    let holder_pid = ctx.cri.pid(&holder).await?;
    wait_log(&pod.log("holder"), "filled", Duration::from_secs(60)).await?;
    let s = ctx.cri.stats(&holder).await?;
    let mem = s.memory.context("ContainerStats memory")?;
    let ws = mem.working_set_bytes.map_or(0, |v| v.value);
    let usage = mem.usage_bytes.map_or(0, |v| v.value);
    let avail = mem.available_bytes.map_or(0, |v| v.value);
    check!(
        ws >= 4 << 20 && usage >= ws,
        "working set {ws}, usage {usage}: want >= 4 MiB held"
    );
    check!(
        avail > 0 && avail + ws <= (32 << 20) + (1 << 20),
        "available {avail} with working set {ws} under a 32 MiB limit"
    );
    let holder_cg = pod.cgroup_of(&holder);
    let current: u64 = read(&holder_cg.join("memory.current")).parse().unwrap_or(0);
    check!(current >= 4 << 20, "memory.current {current}");
    let raised = cri::LinuxContainerResources {
        memory_limit_in_bytes: 48 * MIB,
        ..Default::default()
    };
    ctx.cri.update(&holder, raised).await?;
    check_eq!(
        read(&holder_cg.join("memory.max")),
        (48 * MIB).to_string(),
        "memory.max after UpdateContainerResources"
    );
    let reported = ctx.cri.reported_resources(&holder).await?;
    check_eq!(
        reported.memory_limit_in_bytes,
        48 * MIB,
        "ContainerStatus after the update"
    );
    let avail = ctx
        .cri
        .stats(&holder)
        .await?
        .memory
        .and_then(|m| m.available_bytes)
        .map_or(0, |v| v.value);
    check!(
        avail > 32 << 20 && avail <= 48 << 20,
        "available {avail} under the raised 48 MiB limit"
    );
    ctx.note(format!(
        "holder: working set {ws}, usage {usage}, memory.current {current}"
    ));

    let pids = [hog_pid, Some(holder_pid)].into_iter().flatten().collect();
    ctx.finish(&[&pod], pids).await?;
    Ok(())
}

/// (usage_usec, nr_throttled) of a cgroup's cpu.stat.
fn cpu_stat(dir: &Path) -> (u64, u64) {
    let f = dir.join("cpu.stat");
    (
        keyed(&f, "usage_usec").unwrap_or(0),
        keyed(&f, "nr_throttled").unwrap_or(0),
    )
}

/// The share of one CPU the group used over `window`, and how often it was
/// throttled meanwhile.
async fn measure_share(dir: &Path, window: Duration) -> (f64, u64) {
    let (u0, t0) = cpu_stat(dir);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let (u1, t1) = cpu_stat(dir);
    let wall = start.elapsed().as_micros() as f64;
    ((u1.saturating_sub(u0)) as f64 / wall, t1.saturating_sub(t0))
}

pub async fn cpu(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("cpu").await?;
    // A fifth of a CPU for a shell spinning without end.
    let spin = container_config("spin", &image, &["sh", "-c", "while :; do :; done"]);
    let limits = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 20_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let c = ctx.create(&mut pod, with_resources(spin, limits)).await?;
    let cg = pod.cgroup_of(&c);
    check_eq!(read(&cg.join("cpu.max")), "20000 100000", "cpu.max");
    // Shares 512 on the v2 weight scale (1 + (512 - 2) * 9999 / 262142).
    check_eq!(read(&cg.join("cpu.weight")), "20", "cpu.weight");
    ctx.cri.start(&c).await?;
    let pid = ctx.cri.pid(&c).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (share, throttled) = measure_share(&cg, Duration::from_secs(8)).await;
    ctx.note(format!(
        "quota 0.20 CPU: measured {share:.3} CPU over 8 s, throttled {throttled} times"
    ));
    check!(
        throttled > 0,
        "cpu.stat nr_throttled did not grow under a 20% quota"
    );
    check!(
        share <= 0.20 * 1.5,
        "used {share:.3} of a CPU under a 0.20 quota"
    );
    let (usage_usec, _) = cpu_stat(&cg);
    let s = ctx.cri.stats(&c).await?;
    let ns = s
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map_or(0, |v| v.value);
    check!(
        ns >= usage_usec.saturating_mul(1000) && ns > 0,
        "ContainerStats CPU {ns} ns, cpu.stat said {usage_usec} us just before"
    );

    // Raise the quota, as the kubelet does: the whole set of limits.
    let raised = cri::LinuxContainerResources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 1024,
        ..Default::default()
    };
    ctx.cri.update(&c, raised).await?;
    check_eq!(
        read(&cg.join("cpu.max")),
        "50000 100000",
        "cpu.max after the update"
    );
    check_eq!(
        read(&cg.join("cpu.weight")),
        "39",
        "cpu.weight for 1024 shares"
    );
    let reported = ctx.cri.reported_resources(&c).await?;
    check!(
        reported.cpu_quota == 50_000 && reported.cpu_period == 100_000,
        "ContainerStatus after the update: {reported:?}"
    );
    let (share2, _) = measure_share(&cg, Duration::from_secs(6)).await;
    ctx.note(format!("quota 0.50 CPU: measured {share2:.3} CPU over 6 s"));
    check!(
        share2 <= 0.50 * 1.5,
        "used {share2:.3} of a CPU under a 0.50 quota"
    );

    ctx.cri.stop(&c, 2).await?;
    ctx.cri.remove(&c).await?;
    ctx.finish(&[&pod], vec![pid]).await?;
    Ok(())
}

pub async fn pids(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("pids").await?;
    let forker = container_config("forker", &image, &["sh", "-c", "echo up; exec sleep 1000"]);
    let limits = cri::LinuxContainerResources {
        unified: [("pids.max".to_string(), "8".to_string())].into(),
        ..Default::default()
    };
    let c = ctx.create(&mut pod, with_resources(forker, limits)).await?;
    let cg = pod.cgroup_of(&c);
    check_eq!(read(&cg.join("pids.max")), "8", "pids.max before the start");
    ctx.cri.start(&c).await?;
    let pid = ctx.cri.pid(&c).await?;
    wait_log(&pod.log("forker"), "up", Duration::from_secs(60)).await?;
    // A process exec'd in joins the cgroup: its forks hit the limit.
    let (code, _, err) = ctx
        .cri
        .exec_sync(
            &c,
            &[
                "sh",
                "-c",
                "n=0; while [ $n -lt 20 ]; do sleep 1000 >/dev/null 2>&1 & n=$((n+1)); done; echo all-forked",
            ],
        )
        .await?;
    let current: u64 = read(&cg.join("pids.current")).parse().unwrap_or(0);
    let refused = keyed(&cg.join("pids.events"), "max").unwrap_or(0);
    ctx.note(format!(
        "exec: exit {code}, stderr {:?}; pids.current {current}, pids.events max {refused}",
        err.trim()
    ));
    check!(code != 0, "20 forks under pids.max 8 all worked");
    check!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "the failed fork is not what stderr says: {err:?}"
    );
    check!(current <= 8, "pids.current {current} over pids.max 8");
    check!(refused >= 1, "pids.events max is {refused}");

    let raised = cri::LinuxContainerResources {
        unified: [("pids.max".to_string(), "64".to_string())].into(),
        ..Default::default()
    };
    ctx.cri.update(&c, raised).await?;
    check_eq!(
        read(&cg.join("pids.max")),
        "64",
        "pids.max after the update"
    );
    let reported = ctx.cri.reported_resources(&c).await?;
    check_eq!(
        reported.unified.get("pids.max").map(String::as_str),
        Some("64"),
        "ContainerStatus's unified pids.max"
    );
    let (code, out, err) = ctx
        .cri
        .exec_sync(&c, &["sh", "-c", "sleep 1 & wait; echo forked"])
        .await?;
    check!(
        code == 0 && out.trim() == "forked",
        "a fork under the raised limit: {code} {out:?} {err:?}"
    );

    ctx.finish(&[&pod], vec![pid]).await?;
    Ok(())
}
