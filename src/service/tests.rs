//! Service-level tests on the fake engine: the order in which operations
//! call the engine, what every failure path leaves (nothing), which
//! overlapping operations are refused, serialized or let run, and that reads
//! never wait for an operation. No root needed; the busybox SIF fixture is
//! read (not mounted) as the image.

use super::Runtime;
use crate::config::Config;
use crate::engine::fake::FakeEngine;
use crate::engine::Reaper;
use crate::error::Error;
use crate::proto::cri;
use crate::store::container::State;
use crate::store::spare_net::Fit;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn fixture(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("SYCRI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sif"));
    let f = dir.join("busybox_amd64.sif");
    if f.exists() {
        Some(f)
    } else {
        sycri_native::testing::skip(
            test,
            "SIF fixtures not found (set SYCRI_FIXTURES or provide ../shared)",
        );
        None
    }
}

struct Env {
    dir: tempfile::TempDir,
    engine: Arc<FakeEngine>,
    rt: Arc<Runtime>,
    image: String,
}

impl Env {
    /// The test config (a zero delay: an image is released as its last
    /// container goes).
    fn config_with(dir: &Path, image_unmount_delay: Duration) -> Config {
        let cni = dir.join("cni");
        let _ = std::fs::create_dir_all(&cni);
        Config {
            storage_dir: dir.join("store"),
            run_dir: dir.join("run"),
            cni_conf_dir: cni,
            image_unmount_delay: crate::config::DurationText(image_unmount_delay),
            ..Config::default()
        }
    }

    async fn new(test: &str) -> Option<Env> {
        Env::with_unmount_delay(test, Duration::ZERO).await
    }

    async fn with_unmount_delay(test: &str, delay: Duration) -> Option<Env> {
        let sif = fixture(test)?;
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(FakeEngine::default());
        let rt = Runtime::open(
            Env::config_with(dir.path(), delay),
            engine.clone(),
            Reaper::default(),
            None,
        )
        .await
        .expect("open");
        let image = sif.to_string_lossy().into_owned();
        rt.pull_image(&image, None).await.expect("pull");
        Some(Env {
            dir,
            engine,
            rt,
            image,
        })
    }

    /// A new server on the same directories and the same (fake) host.
    async fn restart(&mut self) {
        self.restart_with(Duration::ZERO).await
    }

    /// As `restart`, the new server with this `image_unmount_delay`.
    async fn restart_with(&mut self, image_unmount_delay: Duration) {
        self.rt = Runtime::open(
            Env::config_with(self.dir.path(), image_unmount_delay),
            self.engine.clone(),
            Reaper::default(),
            None,
        )
        .await
        .expect("reopen");
    }

    async fn pod(&self, name: &str) -> String {
        self.rt.run_pod(pod_request(name)).await.expect("run pod")
    }

    fn container_request(
        &self,
        pod: &str,
        name: &str,
        args: &[&str],
    ) -> cri::CreateContainerRequest {
        cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: self.image.clone(),
                    ..Default::default()
                }),
                command: args.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            sandbox_config: None,
        }
    }

    async fn container(&self, pod: &str, name: &str, args: &[&str]) -> String {
        self.rt
            .create_container(self.container_request(pod, name, args))
            .await
            .expect("create container")
    }

    fn state(&self, id: &str) -> State {
        self.rt
            .container_status(id, false)
            .expect("status")
            .status
            .state
    }

    fn init(&self, id: &str) -> i32 {
        self.rt
            .container_status(id, false)
            .expect("status")
            .container
            .meta
            .init
            .expect("init")
            .pid
    }

    fn state_dirs(&self, kind: &str) -> Vec<String> {
        let d = self.dir.path().join("store/state").join(kind);
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Nothing of any pod or container is left: on the host, on disk, in memory.
    fn assert_empty(&self) {
        assert_eq!(self.engine.mounts(), Vec::<PathBuf>::new(), "mounts left");
        assert_eq!(self.engine.cgroups(), Vec::<PathBuf>::new(), "cgroups left");
        assert_eq!(
            self.engine.sandboxes(),
            Vec::<PathBuf>::new(),
            "namespaces left"
        );
        assert_eq!(self.engine.live(), Vec::<i32>::new(), "processes left");
        assert!(
            self.state_dirs("containers").is_empty(),
            "container state left"
        );
        assert!(self.state_dirs("pods").is_empty(), "pod state left");
        assert!(self.rt.list_containers().is_empty());
        assert!(self.rt.list_pods().is_empty());
    }
}

