//! The server killed with SIGKILL while a container runs: the container and
//! its monitor carry on (its log keeps growing), and the next server (the
//! driver's, or the one systemd restarts: the unit's KillMode=process keeps
//! the monitors alive) finds both again, reports the container running with
//! the same process, execs into it and stops it.

use super::Ctx;
use crate::audit::pid_alive;
use crate::client::{container_config, log_lines, wait_log};
use crate::fail::{Context, Result};
use crate::{check, check_eq};
use std::time::Duration;
use sycri::proto::cri;

pub async fn kill9_and_restart(ctx: &mut Ctx) -> Result<()> {
    let image = ctx.image().await?;
    let mut pod = ctx.run_pod("restart").await?;
    let ticker = container_config(
        "ticker",
        &image,
        &[
            "sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
        ],
    );
    let c = ctx.create(&mut pod, ticker).await?;
    ctx.cri.start(&c).await?;
    let log = pod.log("ticker");
    wait_log(&log, "tick 2", Duration::from_secs(60)).await?;
    let pid = ctx.cri.pid(&c).await?;
    let pod_pid = ctx.cri.pod_pid(&pod.id).await?;

    let server_pid = ctx.server.pid().context("the server's pid")?;
    ctx.server.kill9().await?;
    check!(
        !pid_alive(server_pid),
        "sycri {server_pid} survived SIGKILL"
    );
    check!(pid_alive(pid), "the container {pid} died with the server");
    // Its monitor still logs it while no server runs.
    let before = log_lines(&log).len();
    wait_log(
        &log,
        &format!("tick {}", before + 2),
        Duration::from_secs(60),
    )
    .await?;

    // The driver's own server is started again; systemd restarts its unit's.
    ctx.cri = ctx.server.start().await?;
    let new_pid = ctx.server.pid().context("the new server's pid")?;
    check!(new_pid != server_pid, "no new server: pid {new_pid} still");
    let listed = ctx.cri.containers().await?;
    check!(
        listed
            .iter()
            .any(|x| x.id == c && x.state == cri::ContainerState::ContainerRunning as i32),
        "the restarted server does not list {c} running: {listed:?}"
    );
    check_eq!(
        ctx.cri.pid(&c).await?,
        pid,
        "the container's pid after the restart"
    );
    let pods = ctx.cri.pods().await?;
    check!(
        pods.iter()
            .any(|p| p.id == pod.id && p.state == cri::PodSandboxState::SandboxReady as i32),
        "the pod is not ready after the restart: {pods:?}"
    );
    let (code, out, _) = ctx.cri.exec_sync(&c, &["echo", "still-here"]).await?;
    check!(
        code == 0 && out.trim() == "still-here",
        "ExecSync after the restart: {code} {out:?}"
    );
    let n = log_lines(&log).len();
    wait_log(&log, &format!("tick {}", n + 1), Duration::from_secs(60)).await?;

    ctx.cri.stop(&c, 10).await?;
    let st = ctx.cri.wait_exited(&c, 30).await?;
    check!(
        st.exit_code != 0,
        "exit code {} after the stop",
        st.exit_code
    );
    ctx.cri.remove(&c).await?;
    let pids = [Some(pid), pod_pid].into_iter().flatten().collect();
    ctx.finish(&[&pod], pids).await?;
    Ok(())
}
