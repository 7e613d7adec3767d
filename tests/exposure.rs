//! What a container can reach through /proc of sycri's own processes that
//! it sees (CVE-2019-5736 class): the pod's init, a sibling container that
//! is created but not started, and the process of an ExecSync before it
//! execs. Containers in one pod with a shared pid namespace scan
//! `/proc/*/{exe,cwd,root,fd/*}` in a loop while execs and waiting siblings
//! come and go, and print the device and inode of all they could open; the
//! test compares those with the host's files that must stay out of reach:
//! the engine binary, the log files, the server's log, the host's root.

mod common;

use common::*;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use sycri::proto::cri;

/// Prints `saw <pid> <comm>` once for each process it sees, and
/// `open <path> <dev> <ino>` for each /proc link of another process that it
/// can follow.
const SCAN: &str = r#"
seen=" "
while :; do
  for p in /proc/[0-9]*; do
    n=${p#/proc/}
    [ "$n" = "$$" ] && continue
    case "$seen" in
      *" $n "*) ;;
      *) seen="$seen$n "; echo "saw $n $(cat $p/comm 2>/dev/null)" ;;
    esac
    stat -L -c 'open %n %d %i' $p/exe $p/cwd $p/root $p/fd/* 2>/dev/null
  done
done
"#;

/// With CAP_SYS_PTRACE, non-dumpable guards nothing: what must hold then
/// is that the pod's init shows nothing of the host (its root, working
/// directory and descriptors), and that no engine binary it reaches
/// through an exe link can be opened for writing.
const TRACE: &str = r#"
echo started
while :; do
  stat -L -c 'open %n %d %i' /proc/1/root /proc/1/cwd /proc/1/fd/* 2>/dev/null
  for e in /proc/[0-9]*/exe; do
    if true 2>/dev/null 3>>"$e"; then echo "writable $e"; fi
  done
  usleep 20000
done
"#;

fn dev_ino(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The `open` lines of a log: (path inside the container, dev, ino).
fn opened(log: &Path) -> Vec<(String, u64, u64)> {
    log_lines(log)
        .into_iter()
        .filter_map(|(_, l)| {
            let mut it = l.strip_prefix("open ")?.rsplitn(3, ' ');
            let ino = it.next()?.parse().ok()?;
            let dev = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), dev, ino))
        })
        .collect()
}

fn saw(log: &Path, comm: &str) -> usize {
    log_lines(log)
        .iter()
        .filter(|(_, l)| l.starts_with("saw ") && l.ends_with(&format!(" {comm}")))
        .count()
}

