//! Harness shared by the benchmarks that drive a CRI server over its socket:
//! the busybox fixture, the static engine, a private release-built `sycri` on
//! directories under /tmp (cleaned up on drop), a tonic channel over a unix
//! socket, process memory from /proc and percentiles.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

pub type Res<T> = Result<T, String>;

pub fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What a bench needs before it starts: root and the busybox fixture. Returns
/// the fixture, or None after printing why `<bench> bench` is SKIPPED.
pub fn preflight(bench: &str) -> Option<PathBuf> {
    if !is_root() {
        println!(
            "{bench} bench: SKIPPED, needs root (loop devices, mounts, namespaces): \
             run `cargo bench --bench {bench}` as root"
        );
        return None;
    }
    let sif = fixture();
    if sif.is_none() {
        println!(
            "{bench} bench: SKIPPED, busybox SIF fixture not found \
             (set SYCRI_FIXTURES or provide ../shared/fixtures/sif)"
        );
    }
    sif
}

/// A positive number from the environment variable `name`, else `default`.
pub fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// The busybox SIF fixture: $SYCRI_FIXTURES or ../shared/fixtures/sif beside the repo.
pub fn fixture() -> Option<PathBuf> {
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
pub fn engine() -> Option<PathBuf> {
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
pub fn exe_and_linking(pid: i32) -> String {
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

/// The CNI config directory the private server's pods use:
/// $SYCRI_BENCH_CNI_CONF_DIR, else None (an empty directory: loopback only).
pub fn bench_cni_dir() -> Option<PathBuf> {
    std::env::var_os("SYCRI_BENCH_CNI_CONF_DIR").map(PathBuf::from)
}

/// The server under test and its private directories; cleans up on drop.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
}

impl Server {
    /// Starts the release-built `sycri` on fresh directories under /tmp, with
    /// an empty config file (the machine's /etc/sycri does not apply) and the
    /// pods on [`bench_cni_dir`]. Returns the server and its socket.
    pub fn start() -> Res<(Server, PathBuf)> {
        // A short path: unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("syb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        let config = d.join("sycri.toml");
        std::fs::write(&config, "").map_err(|e| format!("write {}: {e}", config.display()))?;
        let cni = bench_cni_dir().unwrap_or_else(|| d.join("cni"));
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

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGTERM, as a service manager would stop it; waits without blocking the
    /// runtime (the server's graceful shutdown waits for our connection to go).
    pub async fn terminate(&mut self) -> (Option<std::process::ExitStatus>, Duration) {
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
        for m in sycri_native::mounts::mounts_under(d).unwrap_or_default() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Waits (20 s at most) for the server's socket, then connects to it.
pub async fn connect(sock: &Path, server: &mut Server) -> Res<Channel> {
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
    connect_unix(sock).await
}

/// A gRPC channel over the unix socket `sock` (any CRI endpoint).
pub async fn connect_unix(sock: &Path) -> Res<Channel> {
    let path = sock.to_path_buf();
    Endpoint::try_from("http://cri.invalid")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| format!("connect to {}: {e}", sock.display()))
}

/// Live processes whose command line mentions `needle` (a server's helpers
/// name its directories), with their arguments.
pub fn processes_matching(needle: &str) -> Vec<(i32, Vec<String>)> {
    sycri_native::testing::processes()
        .into_iter()
        .filter(|(_, args)| args.iter().any(|a| a.contains(needle)))
        .collect()
}

/// Live processes whose command line mentions `dir` (the server's helpers).
pub fn processes_under(dir: &Path) -> Vec<(i32, Vec<String>)> {
    processes_matching(&dir.to_string_lossy())
}

/// VmRSS in kB; None for a zombie or a process that is gone.
pub fn rss_kb(pid: i32) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    kb_field(&format!("/proc/{pid}/status"), key)
}

/// A `Key:   123 kB` line of a /proc file.
pub fn kb_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of unsorted samples, in ms (NaN when there are none).
pub fn pct(samples: &[Duration], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).map(|d| ms(*d)).unwrap_or(f64::NAN)
}

pub fn mb(kb: u64) -> String {
    format!("{:.2} MB ({kb} kB)", kb as f64 / 1024.0)
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}
