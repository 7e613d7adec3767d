//! Bad input gets a clear gRPC error with the right code, leaves nothing half
//! done behind, and the server keeps serving.

mod common;

use common::*;
use std::path::Path;
use sycri::proto::cri;
use tonic::Code;

/// An id no object has, and no prefix of one (ids are hex).
const UNKNOWN: &str = "no-such-id";

fn expect_code<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got success {v:?}"),
        Err(e) => {
            assert_eq!(e.code(), code, "{what}: {e:?}");
            assert!(!e.message().is_empty(), "{what}: the error says why");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("unknown_ids_are_not_found") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;

    let r =
        s.rt.container_status(cri::ContainerStatusRequest {
            container_id: UNKNOWN.into(),
            verbose: true,
        })
        .await;
    expect_code("ContainerStatus", r, Code::NotFound);
    assert_serving(&mut s.rt, "ContainerStatus").await;
    let r =
        s.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: UNKNOWN.into(),
            verbose: true,
        })
        .await;
    expect_code("PodSandboxStatus", r, Code::NotFound);
    assert_serving(&mut s.rt, "PodSandboxStatus").await;
    expect_code(
        "StartContainer",
        start(&mut s.rt, UNKNOWN).await,
        Code::NotFound,
    );
    assert_serving(&mut s.rt, "StartContainer").await;
    let r =
        s.rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: UNKNOWN.into(),
        })
        .await;
    expect_code("ReopenContainerLog", r, Code::NotFound);
    assert_serving(&mut s.rt, "ReopenContainerLog").await;

    s.pull(&sif).await;
    let pod_cfg = pod_config("known", &s.log_dir());
    expect_code(
        "CreateContainer in an unknown pod",
        create(
            &mut s.rt,
            UNKNOWN,
            &pod_cfg,
            container_config("c", &sif_str, &["true"]),
        )
        .await,
        Code::NotFound,
    );
    assert_serving(&mut s.rt, "CreateContainer in an unknown pod").await;
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let not_pulled = s.dir.path().join("never-pulled.sif");
    std::fs::copy(&sif, &not_pulled).expect("copy fixture");
    for image in [
        not_pulled.to_string_lossy().into_owned(),
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        "docker.io/library/busybox:latest".into(),
    ] {
        let what = format!("CreateContainer with image {image} not pulled");
        expect_code(
            &what,
            create(
                &mut s.rt,
                &pod,
                &pod_cfg,
                container_config("c", &image, &["true"]),
            )
            .await,
            Code::NotFound,
        );
        assert_serving(&mut s.rt, &what).await;
    }
    assert!(list_containers(&mut s.rt).await.is_empty());
    assert_only_pods_left(&s, &[&pod], &[]).await;
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

