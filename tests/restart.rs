//! Containers outlive the server: kill it (SIGKILL or SIGTERM) while pods and
//! containers run, check that they carry on without it, start it again on the
//! same directories and drive everything it left to the end.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sycri::proto::cri;

const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const CREATED: i32 = cri::ContainerState::ContainerCreated as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;
const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
const NOTREADY: i32 = cri::PodSandboxState::SandboxNotready as i32;

const TICKER: &str = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done";

/// The tick numbers of the complete records of a ticker's log, in order. A record
/// being written (no newline yet) is left out.
fn ticks(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, ' ').collect();
            assert!(
                f.len() == 4 && f[0].len() == 30 && f[0].ends_with('Z') && f[2] == "F",
                "bad CRI log record {l:?} in {}",
                path.display()
            );
            assert_eq!(f[1], "stdout", "unexpected record {l:?}");
            f[3].strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("unexpected line {l:?} in {}", path.display()))
        })
        .collect()
}

fn assert_consecutive(t: &[u64], what: &str) {
    for w in t.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{what}: ticks lost or repeated: {t:?}");
    }
}

fn last_tick(path: &Path) -> Option<u64> {
    ticks(path).last().copied()
}

fn image_spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

/// Processes (monitors) whose command line names container `id`.
fn monitors_of(s: &Server, id: &str) -> Vec<(i32, String)> {
    processes_under(s.dir.path())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(id))
        .collect()
}

