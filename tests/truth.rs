//! sycri tells the kubelet only what is true: what it cannot do (user
//! namespaces, CDI devices, AppArmor, SELinux, the systemd cgroup driver) is
//! refused with a clear error, never accepted without effect, while what has
//! no effect (the node's user namespace, an unconfined profile) stays
//! accepted; ImageFsInfo reports the containers' writable layers as they are.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use tonic::Code;

fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    code: Code,
    names: &str,
) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(
                e.message().contains(names),
                "{what}: the error names {names}: {e:?}"
            );
        }
    }
}

/// RunPodSandbox of `config`, which must be refused with FAILED_PRECONDITION
/// naming `names`.
async fn run_pod_refused(s: &mut Server, what: &str, config: &cri::PodSandboxConfig, names: &str) {
    let r =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await;
    expect_refused(what, r, Code::FailedPrecondition, names);
}

fn node_userns() -> cri::NamespaceOption {
    cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_sycri_cannot_run_are_refused() {
    assert!(is_root(), "integration tests run as root");
    let mut s = Server::start().await;

    // A user namespace of the pod's own (hostUsers: false).
    let mut userns = pod_config_ns(
        "userns",
        &s.log_dir(),
        cri::NamespaceOption {
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: vec![cri::IdMapping {
                    host_id: 100_000,
                    container_id: 0,
                    length: 65_536,
                }],
                gids: vec![cri::IdMapping {
                    host_id: 100_000,
                    container_id: 0,
                    length: 65_536,
                }],
            }),
            ..Default::default()
        },
    );
    run_pod_refused(&mut s, "a pod user namespace", &userns, "userns_options").await;
    // An SELinux label for the pod.
    let sc = userns
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.namespace_options = Some(node_userns());
    sc.selinux_options = Some(cri::SeLinuxOption {
        user: "system_u".into(),
        role: "system_r".into(),
        r#type: "container_t".into(),
        level: "s0:c1,c2".into(),
    });
    run_pod_refused(&mut s, "a pod SELinux label", &userns, "selinux_options").await;
    assert!(list_pods(&mut s.rt).await.is_empty(), "no pod was made");

    // The same pod as the kubelet sends it for hostUsers unset: the node's
    // user namespace, a pod-level seccomp profile (no sandbox process to
    // apply it to), empty SELinux options. Accepted, and the name is free.
    let sc = userns
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.selinux_options = Some(cri::SeLinuxOption::default());
    sc.seccomp = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    let pod = run_pod(&mut s.rt, userns).await;
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_sycri_cannot_run_are_refused() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("containers_sycri_cannot_run_are_refused") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config_ns("refusals", &s.log_dir(), node_userns());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let base = || {
        container_config_ns(
            "c",
            &image,
            &["sh", "-c", "exit 0"],
            cri::NamespaceOption {
                userns_options: node_userns().userns_options,
                ..Default::default()
            },
        )
    };
    let mut cdi = base();
    cdi.cdi_devices = vec![cri::CdiDevice {
        name: "vendor.example/gpu=0".into(),
    }];
    let mut apparmor = base();
    let sc = apparmor
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
        ..Default::default()
    });
    let mut userns = base();
    userns
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|sc| sc.namespace_options.as_mut())
        .expect("namespace options")
        .userns_options = Some(cri::UserNamespace {
        mode: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    for (what, cfg, names) in [
        ("a CDI device", cdi, "CDI_devices"),
        ("an AppArmor profile", apparmor, "apparmor"),
        ("a user namespace", userns, "userns_options"),
    ] {
        let r = create(&mut s.rt, &pod, &pod_cfg, cfg).await;
        expect_refused(what, r, Code::FailedPrecondition, names);
        assert!(list_containers(&mut s.rt).await.is_empty(), "{what}");
        assert_only_pods_left(&s, &[&pod], &[]).await;
    }

    // Unconfined, as the kubelet says it in both fields, runs.
    let mut unconfined = base();
    let sc = unconfined
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .expect("security context");
    sc.apparmor = Some(cri::SecurityProfile {
        profile_type: cri::security_profile::ProfileType::Unconfined as i32,
        ..Default::default()
    });
    #[allow(deprecated)]
    {
        sc.apparmor_profile = "unconfined".into();
    }
    let id = create(&mut s.rt, &pod, &pod_cfg, unconfined)
        .await
        .expect("an unconfined container is created");
    start(&mut s.rt, &id).await.expect("start");
    let st = wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    remove_container(&mut s.rt, &id).await.expect("remove");
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

/// The containers' filesystem as ImageFsInfo reports it.
async fn container_fs(s: &mut Server) -> cri::FilesystemUsage {
    let r = s
        .img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    assert_eq!(r.container_filesystems.len(), 1, "{r:?}");
    r.container_filesystems[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_fs_info_counts_the_writable_layers() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("image_fs_info_counts_the_writable_layers") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config("fsinfo", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let before = container_fs(&mut s).await;
    let layers = s.storage_dir().join("state").join("containers");
    assert_eq!(
        before.fs_id.as_ref().map(|f| f.mountpoint.as_str()),
        Some(layers.to_string_lossy().as_ref()),
        "the path that holds the writable layers"
    );
    let bytes = |u: &cri::FilesystemUsage| u.used_bytes.as_ref().map_or(0, |v| v.value);
    let inodes = |u: &cri::FilesystemUsage| u.inodes_used.as_ref().map_or(0, |v| v.value);

    let id = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config(
            "writer",
            &image,
            &[
                "sh",
                "-c",
                "mkdir -p /data && dd if=/dev/zero of=/data/blob bs=1024 count=2048 2>/dev/null",
            ],
        ),
    )
    .await
    .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    let st = wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let u = container_fs(&mut s).await;
        if bytes(&u) >= bytes(&before) + (2 << 20) || Instant::now() > deadline {
            break u;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        bytes(&after) >= bytes(&before) + (2 << 20),
        "2 MiB written: {} bytes before, {} after",
        bytes(&before),
        bytes(&after)
    );
    // /data and /data/blob at least.
    assert!(
        inodes(&after) >= inodes(&before) + 2,
        "inodes {} before, {} after",
        inodes(&before),
        inodes(&after)
    );

    // Removed, its layer counts no more.
    remove_container(&mut s.rt, &id).await.expect("remove");
    let gone = container_fs(&mut s).await;
    assert!(
        bytes(&gone) < bytes(&before) + (2 << 20),
        "after removal {} bytes",
        bytes(&gone)
    );
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

#[test]
fn the_server_refuses_the_systemd_cgroup_driver() {
    let dir = tempfile::Builder::new()
        .prefix("sy")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let systemd = dir.path().join("systemd.toml");
    std::fs::write(&systemd, "cgroup_driver = \"systemd\"\n").expect("config");
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").expect("config");
    let sock = dir.path().join("cri.sock");
    let run = |config: &std::path::Path, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sycri"));
        cmd.arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--storage-dir")
            .arg(dir.path().join("store"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--cgroup-parent")
            .arg(cgroup_parent_of(dir.path()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn_kept(&mut cmd).expect("run sycri");
        let pid = child.id();
        let out = child.wait_with_output().expect("sycri's output");
        untrack(pid);
        out
    };
    // --print-config still shows it.
    let out = run(&systemd, &["--print-config"]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("cgroup_driver = \"systemd\""), "{printed}");
    // The server stops at once, saying why, and makes nothing.
    for (config, extra) in [
        (&systemd, &[][..]),
        (&empty, &["--cgroup-driver", "systemd"][..]),
    ] {
        let out = run(config, extra);
        assert!(!out.status.success(), "{extra:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cgroup_driver") && err.contains("systemd") && err.contains("cgroupfs"),
            "{extra:?}: {err}"
        );
        assert!(!sock.exists(), "no socket");
        assert!(!dir.path().join("store").exists(), "no store");
    }
}
