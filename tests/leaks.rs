//! Nothing leaks: not after a CreateContainer or StartContainer that fails half
//! way, not when pods are removed with their containers still running, not from
//! a pod's shared pid namespace, not from a call whose client gives up.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;
use sycri::proto::cri;

const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

/// A pod without an init process (private pid namespaces), so that everything
/// left under the server's directory while it runs is the pod's own mounts.
fn plain_pod(name: &str, s: &Server) -> cri::PodSandboxConfig {
    pod_config_ns(name, &s.log_dir(), pid_mode(cri::NamespaceMode::Container))
}

/// What the server keeps of containers, in state and run directories.
fn container_entries(s: &Server) -> Vec<String> {
    let mut v = dir_entries(&s.storage_dir().join("state").join("containers"));
    v.extend(dir_entries(&s.run_dir().join("c")));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_leaves_nothing() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("failed_create_leaves_nothing") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    let image_ref = s.pull(&sif).await;
    let image_mp = image_mount_point(&s, &image_ref);
    let pod_cfg = plain_pod("failing", &s);
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    // A host directory with a symlink that climbs out of wherever it is mounted.
    let data = s.dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    std::os::unix::fs::symlink("../../../../../../etc", data.join("esc")).expect("symlink");
    let other = s.dir.path().join("other");
    std::fs::create_dir(&other).expect("mkdir other");
    let mut escaping = container_config("victim", &sif_str, &["sh", "-c", "exit 0"]);
    let through_link = format!("/data/esc/sycri-leak-{}", std::process::id());
    escaping.mounts = vec![bind(&data, "/data"), bind(&other, &through_link)];
    let mut missing = container_config("victim", &sif_str, &["sh", "-c", "exit 0"]);
    missing.mounts = vec![bind(&s.dir.path().join("no-such-dir"), "/data")];

    for (what, cfg, code, says) in [
        (
            "a mount escaping through a symlink",
            escaping.clone(),
            tonic::Code::InvalidArgument,
            "escapes",
        ),
        (
            "a missing mount source",
            missing,
            tonic::Code::NotFound,
            "no-such-dir",
        ),
    ] {
        let err = create(&mut s.rt, &pod, &pod_cfg, cfg)
            .await
            .expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(
            err.message().contains(says),
            "{what}: unclear error {err:?}"
        );
        assert!(list_containers(&mut s.rt).await.is_empty(), "{what}");
        assert!(
            container_entries(&s).is_empty(),
            "{what}: container directories left: {:?}",
            container_entries(&s)
        );
        // No container uses the image: its mount and loop device are gone too.
        assert_only_pods_left(&s, &[&pod], &[]).await;
        assert!(!image_mp.exists(), "{what}: image mount point left");
        assert_serving(&mut s.rt, what).await;
    }

    // The name is free again at once.
    let ok = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("victim", &sif_str, &["sh", "-c", "echo reused; exit 0"]),
    )
    .await
    .expect("the name of a failed create can be reused");
    start(&mut s.rt, &ok).await.expect("start");
    let st = wait_state(&mut s.rt, &ok, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    wait_log_line(&s.log_dir().join("victim.log"), "reused").await;

    // A failure while another container uses the image keeps the image mounted.
    let mut other_name = escaping.clone();
    other_name.metadata = Some(cri::ContainerMetadata {
        name: "victim2".into(),
        attempt: 0,
    });
    let err = create(&mut s.rt, &pod, &pod_cfg, other_name)
        .await
        .expect_err("escape");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_only_pods_left(&s, &[&pod], std::slice::from_ref(&image_mp)).await;
    assert!(
        mounts_under(s.dir.path()).contains(&image_mp),
        "the image is still mounted for its container"
    );
    assert_eq!(list_containers(&mut s.rt).await, vec![(ok.clone(), EXITED)]);

    remove_container(&mut s.rt, &ok).await.expect("remove");
    assert_only_pods_left(&s, &[&pod], &[]).await;
    assert!(container_entries(&s).is_empty());
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_start_leaves_nothing() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("failed_start_leaves_nothing") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let pod_cfg = plain_pod("nostart", &s);
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;

    for (name, cmd) in [("abs", "/no/such/binary"), ("bare", "no-such-command")] {
        let c = create(
            &mut s.rt,
            &pod,
            &pod_cfg,
            container_config(name, &sif_str, &[cmd, "arg"]),
        )
        .await
        .expect("create: the command is only looked up at start");
        let err = start(&mut s.rt, &c).await.expect_err(cmd);
        assert!(
            matches!(
                err.code(),
                tonic::Code::NotFound
                    | tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
            ),
            "{cmd}: a missing command is the request's fault, not an internal error: {err:?}"
        );
        assert!(
            err.message().contains(cmd),
            "{cmd}: the error names the command: {err:?}"
        );
        assert_serving(&mut s.rt, "a failed start").await;
        let st = wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
        assert_ne!(st.exit_code, 0, "{cmd}: {st:?}");
        let err = start(&mut s.rt, &c).await.expect_err("no second start");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            processes_under(s.dir.path())
                .iter()
                .all(|(_, c2)| !c2.contains(&c)),
            "{cmd}: the monitor ended with the container"
        );
        remove_container(&mut s.rt, &c).await.expect("remove");
        for d in container_dirs(&s, &c) {
            assert!(!d.exists(), "{} left", d.display());
        }
        assert!(list_containers(&mut s.rt).await.is_empty());
        assert_only_pods_left(&s, &[&pod], &[]).await;
    }
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_running_pods_leaves_nothing() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("removing_running_pods_leaves_nothing") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let mut pods = Vec::new();
    let mut containers = Vec::new();
    let mut pids = Vec::new();
    for p in 0..5 {
        // Alternate shared (with an init) and private pid namespaces.
        let mode = if p % 2 == 0 {
            cri::NamespaceMode::Pod
        } else {
            cri::NamespaceMode::Container
        };
        let cfg = pod_config_ns(&format!("many{p}"), &s.log_dir(), pid_mode(mode));
        let pod = run_pod(&mut s.rt, cfg.clone()).await;
        pids.extend(pod_init_pid(&mut s.rt, &pod).await);
        for n in 0..2 {
            let mut cc = container_config_ns(
                &format!("c{n}"),
                &sif_str,
                &["sleep", "1000"],
                pid_mode(mode),
            );
            cc.log_path = format!("many{p}-c{n}.log");
            let c = create(&mut s.rt, &pod, &cfg, cc).await.expect("create");
            start(&mut s.rt, &c).await.expect("start");
            pids.push(container_pid(&mut s.rt, &c).await.expect("pid"));
            containers.push(c);
        }
        pods.push(pod);
    }
    assert_eq!(pids.len(), 13, "10 containers and 3 pod inits: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    assert_eq!(list_containers(&mut s.rt).await.len(), 10);

    for pod in &pods {
        remove_pod(&mut s.rt, pod)
            .await
            .expect("remove a pod with running containers");
    }
    assert!(list_pods(&mut s.rt).await.is_empty());
    assert!(list_containers(&mut s.rt).await.is_empty());
    for pod in &pods {
        for d in pod_dirs(&s, pod) {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
    for c in &containers {
        for d in container_dirs(&s, c) {
            assert!(!d.exists(), "{} left", d.display());
        }
    }
    assert_no_leaks(s.dir.path(), &pids);
    assert_serving(&mut s.rt, "removing pods").await;
}

/// The processes a container lists from its /proc: (pid, command line).
const LIST_PROCS: &str =
    r#"for d in /proc/[0-9]*; do echo "proc ${d#/proc/} $(tr '\0' ' ' < $d/cmdline)"; done"#;

fn procs_seen(lines: &[(String, String)]) -> Vec<(i32, String)> {
    lines
        .iter()
        .filter_map(|(_, l)| {
            let rest = l.strip_prefix("proc ")?;
            let (pid, cmd) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((pid.parse().ok()?, cmd.trim().to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("shared_pid_namespace") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let mut all_pids = Vec::new();
    for (pod_name, mode) in [
        ("shared", cri::NamespaceMode::Pod),
        ("private", cri::NamespaceMode::Container),
    ] {
        let ns = pid_mode(mode);
        let cfg = pod_config_ns(pod_name, &s.log_dir(), ns.clone());
        let pod = run_pod(&mut s.rt, cfg.clone()).await;
        let init = pod_init_pid(&mut s.rt, &pod).await;
        let shared = mode == cri::NamespaceMode::Pod;
        assert_eq!(init.is_some(), shared, "{pod_name}: pod init {init:?}");
        if let Some(init) = init {
            assert!(pid_alive(init));
            all_pids.push(init);
        }

        let mut sleeper = container_config_ns("sleeper", &sif_str, &["sleep", "4711"], ns.clone());
        sleeper.log_path = format!("{pod_name}-sleeper.log");
        let c1 = create(&mut s.rt, &pod, &cfg, sleeper)
            .await
            .expect("create");
        start(&mut s.rt, &c1).await.expect("start");
        let c1_pid = container_pid(&mut s.rt, &c1).await.expect("pid");
        all_pids.push(c1_pid);
        if let Some(init) = init {
            assert_eq!(
                pid_ns_of(c1_pid),
                pid_ns_of(init),
                "the container joined the pod's pid namespace"
            );
        }

        let mut looker = container_config_ns(
            "looker",
            &sif_str,
            &["sh", "-c", &format!("{LIST_PROCS}; echo done")],
            ns.clone(),
        );
        looker.log_path = format!("{pod_name}-looker.log");
        let c2 = create(&mut s.rt, &pod, &cfg, looker).await.expect("create");
        start(&mut s.rt, &c2).await.expect("start");
        let st = wait_state(&mut s.rt, &c2, cri::ContainerState::ContainerExited).await;
        assert_eq!(st.exit_code, 0, "{st:?}");
        let lines =
            wait_log_line(&s.log_dir().join(format!("{pod_name}-looker.log")), "done").await;
        let seen = procs_seen(&lines);
        let sees_sleeper = seen.iter().any(|(_, c)| c == "sleep 4711");
        let pid1 = seen.iter().find(|(p, _)| *p == 1).map(|(_, c)| c.clone());
        if shared {
            assert!(
                sees_sleeper,
                "{pod_name}: the looker sees the sleeper: {seen:?}"
            );
            assert!(
                pid1.as_deref().is_some_and(|c| c.contains("__sandbox")),
                "{pod_name}: pid 1 is the pod init: {seen:?}"
            );
        } else {
            assert!(!sees_sleeper, "{pod_name}: the sleeper is hidden: {seen:?}");
            assert!(
                pid1.as_deref().is_some_and(|c| c.starts_with("sh -c")),
                "{pod_name}: the looker is pid 1 of its own namespace: {seen:?}"
            );
        }

        let pod_ns = init.and_then(pid_ns_of);
        remove_pod(&mut s.rt, &pod).await.expect("remove pod");
        if let Some(init) = init {
            wait_for("the pod init to end", Duration::from_secs(5), || {
                !pid_alive(init)
            })
            .await;
        }
        if let Some(ns) = pod_ns {
            assert!(
                pids_in_ns(&ns).is_empty(),
                "processes left in the pod's pid namespace: {:?}",
                pids_in_ns(&ns)
            );
        }
    }
    assert_no_leaks(s.dir.path(), &all_pids);
}

/// A pod with a shared pid namespace and a container `sh -c 'sleep 4242 & ...; exit 7'`
/// that leaves a background child in it. Returns the server, pod, container, pod
/// init, the pod's pid namespace and the container's final status.
async fn run_background_child(
    test: &str,
    script: &str,
    until: cri::ContainerState,
) -> Option<(Server, String, String, i32, PathBuf, cri::ContainerStatus)> {
    assert!(is_root(), "integration tests run as root");
    let sif = busybox_sif(test)?;
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let ns = pid_mode(cri::NamespaceMode::Pod);
    let cfg = pod_config_ns("bg", &s.log_dir(), ns.clone());
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await.expect("pod init");
    let pod_ns = pid_ns_of(init).expect("pod pid namespace");
    let c = create(
        &mut s.rt,
        &pod,
        &cfg,
        container_config_ns("parent", &sif_str, &["sh", "-c", script], ns),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    let st = wait_state(&mut s.rt, &c, until).await;
    wait_log_line(&s.log_dir().join("parent.log"), "forked").await;
    Some((s, pod, c, init, pod_ns, st))
}

/// Live `sleep 4242` processes in pid namespace `ns`.
fn background(ns: &std::path::Path) -> Vec<i32> {
    pids_in_ns(ns)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.starts_with(b"sleep\x004242"))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits (bounded) until `f` gives an empty list; returns what is left.
async fn wait_empty(f: impl Fn() -> Vec<i32>) -> Vec<i32> {
    for _ in 0..200 {
        if f().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    f()
}

/// The exit status is the container process's, even when it left a child behind
/// holding its stdout; and, as containerd does for shared pid namespaces, that
/// child ends with the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_with_background_child() {
    let Some((mut s, pod, c, init, pod_ns, st)) = run_background_child(
        "exit_code_with_background_child",
        "sleep 4242 & echo forked; exit 7",
        cri::ContainerState::ContainerExited,
    )
    .await
    else {
        return;
    };
    let left = wait_empty(|| background(&pod_ns)).await;
    assert!(
        left.is_empty(),
        "the background child {left:?} outlived its container"
    );
    let later = status(&mut s.rt, &c).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (7, "Error"),
        "the first EXITED status: {st:?}"
    );
    assert_eq!(later.exit_code, 7, "the status later: {later:?}");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert!(background(&pod_ns).is_empty());
    assert_no_leaks(s.dir.path(), &[init]);
}

/// RemoveContainer of a running container ends everything it started, also a
/// background child in the pod's shared pid namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_container_ends_its_background_child() {
    let Some((mut s, pod, c, init, pod_ns, _)) = run_background_child(
        "remove_container_ends_its_background_child",
        "sleep 4242 & echo forked; exec sleep 1000",
        cri::ContainerState::ContainerRunning,
    )
    .await
    else {
        return;
    };
    wait_log_line(&s.log_dir().join("parent.log"), "forked").await;
    // The shell echoes once it has forked; the child may not have exec'd
    // sleep yet.
    wait_for("the background child", Duration::from_secs(5), || {
        !background(&pod_ns).is_empty()
    })
    .await;
    let bg = background(&pod_ns);
    assert_eq!(bg.len(), 1, "the background child runs");
    remove_container(&mut s.rt, &c).await.expect("remove");
    let left = background(&pod_ns);
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert!(
        left.is_empty(),
        "RemoveContainer left the container's background process {left:?} running in the pod"
    );
    let mut pids = vec![init];
    pids.extend(bg);
    assert_no_leaks(s.dir.path(), &pids);
}

/// Live processes anywhere whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let mut want = argv.join("\0").into_bytes();
    want.push(0);
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .as_deref()
                == Some(&want[..])
                && pid_alive(pid)
            {
                v.push(pid);
            }
        }
    }
    v
}

/// With the host's pid namespace (hostPID) no namespace ends a container's
/// background child: its cgroup does, when the container's first process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pid_background_child_ends_with_its_container() {
    assert!(is_root(), "integration tests run as root");
    let Some(sif) = busybox_sif("host_pid_background_child_ends_with_its_container") else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start().await;
    s.pull(&sif).await;
    let ns = pid_mode(cri::NamespaceMode::Node);
    let cfg = pod_config_ns("hostpid", &s.log_dir(), ns.clone());
    let pod = run_pod(&mut s.rt, cfg.clone()).await;
    assert_eq!(pod_init_pid(&mut s.rt, &pod).await, None);
    let argv = ["sleep", "4243"];
    assert!(processes_running(&argv).is_empty(), "a stray sleep 4243");
    let c = create(
        &mut s.rt,
        &pod,
        &cfg,
        container_config_ns(
            "parent",
            &sif_str,
            &["sh", "-c", "sleep 4243 & echo forked; exit 0"],
            ns,
        ),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
    wait_log_line(&s.log_dir().join("parent.log"), "forked").await;
    let left = wait_empty(|| processes_running(&argv)).await;
    let bg = left.clone();
    remove_container(&mut s.rt, &c).await.expect("remove");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    for p in &left {
        // SAFETY: kill(2) on the stray process this test made the server start.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(
        left.is_empty(),
        "the container's background process {left:?} outlived RemoveContainer and RemovePodSandbox"
    );
    assert_no_leaks(s.dir.path(), &bg);
}

/// With a release delay, an image outlives its last container mounted (for
/// the next one), and a stopping server releases it: its timer would not
/// outlive the process, so nothing of it stays mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_releases_unused_image_mounts() {
    let test = "a_stopping_server_releases_unused_image_mounts";
    let Some(sif) = root_busybox_sif(test) else {
        return;
    };
    let sif_str = sif.to_string_lossy().into_owned();
    let mut s = Server::start_with_config("image_unmount_delay = \"10m\"\n").await;
    let image_ref = s.pull(&sif).await;
    let image_mp = image_mount_point(&s, &image_ref);
    let pod_cfg = plain_pod("kept", &s);
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("c", &sif_str, &["sleep", "1000"]),
    )
    .await
    .expect("create");
    remove_container(&mut s.rt, &c).await.expect("remove");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert!(
        mounts_under(s.dir.path()).contains(&image_mp),
        "the image was released before its delay"
    );
    assert!(s.terminate().success(), "the server's exit status");
    assert_no_leaks(s.dir.path(), &[]);
}

