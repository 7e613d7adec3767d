//! What pure cgroup v2 gives a container beyond limits: stopping it ends
//! every process it has through `cgroup.kill` (whatever session, signal
//! disposition or exec it came from), and a cgroup namespace of its own.

use super::Ctx;
use crate::audit::{pid_alive, processes, procs_below, read};
use crate::client::{container_config, wait_log, with_resources};
use crate::fail::Result;
use crate::{check, check_eq};
use std::path::Path;
use std::time::{Duration, Instant};
use sycri::proto::cri;

/// A shell deaf to SIGTERM with a SIGTERM-deaf child, a child in a session
/// of its own, and a loop of short-lived children.
const STUBBORN: &str = "trap '' TERM; \
    (trap '' TERM; exec sleep 4321) & \
    setsid sh -c \"trap '' TERM; exec sleep 4322\" & \
    echo ready; while :; do sleep 1; done";

pub async fn cgroup_kill(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("kill").await?;
    let stubborn = container_config("stubborn", &image, &["sh", "-c", STUBBORN]);
    let c = ctx.create(&mut pod, stubborn).await?;
    let cg = pod.cgroup_of(&c);
    ctx.cri.start(&c).await?;
    wait_log(&pod.log("stubborn"), "ready", Duration::from_secs(60)).await?;
    // And one more, left behind in a session of its own by an exec'd shell
    // that has ended (ExecSync ends the exec's process group when the command
    // returns; this one is out of it, in the container's cgroup). `exec`, so
    // that its command line says what it is (busybox runs applets in-process);
    // the shell waits until the child leads its session, so that the end of
    // the exec's process group cannot catch it before.
    let (code, _, err) = ctx
        .cri
        .exec_sync(
            &c,
            &[
                "sh",
                "-c",
                "trap '' TERM; setsid sh -c 'exec sleep 4323' >/dev/null 2>&1 & \
                 while [ \"$(cut -d' ' -f6 /proc/$!/stat)\" != $! ]; do sleep 0.1; done",
            ],
        )
        .await?;
    check_eq!(code, 0, "ExecSync leaving a background sleep ({err:?})");
    let sleeps = |want: &str| -> Vec<i32> {
        procs_below(&cg)
            .into_iter()
            .filter(|p| {
                read(Path::new(&format!("/proc/{p}/cmdline")))
                    .replace('\0', " ")
                    .trim()
                    == want
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut found;
    loop {
        found = ["sleep 4321", "sleep 4322", "sleep 4323"]
            .iter()
            .map(|w| (w.to_string(), sleeps(w)))
            .collect::<Vec<_>>();
        if found.iter().all(|(_, p)| p.len() == 1) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if !found.iter().all(|(_, p)| p.len() == 1) {
        // Where they are instead, if anywhere.
        let elsewhere: Vec<String> = processes()
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("sleep 432"))
            .map(|(pid, cmd)| {
                format!(
                    "{pid} {cmd:?} in {}",
                    read(Path::new(&format!("/proc/{pid}/cgroup")))
                )
            })
            .collect();
        check!(
            false,
            "the container's processes are not all in its cgroup {}: {found:?} (cgroup.procs {:?}; sleeps anywhere: {elsewhere:?})",
            cg.display(),
            procs_below(&cg)
        );
    }
    let all = procs_below(&cg);
    check!(
        all.len() >= 4,
        "processes in the container's cgroup: {all:?}"
    );

    // SIGTERM is ignored by all of them: after 2 s the container is killed,
    // and with it everything in its cgroup.
    let started = Instant::now();
    ctx.cri.stop(&c, 2).await?;
    let st = ctx.cri.wait_exited(&c, 60).await?;
    check_eq!(st.exit_code, 137, "exit code of a SIGTERM-deaf container");
    let deadline = Instant::now() + Duration::from_secs(20);
    while all.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive: Vec<i32> = all.iter().copied().filter(|p| pid_alive(*p)).collect();
    check!(
        alive.is_empty(),
        "still alive after StopContainer: {alive:?}"
    );
    // Killed processes leave the cgroup once they are reaped (the pod's init
    // reaps them): "populated 0" may come a moment after they died.
    let populated = || {
        read(&cg.join("cgroup.events"))
            .lines()
            .find(|l| l.starts_with("populated"))
            .unwrap_or("")
            .to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while populated() != "populated 0" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check_eq!(
        populated(),
        "populated 0",
        "cgroup.events after the stop (cgroup.procs {:?})",
        procs_below(&cg)
    );
    ctx.note(format!(
        "{} processes ended by StopContainer in {:.1} s",
        all.len(),
        started.elapsed().as_secs_f64()
    ));
    ctx.cri.remove(&c).await?;
    ctx.finish(&[&pod], all).await?;
    Ok(())
}

pub async fn cgroupns(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("cgns").await?;
    let sleeper = container_config("ns", &image, &["sh", "-c", "echo up; exec sleep 1000"]);
    let limits = cri::LinuxContainerResources {
        memory_limit_in_bytes: 24 << 20,
        ..Default::default()
    };
    let c = ctx
        .create(&mut pod, with_resources(sleeper, limits))
        .await?;
    ctx.cri.start(&c).await?;
    let pid = ctx.cri.pid(&c).await?;
    let result = cgroupns_checks(ctx, &c, pid).await;
    ctx.finish(&[&pod], vec![pid]).await?;
    result
}

async fn cgroupns_checks(ctx: &mut Ctx, c: &str, pid: i32) -> Result<()> {
    let own = std::fs::read_link("/proc/self/ns/cgroup")?;
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/cgroup"))?;
    let (_, seen, _) = ctx.cri.exec_sync(c, &["cat", "/proc/self/cgroup"]).await?;
    let (_, mounts, _) = ctx
        .cri
        .exec_sync(c, &["sh", "-c", "grep cgroup /proc/self/mounts"])
        .await?;
    let (_, limit, _) = ctx
        .cri
        .exec_sync(c, &["cat", "/sys/fs/cgroup/memory.max"])
        .await?;
    ctx.note(format!(
        "container's cgroup namespace {} (guest's {}), /proc/self/cgroup {:?}, cgroup mounts {:?}, memory.max {:?}",
        theirs.display(),
        own.display(),
        seen.trim(),
        mounts.trim(),
        limit.trim()
    ));
    check!(
        own != theirs,
        "the container shares the guest's cgroup namespace ({})",
        own.display()
    );
    check_eq!(
        seen.trim(),
        "0::/",
        "/proc/self/cgroup inside the container"
    );
    check!(
        mounts.contains("/sys/fs/cgroup cgroup2"),
        "no cgroup2 at /sys/fs/cgroup inside: {mounts:?}"
    );
    check_eq!(
        limit.trim(),
        (24u64 << 20).to_string(),
        "the container's own memory.max at /sys/fs/cgroup"
    );
    Ok(())
}
