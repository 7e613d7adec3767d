//! kill -9 of the server at any moment loses nothing and leaks nothing: the
//! server is killed at a sweep of moments inside RunPodSandbox,
//! CreateContainer, StartContainer, StopContainer and RemoveContainer,
//! started again, and then every object is either listed (and removable) or
//! gone, with nothing of it left: processes, mounts (namespace pins
//! included), loop devices, state and run directories.
//!
//! And an image is mounted once, whatever the restarts: on a run directory
//! reached through a symlink (as /var/run is /run), three passes of pull,
//! run two containers of the image, kill -9, restart and remove leave the
//! image mounted once while they use it, and not at all after, and
//! RemoveImage leaves no loop device.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use sycri::proto::cri;

/// Where the kill lands: milliseconds after the call was sent.
const DELAYS_MS: [u64; 9] = [0, 1, 2, 4, 7, 11, 16, 24, 40];

#[derive(Clone, Copy, Debug)]
enum Op {
    RunPod,
    Create,
    Start,
    Stop,
    Remove,
}

/// Removes everything the server lists; each must be removable.
async fn remove_all(s: &mut Server, what: &str) {
    for (id, _) in list_containers(&mut s.rt).await {
        stop_container(&mut s.rt, &id, 0)
            .await
            .unwrap_or_else(|e| panic!("{what}: stop listed container {id}: {e}"));
        remove_container(&mut s.rt, &id)
            .await
            .unwrap_or_else(|e| panic!("{what}: remove listed container {id}: {e}"));
    }
    for (id, _) in list_pods(&mut s.rt).await {
        stop_pod(&mut s.rt, &id)
            .await
            .unwrap_or_else(|e| panic!("{what}: stop listed pod {id}: {e}"));
        remove_pod(&mut s.rt, &id)
            .await
            .unwrap_or_else(|e| panic!("{what}: remove listed pod {id}: {e}"));
    }
    assert!(list_containers(&mut s.rt).await.is_empty(), "{what}");
    assert!(list_pods(&mut s.rt).await.is_empty(), "{what}");
}

fn entries(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_dirs_empty(s: &Server, what: &str) {
    for d in [
        s.storage_dir().join("state/pods"),
        s.storage_dir().join("state/containers"),
        s.run_dir().join("pods"),
        s.run_dir().join("c"),
    ] {
        let left = entries(&d);
        assert!(left.is_empty(), "{what}: {} holds {left:?}", d.display());
    }
}

#[tokio::test]
async fn a_kill_at_any_moment_of_an_operation_leaves_nothing_behind() {
    let Some(sif) = root_busybox_sif("a_kill_at_any_moment_of_an_operation_leaves_nothing_behind")
    else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    for op in [Op::RunPod, Op::Create, Op::Start, Op::Stop, Op::Remove] {
        for (n, delay) in DELAYS_MS.iter().enumerate() {
            let what = format!("{op:?} killed after {delay} ms");
            let pod_cfg = pod_config(&format!("crash{n}"), &s.log_dir());
            // Everything the operation needs, made before.
            let pod = match op {
                Op::RunPod => None,
                _ => Some(run_pod(&mut s.rt, pod_cfg.clone()).await),
            };
            let ctr = match (op, &pod) {
                (Op::Start | Op::Stop | Op::Remove, Some(p)) => {
                    let c = create(
                        &mut s.rt,
                        p,
                        &pod_cfg,
                        container_config("app", &image, &["sleep", "1000"]),
                    )
                    .await
                    .expect("create");
                    if !matches!(op, Op::Start) {
                        start(&mut s.rt, &c).await.expect("start");
                    }
                    Some(c)
                }
                _ => None,
            };
            let mut rt = s.rt.clone();
            let (pod_cfg2, image2) = (pod_cfg.clone(), image.clone());
            let task = tokio::spawn(async move {
                let _ = match op {
                    Op::RunPod => rt
                        .run_pod_sandbox(cri::RunPodSandboxRequest {
                            config: Some(pod_cfg2),
                            runtime_handler: String::new(),
                        })
                        .await
                        .map(drop),
                    Op::Create => create(
                        &mut rt,
                        pod.as_deref().unwrap_or_default(),
                        &pod_cfg2,
                        container_config("app", &image2, &["sleep", "1000"]),
                    )
                    .await
                    .map(drop),
                    Op::Start => start(&mut rt, ctr.as_deref().unwrap_or_default()).await,
                    Op::Stop => {
                        stop_container(&mut rt, ctr.as_deref().unwrap_or_default(), 10).await
                    }
                    Op::Remove => {
                        remove_container(&mut rt, ctr.as_deref().unwrap_or_default()).await
                    }
                };
            });
            tokio::time::sleep(Duration::from_millis(*delay)).await;
            s.kill9();
            let _ = task.await;
            s.restart().await;
            // Whatever is listed answers and can be removed; then nothing is left.
            for (id, _) in list_containers(&mut s.rt).await {
                let _ = status(&mut s.rt, &id).await;
            }
            remove_all(&mut s, &what).await;
            assert_no_leaks(s.dir.path(), &[]);
            assert_dirs_empty(&s, &what);
        }
    }
}

#[tokio::test]
async fn an_image_is_mounted_once_whatever_the_restarts() {
    let Some(sif) = root_busybox_sif("an_image_is_mounted_once_whatever_the_restarts") else {
        return;
    };
    // The run directory is reached through a symlink, as /var/run is /run.
    let mut s = Server::start_prepared("", |dir| {
        std::fs::create_dir_all(dir.join("real-run")).expect("real run dir");
        std::os::unix::fs::symlink(dir.join("real-run"), dir.join("run")).expect("symlink");
    })
    .await;
    let squashfs_mounts = |s: &Server| {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        sycri_native::mounts::parse_mountinfo(&info)
            .into_iter()
            .filter(|m| m.fs_type == "squashfs" && m.mount_point.starts_with(s.dir.path()))
            .count()
    };
    for pass in 0..3 {
        let image = s.pull(&sif).await;
        let pod_cfg = pod_config(&format!("pass{pass}"), &s.log_dir());
        let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
        // Two containers of the image: they share its one mount.
        for name in ["app", "sidecar"] {
            let c = create(
                &mut s.rt,
                &pod,
                &pod_cfg,
                container_config(name, &image, &["sleep", "1000"]),
            )
            .await
            .expect("create");
            start(&mut s.rt, &c).await.expect("start");
        }
        assert_eq!(
            squashfs_mounts(&s),
            1,
            "pass {pass}: while the containers run"
        );
        s.kill9();
        s.restart().await;
        assert_eq!(squashfs_mounts(&s), 1, "pass {pass}: after the restart");
        remove_all(&mut s, &format!("pass {pass}")).await;
        assert_eq!(squashfs_mounts(&s), 0, "pass {pass}: after the removal");
    }
    let image = s.pull(&sif).await;
    remove_image(&mut s.img, &image)
        .await
        .expect("remove image");
    assert_no_leaks(s.dir.path(), &[]);
    assert!(loops_under(s.dir.path()).is_empty());
}