/// Stops and removes the containers and the pod, checks that the server forgot them
/// and that their directories are gone.
async fn tear_down(s: &mut Server, pod: &str, containers: &[String]) {
    for c in containers {
        stop_container(&mut s.rt, c, 10).await.expect("stop");
        remove_container(&mut s.rt, c).await.expect("remove");
        for d in container_dirs(s, c) {
            assert!(!d.exists(), "{} left after RemoveContainer", d.display());
        }
    }
    assert!(list_containers(&mut s.rt).await.is_empty());
    stop_pod(&mut s.rt, pod).await.expect("stop pod");
    assert_eq!(
        list_pods(&mut s.rt).await,
        vec![(pod.to_string(), NOTREADY)]
    );
    remove_pod(&mut s.rt, pod).await.expect("remove pod");
    assert!(list_pods(&mut s.rt).await.is_empty());
    for d in pod_dirs(s, pod) {
        assert!(!d.exists(), "{} left after RemovePodSandbox", d.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_outlive_a_killed_server() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("containers_outlive_a_killed_server") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    let image_ref = s.pull(&sif).await;
    let pod_cfg = pod_config("survivor", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await;

    let sleeper = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &sif_str, &["sleep", "1000"]),
    )
    .await
    .expect("create sleeper");
    start(&mut s.rt, &sleeper).await.expect("start sleeper");
    let ticker = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("ticker", &sif_str, &["sh", "-c", TICKER]),
    )
    .await
    .expect("create ticker");
    start(&mut s.rt, &ticker).await.expect("start ticker");
    let sleeper_pid = container_pid(&mut s.rt, &sleeper).await.expect("pid");
    let ticker_pid = container_pid(&mut s.rt, &ticker).await.expect("pid");
    let log = s.log_dir().join("ticker.log");
    wait_log_line(&log, "tick 2").await;

    s.kill9();
    assert!(pid_alive(sleeper_pid), "sleeper died with the server");
    assert!(pid_alive(ticker_pid), "ticker died with the server");
    for c in [&sleeper, &ticker] {
        assert_eq!(monitors_of(&s, c).len(), 1, "the monitor of {c} lives on");
    }
    if let Some(init) = init {
        assert!(pid_alive(init), "the pod init died with the server");
    }
    let down_at = last_tick(&log).expect("ticks before the kill");
    wait_for(
        "the ticker's log to grow while the server is down",
        Duration::from_secs(10),
        || last_tick(&log).is_some_and(|t| t >= down_at + 5),
    )
    .await;

    s.restart().await;
    assert_eq!(list_pods(&mut s.rt).await, vec![(pod.clone(), READY)]);
    assert_eq!(pod_init_pid(&mut s.rt, &pod).await, init);
    let mut listed = list_containers(&mut s.rt).await;
    listed.sort();
    let mut want = vec![(sleeper.clone(), RUNNING), (ticker.clone(), RUNNING)];
    want.sort();
    assert_eq!(listed, want);
    for (id, name, pid) in [
        (&sleeper, "sleeper", sleeper_pid),
        (&ticker, "ticker", ticker_pid),
    ] {
        let st = status(&mut s.rt, id).await;
        assert_eq!(st.state, RUNNING, "{name} after the restart: {st:?}");
        assert_eq!(&st.id, id);
        assert_eq!(st.metadata.map(|m| m.name), Some(name.to_string()));
        assert_eq!(st.image_ref, image_ref);
        assert!(st.started_at > 0 && st.finished_at == 0);
        assert_eq!(container_pid(&mut s.rt, id).await, Some(pid));
    }
    let img = s
        .img
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&sif_str),
            verbose: false,
        })
        .await
        .expect("image status")
        .into_inner()
        .image;
    assert_eq!(img.map(|i| i.id), Some(image_ref.clone()));

    // Names stay reserved across the restart.
    let err = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &sif_str, &["sleep", "1"]),
    )
    .await
    .expect_err("the name sleeper is still taken");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    let err =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect_err("the pod name is still taken");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // Log rotation through the restarted server.
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    std::fs::rename(&log, &rotated).expect("rotate the log");
    s.rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: ticker.clone(),
    })
    .await
    .expect("reopen log");
    assert!(log.exists(), "ReopenContainerLog recreates the log at once");
    let rotated_len = std::fs::metadata(&rotated).expect("rotated log").len();
    let old = ticks(&rotated);
    assert_consecutive(&old, "log before the rotation");
    wait_for(
        "new lines in the reopened log",
        Duration::from_secs(10),
        || ticks(&log).len() >= 3,
    )
    .await;
    assert_eq!(
        std::fs::metadata(&rotated).expect("rotated log").len(),
        rotated_len,
        "the rotated file still grows after ReopenContainerLog"
    );
    let new = ticks(&log);
    assert_consecutive(&new, "log after the rotation");
    assert_eq!(
        new.first().copied(),
        old.last().map(|t| t + 1),
        "lines lost or repeated across the rotation"
    );

    // The pod still works for new containers.
    let after = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("after", &sif_str, &["sh", "-c", "hostname; exit 0"]),
    )
    .await
    .expect("create after the restart");
    start(&mut s.rt, &after).await.expect("start after restart");
    let st = wait_state(&mut s.rt, &after, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    wait_log_line(&s.log_dir().join("after.log"), "survivor").await;

    stop_container(&mut s.rt, &sleeper, 10)
        .await
        .expect("stop sleeper");
    let st = status(&mut s.rt, &sleeper).await;
    assert_eq!(st.state, EXITED);
    assert_eq!(st.exit_code, 128 + libc::SIGTERM, "{st:?}");
    assert!(!pid_alive(sleeper_pid));
    stop_container(&mut s.rt, &ticker, 10)
        .await
        .expect("stop ticker");
    assert_eq!(status(&mut s.rt, &ticker).await.state, EXITED);
    assert!(!pid_alive(ticker_pid));

    tear_down(&mut s, &pod, &[sleeper, ticker, after]).await;
    let mut pids = vec![sleeper_pid, ticker_pid];
    pids.extend(init);
    assert_no_leaks(s.dir.path(), &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_while_the_server_is_down_is_recorded() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("exit_while_the_server_is_down_is_recorded") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let pod_cfg = pod_config("exiter", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("seven", &sif_str, &["sh", "-c", "sleep 1; exit 7"]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    let pid = container_pid(&mut s.rt, &c).await.expect("pid");
    let started_at = status(&mut s.rt, &c).await.started_at;
    let killed_at = sycri_native::util::now_ns();
    s.kill9();
    assert!(pid_alive(pid), "the container died with the server");

    // Let the container exit and its monitor finish while nobody serves.
    wait_for(
        "the container and its monitor to end",
        Duration::from_secs(10),
        || !pid_alive(pid) && monitors_of(&s, &c).is_empty(),
    )
    .await;

    s.restart().await;
    assert_eq!(list_containers(&mut s.rt).await, vec![(c.clone(), EXITED)]);
    let st = status(&mut s.rt, &c).await;
    assert_eq!(st.state, EXITED, "{st:?}");
    assert_eq!(st.exit_code, 7, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");
    assert_eq!(st.started_at, started_at);
    assert!(
        st.finished_at >= killed_at && st.finished_at > st.started_at,
        "finished_at is when it exited, after the kill: {st:?}"
    );
    assert_eq!(container_pid(&mut s.rt, &c).await, None);

    tear_down(&mut s, &pod, &[c]).await;
    let mut pids = vec![pid];
    pids.extend(init);
    assert_no_leaks(s.dir.path(), &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_containers_running() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("sigterm_leaves_containers_running") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let pod_cfg = pod_config("termed", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &sif_str, &["sleep", "1000"]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    let pid = container_pid(&mut s.rt, &c).await.expect("pid");

    let code = s.terminate();
    assert!(code.success(), "SIGTERM ends the server cleanly: {code:?}");
    assert!(
        pid_alive(pid),
        "SIGTERM to the server stopped the container"
    );
    assert_eq!(monitors_of(&s, &c).len(), 1, "the monitor lives on");
    if let Some(init) = init {
        assert!(pid_alive(init), "SIGTERM to the server ended the pod init");
    }
    assert!(!s.socket().exists(), "the server removes its socket");

    s.restart().await;
    assert_eq!(list_pods(&mut s.rt).await, vec![(pod.clone(), READY)]);
    assert_eq!(list_containers(&mut s.rt).await, vec![(c.clone(), RUNNING)]);
    assert_eq!(container_pid(&mut s.rt, &c).await, Some(pid));
    stop_container(&mut s.rt, &c, 10).await.expect("stop");
    let st = status(&mut s.rt, &c).await;
    assert_eq!(st.state, EXITED);
    assert_eq!(st.exit_code, 128 + libc::SIGTERM, "{st:?}");

    tear_down(&mut s, &pod, &[c]).await;
    let mut pids = vec![pid];
    pids.extend(init);
    assert_no_leaks(s.dir.path(), &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_container_starts_after_a_restart() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("created_container_starts_after_a_restart") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let pod_cfg = pod_config("later", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config(
            "late",
            &sif_str,
            &["sh", "-c", "echo started-after-restart; exit 0"],
        ),
    )
    .await
    .expect("create");
    assert_eq!(status(&mut s.rt, &c).await.state, CREATED);

    s.kill9();
    // The monitor, and the container's first process waiting for its start.
    assert_eq!(monitors_of(&s, &c).len(), 2, "the monitor lives on");
    s.restart().await;
    assert_eq!(list_containers(&mut s.rt).await, vec![(c.clone(), CREATED)]);
    let st = status(&mut s.rt, &c).await;
    assert_eq!(st.state, CREATED, "{st:?}");
    assert_eq!(st.started_at, 0);

    start(&mut s.rt, &c)
        .await
        .expect("start a container created before the restart");
    let st = wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(st.reason, "Completed", "{st:?}");
    assert!(st.started_at > 0 && st.finished_at >= st.started_at);
    wait_log_line(&s.log_dir().join("late.log"), "started-after-restart").await;
    let err = start(&mut s.rt, &c).await.expect_err("no second start");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    tear_down(&mut s, &pod, &[c]).await;
    let pids: Vec<i32> = init.into_iter().collect();
    assert_no_leaks(s.dir.path(), &pids);
}
