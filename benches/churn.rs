//! Scale and churn benchmark over the CRI socket, sycri beside containerd.
//!
//! (a) Scale: 100 pods of one container each (busybox `sleep`), started one at
//! a time; then p50/p99 of ListPodSandbox, ListContainers and
//! ListContainerStats with all of them running, and the server's resident
//! memory (and its per-pod helpers': sycri's monitors and pod sandboxes,
//! containerd's shims).
//!
//! (b) Churn as a kubelet makes it: 30 pods created five at a time (a batch
//! every 5 s), each probed with ExecSync every 5 s and deleted 10-30 s after
//! it started (seeded random) with a 5 s grace period: StopContainer
//! (timeout 5), StopPodSandbox, RemovePodSandbox. One pod in three ignores
//! SIGTERM (`trap '' TERM`) and so waits out the grace period; the others end
//! on it. Meanwhile ListPodSandbox and ListContainers run every second, as the
//! kubelet's relist does. Prints p99 of those List calls and the p50 time from
//! StopContainer to RemovePodSandbox done for the pods that end on SIGTERM.
//!
//! sycri is a private release-built server on directories under /tmp (as in
//! benches/lifecycle.rs), its pods on loopback unless SYCRI_BENCH_CNI_CONF_DIR
//! names a CNI config directory, and runs the busybox SIF fixture. containerd
//! is expected at SYCRI_BENCH_CONTAINERD (a socket path or unix:// URL; default
//! the station's /opt/station/run/containerd.sock; `off` skips it) and runs
//! SYCRI_BENCH_CONTAINERD_IMAGE (default the station registry's busybox
//! stand-in); without it the containerd column says "not measured" and why.
//!
//! Run as root: `cargo bench --bench churn`. It prints figures side by side
//! and asserts nothing; without root or the fixture it says SKIPPED and exits
//! 0. SYCRI_BENCH_SCALE_PODS, SYCRI_BENCH_CHURN_PODS and SYCRI_BENCH_SEED
//! override 100, 30 and the seed.

mod common;

use common::{connect, connect_unix, kb_field, pct, processes_matching, Res, Server};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use sycri::proto::cri::runtime_service_client::RuntimeServiceClient;
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;
type Img = ImageServiceClient<Channel>;

const SCALE_PODS: usize = 100;
/// Rounds of the three List calls with every scale pod running.
const SCALE_SAMPLES: usize = 100;
const CHURN_PODS: usize = 30;
const BATCH: usize = 5;
const BATCH_EVERY: Duration = Duration::from_secs(5);
const PROBE_EVERY: Duration = Duration::from_secs(5);
const LIST_EVERY: Duration = Duration::from_secs(1);
const LIFE_MS: std::ops::RangeInclusive<u64> = 10_000..=30_000;
const GRACE_SECS: i64 = 5;
/// Every IGNORE_TERM_EVERY-th churn pod ignores SIGTERM.
const IGNORE_TERM_EVERY: usize = 3;
const SEED: u64 = 12;
const STATION_CONTAINERD: &str = "/opt/station/run/containerd.sock";
const STATION_BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

const TARGET_SCALE_LIST_P50_MS: f64 = 10.0;
const TARGET_SCALE_RSS_MB: f64 = 30.0;
const TARGET_CHURN_LIST_P99_MS: f64 = 50.0;
const TARGET_TERM_REMOVED_P50_MS: f64 = 500.0;

/// Ends on SIGTERM: the shell (pid 1 of its namespace under runc) has a
/// handler that ends its sleep and exits.
const ENDS_ON_TERM: &str = "trap 'kill $! 2>/dev/null; exit 0' TERM; sleep 100000 & wait";
/// Ignores SIGTERM (inherited by the sleep): only the SIGKILL after the grace
/// period ends it.
const IGNORES_TERM: &str = "trap '' TERM; sleep 100000 & wait";

