//! Mount propagation of CRI bind mounts, as the kubelet's mountPropagation
//! means it: PRIVATE sees nothing new either way, HOST_TO_CONTAINER sees the
//! host's later mounts, BIDIRECTIONAL also shows the container's mounts to
//! the host. Whatever happens, the container's own rootfs mounts never reach
//! the host.

mod common;

use common::*;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::Path;
use sycri::proto::cri;

async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String) {
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    (
        out.exit_code,
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn detach(p: &Path) {
    let _ = umount2(p, MntFlags::MNT_DETACH);
}

#[tokio::test(flavor = "multi_thread")]
async fn propagation_modes() {
    let Some(sif) = root_busybox_sif("propagation_modes") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = privileged_pod_config("prop", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    // A volume on a private mount cannot propagate anything: asking for it
    // is refused rather than answered with an island.
    let island = s.dir.path().join("vol-island");
    std::fs::create_dir_all(&island).expect("mkdir");
    mount(
        Some(&island),
        &island,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind");
    mount(
        None::<&str>,
        &island,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("private");
    for mode in [
        cri::MountPropagation::PropagationBidirectional,
        cri::MountPropagation::PropagationHostToContainer,
    ] {
        let mut cfg = container_config("island", &image, &["true"]);
        let mut m = bind(&island, "/data");
        m.propagation = mode as i32;
        cfg.mounts = vec![m];
        let r = create(&mut s.rt, &pod, &pod_cfg, cfg).await;
        assert_eq!(
            r.map_err(|e| e.code()).err(),
            Some(tonic::Code::FailedPrecondition),
            "{mode:?} on a private mount"
        );
    }
    detach(&island);

    let modes = [
        (
            "private",
            cri::MountPropagation::PropagationPrivate,
            false,
            false,
        ),
        (
            "slave",
            cri::MountPropagation::PropagationHostToContainer,
            true,
            false,
        ),
        (
            "shared",
            cri::MountPropagation::PropagationBidirectional,
            true,
            true,
        ),
    ];
    for (name, mode, host_to_ctr, ctr_to_host) in modes {
        let base = s.dir.path().join(format!("vol-{name}"));
        let mnt = base.join("mnt");
        let src = base.join("src");
        for d in [mnt.join("from-host"), mnt.join("from-ctr"), src.clone()] {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        std::fs::write(src.join("flag"), b"host").expect("flag");
        // The volume is a mount point of its own, shared or private as the
        // kubelet would prepare it.
        mount(
            Some(&mnt),
            &mnt,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .expect("bind volume");
        let kind = if mode == cri::MountPropagation::PropagationPrivate {
            MsFlags::MS_PRIVATE
        } else {
            MsFlags::MS_SHARED
        };
        mount(
            None::<&str>,
            &mnt,
            None::<&str>,
            kind | MsFlags::MS_REC,
            None::<&str>,
        )
        .expect("volume propagation");

        let mut cfg = container_config(name, &image, &["sleep", "1000"]);
        let mut m = bind(&mnt, "/data");
        m.propagation = mode as i32;
        cfg.mounts = vec![m];
        let sc = cfg
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default);
        sc.privileged = true;
        let id = create(&mut s.rt, &pod, &pod_cfg, cfg).await.expect(name);
        start(&mut s.rt, &id).await.expect(name);

        // Host to container.
        mount(
            Some(&src),
            &mnt.join("from-host"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("host mount");
        let (code, seen) = exec(&mut s.rt, &id, &["ls", "/data/from-host"]).await;
        assert_eq!(code, 0, "{name}: ls in the container: {seen}");
        assert_eq!(
            seen.contains("flag"),
            host_to_ctr,
            "{name}: container sees {seen:?}"
        );

        // Container to host.
        let (code, out) = exec(
            &mut s.rt,
            &id,
            &[
                "mount",
                "-t",
                "tmpfs",
                "-o",
                "size=1m",
                "ctr",
                "/data/from-ctr",
            ],
        )
        .await;
        assert_eq!(code, 0, "{name}: mount in the container: {out}");
        let (code, out) = exec(&mut s.rt, &id, &["touch", "/data/from-ctr/made-inside"]).await;
        assert_eq!(code, 0, "{name}: {out}");
        let host_sees = mnt.join("from-ctr/made-inside").exists();
        assert_eq!(
            host_sees, ctr_to_host,
            "{name}: host sees the container's mount"
        );

        // Nothing of the container's own root reached the host.
        let leaked = mounts_under(&s.run_dir().join("c"));
        assert!(
            leaked.is_empty(),
            "{name}: rootfs mounts on the host: {leaked:?}"
        );

        stop_container(&mut s.rt, &id, 0).await.expect("stop");
        remove_container(&mut s.rt, &id).await.expect("remove");
        detach(&mnt.join("from-ctr"));
        detach(&mnt.join("from-host"));
        detach(&mnt);
    }
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
