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

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use sycri::proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint};

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

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!(
            "lifecycle bench: SKIPPED, needs root (loop devices, mounts, namespaces): \
             run `cargo bench --bench lifecycle` as root"
        );
        return ExitCode::SUCCESS;
    }
    let Some(sif) = fixture() else {
        println!(
            "lifecycle bench: SKIPPED, busybox SIF fixture not found \
             (set SYCRI_FIXTURES or provide ../shared/fixtures/sif)"
        );
        return ExitCode::SUCCESS;
    };
    let rounds = std::env::var("SYCRI_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(ROUNDS);
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

fn fixture() -> Option<PathBuf> {
    let dir = std::env::var_os("SYCRI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/sif"));
    let name = if cfg!(target_arch = "aarch64") {
        "busybox_arm64.sif"
    } else {
        "busybox_amd64.sif"
    };
    dir.join(name).canonicalize().ok()
}

/// The helper binary to give the server: $SYCRI_BENCH_ENGINE, else the static
/// build of scripts/build-engine.sh when it matches these sources.
fn engine() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SYCRI_BENCH_ENGINE") {
        return Some(PathBuf::from(p));
    }
    let host = if cfg!(target_arch = "aarch64") {
        "aarch64-unknown-linux-gnu"
    } else {
        "x86_64-unknown-linux-gnu"
    };
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_sycri"));
    // <target>/release/sycri -> <target>/<host>/release/sycri-engine
    let path = exe
        .parent()?
        .parent()?
        .join(host)
        .join("release/sycri-engine");
    let out = Command::new(&path)
        .arg(sycri_native::ENGINE_BUILD_ARG)
        .output()
        .ok()?;
    if String::from_utf8_lossy(&out.stdout).trim() == sycri_native::ENGINE_BUILD {
        Some(path)
    } else {
        println!(
            "note: {} is from another build; run scripts/build-engine.sh to measure the static engine",
            path.display()
        );
        None
    }
}

/// The binary a process runs, and whether it is dynamically linked (the
/// dynamic loader is mapped).
fn exe_and_linking(pid: i32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let linking = if maps.contains("/ld-linux") {
        "dynamic"
    } else {
        "static"
    };
    format!("{exe} ({linking})")
}

/// The server under test and its private directories; cleans up on drop.
struct Server {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Server {
    fn start() -> Res<(Server, PathBuf)> {
        // A short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("syb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        // An empty config file, so that /etc/sycri/sycri.toml does not apply.
        let config = d.join("sycri.toml");
        std::fs::write(&config, "").map_err(|e| format!("write {}: {e}", config.display()))?;
        // Pods on loopback only unless SYCRI_BENCH_CNI_CONF_DIR names a network:
        // the machine's /etc/cni/net.d does not apply.
        let cni = match std::env::var_os("SYCRI_BENCH_CNI_CONF_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => d.join("cni"),
        };
        std::fs::create_dir_all(&cni).map_err(|e| format!("{}: {e}", cni.display()))?;
        let sock = d.join("cri.sock");
        let log =
            std::fs::File::create(d.join("server.log")).map_err(|e| format!("server log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("server log: {e}"))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sycri"));
        if let Some(engine) = engine() {
            cmd.arg("--engine-binary").arg(engine);
        }
        let child = cmd
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(format!("unix://{}", sock.display()))
            .arg("--storage-dir")
            .arg(d.join("store"))
            .arg("--run-dir")
            .arg(d.join("run"))
            .arg("--cni-conf-dir")
            .arg(&cni)
            .arg("--log-level")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start {}: {e}", env!("CARGO_BIN_EXE_sycri")))?;
        Ok((
            Server {
                dir,
                child: Some(child),
            },
            sock,
        ))
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGTERM, as a service manager would stop it; waits without blocking the
    /// runtime (the server's graceful shutdown waits for our connection to go).
    async fn terminate(&mut self) -> (Option<std::process::ExitStatus>, Duration) {
        let Some(mut c) = self.child.take() else {
            return (None, Duration::ZERO);
        };
        let t = Instant::now();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        while t.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(st)) = c.try_wait() {
                return (Some(st), t.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = c.kill();
        let _ = c.wait();
        (None, t.elapsed())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever a failed run left: helpers, then mounts, deepest first.
        let d = self.dir.path();
        for (pid, _) in processes_under(d) {
            // SAFETY: kill(2) on a helper of the server we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(PathBuf::from)
            .filter(|p| p.starts_with(d))
            .collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

async fn connect(sock: &Path, server: &mut Server) -> Res<Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        if let Some(Ok(Some(st))) = server.child.as_mut().map(|c| c.try_wait()) {
            return Err(format!("sycri exited ({st}); log:\n{}", server.log()));
        }
        if Instant::now() > deadline {
            return Err(format!("no socket after 20 s; log:\n{}", server.log()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://sycri.invalid")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(sock).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Live processes whose command line mentions `dir` (the server's helpers).
fn processes_under(dir: &Path) -> Vec<(i32, Vec<String>)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains(&needle)) && rss_kb(pid).is_some() {
            v.push((pid, args));
        }
    }
    v
}

/// VmRSS in kB; None for a zombie or a process that is gone.
fn rss_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), key)
}

/// A `Key:   123 kB` line of a /proc file.
fn kb_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of unsorted samples.
fn pct(samples: &[Duration], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).map(|d| ms(*d)).unwrap_or(f64::NAN)
}

fn mb(kb: u64) -> String {
    format!("{:.2} MB ({kb} kB)", kb as f64 / 1024.0)
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
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        sif.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average during the run (1, 5, 15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
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
