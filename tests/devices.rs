//! A container's /dev: the standard devices work, and a device node the
//! container makes itself (it holds CAP_MKNOD by default) cannot be opened,
//! so a root process in a pod cannot reach the host's disks through one.
//! Devices the CRI request passes in do work.

mod common;

use common::*;
use sycri::proto::cri;

#[tokio::test(flavor = "multi_thread")]
async fn made_device_nodes_cannot_be_opened() {
    let Some(sif) = root_busybox_sif("made_device_nodes_cannot_be_opened") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config("dev", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let script = "echo hi > /dev/null && echo null-ok; \
        [ \"$(head -c 4 /dev/zero | wc -c)\" = 4 ] && echo zero-ok; \
        head -c 4 /dev/urandom > /dev/null && echo urandom-ok; \
        mknod /dev/sneaky b 7 0 && echo mknod-ok; \
        if head -c 1 /dev/sneaky > /dev/null 2>&1; then echo open-ok; else echo open-denied; fi; \
        mknod /dev/null2 c 1 3 && if echo x > /dev/null2; then echo open2-ok; else echo open2-denied; fi";
    let id = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("devs", &image, &["sh", "-c", script]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
    let out: Vec<String> = log_lines(&s.log_dir().join("devs.log"))
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    for want in [
        "null-ok",
        "zero-ok",
        "urandom-ok",
        "mknod-ok",
        "open-denied",
        "open2-denied",
    ] {
        assert!(out.iter().any(|l| l == want), "{want} missing: {out:?}");
    }

    // CRI devices: the host's node bound in, usable on the nodev /dev.
    let dev = |host: &str, ctr: &str| cri::Device {
        container_path: ctr.into(),
        host_path: host.into(),
        permissions: "rwm".into(),
    };
    let mut cfg = container_config(
        "passed",
        &image,
        &[
            "sh",
            "-c",
            "[ \"$(head -c 4 /dev/xzero | wc -c)\" = 4 ] && echo xzero-ok",
        ],
    );
    cfg.devices = vec![dev("/dev/zero", "/dev/xzero")];
    let id = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    wait_state(&mut s.rt, &id, cri::ContainerState::ContainerExited).await;
    let out = log_lines(&s.log_dir().join("passed.log"));
    assert!(out.iter().any(|(_, l)| l == "xzero-ok"), "{out:?}");
    for (what, d, code) in [
        (
            "not a device",
            dev("/etc/hostname", "/dev/x"),
            tonic::Code::InvalidArgument,
        ),
        (
            "missing",
            dev("/dev/no-such-device", "/dev/x"),
            tonic::Code::NotFound,
        ),
        (
            "relative",
            dev("/dev/zero", "dev/x"),
            tonic::Code::InvalidArgument,
        ),
    ] {
        let mut cfg = container_config("bad", &image, &["true"]);
        cfg.devices = vec![d];
        let r = create(&mut s.rt, &pod, &pod_cfg, cfg).await;
        assert_eq!(r.map_err(|e| e.code()).err(), Some(code), "{what}");
    }
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