/// A CNI plugin that takes its time: ADD answers an address after a second,
/// DEL and VERSION at once. It touches no namespace.
fn slow_plugin(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("slow-net");
    std::fs::write(
        &p,
        "#!/bin/sh\ncat > /dev/null\ncase \"$CNI_COMMAND\" in\n\
         ADD) sleep 1; echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.99.0.2/24\"}]}' ;;\n\
         VERSION) echo '{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}' ;;\n\
         esac\n",
    )
    .expect("write plugin");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_pod_whose_client_gives_up_is_finished_and_removable() {
    assert!(is_root(), "integration tests run as root");
    let bin = tempfile::Builder::new()
        .prefix("sycri-slow-cni")
        .tempdir_in("/tmp")
        .expect("tempdir");
    slow_plugin(bin.path());
    let toml = format!("cni_bin_dirs = [{:?}]\n", bin.path().display().to_string());
    let mut s = Server::start_prepared(&toml, |dir| {
        let conf = dir.join("cni");
        std::fs::create_dir_all(&conf).expect("cni dir");
        std::fs::write(
            conf.join("10-slow.conflist"),
            r#"{"cniVersion":"1.0.0","name":"slow","plugins":[{"type":"slow-net"}]}"#,
        )
        .expect("write config");
    })
    .await;
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(plain_pod("patient", &s)),
        runtime_handler: String::new(),
    });
    req.set_timeout(Duration::from_millis(200));
    let err =
        s.rt.run_pod_sandbox(req)
            .await
            .expect_err("the client gives up");
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );
    // Finished all the same: listed and ready once the plugin answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let pod = loop {
        let pods = list_pods(&mut s.rt).await;
        if let Some((id, state)) = pods.first() {
            if *state == cri::PodSandboxState::SandboxReady as i32 {
                break id.clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pod was not finished: {pods:?}\n{}",
            server_log(s.dir.path())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    // Its spare network namespace too, once the server stops.
    s.terminate();
    assert_no_leaks(s.dir.path(), &[]);
}