/// A file with `len` bytes of noise.
fn noise(path: &Path, len: usize) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("write noise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_refused_whole() {
    let Some(sif) = busybox_sif("bad_images_are_refused_whole") else {
        return;
    };
    let fixtures = sif.parent().expect("fixture dir").to_path_buf();
    let mut s = Server::start().await;
    let work = s.dir.path().join("images-in");
    std::fs::create_dir(&work).expect("mkdir");
    let random = work.join("random.sif");
    noise(&random, 100_000);
    let short_noise = work.join("short.sif");
    noise(&short_noise, 20);
    let truncated = work.join("truncated.sif");
    let full = std::fs::read(&sif).expect("read fixture");
    std::fs::write(&truncated, &full[..40_000]).expect("write truncated");
    let empty_file = work.join("empty-file.sif");
    std::fs::write(&empty_file, b"").expect("write empty");

    let p = |x: &Path| x.to_string_lossy().into_owned();
    let cases: Vec<(&str, String, Code)> = vec![
        ("random bytes", p(&random), Code::InvalidArgument),
        ("20 bytes of noise", p(&short_noise), Code::InvalidArgument),
        ("an empty file", p(&empty_file), Code::InvalidArgument),
        ("a truncated SIF", p(&truncated), Code::InvalidArgument),
        (
            "a SIF without a primary partition (generic JSON only)",
            p(&fixtures.join("one-object-generic-json.sif")),
            Code::InvalidArgument,
        ),
        (
            "a SIF without any object",
            p(&fixtures.join("empty.sif")),
            Code::InvalidArgument,
        ),
        (
            "a legacy SIF with a 4-byte \"squashfs\" partition",
            p(&fixtures.join("one-group-signed-legacy.sif")),
            Code::InvalidArgument,
        ),
        (
            "an arm64 image on amd64",
            p(&fixtures.join("busybox_arm64.sif")),
            if cfg!(target_arch = "x86_64") {
                Code::FailedPrecondition
            } else {
                Code::Ok
            },
        ),
        (
            "a missing file",
            p(&work.join("missing.sif")),
            Code::NotFound,
        ),
        (
            "a missing file as file:// URL",
            format!("file://{}", work.join("missing.sif").display()),
            Code::NotFound,
        ),
        ("a directory", p(&work), Code::InvalidArgument),
        ("an empty reference", String::new(), Code::InvalidArgument),
    ];
    for (what, reference, code) in cases {
        if code == Code::Ok {
            continue;
        }
        let r = pull_ref(&mut s.img, &reference).await;
        expect_code(&format!("PullImage of {what}"), r, code);
        assert_serving(&mut s.rt, what).await;
        assert!(
            list_images(&mut s.img).await.is_empty(),
            "{what}: a half image is listed"
        );
        assert!(
            image_blobs(&s).is_empty(),
            "{what}: stray files in the store: {:?}",
            image_blobs(&s)
        );
    }

    // A good image stays as it was when a bad file is pulled under its name.
    let copy = work.join("busybox.sif");
    std::fs::copy(&sif, &copy).expect("copy fixture");
    let good = s.pull(&copy).await;
    let blobs = image_blobs(&s);
    std::fs::remove_file(&copy).expect("rm");
    noise(&copy, 100_000);
    expect_code(
        "PullImage of noise under a pulled image's name",
        pull_ref(&mut s.img, &p(&copy)).await,
        Code::InvalidArgument,
    );
    let listed = list_images(&mut s.img).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, good);
    assert_eq!(listed[0].repo_tags, vec![p(&copy)]);
    assert_eq!(image_blobs(&s), blobs, "the store is unchanged");
    assert_serving(&mut s.rt, "pulling noise over an image").await;
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configs_are_refused() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("bad_configs_are_refused") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    let image_ref = s.pull(&sif).await;
    let pod_cfg = pod_config("configs", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    // Pods.
    let r =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await;
    expect_code("RunPodSandbox without config", r, Code::InvalidArgument);
    assert_serving(&mut s.rt, "RunPodSandbox without config").await;
    let mut no_md = pod_config("x", &s.log_dir());
    no_md.metadata = None;
    let r =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(no_md),
            runtime_handler: String::new(),
        })
        .await;
    expect_code("RunPodSandbox without metadata", r, Code::InvalidArgument);
    assert_serving(&mut s.rt, "RunPodSandbox without metadata").await;
    let mut escaping = pod_config("x", &s.log_dir());
    escaping
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = "/kubepods/../../..".into();
    let r =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(escaping),
            runtime_handler: String::new(),
        })
        .await;
    expect_code(
        "RunPodSandbox with a cgroup parent leaving the hierarchy",
        r,
        Code::InvalidArgument,
    );
    let r =
        s.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await;
    expect_code("RunPodSandbox with a taken name", r, Code::AlreadyExists);
    assert_serving(&mut s.rt, "RunPodSandbox with a taken name").await;
    assert_eq!(
        list_pods(&mut s.rt).await.len(),
        1,
        "no half pod was left behind"
    );

    // Containers.
    let r =
        s.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: None,
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await;
    expect_code("CreateContainer without config", r, Code::InvalidArgument);
    assert_serving(&mut s.rt, "CreateContainer without config").await;

    let data = s.dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::symlink("../../../../../../etc", data.join("esc")).expect("symlink");
    let other = s.dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    let escaped = format!("sycri-escape-{}", std::process::id());
    let via_link = format!("/data/esc/{escaped}");
    let via_dots = format!("/../../../tmp/{escaped}");
    let base = || container_config("c", &sif_str, &["sh", "-c", "exit 0"]);
    let with = |f: &dyn Fn(&mut cri::ContainerConfig)| {
        let mut c = base();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, cri::ContainerConfig, Code)> = vec![
        (
            "a container config without metadata",
            with(&|c| c.metadata = None),
            Code::InvalidArgument,
        ),
        (
            "a container without a name",
            with(&|c| c.metadata = Some(cri::ContainerMetadata::default())),
            Code::InvalidArgument,
        ),
        (
            "a container config without image",
            with(&|c| c.image = None),
            Code::InvalidArgument,
        ),
        (
            "a missing mount source",
            with(&|c| c.mounts = vec![bind(&s.dir.path().join("no-such"), "/data")]),
            Code::NotFound,
        ),
        (
            "a mount destination escaping through a symlink",
            with(&|c| c.mounts = vec![bind(&data, "/data"), bind(&other, &via_link)]),
            Code::InvalidArgument,
        ),
        (
            "a mount destination escaping with ..",
            with(&|c| c.mounts = vec![bind(&other, &via_dots)]),
            Code::InvalidArgument,
        ),
        (
            "a relative mount destination",
            with(&|c| c.mounts = vec![bind(&other, "data")]),
            Code::InvalidArgument,
        ),
        (
            "a mount without container path",
            with(&|c| c.mounts = vec![bind(&other, "")]),
            Code::InvalidArgument,
        ),
        (
            "run_as_group without run_as_user",
            with(&|c| {
                c.linux = Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        run_as_group: Some(cri::Int64Value { value: 1000 }),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
        ),
    ];
    for (what, cfg, code) in cases {
        let r = create(&mut s.rt, &pod, &pod_cfg, cfg).await;
        expect_code(&format!("CreateContainer with {what}"), r, code);
        assert_serving(&mut s.rt, what).await;
        assert!(list_containers(&mut s.rt).await.is_empty(), "{what}");
        assert_only_pods_left(&s, &[&pod], &[]).await;
    }
    // Nothing of the escape reached the host.
    assert!(!Path::new("/etc").join(&escaped).exists());
    assert!(!Path::new("/tmp").join(&escaped).exists());

    let c = create(&mut s.rt, &pod, &pod_cfg, base())
        .await
        .expect("the name is free after the failures");
    expect_code(
        "CreateContainer with a taken name",
        create(&mut s.rt, &pod, &pod_cfg, base()).await,
        Code::AlreadyExists,
    );
    assert_serving(&mut s.rt, "CreateContainer with a taken name").await;
    assert_eq!(list_containers(&mut s.rt).await.len(), 1);
    let r = remove_image(&mut s.img, &image_ref).await;
    expect_code(
        "RemoveImage of an image in use",
        r,
        Code::FailedPrecondition,
    );
    assert_eq!(list_images(&mut s.img).await.len(), 1);

    let r =
        s.rt.reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: c.clone(),
        })
        .await;
    expect_code(
        "ReopenContainerLog of a container not running",
        r,
        Code::FailedPrecondition,
    );
    assert_serving(&mut s.rt, "ReopenContainerLog of a container not running").await;

    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    let mut late = base();
    late.metadata = Some(cri::ContainerMetadata {
        name: "late".into(),
        attempt: 0,
    });
    expect_code(
        "CreateContainer in a stopped pod",
        create(&mut s.rt, &pod, &pod_cfg, late).await,
        Code::FailedPrecondition,
    );
    assert_serving(&mut s.rt, "CreateContainer in a stopped pod").await;
    assert_eq!(list_containers(&mut s.rt).await.len(), 1);

    remove_container(&mut s.rt, &c).await.expect("remove");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

/// A FIFO is not an image; PullImage must say so instead of waiting forever for a
/// writer (and holding one of the server's blocking threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_a_fifo_is_refused() {
    let mut s = Server::start().await;
    let fifo = s.dir.path().join("fifo.sif");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let reference = fifo.to_string_lossy().into_owned();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        pull_ref(&mut s.img, &reference),
    )
    .await;
    let Ok(r) = r else {
        // Release the server's open() before failing.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        panic!("PullImage of a FIFO did not answer within 10 s: it blocks in open()");
    };
    expect_code("PullImage of a FIFO", r, Code::InvalidArgument);
    assert_serving(&mut s.rt, "PullImage of a FIFO").await;
    assert!(list_images(&mut s.img).await.is_empty());
    assert!(image_blobs(&s).is_empty(), "{:?}", image_blobs(&s));
    assert_no_leaks(s.dir.path(), &[]);
}
