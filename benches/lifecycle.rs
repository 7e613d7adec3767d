//! Pod and container lifecycle benchmark, over the real socket.
//!
//! Starts the release-built `sycri` on private directories under /tmp, pulls
//! the busybox SIF fixture, then runs rounds of RunPodSandbox, CreateContainer
//! (`sleep 1000`), StartContainer, StopContainer, RemoveContainer,
//! StopPodSandbox and RemovePodSandbox, timing every call. Prints p50 and p90
//! per RPC and for RunPodSandbox+CreateContainer+StartContainer together, the
//! server's resident memory after the rounds and a container monitor's while
//! its container runs. It prints figures and asserts nothing about time.
//!
//! Run as root: `cargo bench --bench lifecycle` (loop devices, mounts,
//! namespaces). Without root or without the fixtures it says so and exits 0.
//! Fixtures: $SYCRI_FIXTURES or ../shared/fixtures/sif beside the repo.
//! SYCRI_BENCH_ROUNDS overrides the number of measured rounds (default 20);
//! SYCRI_BENCH_CNI_CONF_DIR gives the pods a CNI network (default: none,
//! loopback only).
//!
//! The helpers run from the static `sycri-engine` that `scripts/build-engine.sh`
//! builds (as `scripts/start-server.sh` installs it) when it is there and from
//! this build; SYCRI_BENCH_ENGINE names another. Otherwise the server picks its
//! engine itself. The figures name the binary a monitor ran and its linking.

mod common;

use common::{
    connect, exe_and_linking, kb_field, mb, ms, pct, processes_under, rss_kb, status_kb, Res,
    Server,
};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use sycri::proto::cri::runtime_service_client::RuntimeServiceClient;

const ROUNDS: usize = 20;
/// Rounds run first and not counted: the first pod and container pay for
/// page-cache misses and one-time set-up.
const WARMUP: usize = 1;
const TARGET_START_P50_MS: f64 = 45.0;
const TARGET_MONITOR_RSS_KB: u64 = 2048;

const RPCS: [&str; 7] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
];