fn main() -> ExitCode {
    let Some(sif) = common::preflight("churn") else {
        return ExitCode::SUCCESS;
    };
    let opts = Opts {
        scale_pods: common::env_num("SYCRI_BENCH_SCALE_PODS", SCALE_PODS),
        churn_pods: common::env_num("SYCRI_BENCH_CHURN_PODS", CHURN_PODS),
        seed: std::env::var("SYCRI_BENCH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SEED),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("churn bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(&sif, &opts));
    ExitCode::SUCCESS
}

struct Opts {
    scale_pods: usize,
    churn_pods: usize,
    seed: u64,
}

/// One CRI endpoint under test.
struct Target {
    name: &'static str,
    rt: Rt,
    img: Img,
    image: String,
    /// The server process (memory is read from /proc).
    pid: i32,
    /// Command lines of its per-pod helpers mention this.
    helper_mark: String,
    /// Pod log directories go below this.
    log_dir: PathBuf,
    /// Makes pod names unique across runs (containerd keeps what a failed run left).
    tag: String,
}

/// What one endpoint measured; empty vectors where a phase failed.
#[derive(Default)]
struct Figures {
    scale_created: usize,
    scale_create: Duration,
    scale_listed: (usize, usize, usize),
    list_pods: Vec<Duration>,
    list_ctrs: Vec<Duration>,
    list_stats: Vec<Duration>,
    scale_rss_kb: Option<u64>,
    scale_helpers: Option<Helpers>,
    scale_remove: Duration,
    scale_load: String,
    churn_list_pods: Vec<Duration>,
    churn_list_ctrs: Vec<Duration>,
    exec: Vec<Duration>,
    start: Vec<Duration>,
    removed_term: Vec<Duration>,
    removed_ignore: Vec<Duration>,
    churn_wall: Duration,
    churn_rss_kb: Option<u64>,
    peak_rss_kb: Option<u64>,
    churn_load: String,
    errors: Vec<String>,
}

struct Helpers {
    count: usize,
    rss_kb: u64,
    pss_kb: u64,
}

async fn run(sif: &Path, opts: &Opts) {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 100_000)
            .unwrap_or(0)
    );
    let sycri = measure_sycri(sif, opts, &tag).await;
    let containerd = measure_containerd(opts, &tag).await;
    report(opts, &sycri, &containerd);
}

/// Output of one column: the figures, or why there are none, with a
/// description of what ran.
struct Column {
    what: String,
    figures: Result<Figures, String>,
}

async fn measure_sycri(sif: &Path, opts: &Opts, tag: &str) -> Column {
    let pods = match common::bench_cni_dir() {
        Some(d) => format!("pods on the CNI network of {}", d.display()),
        None => "pods on loopback only (SYCRI_BENCH_CNI_CONF_DIR gives them a network)".into(),
    };
    let what = format!(
        "private release server {}, image {}, {pods}",
        env!("CARGO_BIN_EXE_sycri"),
        sif.display()
    );
    let (mut server, sock) = match Server::start() {
        Ok(s) => s,
        Err(e) => {
            return Column {
                what,
                figures: Err(format!("FAILED to start: {e}")),
            }
        }
    };
    let figures = async {
        let channel = connect(&sock, &mut server).await?;
        let mut target = Target {
            name: "sycri",
            rt: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
            img: ImageServiceClient::new(channel),
            image: sif.to_string_lossy().into_owned(),
            pid: server.pid() as i32,
            helper_mark: server.dir.path().to_string_lossy().into_owned(),
            log_dir: server.dir.path().join("logs"),
            tag: tag.to_string(),
        };
        measure(&mut target, opts).await
    }
    .await;
    if figures.is_err() {
        eprintln!("sycri log (tail):\n{}", tail(&server.log(), 20));
    }
    let _ = server.terminate().await;
    Column {
        what,
        figures: figures.map_err(|e| format!("FAILED: {e}")),
    }
}

