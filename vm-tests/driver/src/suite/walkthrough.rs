//! The seed walk-through on a clean kernel: runtime status, pull of the SIF,
//! a pod on the CNI network, a container that logs, ExecSync and a streamed
//! exec, stop, remove; its cgroup is a pure v2 one under the pod's parent,
//! and at the end no mount, loop device, cgroup or process is left.

use super::Ctx;
use crate::audit::{assert_clean, read, sycri_loops, sycri_mounts_but_the_spare, Gone};
use crate::client::{call, container_config, wait_log};
use crate::fail::{Context, Result};
use crate::{check, check_eq, ws};
use std::path::Path;
use std::time::Duration;
use sycri::proto::cri;

pub async fn walkthrough(ctx: &mut Ctx) -> Result<()> {
    let v = call(
        "Version",
        ctx.cri.rt.version(cri::VersionRequest::default()),
    )
    .await?;
    check_eq!(v.runtime_name, "sycri", "Version's runtime_name");
    let st = call("Status", ctx.cri.rt.status(cri::StatusRequest::default())).await?;
    let conds = st.status.context("Status's conditions")?.conditions;
    for want in ["RuntimeReady", "NetworkReady"] {
        let c = conds
            .iter()
            .find(|c| c.r#type == want)
            .context(format!("condition {want}"))?;
        check!(c.status, "{want} is false: {c:?}");
    }

    // Pull: the store keeps the SIF by digest, tagged by its path.
    let sif = ctx.busybox();
    let image = ctx.cri.pull(&sif).await?;
    check!(image.starts_with("sha256:"), "image ref {image:?}");
    let images = call(
        "ListImages",
        ctx.cri.img.list_images(cri::ListImagesRequest::default()),
    )
    .await?
    .images;
    check!(
        images
            .iter()
            .any(|i| i.id == image && i.repo_tags.contains(&sif)),
        "ListImages has no {image} tagged {sif}: {images:?}"
    );

    // A pod, with an address on the bridge network.
    let mut pod = ctx.run_pod("walk").await?;
    let ip = ctx.cri.pod_ip(&pod.id).await?;
    check!(
        ip.starts_with("10.89."),
        "pod IP {ip} not on the CNI bridge"
    );
    let pod_pid = ctx.cri.pod_pid(&pod.id).await?;

    let clock = container_config(
        "clock",
        &image,
        &[
            "sh",
            "-c",
            "echo started; while true; do date; sleep 1; done",
        ],
    );
    let c = ctx.create(&mut pod, clock).await?;
    let st = ctx.cri.status(&c).await?;
    check_eq!(
        st.state,
        cri::ContainerState::ContainerCreated as i32,
        "state after CreateContainer"
    );
    ctx.cri.start(&c).await?;
    ctx.cri
        .wait_state(
            &c,
            cri::ContainerState::ContainerRunning,
            Duration::from_secs(60),
        )
        .await?;
    let log = pod.log("clock");
    wait_log(&log, "started", Duration::from_secs(60)).await?;
    let pid = ctx.cri.pid(&c).await?;

    // Its cgroup: a v2 one under the pod's parent, with the controllers.
    let cg = pod.cgroup_of(&c);
    let procs = read(&cg.join("cgroup.procs"));
    check!(
        procs.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} not in {}: {procs:?}",
        cg.display()
    );
    let parent = pod
        .cfg
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    check_eq!(
        read(Path::new(&format!("/proc/{pid}/cgroup"))),
        format!("0::{parent}/{c}"),
        "the container's /proc/PID/cgroup seen from the guest"
    );
    let controllers = read(&cg.join("cgroup.controllers"));
    for want in ["cpu", "memory", "pids"] {
        check!(
            controllers.split_whitespace().any(|x| x == want),
            "{want} not enabled for the container: {controllers:?}"
        );
    }
    let listed = ctx.cri.containers().await?;
    check!(
        listed
            .iter()
            .any(|x| x.id == c && x.state == cri::ContainerState::ContainerRunning as i32),
        "ListContainers has no running {c}: {listed:?}"
    );

    // Exec: ExecSync, then a command streamed over WebSocket.
    let (code, out, err) = ctx.cri.exec_sync(&c, &["hostname"]).await?;
    check!(
        code == 0 && out.trim() == "walk",
        "ExecSync hostname: {code} {out:?} {err:?}"
    );
    let (code, _, _) = ctx.cri.exec_sync(&c, &["sh", "-c", "exit 7"]).await?;
    check_eq!(code, 7, "ExecSync exit status");
    let streamed = ws::exec(&mut ctx.cri, &c, &["sh", "-c", "echo via-stream"]).await?;
    check!(
        streamed.stdout.trim() == "via-stream" && streamed.status.contains("Success"),
        "streamed exec: {streamed:?}"
    );

    // Logs kept coming: dates after "started".
    let lines = wait_log(&log, "UTC", Duration::from_secs(30)).await?;
    check!(lines.len() >= 2, "log lines {lines:?}");

    // Stop (SIGTERM ends the shell), remove.
    ctx.cri.stop(&c, 10).await?;
    let st = ctx.cri.wait_exited(&c, 30).await?;
    check!(
        st.exit_code == 143 || st.exit_code == 137,
        "exit code after StopContainer: {} ({})",
        st.exit_code,
        st.reason
    );
    check!(
        st.finished_at >= st.started_at && st.started_at > 0,
        "times {} {}",
        st.started_at,
        st.finished_at
    );
    ctx.cri.remove(&c).await?;
    let gone = ctx.cri.status(&c).await;
    check!(
        gone.as_ref().is_err_and(|e| e.0.contains("NotFound")),
        "ContainerStatus after RemoveContainer: {:?}",
        gone.map(|s| s.state)
    );
    let pids = [Some(pid), pod_pid].into_iter().flatten().collect();
    ctx.finish(&[&pod], pids).await?;

    // RemoveImage: its mount and loop device go.
    call(
        "RemoveImage",
        ctx.cri.img.remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            }),
        }),
    )
    .await?;
    assert_clean(&Gone::default()).await?;
    check!(
        sycri_mounts_but_the_spare().is_empty() && sycri_loops().is_empty(),
        "image mount left"
    );
    Ok(())
}
