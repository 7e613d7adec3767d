//! Processes die only when they are ours: two servers side by side, one
//! churning execs (some cut off by their timeout), containers and pods, the
//! other killed with SIGKILL and started again over and over, while the
//! host keeps spawning short-lived process-group leaders that take the pid
//! numbers the servers' children free. No host process, and no process of
//! the other server, may ever be killed.

mod common;

use common::*;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sycri::proto::cri;

const CHURN: Duration = Duration::from_secs(20);

/// Spawns `sleep` group leaders until `stop`, a few dozen alive at a time,
/// and records each one that did not end by itself.
fn canaries(stop: Arc<AtomicBool>, killed: Arc<Mutex<Vec<String>>>, spawned: Arc<Mutex<u64>>) {
    let mut alive = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        while alive.len() < 48 {
            let Ok(child) = Command::new("sleep")
                .arg("0.3")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
            else {
                break;
            };
            // The harness's reaper must leave its exit to us.
            keep_child(child.id());
            alive.push(child);
            *spawned.lock().expect("lock") += 1;
        }
        alive.retain_mut(|c| match c.try_wait() {
            Ok(Some(st)) => {
                untrack(c.id());
                if let Some(sig) = st.signal() {
                    killed
                        .lock()
                        .expect("lock")
                        .push(format!("host process {} killed by signal {sig}", c.id()));
                }
                false
            }
            Ok(None) => true,
            Err(e) => {
                killed
                    .lock()
                    .expect("lock")
                    .push(format!("host process {}: {e}", c.id()));
                false
            }
        });
        std::thread::sleep(Duration::from_millis(2));
    }
    for mut c in alive {
        if let Ok(st) = c.wait() {
            if let Some(sig) = st.signal() {
                killed
                    .lock()
                    .expect("lock")
                    .push(format!("host process {} killed by signal {sig}", c.id()));
            }
        }
        untrack(c.id());
    }
}

async fn exec(rt: &mut Rt, id: &str, cmd: &[&str], timeout: i64) -> Result<i32, tonic::Status> {
    rt.exec_sync(cri::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner().exit_code)
}

/// A pod with one running `sleep` container; (pod, container, its pid).
async fn long_runner(s: &mut Server, image: &str, name: &str) -> (String, String, i32) {
    let pod_cfg = pod_config(name, &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("long", image, &["sleep", "100000"]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    let pid = container_pid(&mut s.rt, &c).await.expect("pid");
    (pod, c, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_never_kill_each_others_processes() {
    let Some(sif) = root_busybox_sif("neighbours_never_kill_each_others_processes") else {
        return;
    };
    let mut a = Server::start().await;
    let mut b = Server::start().await;
    let image_a = a.pull(&sif).await;
    let image_b = b.pull(&sif).await;
    let (pod_a, long_a, pid_a) = long_runner(&mut a, &image_a, "a").await;
    let (pod_b, long_b, pid_b) = long_runner(&mut b, &image_b, "b").await;

    let stop = Arc::new(AtomicBool::new(false));
    let killed: Arc<Mutex<Vec<String>>> = Arc::default();
    let spawned: Arc<Mutex<u64>> = Arc::default();
    let host = {
        let (stop, killed, spawned) = (stop.clone(), killed.clone(), spawned.clone());
        std::thread::spawn(move || canaries(stop, killed, spawned))
    };

    // A: execs that end, that leave a child behind, that time out; and
    // short containers made, stopped and removed.
    let mut rt = a.rt.clone();
    let (long, image, pod, log_dir) = (long_a.clone(), image_a.clone(), pod_a.clone(), a.log_dir());
    let churn_a = tokio::spawn(async move {
        let end = Instant::now() + CHURN;
        let mut n = 0u64;
        while Instant::now() < end {
            let code = exec(&mut rt, &long, &["sh", "-c", "sleep 0.05 & echo hi"], 5)
                .await
                .expect("exec on a");
            assert_eq!(code, 0);
            if n.is_multiple_of(5) {
                let r = exec(&mut rt, &long, &["sleep", "10"], 1).await;
                assert!(r.is_err(), "a timed-out exec answered {r:?}");
            }
            if n.is_multiple_of(7) {
                let pod_cfg = pod_config("a", &log_dir);
                let c = create(
                    &mut rt,
                    &pod,
                    &pod_cfg,
                    container_config(&format!("short{n}"), &image, &["sleep", "1000"]),
                )
                .await
                .expect("create on a");
                start(&mut rt, &c).await.expect("start on a");
                stop_container(&mut rt, &c, 1).await.expect("stop on a");
                remove_container(&mut rt, &c).await.expect("remove on a");
            }
            n += 1;
        }
        n
    });

    // B: killed and started again, with execs between.
    let end = Instant::now() + CHURN;
    let mut restarts = 0;
    while Instant::now() < end {
        b.kill9();
        b.restart().await;
        restarts += 1;
        let code = exec(&mut b.rt, &long_b, &["true"], 5)
            .await
            .expect("exec on b");
        assert_eq!(code, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let execs = churn_a.await.expect("churn on a");
    stop.store(true, Ordering::Relaxed);
    host.join().expect("canaries");

    let killed = killed.lock().expect("lock").clone();
    let spawned = *spawned.lock().expect("lock");
    eprintln!(
        "neighbours: {execs} exec rounds on a, {restarts} restarts of b, {spawned} host processes"
    );
    assert!(killed.is_empty(), "killed: {killed:?}");
    assert!(pid_alive(pid_a), "a's container was killed");
    assert!(pid_alive(pid_b), "b's container was killed");
    for (s, c) in [(&mut a, &long_a), (&mut b, &long_b)] {
        assert_eq!(
            status(&mut s.rt, c).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
    }
    for (s, pod) in [(&mut a, &pod_a), (&mut b, &pod_b)] {
        stop_pod(&mut s.rt, pod).await.expect("stop pod");
        remove_pod(&mut s.rt, pod).await.expect("remove pod");
        assert_no_leaks(s.dir.path(), &[]);
    }
}