async fn measure_containerd(opts: &Opts, tag: &str) -> Column {
    let setting = std::env::var("SYCRI_BENCH_CONTAINERD").ok();
    if setting.as_deref() == Some("off") {
        return Column {
            what: String::new(),
            figures: Err("not measured: SYCRI_BENCH_CONTAINERD=off".into()),
        };
    }
    let sock = PathBuf::from(
        setting
            .as_deref()
            .map(|s| s.strip_prefix("unix://").unwrap_or(s))
            .unwrap_or(STATION_CONTAINERD),
    );
    let image =
        std::env::var("SYCRI_BENCH_CONTAINERD_IMAGE").unwrap_or_else(|_| STATION_BUSYBOX.into());
    let mut what = format!("{}, image {image}", sock.display());
    if !sock.exists() {
        return Column {
            what,
            figures: Err(format!(
                "not measured: no socket at {} (start the station's containerd with \
                 /opt/station/containerd-start.sh, or set SYCRI_BENCH_CONTAINERD)",
                sock.display()
            )),
        };
    }
    let figures = async {
        let channel = connect_unix(&sock).await?;
        let mut rt = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20);
        let v = rt
            .version(cri::VersionRequest::default())
            .await
            .map_err(|e| format!("not measured: Version: {e}"))?
            .into_inner();
        let pid = socket_owner(&sock).ok_or_else(|| {
            format!(
                "not measured: no process found listening on {}",
                sock.display()
            )
        })?;
        what = format!(
            "{} {} (pid {pid}) at {what}, pods on its own CNI config",
            v.runtime_name, v.runtime_version
        );
        let logs = tempfile::Builder::new()
            .prefix("sybc")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let mut target = Target {
            name: "containerd",
            rt,
            img: ImageServiceClient::new(channel),
            image,
            pid,
            helper_mark: sock.to_string_lossy().into_owned(),
            log_dir: logs.path().to_path_buf(),
            tag: tag.to_string(),
        };
        let f = measure(&mut target, opts).await;
        drop(logs);
        f
    }
    .await;
    Column {
        what,
        figures: figures.map_err(|e| {
            if e.starts_with("not measured") {
                e
            } else {
                format!("FAILED: {e}")
            }
        }),
    }
}

