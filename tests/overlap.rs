//! Reads never wait for an operation: while StopContainer waits out a long
//! grace period on a container that ignores SIGTERM, the calls the kubelet
//! makes every second (ListContainers, ContainerStatus of it and of another
//! container, ListContainerStats, ListPodSandbox) all answer. A second
//! StopContainer without a grace period ends the container, and then the
//! first one returns too.

mod common;

use common::*;
use std::sync::{Arc, Mutex};
use sycri::proto::cri;

#[tokio::test]
async fn reads_answer_while_a_stop_waits_out_its_grace_period() {
    let Some(sif) = root_busybox_sif("reads_answer_while_a_stop_waits_out_its_grace_period") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config("overlap", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let stubborn_cfg = container_config(
        "stubborn",
        &image,
        &[
            "sh",
            "-c",
            "trap 'echo got-term' TERM; echo ready; while true; do sleep 0.1; done",
        ],
    );
    let stubborn = create(&mut s.rt, &pod, &pod_cfg, stubborn_cfg)
        .await
        .expect("create stubborn");
    let other = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("other", &image, &["sleep", "1000"]),
    )
    .await
    .expect("create other");
    for id in [&stubborn, &other] {
        start(&mut s.rt, id).await.expect("start");
    }
    let log = s.log_dir().join("stubborn.log");
    wait_log_line(&log, "ready").await;

    let done: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let mut rt = s.rt.clone();
    let (id, d) = (stubborn.clone(), done.clone());
    let stop = tokio::spawn(async move {
        let r = stop_container(&mut rt, &id, 30).await;
        d.lock().expect("lock").push("stop with 30 s");
        r
    });
    // The stop has sent SIGTERM (the container says so) and now waits.
    wait_log_line(&log, "got-term").await;

    let mut rt = s.rt.clone();
    let listed = list_containers(&mut rt).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed
        .iter()
        .all(|(_, st)| *st == cri::ContainerState::ContainerRunning as i32));
    assert_eq!(
        status(&mut rt, &stubborn).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(
        status(&mut rt, &other).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let stats = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .expect("list container stats")
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 2);
    assert_eq!(list_pods(&mut rt).await.len(), 1);
    done.lock().expect("lock").push("reads");
    assert!(!stop.is_finished(), "the stop ended without a kill");

    // The kubelet's force stop: no grace period.
    done.lock().expect("lock").push("stop with 0 s begins");
    stop_container(&mut rt, &stubborn, 0)
        .await
        .expect("stop with 0 s");
    stop.await.expect("join").expect("stop with 30 s");
    assert_eq!(
        *done.lock().expect("lock"),
        vec!["reads", "stop with 0 s begins", "stop with 30 s"]
    );
    let st = status(&mut rt, &stubborn).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + libc::SIGKILL);

    for id in [&stubborn, &other] {
        remove_container(&mut rt, id).await.expect("remove");
    }
    stop_pod(&mut rt, &pod).await.expect("stop pod");
    remove_pod(&mut rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