fn main() -> ExitCode {
    let Some(sif) = common::preflight("lifecycle") else {
        return ExitCode::SUCCESS;
    };
    let rounds = common::env_num("SYCRI_BENCH_ROUNDS", ROUNDS);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifecycle bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&sif, rounds)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lifecycle bench FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn pod_config(i: usize, log_dir: &Path) -> cri::PodSandboxConfig {
    let name = format!("bench-{i}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-bench-{i}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name,
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

fn container_config(image: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        log_path: "sleeper.log".into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn run(sif: &Path, rounds: usize) -> Res<()> {
    let (mut server, sock) = Server::start()?;
    let channel = connect(&sock, &mut server).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    let mut img = ImageServiceClient::new(channel);
    let log_dir = server.dir.path().join("logs");
    let image = sif.to_string_lossy().into_owned();
    let status = |what: &'static str| move |e: tonic::Status| format!("{what}: {e}");

    let t = Instant::now();
    img.pull_image(cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map_err(status("PullImage"))?;
    let pull = t.elapsed();

    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); RPCS.len()];
    let mut to_running: Vec<Duration> = Vec::with_capacity(rounds);
    let mut monitor_kb: Vec<u64> = Vec::new();
    let mut helpers: Vec<String> = Vec::new();

    for i in 0..WARMUP + rounds {
        let mut d = [Duration::ZERO; RPCS.len()];
        let pod_cfg = pod_config(i, &log_dir);

        let t = Instant::now();
        let pod = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(status("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id;
        d[0] = t.elapsed();

        let t = Instant::now();
        let ctr = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config(&image)),
                sandbox_config: Some(pod_cfg),
            })
            .await
            .map_err(status("CreateContainer"))?
            .into_inner()
            .container_id;
        d[1] = t.elapsed();

        let t = Instant::now();
        rt.start_container(cri::StartContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .map_err(status("StartContainer"))?;
        d[2] = t.elapsed();

        // Memory of the helpers while the container runs (not timed).
        if i >= WARMUP {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let procs = processes_under(server.dir.path());
            for (pid, args) in &procs {
                if args.iter().any(|a| a == "__monitor") {
                    if let Some(kb) = rss_kb(*pid) {
                        monitor_kb.push(kb);
                    }
                }
            }
            if i == WARMUP {
                let server_pid = server.pid() as i32;
                for (pid, args) in procs.iter().filter(|(p, _)| *p != server_pid) {
                    let role = args
                        .iter()
                        .find(|a| a.starts_with("__"))
                        .cloned()
                        .unwrap_or_else(|| args.first().cloned().unwrap_or_default());
                    helpers.push(format!(
                        "{role} (pid {pid}, {}): RSS {} = anon {} kB + file {} kB; PSS {} kB",
                        exe_and_linking(*pid),
                        rss_kb(*pid).map(mb).unwrap_or_else(|| "gone".into()),
                        kb_field(&format!("/proc/{pid}/status"), "RssAnon:").unwrap_or(0),
                        kb_field(&format!("/proc/{pid}/status"), "RssFile:").unwrap_or(0),
                        kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0),
                    ));
                }
            }
        }

        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: 10,
        })
        .await
        .map_err(status("StopContainer"))?;
        d[3] = t.elapsed();

        let t = Instant::now();
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: ctr.clone(),
        })
        .await
        .map_err(status("RemoveContainer"))?;
        d[4] = t.elapsed();

        let t = Instant::now();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(status("StopPodSandbox"))?;
        d[5] = t.elapsed();

        let t = Instant::now();
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(status("RemovePodSandbox"))?;
        d[6] = t.elapsed();

        if i >= WARMUP {
            for (k, v) in d.iter().enumerate() {
                times[k].push(*v);
            }
            to_running.push(d[0] + d[1] + d[2]);
        }
    }

    let pid = server.pid();
    let server_rss = status_kb(pid, "VmRSS:");
    let server_hwm = status_kb(pid, "VmHWM:");
    drop((rt, img));
    let (exit, stop_time) = server.terminate().await;

    println!();
    println!(
        "sycri lifecycle bench: {rounds} rounds (+{WARMUP} warm-up not counted), \
         {} cores, release build, image {}",
        common::cores(),
        sif.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    println!(
        "load average during the run (1, 5, 15 min): {}",
        common::loadavg()
    );
    println!("PullImage (once): {:.1} ms", ms(pull));
    println!("{:<34} {:>9} {:>9}", "RPC", "p50 ms", "p90 ms");
    for (k, name) in RPCS.iter().enumerate() {
        println!(
            "{:<34} {:>9.2} {:>9.2}",
            name,
            pct(&times[k], 50.0),
            pct(&times[k], 90.0)
        );
    }
    let p50 = pct(&to_running, 50.0);
    println!(
        "{:<34} {:>9.2} {:>9.2}   target p50 < {TARGET_START_P50_MS} ms: {}",
        "runp+create+start (to running)",
        p50,
        pct(&to_running, 90.0),
        if p50 < TARGET_START_P50_MS {
            "met"
        } else {
            "NOT met"
        }
    );
    match server_rss {
        Some(kb) => println!(
            "server RSS after the rounds: {} (peak {})",
            mb(kb),
            server_hwm.map(mb).unwrap_or_else(|| "?".into())
        ),
        None => println!("server RSS after the rounds: not readable"),
    }
    if monitor_kb.is_empty() {
        println!("monitor RSS: no __monitor process found while the container ran");
    } else {
        monitor_kb.sort_unstable();
        let med = monitor_kb[(monitor_kb.len() - 1) / 2];
        let max = monitor_kb[monitor_kb.len() - 1];
        println!(
            "monitor RSS (container running): median {}, max {}   target < 2 MB: {}",
            mb(med),
            mb(max),
            if max < TARGET_MONITOR_RSS_KB {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    for h in &helpers {
        println!("  in round 1, {h}");
    }
    match exit {
        Some(st) => println!("server stopped by SIGTERM in {:.1} ms: {st}", ms(stop_time)),
        None => println!("server did not stop within 30 s of SIGTERM: killed"),
    }
    Ok(())
}