/// Both phases on one endpoint. A failure in a phase ends the column (what it
/// created is removed first).
async fn measure(t: &mut Target, opts: &Opts) -> Res<Figures> {
    t.img
        .pull_image(cri::PullImageRequest {
            image: Some(image_spec(&t.image)),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{}: PullImage {}: {e}", t.name, t.image))?;
    let mut f = Figures::default();
    eprintln!("{}: scale, {} pods ...", t.name, opts.scale_pods);
    let live: Arc<Mutex<Vec<String>>> = Arc::default();
    let scale_result = scale(t, opts, &mut f, &live).await;
    remove_all(&mut t.rt, &live).await;
    scale_result?;
    eprintln!(
        "{}: churn, {} pods, about a minute ...",
        t.name, opts.churn_pods
    );
    let churn_result = churn(t, opts, &mut f, &live).await;
    remove_all(&mut t.rt, &live).await;
    churn_result?;
    f.peak_rss_kb = kb_field(&format!("/proc/{}/status", t.pid), "VmHWM:");
    Ok(f)
}

async fn scale(
    t: &mut Target,
    opts: &Opts,
    f: &mut Figures,
    live: &Arc<Mutex<Vec<String>>>,
) -> Res<()> {
    let started = Instant::now();
    for i in 0..opts.scale_pods {
        let name = format!("scale-{}-{i}", t.tag);
        start_pod(t, &name, &["sleep", "100000"], live).await?;
        f.scale_created += 1;
    }
    f.scale_create = started.elapsed();
    // Let post-start work (status files, stats) settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..SCALE_SAMPLES {
        let t0 = Instant::now();
        let pods =
            t.rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await
                .map_err(|e| format!("ListPodSandbox: {e}"))?
                .into_inner()
                .items
                .len();
        f.list_pods.push(t0.elapsed());
        let t0 = Instant::now();
        let ctrs =
            t.rt.list_containers(cri::ListContainersRequest::default())
                .await
                .map_err(|e| format!("ListContainers: {e}"))?
                .into_inner()
                .containers
                .len();
        f.list_ctrs.push(t0.elapsed());
        let t0 = Instant::now();
        let stats =
            t.rt.list_container_stats(cri::ListContainerStatsRequest::default())
                .await
                .map_err(|e| format!("ListContainerStats: {e}"))?
                .into_inner()
                .stats
                .len();
        f.list_stats.push(t0.elapsed());
        f.scale_listed = (pods, ctrs, stats);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.scale_rss_kb = kb_field(&format!("/proc/{}/status", t.pid), "VmRSS:");
    f.scale_helpers = Some(helpers(t));
    f.scale_load = common::loadavg();
    let t0 = Instant::now();
    remove_all(&mut t.rt, live).await;
    f.scale_remove = t0.elapsed();
    Ok(())
}

/// What one churn pod measured.
#[derive(Default)]
struct PodRun {
    start: Option<Duration>,
    exec: Vec<Duration>,
    removed: Option<Duration>,
    errors: Vec<String>,
}

async fn churn(
    t: &mut Target,
    opts: &Opts,
    f: &mut Figures,
    live: &Arc<Mutex<Vec<String>>>,
) -> Res<()> {
    // The random draws are made up front, so that they do not depend on
    // the order in which the pods' tasks happen to run.
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let plan: Vec<(Duration, bool)> = (0..opts.churn_pods)
        .map(|i| {
            (
                Duration::from_millis(rng.u64(LIFE_MS)),
                i % IGNORE_TERM_EVERY == IGNORE_TERM_EVERY - 1,
            )
        })
        .collect();
    let started = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let mut rt = t.rt.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut pods = Vec::new();
            let mut ctrs = Vec::new();
            let mut errors = Vec::new();
            let mut tick = tokio::time::interval(LIST_EVERY);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let t0 = Instant::now();
                match rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                    .await
                {
                    Ok(_) => pods.push(t0.elapsed()),
                    Err(e) => errors.push(format!("ListPodSandbox: {e}")),
                }
                let t0 = Instant::now();
                match rt
                    .list_containers(cri::ListContainersRequest::default())
                    .await
                {
                    Ok(_) => ctrs.push(t0.elapsed()),
                    Err(e) => errors.push(format!("ListContainers: {e}")),
                }
            }
            (pods, ctrs, errors)
        })
    };
    let mut tasks = Vec::new();
    for (i, (life, ignore)) in plan.into_iter().enumerate() {
        if i > 0 && i % BATCH == 0 {
            tokio::time::sleep_until((started + BATCH_EVERY * (i / BATCH) as u32).into()).await;
        }
        let mut pt = Target {
            name: t.name,
            rt: t.rt.clone(),
            img: t.img.clone(),
            image: t.image.clone(),
            pid: t.pid,
            helper_mark: String::new(),
            log_dir: t.log_dir.clone(),
            tag: t.tag.clone(),
        };
        let live = live.clone();
        tasks.push(tokio::spawn(async move {
            let r = churn_pod(&mut pt, i, life, ignore, &live).await;
            (ignore, r)
        }));
    }
    for task in tasks {
        match task.await {
            Ok((ignore, r)) => {
                f.start.extend(r.start);
                f.exec.extend(r.exec);
                if let Some(d) = r.removed {
                    if ignore {
                        f.removed_ignore.push(d);
                    } else {
                        f.removed_term.push(d);
                    }
                }
                f.errors.extend(r.errors);
            }
            Err(e) => f.errors.push(format!("pod task: {e}")),
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    match lister.await {
        Ok((pods, ctrs, errors)) => {
            f.churn_list_pods = pods;
            f.churn_list_ctrs = ctrs;
            f.errors.extend(errors);
        }
        Err(e) => f.errors.push(format!("list task: {e}")),
    }
    f.churn_wall = started.elapsed();
    f.churn_rss_kb = kb_field(&format!("/proc/{}/status", t.pid), "VmRSS:");
    f.churn_load = common::loadavg();
    Ok(())
}

/// One churn pod: start it, probe it every PROBE_EVERY until its life is
/// over, then delete it as the kubelet does with a grace period.
async fn churn_pod(
    t: &mut Target,
    i: usize,
    life: Duration,
    ignore_term: bool,
    live: &Arc<Mutex<Vec<String>>>,
) -> PodRun {
    let mut r = PodRun::default();
    let name = format!("churn-{}-{i}", t.tag);
    let script = if ignore_term {
        IGNORES_TERM
    } else {
        ENDS_ON_TERM
    };
    let t0 = Instant::now();
    let (pod, ctr) = match start_pod(t, &name, &["sh", "-c", script], live).await {
        Ok(ids) => ids,
        Err(e) => {
            r.errors.push(format!("{name}: {e}"));
            return r;
        }
    };
    let running = Instant::now();
    r.start = Some(running - t0);
    let end = running + life;
    let mut next = running + PROBE_EVERY;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let t0 = Instant::now();
        match t
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: ctr.clone(),
                cmd: vec!["true".into()],
                timeout: 5,
            })
            .await
        {
            Ok(resp) if resp.get_ref().exit_code == 0 => r.exec.push(t0.elapsed()),
            Ok(resp) => r.errors.push(format!(
                "{name}: ExecSync true exited {}",
                resp.get_ref().exit_code
            )),
            Err(e) => r.errors.push(format!("{name}: ExecSync: {e}")),
        }
        next += PROBE_EVERY;
    }
    tokio::time::sleep_until(end.into()).await;
    let t0 = Instant::now();
    let res = async {
        t.rt.stop_container(cri::StopContainerRequest {
            container_id: ctr.clone(),
            timeout: GRACE_SECS,
        })
        .await
        .map_err(|e| format!("StopContainer: {e}"))?;
        t.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("StopPodSandbox: {e}"))?;
        t.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .map_err(|e| format!("RemovePodSandbox: {e}"))
    }
    .await;
    match res {
        Ok(_) => {
            r.removed = Some(t0.elapsed());
            forget(live, &pod);
        }
        Err(e) => r.errors.push(format!("{name}: {e}")),
    }
    r
}

fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// RunPodSandbox, CreateContainer (`command`), StartContainer; the pod is
/// recorded in `live` as soon as it exists. Returns (pod id, container id).
async fn start_pod(
    t: &mut Target,
    name: &str,
    command: &[&str],
    live: &Arc<Mutex<Vec<String>>>,
) -> Res<(String, String)> {
    let log_dir = t.log_dir.join(name);
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let pod_cfg = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "churn-bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        labels: [("bench".to_string(), "churn".to_string())].into(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let pod =
        t.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .map_err(|e| format!("RunPodSandbox: {e}"))?
        .into_inner()
        .pod_sandbox_id;
    if let Ok(mut v) = live.lock() {
        v.push(pod.clone());
    }
    let ctr =
        t.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(image_spec(&t.image)),
                command: command.iter().map(|s| s.to_string()).collect(),
                log_path: "main.log".into(),
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(pod_cfg),
        })
        .await
        .map_err(|e| format!("CreateContainer: {e}"))?
        .into_inner()
        .container_id;
    t.rt.start_container(cri::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .map_err(|e| format!("StartContainer: {e}"))?;
    Ok((pod, ctr))
}

fn forget(live: &Arc<Mutex<Vec<String>>>, pod: &str) {
    if let Ok(mut v) = live.lock() {
        v.retain(|p| p != pod);
    }
}

