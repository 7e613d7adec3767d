//! ExecSync: commands inside a running container, their output, exit codes,
//! the container's view (namespaces, files, user) and timeouts.

mod common;

use common::*;
use sycri::proto::cri;

async fn exec(
    rt: &mut Rt,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<cri::ExecSyncResponse, tonic::Status> {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_runs_inside_the_container() {
    let Some(sif) = busybox_sif("exec_sync_runs_inside_the_container") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config("execpod", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let mut cfg = container_config("target", &image, &["sleep", "1000"]);
    cfg.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: b"hi there".to_vec(),
    }];
    if let Some(l) = cfg.linux.as_mut() {
        l.security_context = Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            ..Default::default()
        });
    }
    let c = create(&mut s.rt, &pod, &pod_cfg, cfg)
        .await
        .expect("create");
    start(&mut s.rt, &c).await.expect("start");

    let r = exec(&mut s.rt, &c, &["echo", "-n", "hello"], 0)
        .await
        .expect("exec echo");
    assert_eq!(
        r.stdout,
        b"hello",
        "{r:?} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        r.stderr.is_empty(),
        "stderr {:?}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert_eq!(r.exit_code, 0);

    let r = exec(
        &mut s.rt,
        &c,
        &["sh", "-c", "echo out; echo err >&2; exit 5"],
        10,
    )
    .await
    .expect("exec exit 5");
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.exit_code, 5);

    // The container's view: its hostname, env, user, files and processes.
    let r = exec(
        &mut s.rt,
        &c,
        &[
            "sh",
            "-c",
            "hostname; echo $GREETING; id -u; cat /etc/hostname; ps -o comm | grep -c sleep",
        ],
        10,
    )
    .await
    .expect("exec view");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "execpod\nhi there\n1234\nexecpod\n1\n"
    );

    let r = exec(&mut s.rt, &c, &["/no/such/command"], 10)
        .await
        .expect("exec missing");
    assert_ne!(r.exit_code, 0);
    assert!(String::from_utf8_lossy(&r.stderr).contains("/no/such/command"));

    // A timeout ends the command and says so.
    let err = exec(&mut s.rt, &c, &["sleep", "30"], 1)
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
    let r = exec(
        &mut s.rt,
        &c,
        &["sh", "-c", "ps -o comm | grep -c sleep"],
        10,
    )
    .await
    .expect("ps");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "1\n",
        "only the container's own sleep is left"
    );

    // Ten at once.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut rt = s.rt.clone();
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = exec(&mut rt, &c, &["sh", "-c", &format!("echo {i}")], 20)
                .await
                .expect("parallel exec");
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.expect("join");
        assert_eq!(String::from_utf8_lossy(&r.stdout), format!("{i}\n"));
    }

    // Output is bounded, not unbounded memory.
    let r = exec(
        &mut s.rt,
        &c,
        &["sh", "-c", "head -c 20000000 /dev/zero"],
        30,
    )
    .await
    .expect("big");
    assert_eq!(r.stdout.len(), sycri::engine::MAX_EXEC_OUTPUT);

    // Not running: FailedPrecondition; unknown: NotFound.
    s.rt.stop_container(cri::StopContainerRequest {
        container_id: c.clone(),
        timeout: 0,
    })
    .await
    .expect("stop");
    let err = exec(&mut s.rt, &c, &["true"], 0)
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let err = exec(&mut s.rt, "nope", &["true"], 0)
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);

    s.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
