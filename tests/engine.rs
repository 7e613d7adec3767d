//! The helper binary: the server runs its helpers from a `sycri-engine` only
//! when that binary comes from the same sources, and refuses a configured one
//! that does not.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A stand-in engine: answers the build question with `build`, records every
/// helper mode it is asked to run in `marker`, and runs it with sycri itself.
fn fake_engine(dir: &Path, build: &str, marker: &Path) -> std::path::PathBuf {
    let path = dir.join("engine.sh");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = {arg} ]; then echo {build}; exit 0; fi\n\
         echo \"$1\" >> {marker}\nexec {sycri} \"$@\"\n",
        arg = sycri_native::ENGINE_BUILD_ARG,
        marker = marker.display(),
        sycri = env!("CARGO_BIN_EXE_sycri"),
    );
    std::fs::write(&path, script).expect("write engine script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn engine_from_another_build_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = fake_engine(dir.path(), "0123456789abcdef", &dir.path().join("marker"));
    let config = dir.path().join("sycri.toml");
    std::fs::write(&config, "").expect("config");
    let mut child = spawn_kept(
        Command::new(env!("CARGO_BIN_EXE_sycri"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("unix://{}", dir.path().join("s.sock").display()))
            .arg("--storage-dir")
            .arg(dir.path().join("store"))
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--engine-binary")
            .arg(&engine)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .expect("start sycri");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sycri kept running with an engine from another build");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pid = child.id();
    let out = child.wait_with_output().expect("output");
    untrack(pid);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "sycri started: {text}");
    assert!(
        text.contains("from another build") && text.contains("0123456789abcdef"),
        "the error names the mismatch: {text}"
    );
    assert!(
        !dir.path().join("s.sock").exists(),
        "no socket left behind by a server that did not start"
    );
}

#[tokio::test]
async fn configured_engine_runs_every_helper() {
    let Some(sif) = root_busybox_sif("configured_engine_runs_every_helper") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("modes");
    let engine = fake_engine(dir.path(), sycri_native::ENGINE_BUILD, &marker);
    let mut s = Server::start_with_config(&format!(
        "engine_binary = {:?}\n",
        engine.display().to_string()
    ))
    .await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config("engine", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let id = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("c", &image, &["sleep", "100"]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &id).await.expect("start");
    let out =
        s.rt.exec_sync(sycri::proto::cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(out.exit_code, 0);
    let modes = std::fs::read_to_string(&marker).unwrap_or_default();
    for mode in [
        sycri_native::SANDBOX_ARG,
        sycri_native::MONITOR_ARG,
        sycri_native::EXEC_ARG,
    ] {
        assert!(
            modes.lines().any(|l| l == mode),
            "{mode} ran from the configured engine: {modes:?}"
        );
    }
    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