fn pod_request(name: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

/// Whether `want` appears in `calls` in this order (other calls between).
fn in_order(calls: &[String], want: &[&str]) -> bool {
    let mut it = calls.iter();
    want.iter().all(|w| it.any(|c| c.starts_with(w)))
}

#[tokio::test]
async fn a_container_life_calls_the_engine_in_order_and_leaves_nothing() {
    let Some(env) = Env::new("a_container_life_calls_the_engine_in_order_and_leaves_nothing").await
    else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    let init = env.init(&id);
    assert_eq!(env.state(&id), State::Created);
    env.rt.start_container(&id).await.expect("start");
    assert_eq!(env.state(&id), State::Running);
    env.rt.stop_container(&id, 5).await.expect("stop");
    assert_eq!(env.state(&id), State::Exited);
    let st = env.rt.container_status(&id, false).expect("status").status;
    assert_eq!(st.exit.map(|e| e.signal), Some(Some(libc::SIGTERM)));
    env.rt.remove_container(&id).await.expect("remove");
    env.rt.stop_pod(&pod).await.expect("stop pod");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    let calls = env.engine.calls();
    // The image mount comes before the cgroups, and these before the monitor:
    // nothing of the container runs before its limits exist.
    assert!(
        in_order(
            &calls,
            &[
                "mount_shm",
                "run_sandbox",
                "mount_image",
                "create_cgroups",
                "spawn_monitor",
                "start",
                &format!("signal {init} {}", libc::SIGTERM),
                "kill_cgroups",
                "remove_cgroups",
                "unmount",
                "release_sandbox",
            ]
        ),
        "{calls:#?}"
    );
    env.assert_empty();
}

#[tokio::test]
async fn every_failed_step_of_create_container_is_undone() {
    let Some(env) = Env::new("every_failed_step_of_create_container_is_undone").await else {
        return;
    };
    let pod = env.pod("web").await;
    // The pod's own init (it has a pid namespace of its own).
    let pod_procs = env.engine.live();
    for step in ["mount_image", "create_cgroups", "spawn_monitor"] {
        env.engine.fail_next(step);
        let err = env
            .rt
            .create_container(env.container_request(&pod, "app", &["sleep", "1"]))
            .await;
        assert!(
            matches!(err, Err(Error::Internal(_))),
            "{step}: {:?}",
            err.err()
        );
        assert!(env.rt.list_containers().is_empty(), "{step}: listed");
        assert!(
            env.state_dirs("containers").is_empty(),
            "{step}: state dir left"
        );
        assert!(env.engine.cgroups().is_empty(), "{step}: cgroups left");
        // Only the pod's shm is mounted: the image went with its last user.
        assert_eq!(
            env.engine.mounts().len(),
            1,
            "{step}: {:?}",
            env.engine.mounts()
        );
        assert_eq!(env.engine.live(), pod_procs, "{step}: processes left");
    }
    // The name was released each time: the same container can be made now.
    let id = env.container(&pod, "app", &["sleep", "1"]).await;
    env.rt.remove_container(&id).await.expect("remove");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

/// A failed CreateContainer whose cgroups cannot be removed keeps its intent
/// record (which names them), and the next server removes them.
#[tokio::test]
async fn cgroups_a_failed_create_could_not_remove_go_at_the_next_start() {
    let test = "cgroups_a_failed_create_could_not_remove_go_at_the_next_start";
    let Some(mut env) = Env::new(test).await else {
        return;
    };
    let pod = env.pod("web").await;
    env.engine.fail_next("spawn_monitor");
    env.engine.fail_next("remove_cgroups");
    let err = env
        .rt
        .create_container(env.container_request(&pod, "app", &["sleep", "1"]))
        .await;
    assert!(err.is_err(), "created");
    assert!(env.rt.list_containers().is_empty(), "listed");
    assert!(
        !env.engine.cgroups().is_empty(),
        "the failure was not injected"
    );
    assert_eq!(env.state_dirs("containers").len(), 1, "intent record gone");
    env.restart().await;
    assert!(
        env.engine.cgroups().is_empty(),
        "cgroups left after restart"
    );
    assert!(env.state_dirs("containers").is_empty(), "state dir left");
    env.rt.stop_pod(&pod).await.expect("stop pod");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn a_create_whose_intent_record_cannot_be_written_makes_nothing() {
    let test = "a_create_whose_intent_record_cannot_be_written_makes_nothing";
    let Some(env) = Env::new(test).await else {
        return;
    };
    let pod = env.pod("web").await;
    let (cgroups, live) = (env.engine.cgroups(), env.engine.live());
    // A file where the containers' state directories go: the intent record
    // cannot be written.
    let dir = env.dir.path().join("store/state/containers");
    let aside = env.dir.path().join("store/state/containers.aside");
    if dir.exists() {
        std::fs::rename(&dir, &aside).expect("move aside");
    }
    std::fs::write(&dir, b"").expect("block");
    let err = env
        .rt
        .create_container(env.container_request(&pod, "app", &["sleep", "1"]))
        .await;
    assert!(err.is_err(), "created without its intent record");
    assert!(env.rt.list_containers().is_empty(), "listed");
    assert_eq!(env.engine.cgroups(), cgroups, "cgroups made");
    assert_eq!(env.engine.live(), live, "a process started");
    std::fs::remove_file(&dir).expect("unblock");
    if aside.exists() {
        std::fs::rename(&aside, &dir).expect("move back");
    }
    // The name was given back.
    let id = env
        .rt
        .create_container(env.container_request(&pod, "app", &["sleep", "1"]))
        .await
        .expect("create after the failure");
    env.rt.remove_container(&id).await.expect("remove");
    env.rt.stop_pod(&pod).await.expect("stop pod");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn every_failed_step_of_run_pod_is_undone() {
    let Some(env) = Env::new("every_failed_step_of_run_pod_is_undone").await else {
        return;
    };
    for step in ["mount_shm", "run_sandbox", "apply_sysctls"] {
        env.engine.fail_next(step);
        let mut req = pod_request("web");
        if let Some(l) = req.config.as_mut().and_then(|c| c.linux.as_mut()) {
            l.sysctls
                .insert("net.ipv4.ping_group_range".into(), "0 0".into());
            // A shared pid namespace: the pod has an init to end too.
            l.security_context = Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let err = env.rt.run_pod(req).await;
        assert!(err.is_err(), "{step}");
        env.assert_empty();
    }
    // And the name is free again.
    let pod = env.pod("web").await;
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_made() {
    let Some(env) = Env::new("bad_requests_are_refused_before_anything_is_made").await else {
        return;
    };
    let pod = env.pod("web").await;
    let before = env.engine.calls().len();
    let mut bad_oom = env.container_request(&pod, "a", &["true"]);
    if let Some(c) = bad_oom.config.as_mut() {
        c.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                oom_score_adj: 5000,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut bad_device = env.container_request(&pod, "b", &["true"]);
    if let Some(c) = bad_device.config.as_mut() {
        c.devices = vec![cri::Device {
            container_path: "/dev/x".into(),
            host_path: "/nonexistent/device".into(),
            permissions: "rw".into(),
        }];
    }
    let mut bad_profile = env.container_request(&pod, "c", &["true"]);
    if let Some(c) = bad_profile.config.as_mut() {
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                seccomp: Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: "/nonexistent/profile.json".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut bad_target = env.container_request(&pod, "d", &["true"]);
    if let Some(c) = bad_target.config.as_mut() {
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Target as i32,
                    target_id: "nosuchcontainer".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    for (req, want) in [
        (bad_oom, "InvalidArgument"),
        (bad_device, "NotFound"),
        (bad_profile, "NotFound"),
        (bad_target, "NotFound"),
    ] {
        let e = env.rt.create_container(req).await.err();
        let got = match &e {
            Some(Error::InvalidArgument(_)) => "InvalidArgument",
            Some(Error::NotFound(_)) => "NotFound",
            _ => "other",
        };
        assert_eq!(got, want, "{e:?}");
    }
    let made: Vec<String> = env.engine.calls()[before..].to_vec();
    assert!(made.is_empty(), "the engine was asked to do {made:?}");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn reads_answer_while_a_long_stop_waits() {
    let Some(env) = Env::new("reads_answer_while_a_long_stop_waits").await else {
        return;
    };
    let pod = env.pod("web").await;
    let stubborn = env.container(&pod, "stubborn", &["ignore-term"]).await;
    let other = env.container(&pod, "other", &["sleep", "1000"]).await;
    for id in [&stubborn, &other] {
        env.rt.start_container(id).await.expect("start");
    }
    let done: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (rt, id, d) = (env.rt.clone(), stubborn.clone(), done.clone());
    let stop = tokio::spawn(async move {
        let r = rt.stop_container(&id, 30).await;
        d.lock().expect("lock").push("stop 30 s");
        r
    });
    // The stop has sent its signal and waits.
    for _ in 0..200 {
        if env.state(&stubborn) == State::Stopping {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(env.state(&stubborn), State::Stopping);
    assert_eq!(env.rt.list_containers().len(), 2);
    assert!(env.rt.container_status(&stubborn, true).is_ok());
    assert!(env.rt.container_status(&other, false).is_ok());
    assert_eq!(env.rt.list_container_usage(|_| true).await.len(), 2);
    assert_eq!(env.rt.list_pods().len(), 1);
    let info = env.rt.pod_status(&pod, true).expect("pod status");
    assert!(info.status.ready);
    done.lock().expect("lock").push("reads");
    assert!(!stop.is_finished());
    // A second stop with no grace period ends it; both stops return.
    done.lock().expect("lock").push("stop 0 s begins");
    env.rt.stop_container(&stubborn, 0).await.expect("kill");
    stop.await.expect("join").expect("stop");
    let order = done.lock().expect("lock").clone();
    assert_eq!(order, vec!["reads", "stop 0 s begins", "stop 30 s"]);
    let st = env
        .rt
        .container_status(&stubborn, false)
        .expect("status")
        .status;
    assert_eq!(st.exit.map(|e| e.signal), Some(Some(libc::SIGKILL)));
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn overlapping_starts_and_removes_are_serialized() {
    let Some(env) = Env::new("overlapping_starts_and_removes_are_serialized").await else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    env.engine.delay_start(Duration::from_millis(100));
    let (a, b) = tokio::join!(env.rt.start_container(&id), env.rt.start_container(&id));
    let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(oks, 1, "{a:?} {b:?}");
    let refused = [a, b].into_iter().find_map(|r| r.err());
    assert!(
        matches!(&refused, Some(Error::FailedPrecondition(m)) if m.contains("already running")),
        "{refused:?}"
    );
    // The monitor was asked to start once.
    assert_eq!(
        env.engine
            .methods()
            .iter()
            .filter(|m| *m == "start")
            .count(),
        1
    );
    // Two removes at once: both succeed, the container goes once.
    let (a, b) = tokio::join!(env.rt.remove_container(&id), env.rt.remove_container(&id));
    assert!(a.is_ok() && b.is_ok(), "{a:?} {b:?}");
    assert_eq!(
        env.engine
            .methods()
            .iter()
            .filter(|m| *m == "remove_cgroups")
            .count(),
        1
    );
    assert!(matches!(
        env.rt.start_container(&id).await,
        Err(Error::NotFound(_))
    ));
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn remove_ends_a_stop_in_progress() {
    let Some(env) = Env::new("remove_ends_a_stop_in_progress").await else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "stubborn", &["ignore-term"]).await;
    env.rt.start_container(&id).await.expect("start");
    let (rt, id2) = (env.rt.clone(), id.clone());
    let stop = tokio::spawn(async move { rt.stop_container(&id2, 30).await });
    while env.state(&id) != State::Stopping {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    env.rt.remove_container(&id).await.expect("remove");
    stop.await.expect("join").expect("stop");
    assert!(env.rt.list_containers().is_empty());
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn exited_containers_refuse_what_needs_them_running() {
    let Some(env) = Env::new("exited_containers_refuse_what_needs_them_running").await else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    env.rt.start_container(&id).await.expect("start");
    env.engine.exit(env.init(&id), 3, None);
    for _ in 0..200 {
        if env.state(&id) == State::Exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let st = env.rt.container_status(&id, false).expect("status").status;
    assert_eq!(st.state, State::Exited);
    assert_eq!(st.exit.map(|e| e.exit_code), Some(3));
    assert!(!st.lost);
    let precondition = |r: crate::error::Result<()>| matches!(r, Err(Error::FailedPrecondition(_)));
    assert!(precondition(env.rt.start_container(&id).await));
    assert!(precondition(env.rt.reopen_log(&id).await));
    assert!(precondition(
        env.rt
            .update_container_resources(&id, Some(cri::LinuxContainerResources::default()))
            .await
    ));
    assert!(matches!(
        env.rt.exec_sync(&id, vec!["true".into()], 0).await,
        Err(Error::FailedPrecondition(_))
    ));
    // Stopping an exited container is fine and does nothing.
    let n = env.engine.calls().len();
    env.rt.stop_container(&id, 10).await.expect("stop");
    assert_eq!(env.engine.calls().len(), n);
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn a_restarted_server_finds_containers_and_the_exits_it_missed() {
    let Some(mut env) =
        Env::new("a_restarted_server_finds_containers_and_the_exits_it_missed").await
    else {
        return;
    };
    let pod = env.pod("web").await;
    let gone = env.container(&pod, "gone", &["sleep", "1000"]).await;
    let runs = env.container(&pod, "runs", &["sleep", "1000"]).await;
    let lost = env.container(&pod, "lost", &["sleep", "1000"]).await;
    for id in [&gone, &runs, &lost] {
        env.rt.start_container(id).await.expect("start");
    }
    let gone_pid = env.init(&gone);
    let lost_monitor = env
        .rt
        .container_status(&lost, false)
        .expect("status")
        .container
        .meta
        .monitor
        .expect("monitor")
        .pid;
    env.restart().await;
    // While no server ran: one container exited, one lost its monitor.
    env.engine.exit(gone_pid, 7, None);
    env.engine.exit(lost_monitor, 0, None);
    for _ in 0..200 {
        if env.state(&gone) == State::Exited && env.state(&lost) == State::Exited {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(env.rt.list_containers().len(), 3);
    assert_eq!(env.rt.list_pods().len(), 1);
    let st = env
        .rt
        .container_status(&gone, false)
        .expect("status")
        .status;
    assert_eq!(st.exit.as_ref().map(|e| e.exit_code), Some(7));
    assert!(!st.lost);
    let st = env
        .rt
        .container_status(&lost, false)
        .expect("status")
        .status;
    assert!(st.lost, "{st:?}");
    assert_eq!(env.state(&runs), State::Running);
    // The new server drives the running one as the old one did.
    env.rt.stop_container(&runs, 5).await.expect("stop");
    assert_eq!(env.state(&runs), State::Exited);
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

/// Runs `op` until the fake engine has done `step`, then drops it there, as
/// a kill -9 of the server would, and starts a new server on what is left.
async fn kill_during<F>(env: &mut Env, step: &'static str, op: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send,
{
    env.engine.hold(step);
    let task = tokio::spawn(op);
    for _ in 0..1000 {
        if env.engine.called(step) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(env.engine.called(step), "{step} was never reached");
    // Let the held call finish its work, then kill.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        !task.is_finished(),
        "{step}: the operation ended; it was not held"
    );
    task.abort();
    let _ = task.await;
    env.restart().await;
}

#[tokio::test]
async fn a_server_killed_during_create_container_leaves_nothing_of_it() {
    let Some(mut env) =
        Env::new("a_server_killed_during_create_container_leaves_nothing_of_it").await
    else {
        return;
    };
    let pod = env.pod("web").await;
    let pod_procs = env.engine.live();
    for step in ["mount_image", "create_cgroups", "spawn_monitor"] {
        let (rt, req) = (
            env.rt.clone(),
            env.container_request(&pod, "app", &["sleep", "1"]),
        );
        kill_during(
            &mut env,
            step,
            async move { rt.create_container(req).await },
        )
        .await;
        assert!(
            env.rt.list_containers().is_empty(),
            "{step}: a container is listed"
        );
        assert!(
            env.state_dirs("containers").is_empty(),
            "{step}: state left"
        );
        assert!(env.engine.cgroups().is_empty(), "{step}: cgroups left");
        assert_eq!(env.engine.live(), pod_procs, "{step}: processes left");
        // The image no container uses is unmounted; the pod's shm stays.
        assert_eq!(
            env.engine.mounts().len(),
            1,
            "{step}: {:?}",
            env.engine.mounts()
        );
        // The pod is still there and ready, and the name is free again.
        assert_eq!(env.rt.list_pods().len(), 1);
        let id = env.container(&pod, "app", &["sleep", "1"]).await;
        env.rt.remove_container(&id).await.expect("remove");
    }
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn a_server_killed_during_run_pod_leaves_nothing_of_it() {
    let Some(mut env) = Env::new("a_server_killed_during_run_pod_leaves_nothing_of_it").await
    else {
        return;
    };
    for step in ["mount_shm", "run_sandbox"] {
        let rt = env.rt.clone();
        kill_during(&mut env, step, async move {
            rt.run_pod(pod_request("web")).await
        })
        .await;
        // The pod init the sandbox helper made, never recorded, is found by
        // the spec file it runs on and ended.
        env.assert_empty();
        assert!(
            env.engine
                .calls()
                .iter()
                .any(|c| c.starts_with("kill_helpers")),
            "{step}: no helper search"
        );
        let pod = env.pod("web").await;
        env.rt.remove_pod(&pod).await.expect("remove pod");
    }
    env.assert_empty();
}

#[tokio::test]
async fn a_start_cut_short_by_a_kill_is_finished_by_the_next_server() {
    let Some(mut env) =
        Env::new("a_start_cut_short_by_a_kill_is_finished_by_the_next_server").await
    else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    let (rt, id2) = (env.rt.clone(), id.clone());
    kill_during(
        &mut env,
        "start",
        async move { rt.start_container(&id2).await },
    )
    .await;
    // The monitor had started it: the new server asked again, heard
    // "already started", and knows it runs.
    assert_eq!(env.state(&id), State::Running);
    assert!(env
        .rt
        .container_status(&id, false)
        .expect("status")
        .status
        .started_at_ns
        .is_some());
    env.rt.stop_container(&id, 5).await.expect("stop");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn removals_cut_short_by_a_kill_are_finished_by_the_next_server() {
    let Some(mut env) =
        Env::new("removals_cut_short_by_a_kill_are_finished_by_the_next_server").await
    else {
        return;
    };
    let pod = env.pod("web").await;
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    env.rt.start_container(&id).await.expect("start");
    let (rt, id2) = (env.rt.clone(), id.clone());
    kill_during(&mut env, "remove_cgroups", async move {
        rt.remove_container(&id2).await
    })
    .await;
    assert!(env.rt.list_containers().is_empty());
    assert!(env.state_dirs("containers").is_empty());
    assert!(env.engine.cgroups().is_empty());
    // The pod's removal, cut short after its namespaces went.
    let id = env.container(&pod, "app", &["sleep", "1000"]).await;
    env.rt.start_container(&id).await.expect("start");
    let (rt, pod2) = (env.rt.clone(), pod.clone());
    kill_during(&mut env, "release_sandbox", async move {
        rt.remove_pod(&pod2).await
    })
    .await;
    env.assert_empty();
}

#[tokio::test]
async fn cgroups_no_record_names_are_removed_at_start() {
    let Some(mut env) = Env::new("cgroups_no_record_names_are_removed_at_start").await else {
        return;
    };
    let pod = env.pod("web").await;
    let keep = env.container(&pod, "keep", &["sleep", "1000"]).await;
    let lost = env.container(&pod, "lost", &["sleep", "1000"]).await;
    assert_eq!(env.engine.cgroups().len(), 2);
    // Its record is gone (as if the disk lost it): only its cgroup is left.
    std::fs::remove_file(
        env.dir
            .path()
            .join("store/state/containers")
            .join(&lost)
            .join("container.json"),
    )
    .expect("remove record");
    env.restart().await;
    let left = env.engine.cgroups();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(&keep));
    assert_eq!(env.rt.list_containers().len(), 1);
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

#[tokio::test]
async fn a_privileged_container_needs_a_privileged_pod() {
    let Some(env) = Env::new("a_privileged_container_needs_a_privileged_pod").await else {
        return;
    };
    let pod = env.pod("web").await;
    let mut req = env.container_request(&pod, "root", &["true"]);
    if let Some(c) = req.config.as_mut() {
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    assert!(matches!(
        env.rt.create_container(req).await,
        Err(Error::InvalidArgument(_))
    ));
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();
}

/// An image stays mounted for `image_unmount_delay` after its last
/// container goes, a container made in that time uses the mount as it is,
/// and the mount goes once the delay has passed without a user; a restarted
/// server adopts such a mount, and RemoveImage releases it at once.
#[tokio::test]
async fn an_unused_image_is_released_after_the_delay() {
    let delay = Duration::from_secs(2);
    let test = "an_unused_image_is_released_after_the_delay";
    let Some(env) = Env::with_unmount_delay(test, delay).await else {
        return;
    };
    let unmounts = |env: &Env| {
        env.engine
            .methods()
            .iter()
            .filter(|m| *m == "unmount")
            .count()
    };
    let image_mounts = |env: &Env| {
        let images = env.dir.path().join("run/images");
        env.engine
            .mounts()
            .into_iter()
            .filter(|m| m.starts_with(&images))
            .count()
    };
    let pod = env.pod("web").await;
    let a = env.container(&pod, "a", &["sleep", "1000"]).await;
    env.rt.remove_container(&a).await.expect("remove a");
    assert_eq!(image_mounts(&env), 1, "released before the delay");
    // Within the delay a new container takes the mount over: the release
    // scheduled by the first removal must not take it from under it.
    let b = env.container(&pod, "b", &["sleep", "1000"]).await;
    tokio::time::sleep(delay + Duration::from_millis(500)).await;
    assert_eq!(image_mounts(&env), 1, "released while in use");
    assert_eq!(unmounts(&env), 0);
    env.rt.remove_container(&b).await.expect("remove b");
    let deadline = std::time::Instant::now() + delay * 5;
    while image_mounts(&env) > 0 {
        assert!(std::time::Instant::now() < deadline, "never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(unmounts(&env), 1);
    env.rt.stop_pod(&pod).await.expect("stop pod");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.assert_empty();

    // A mount an earlier server left with no container (its release an hour
    // away, so that only the new server's can end it): adopted, kept for
    // the delay, then released.
    let mut env = env;
    env.restart_with(Duration::from_secs(3600)).await;
    let pod = env.pod("web2").await;
    let c = env.container(&pod, "c", &["sleep", "1000"]).await;
    env.rt.remove_container(&c).await.expect("remove c");
    env.restart_with(delay).await;
    assert_eq!(image_mounts(&env), 1, "an adopted mount released at once");
    let deadline = std::time::Instant::now() + delay * 5;
    while image_mounts(&env) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "an adopted mount never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // RemoveImage does not wait for the delay.
    let d = env.container(&pod, "d", &["sleep", "1000"]).await;
    env.rt.remove_container(&d).await.expect("remove d");
    assert_eq!(image_mounts(&env), 1, "released before the delay");
    env.rt.stop_pod(&pod).await.expect("stop pod");
    env.rt.remove_pod(&pod).await.expect("remove pod");
    env.rt.remove_image(&env.image).await.expect("remove image");
    assert_eq!(image_mounts(&env), 0, "RemoveImage left the mount");
    env.assert_empty();
}

/// The spare network namespaces (under the run dir) the fake host holds.
fn spares(env: &Env) -> Vec<PathBuf> {
    let dir = env
        .dir
        .path()
        .join("run")
        .join(crate::store::spare_net::DIR);
    let mut v: Vec<PathBuf> = env
        .engine
        .sandboxes()
        .into_iter()
        .filter(|p| p.starts_with(&dir))
        .collect();
    v.sort();
    v
}

async fn wait_spares(env: &Env, n: usize) -> Vec<PathBuf> {
    for _ in 0..500 {
        if spares(env).len() == n && env.rt.spares.ready() == n {
            return spares(env);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("never {n} spares: {:?}", spares(env));
}

#[tokio::test]
async fn spare_netns_are_made_when_asked_for_swept_at_start_and_released_at_stop() {
    let Some(mut env) = Env::new("spare_netns_are_made_when_asked_for").await else {
        return;
    };
    // None is made before a pod asks for one.
    env.rt.fill_spare_nets();
    tokio::task::yield_now().await;
    assert!(spares(&env).is_empty());
    assert!(
        env.rt.spares.take(|_| Fit::Take).0.is_none(),
        "the first ask finds none"
    );
    env.rt.fill_spare_nets();
    let made = wait_spares(&env, 1).await;
    let spare = env
        .rt
        .spares
        .take(|_| Fit::Take)
        .0
        .expect("a spare is ready");
    assert_eq!(spare.net(), made[0].join("net"));
    // The next is made once the pod that took one is done with it.
    env.rt.drop_spare_net(spare).await;
    env.rt.fill_spare_nets();
    let next = wait_spares(&env, 1).await;
    assert_ne!(next, made);
    assert!(!made[0].parent().expect("dir").exists(), "its dir is gone");

    // A server killed with a spare ready: the next start releases it.
    env.restart().await;
    assert!(spares(&env).is_empty(), "swept: {:?}", spares(&env));
    assert!(dir_is_empty(&env.dir.path().join("run/spare-net")));

    // A stopping server keeps none, and begins none: this fill's task runs
    // only once the stop has begun (one thread), and makes nothing.
    let made = |env: &Env| {
        let calls = env.engine.calls();
        calls
            .iter()
            .filter(|c| c.starts_with("run_sandbox") && c.contains("spare-net"))
            .count()
    };
    let before = made(&env);
    assert!(env.rt.spares.take(|_| Fit::Take).0.is_none());
    env.rt.fill_spare_nets();
    env.rt.release_spare_nets().await;
    assert_eq!(made(&env), before, "none begun once stopping");
    assert_eq!(env.rt.spares.start_making(), 0);
    assert!(spares(&env).is_empty(), "{:?}", spares(&env));
    env.assert_empty();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spare_is_made_while_a_pod_is_being_started() {
    let Some(env) = Env::new("no_spare_is_made_while_a_pod_is_being_started").await else {
        return;
    };
    assert!(env.rt.spares.take(|_| Fit::Take).0.is_none(), "a pod asks");
    let starting = env.rt.spares.starting();
    env.rt.fill_spare_nets();
    tokio::time::sleep(super::spare_net::QUIET * 5).await;
    assert!(spares(&env).is_empty(), "none while a start is in flight");
    let ended = std::time::Instant::now();
    drop(starting);
    wait_spares(&env, 1).await;
    assert!(
        ended.elapsed() >= super::spare_net::QUIET,
        "made only once it was quiet"
    );
    env.rt.release_spare_nets().await;
    env.assert_empty();
}

/// Whether `dir` is missing or holds nothing.
fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut rd| rd.next().is_none())
}