/// Stops and removes every pod in `live`, five at a time; containers are
/// killed at once (timeout 0) so that none waits out a grace period.
async fn remove_all(rt: &mut Rt, live: &Arc<Mutex<Vec<String>>>) {
    let pods: Vec<String> = live.lock().map(|v| v.clone()).unwrap_or_default();
    for chunk in pods.chunks(BATCH) {
        let mut tasks = Vec::new();
        for pod in chunk {
            let mut rt = rt.clone();
            let pod = pod.clone();
            tasks.push(tokio::spawn(async move {
                let ctrs = rt
                    .list_containers(cri::ListContainersRequest {
                        filter: Some(cri::ContainerFilter {
                            pod_sandbox_id: pod.clone(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .map(|r| r.into_inner().containers)
                    .unwrap_or_default();
                for c in ctrs {
                    let _ = rt
                        .stop_container(cri::StopContainerRequest {
                            container_id: c.id,
                            timeout: 0,
                        })
                        .await;
                }
                let _ = rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                let r = rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                (pod, r)
            }));
        }
        for task in tasks {
            match task.await {
                Ok((pod, Ok(_))) => forget(live, &pod),
                Ok((pod, Err(e))) => eprintln!("note: removing pod {pod}: {e}"),
                Err(e) => eprintln!("note: removal task: {e}"),
            }
        }
    }
}

/// The per-pod helper processes of the endpoint and their summed memory.
fn helpers(t: &Target) -> Helpers {
    let procs: Vec<i32> = processes_matching(&t.helper_mark)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| *p != t.pid)
        .collect();
    Helpers {
        count: procs.len(),
        rss_kb: procs
            .iter()
            .filter_map(|p| kb_field(&format!("/proc/{p}/status"), "VmRSS:"))
            .sum(),
        pss_kb: procs
            .iter()
            .filter_map(|p| kb_field(&format!("/proc/{p}/smaps_rollup"), "Pss:"))
            .sum(),
    }
}

/// The process holding the listening unix socket `path` (from /proc/net/unix
/// and the processes' open files).
fn socket_owner(path: &Path) -> Option<i32> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = path.to_string_lossy();
    // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is "accepting".
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let listening = u32::from_str_radix(f.get(3)?, 16).ok()? & 0x10000 != 0;
            (listening && f.get(7) == Some(&&*want)).then(|| f[6].to_string())
        })
        .collect();
    let links: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(l) = std::fs::read_link(fd.path()) {
                if links.iter().any(|s| Path::new(s) == l) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// The report.

/// One figure of both columns.
struct Row {
    label: String,
    sycri: Option<f64>,
    containerd: Option<f64>,
    decimals: usize,
    /// The limit sycri's figure should stay below.
    target: Option<f64>,
    /// A heading: no figures.
    section: bool,
}

fn row(label: &str, s: Option<f64>, c: Option<f64>, decimals: usize) -> Row {
    Row {
        label: label.into(),
        sycri: s.filter(|v| v.is_finite()),
        containerd: c.filter(|v| v.is_finite()),
        decimals,
        target: None,
        section: false,
    }
}

fn section(label: String) -> Row {
    Row {
        section: true,
        ..row(&label, None, None, 0)
    }
}

fn with_target(mut r: Row, limit: f64) -> Row {
    r.target = Some(limit);
    r
}

fn kb_mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|k| k as f64 / 1024.0)
}

fn report(opts: &Opts, s: &Column, c: &Column) {
    let sf = s.figures.as_ref().ok();
    let cf = c.figures.as_ref().ok();
    let both = |get: &dyn Fn(&Figures) -> Option<f64>| (sf.and_then(get), cf.and_then(get));
    let p = |v: &[Duration], q: f64| (!v.is_empty()).then(|| pct(v, q));
    let n = |v: &[Duration]| Some(v.len() as f64);

    println!();
    println!(
        "churn bench: (a) {} pods of one container; (b) {} pods, {BATCH} every {} s, ExecSync \
         every {} s, deleted after {}-{} s with a {GRACE_SECS} s grace period, 1 in \
         {IGNORE_TERM_EVERY} ignoring SIGTERM, ListPodSandbox+ListContainers every {} s; \
         seed {}; {} cores",
        opts.scale_pods,
        opts.churn_pods,
        BATCH_EVERY.as_secs(),
        PROBE_EVERY.as_secs(),
        LIFE_MS.start() / 1000,
        LIFE_MS.end() / 1000,
        LIST_EVERY.as_secs(),
        opts.seed,
        common::cores()
    );
    for (name, col) in [("sycri", s), ("containerd", c)] {
        let state = match &col.figures {
            Ok(f) => format!(
                "load average after scale {}, after churn {}",
                f.scale_load, f.churn_load
            ),
            Err(e) => e.clone(),
        };
        println!("{name}: {}", col.what);
        println!("  {state}");
    }

    let mut rows = vec![section(format!("(a) scale, {} pods", opts.scale_pods))];
    let (a, b) = both(&|f| Some(f.scale_create.as_secs_f64()));
    rows.push(row("  start all (one at a time), s", a, b, 2));
    let (a, b) = both(&|f| Some(f.scale_created as f64));
    rows.push(row("  pods started", a, b, 0));
    let (a, b) = both(&|f| Some(f.scale_listed.0 as f64));
    rows.push(row("  pods listed", a, b, 0));
    let (a, b) = both(&|f| Some(f.scale_listed.2 as f64));
    rows.push(row("  container stats listed", a, b, 0));
    for (label, get) in [
        (
            "ListPodSandbox",
            (|f: &Figures| f.list_pods.clone()) as fn(&Figures) -> Vec<Duration>,
        ),
        ("ListContainers", |f: &Figures| f.list_ctrs.clone()),
        ("ListContainerStats", |f: &Figures| f.list_stats.clone()),
    ] {
        let (a, b) = both(&|f| p(&get(f), 50.0));
        rows.push(with_target(
            row(&format!("  {label} p50, ms"), a, b, 2),
            TARGET_SCALE_LIST_P50_MS,
        ));
        let (a, b) = both(&|f| p(&get(f), 99.0));
        rows.push(row(&format!("  {label} p99, ms"), a, b, 2));
    }
    let (a, b) = both(&|f| kb_mb(f.scale_rss_kb));
    rows.push(with_target(
        row("  server RSS with all running, MB", a, b, 1),
        TARGET_SCALE_RSS_MB,
    ));
    let (a, b) = both(&|f| f.scale_helpers.as_ref().map(|h| h.count as f64));
    rows.push(row("  per-pod helper processes", a, b, 0));
    let (a, b) = both(&|f| kb_mb(f.scale_helpers.as_ref().map(|h| h.rss_kb)));
    rows.push(row("  their RSS, summed, MB", a, b, 1));
    let (a, b) = both(&|f| kb_mb(f.scale_helpers.as_ref().map(|h| h.pss_kb)));
    rows.push(row("  their PSS, summed, MB", a, b, 1));
    let (a, b) = both(&|f| Some(f.scale_remove.as_secs_f64()));
    rows.push(row("  remove all (5 at a time, timeout 0), s", a, b, 2));

    rows.push(section(format!("(b) churn, {} pods", opts.churn_pods)));
    let (a, b) = both(&|f| Some(f.churn_wall.as_secs_f64()));
    rows.push(row("  wall time, s", a, b, 1));
    for (label, get) in [
        (
            "ListPodSandbox",
            (|f: &Figures| f.churn_list_pods.clone()) as fn(&Figures) -> Vec<Duration>,
        ),
        ("ListContainers", |f: &Figures| f.churn_list_ctrs.clone()),
    ] {
        let (a, b) = both(&|f| n(&get(f)));
        rows.push(row(&format!("  {label} calls"), a, b, 0));
        let (a, b) = both(&|f| p(&get(f), 50.0));
        rows.push(row(&format!("  {label} p50, ms"), a, b, 2));
        let (a, b) = both(&|f| p(&get(f), 99.0));
        rows.push(with_target(
            row(&format!("  {label} p99, ms"), a, b, 2),
            TARGET_CHURN_LIST_P99_MS,
        ));
    }
    let (a, b) = both(&|f| p(&f.start, 50.0));
    rows.push(row("  runp+create+start p50 (5 at once), ms", a, b, 1));
    let (a, b) = both(&|f| n(&f.exec));
    rows.push(row("  ExecSync probes", a, b, 0));
    let (a, b) = both(&|f| p(&f.exec, 50.0));
    rows.push(row("  ExecSync p50, ms", a, b, 1));
    let (a, b) = both(&|f| p(&f.exec, 99.0));
    rows.push(row("  ExecSync p99, ms", a, b, 1));
    let (a, b) = both(&|f| n(&f.removed_term));
    rows.push(row("  pods ending on SIGTERM, removed", a, b, 0));
    let (a, b) = both(&|f| p(&f.removed_term, 50.0));
    rows.push(with_target(
        row("  StopContainer -> removed p50, ms", a, b, 1),
        TARGET_TERM_REMOVED_P50_MS,
    ));
    let (a, b) = both(&|f| p(&f.removed_term, 90.0));
    rows.push(row("  StopContainer -> removed p90, ms", a, b, 1));
    let (a, b) = both(&|f| n(&f.removed_ignore));
    rows.push(row("  pods ignoring SIGTERM, removed", a, b, 0));
    let (a, b) = both(&|f| p(&f.removed_ignore, 50.0));
    rows.push(row("  StopContainer -> removed p50, ms", a, b, 1));
    let (a, b) = both(&|f| kb_mb(f.churn_rss_kb));
    rows.push(row("  server RSS after churn, MB", a, b, 1));
    let (a, b) = both(&|f| kb_mb(f.peak_rss_kb));
    rows.push(row("  server peak RSS (whole run), MB", a, b, 1));
    let (a, b) = both(&|f| Some(f.errors.len() as f64));
    rows.push(row("  errors", a, b, 0));

    let w = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    println!();
    println!(
        "{:<w$} {:>11} {:>11} {:>9}   target (sycri)",
        "", "sycri", "containerd", "ratio"
    );
    for r in &rows {
        if r.section {
            println!("{}", r.label);
            continue;
        }
        let cell = |v: Option<f64>| match v {
            Some(v) => format!("{v:.*}", r.decimals),
            None => "-".into(),
        };
        let ratio = match (r.sycri, r.containerd) {
            (Some(a), Some(b)) if b > 0.0 && r.decimals > 0 => format!("{:.2}x", a / b),
            _ => String::new(),
        };
        let unit = r.label.rsplit(", ").next().unwrap_or("");
        let target = match (r.target, r.sycri) {
            (Some(limit), Some(v)) => format!(
                "< {limit} {unit}: {}",
                if v < limit { "met" } else { "NOT met" }
            ),
            (Some(limit), None) => format!("< {limit} {unit}"),
            _ => String::new(),
        };
        println!(
            "{:<w$} {:>11} {:>11} {:>9}   {target}",
            r.label,
            cell(r.sycri),
            cell(r.containerd),
            ratio
        );
    }
    for (name, col) in [("sycri", s), ("containerd", c)] {
        if let Ok(f) = &col.figures {
            for e in f.errors.iter().take(5) {
                println!("{name} error: {e}");
            }
            if f.errors.len() > 5 {
                println!("{name}: {} more errors", f.errors.len() - 5);
            }
        }
    }
}