async fn exec_true(rt: &mut Rt, id: &str) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["true".into()],
            timeout: 10,
        })
        .await
        .expect("exec")
        .into_inner();
    assert_eq!(r.exit_code, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_reach_no_host_file_through_our_processes() {
    let Some(sif) = root_busybox_sif("containers_reach_no_host_file_through_our_processes") else {
        return;
    };
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let shared = pid_mode(cri::NamespaceMode::Pod);
    let pod_cfg = pod_config_ns("exposed", &s.log_dir(), shared.clone());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let init = pod_init_pid(&mut s.rt, &pod).await.expect("a pod init");

    let mut logs: Vec<PathBuf> = Vec::new();
    let mut run = |name: &str, script: &str, caps: &[&str]| {
        let mut c = container_config_ns(name, &image, &["sh", "-c", script], shared.clone());
        if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.capabilities = Some(cri::Capability {
                add_capabilities: caps.iter().map(|c| c.to_string()).collect(),
                ..Default::default()
            });
        }
        logs.push(s.log_dir().join(format!("{name}.log")));
        c
    };
    let scanner_cfg = run("scanner", SCAN, &[]);
    let tracer_cfg = run("tracer", TRACE, &["CAP_SYS_PTRACE"]);
    let target_cfg = run("target", "exec sleep 1000", &[]);
    let mut started = Vec::new();
    for cfg in [scanner_cfg, tracer_cfg, target_cfg] {
        let c = create(&mut s.rt, &pod, &pod_cfg, cfg)
            .await
            .expect("create");
        start(&mut s.rt, &c).await.expect("start");
        started.push(c);
    }
    let target = started[2].clone();
    let (scan_log, trace_log) = (logs[0].clone(), logs[1].clone());
    wait_for(
        "the scanner to see the pod init",
        Duration::from_secs(20),
        || saw(&scan_log, "sycri-pod-init") > 0,
    )
    .await;
    wait_log_line(&trace_log, "started").await;

    // Siblings created and never started, some kept, some coming and going,
    // while ExecSync runs its helper in the pod again and again.
    let mut waiting = Vec::new();
    for round in 0..6 {
        let mut cfg = container_config_ns(
            &format!("waiting{round}"),
            &image,
            &["sleep", "1000"],
            shared.clone(),
        );
        cfg.log_path = format!("waiting{round}.log");
        let c = create(&mut s.rt, &pod, &pod_cfg, cfg)
            .await
            .expect("create");
        let log = s.log_dir().join(format!("waiting{round}.log"));
        logs.push(log);
        waiting.push(c);
        for _ in 0..15 {
            exec_true(&mut s.rt, &target).await;
        }
        if round % 2 == 1 {
            let gone = waiting.remove(0);
            remove_container(&mut s.rt, &gone).await.expect("remove");
        }
    }
    // The scanner has had the time to look at the waiting ones.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // What must stay out of reach, taken while every file still exists.
    let mut host: Vec<(String, (u64, u64))> = Vec::new();
    // The server runs its helpers from $SYCRI_TEST_ENGINE, else from the
    // sycri-engine beside it, else from itself.
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_sycri"));
    let mut engines = vec![server_bin.with_file_name("sycri-engine"), server_bin];
    engines.extend(std::env::var_os("SYCRI_TEST_ENGINE").map(PathBuf::from));
    for p in engines
        .iter()
        .chain(&logs)
        .chain([&s.dir.path().join("server.log"), &PathBuf::from("/")])
    {
        if let Some(id) = dev_ino(p) {
            host.push((p.display().to_string(), id));
        }
    }
    let engine_ids: HashSet<(u64, u64)> = engines.iter().filter_map(|p| dev_ino(p)).collect();
    assert!(!engine_ids.is_empty(), "no engine binary found");

    stop_pod(&mut s.rt, &pod).await.expect("stop pod");
    remove_pod(&mut s.rt, &pod).await.expect("remove pod");

    let named = |dev: u64, ino: u64| {
        host.iter()
            .find(|(_, id)| *id == (dev, ino))
            .map(|(p, _)| p.clone())
    };
    eprintln!(
        "scanner: saw {} processes, followed {} links; tracer: followed {} links",
        log_lines(&scan_log)
            .iter()
            .filter(|(_, l)| l.starts_with("saw "))
            .count(),
        opened(&scan_log).len(),
        opened(&trace_log).len()
    );
    // The scanner (the default capabilities) must have seen our processes,
    // or its finding nothing would prove nothing ...
    assert!(saw(&scan_log, "sycri-pod-init") > 0);
    assert!(
        saw(&scan_log, "sycri-engine") > 0,
        "the scanner never saw a waiting container: {:?}",
        log_lines(&scan_log)
    );
    // ... and have opened none of the host's files through them.
    let leaks: Vec<String> = opened(&scan_log)
        .into_iter()
        .filter_map(|(p, dev, ino)| named(dev, ino).map(|h| format!("{p} is {h}")))
        .collect();
    assert!(
        leaks.is_empty(),
        "the scanner reached host files: {leaks:#?}"
    );

    // The tracer: nothing of the host through the pod init (pid 1 in the
    // pod), and no engine binary writable.
    let trace = log_lines(&trace_log);
    let writable: Vec<&String> = trace
        .iter()
        .map(|(_, l)| l)
        .filter(|l| l.starts_with("writable "))
        .collect();
    assert!(writable.is_empty(), "{writable:?}");
    let leaks: Vec<String> = opened(&trace_log)
        .into_iter()
        .filter(|(_, dev, ino)| !engine_ids.contains(&(*dev, *ino)))
        .filter_map(|(p, dev, ino)| named(dev, ino).map(|h| format!("{p} is {h}")))
        .collect();
    assert!(
        leaks.is_empty(),
        "the tracer reached host files through pod init {init}: {leaks:#?}"
    );
    assert_no_leaks(s.dir.path(), &[init]);
}
