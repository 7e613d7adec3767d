//! The walk-through of the original Singularity CRI README, driven over the
//! socket: run a pod, pull the busybox SIF, create, start, list, read the log,
//! stop, remove; then check that nothing is left behind.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::time::Duration;
use sycri::proto::cri;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_pod_image_container() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("walkthrough_pod_image_container") else {
        return;
    };
    let mut s = Server::start().await;

    let v =
        s.rt.version(cri::VersionRequest::default())
            .await
            .expect("version")
            .into_inner();
    assert_eq!(v.runtime_name, "sycri");
    assert_eq!(v.runtime_api_version, "v1");
    let st =
        s.rt.status(cri::StatusRequest::default())
            .await
            .expect("status")
            .into_inner();
    let conds = st.status.expect("conditions").conditions;
    let ready = conds
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .expect("RuntimeReady");
    assert!(ready.status, "runtime ready: {ready:?}");
    let net = conds
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("NetworkReady");
    assert!(
        !net.status && !net.reason.is_empty(),
        "no CNI yet, and the condition says so: {net:?}"
    );

    // Pull: content-addressed by the file's sha256, tagged by its path.
    let image_ref = s.pull(&sif).await;
    let want = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&sif).expect("read fixture")))
    );
    assert_eq!(image_ref, want);
    let sif_str = sif.to_string_lossy().into_owned();
    let listed = s
        .img
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags, vec![sif_str.clone()]);
    assert_eq!(listed[0].size, std::fs::metadata(&sif).expect("stat").len());
    for reference in [
        sif_str.clone(),
        format!("file://{sif_str}"),
        image_ref.clone(),
    ] {
        let st = s
            .img
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: reference.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .expect("image status")
            .into_inner();
        assert_eq!(
            st.image.map(|i| i.id),
            Some(image_ref.clone()),
            "lookup by {reference}"
        );
    }
    let fs = s
        .img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("fs info")
        .into_inner();
    assert!(
        fs.image_filesystems[0]
            .used_bytes
            .as_ref()
            .map(|u| u.value)
            .unwrap_or(0)
            >= listed[0].size
    );

    // Pod.
    let pod_cfg = pod_config("walk", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    assert_eq!(pod.len(), 64);
    let ps =
        s.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .expect("pod status")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(ps.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(ps.metadata.map(|m| m.name), Some("walk".into()));

    // A container that prints, checks its surroundings and exits 3.
    let script = "echo hello; echo oops >&2; hostname; cat /etc/hostname; \
                  test -e /proc/self/status && echo proc-ok; \
                  touch /written && echo rw-ok; \
                  (echo x > /sys/kernel/profiling) 2>/dev/null || echo sys-ro; \
                  test -c /dev/null && echo dev-ok; \
                  test \"$(cat /proc/timer_list | wc -c)\" = 0 && echo masked-ok; \
                  exit 3";
    let c1 = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("printer", &sif_str, &["sh", "-c", script]),
    )
    .await
    .expect("create printer");
    let st = status(&mut s.rt, &c1).await;
    assert_eq!(st.state, cri::ContainerState::ContainerCreated as i32);
    start(&mut s.rt, &c1).await.expect("start printer");
    let st = wait_state(&mut s.rt, &c1, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 3);
    assert_eq!(st.reason, "Error");
    assert!(st.started_at >= st.created_at && st.finished_at >= st.started_at && st.created_at > 0);
    assert_eq!(st.image_ref, image_ref);
    let log = s.log_dir().join("printer.log");
    assert_eq!(st.log_path, log.to_string_lossy());
    let lines = wait_log_line(&log, "masked-ok").await;
    let stdout: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, l)| l.as_str())
        .collect();
    let stderr: Vec<&str> = lines
        .iter()
        .filter(|(s, _)| s == "stderr")
        .map(|(_, l)| l.as_str())
        .collect();
    assert_eq!(
        stdout,
        vec![
            "hello",
            "walk",
            "walk",
            "proc-ok",
            "rw-ok",
            "sys-ro",
            "dev-ok",
            "masked-ok"
        ]
    );
    assert_eq!(stderr, vec!["oops"]);

    // A long-running one: the image's default command (busybox `sh`) would exit at
    // once on empty stdin, so give it one.
    let c2 = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("sleeper", &sif_str, &["sleep", "1000"]),
    )
    .await
    .expect("create sleeper");
    start(&mut s.rt, &c2).await.expect("start sleeper");
    let st = status(&mut s.rt, &c2).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    let pid = container_pid(&mut s.rt, &c2).await.expect("sleeper pid");
    assert!(pid_alive(pid));

    // List with filters.
    let all =
        s.rt.list_containers(cri::ListContainersRequest::default())
            .await
            .expect("list")
            .into_inner()
            .containers;
    assert_eq!(all.len(), 2);
    let running =
        s.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![c2.clone()]
    );
    let by_label =
        s.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: [("c".to_string(), "printer".to_string())].into(),
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("list")
        .into_inner()
        .containers;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].id, c1);

    // Stop: sleep ignores nothing, SIGTERM ends it well before the timeout.
    let t = std::time::Instant::now();
    s.rt.stop_container(cri::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 10,
    })
    .await
    .expect("stop");
    assert!(t.elapsed() < Duration::from_secs(9), "SIGTERM was enough");
    let st = status(&mut s.rt, &c2).await;
    assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 128 + libc::SIGTERM);
    assert!(!pid_alive(pid));
    // Idempotent.
    s.rt.stop_container(cri::StopContainerRequest {
        container_id: c2.clone(),
        timeout: 10,
    })
    .await
    .expect("stop again");

    for c in [&c1, &c2] {
        s.rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .expect("remove");
    }
    let err =
        s.rt.container_status(cri::ContainerStatusRequest {
            container_id: c1.clone(),
            verbose: false,
        })
        .await
        .expect_err("removed container is gone");
    assert_eq!(err.code(), tonic::Code::NotFound);

    s.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop pod");
    let ps =
        s.rt.list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxNotready as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .expect("list pods")
        .into_inner()
        .items;
    assert_eq!(ps.len(), 1);
    s.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove pod");
    // Unknown ids: stop and remove succeed, status says NotFound.
    s.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("stop unknown pod");
    s.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("remove unknown pod");
    s.rt.stop_container(cri::StopContainerRequest {
        container_id: "nope".into(),
        timeout: 0,
    })
    .await
    .expect("stop unknown");
    s.rt.remove_container(cri::RemoveContainerRequest {
        container_id: "nope".into(),
    })
    .await
    .expect("remove unknown");

    remove_image(&mut s.img, &image_ref)
        .await
        .expect("remove image");
    let listed = s
        .img
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert!(listed.is_empty());
    assert_no_leaks(s.dir.path(), &[pid]);
    assert_eq!(
        s.terminate().code(),
        Some(0),
        "SIGTERM ends the server cleanly"
    );
}
