//! Registry pull benchmark: PullImage of a ~100 MB multi-layer image from a
//! local registry, converted to a SIF, beside `mksquashfs` of the same
//! unpacked tree and beside containerd pulling and unpacking the same image.
//!
//! The image is made of real files of this machine (`/usr/lib/<triplet>`,
//! `/usr/share`, `/usr/bin`, stopping at ~100 MB), four tar+gzip layers,
//! pushed to Debian's `docker-registry` on 127.0.0.1. Each tool runs 3 times
//! on a fresh store (a new sycri server, a new containerd root); the table
//! shows medians, in seconds and MB/s of unpacked and of compressed data.
//! It prints figures and asserts nothing about time.
//!
//! Run as root: `cargo bench --bench pull`. Without root, `docker-registry`
//! or `mksquashfs` it says so and exits 0. containerd is optional
//! (`/usr/bin/containerd` and `ctr`); a private instance is started on a
//! temporary root with the CRI plugin disabled. SYCRI_BENCH_PULL_MB sets the
//! image size (default 100), SYCRI_BENCH_ROUNDS the runs per tool (default 3).

use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use tonic::transport::{Channel, Endpoint};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const MKSQUASHFS: &str = "/usr/bin/mksquashfs";
const CONTAINERD: &str = "/usr/bin/containerd";
const CTR: &str = "/usr/bin/ctr";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MB: f64 = 1024.0 * 1024.0;

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    // SAFETY: geteuid takes no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("pull bench: SKIPPED, needs root (sycri's server, containerd's snapshotter): run `cargo bench --bench pull` as root");
        return ExitCode::SUCCESS;
    }
    for (p, pkg) in [
        (REGISTRY_BIN, "docker-registry"),
        (MKSQUASHFS, "squashfs-tools"),
    ] {
        if !Path::new(p).exists() {
            println!("pull bench: SKIPPED, {p} not found (apt-get install -y {pkg})");
            return ExitCode::SUCCESS;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pull bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pull bench FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

// ---------------------------------------------------------------------------
// The image.

struct Layer {
    source: String,
    gz: Vec<u8>,
    tar_bytes: u64,
    file_bytes: u64,
    entries: u64,
}

/// Appends the tree under `root` (sorted, depth first) to `tar` until `budget`
/// bytes of file content were added. Regular files, directories and symlinks;
/// anything unreadable or of another type is skipped.
fn add_tree(
    tar: &mut tar::Builder<Counting<GzEncoder<Vec<u8>>>>,
    root: &Path,
    budget: u64,
    files: &mut u64,
    entries: &mut u64,
) -> Res<()> {
    // Parents of root first.
    let mut parent = PathBuf::new();
    let rel_root = root.strip_prefix("/").map_err(|e| e.to_string())?;
    for c in rel_root.components() {
        parent.push(c);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, &parent, std::io::empty())
            .map_err(|e| format!("tar {}: {e}", parent.display()))?;
        *entries += 1;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        let mut subdirs = Vec::new();
        for p in names {
            if *files >= budget {
                return Ok(());
            }
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p.strip_prefix("/").map_err(|e| e.to_string())?;
            let ft = md.file_type();
            let mut h = tar::Header::new_gnu();
            h.set_mode(md.mode() & 0o7777);
            h.set_mtime(md.mtime().max(0) as u64);
            h.set_uid(0);
            h.set_gid(0);
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                if std::fs::read_dir(&p).is_err() {
                    continue;
                }
                tar.append_data(&mut h, rel, std::io::empty())
                    .map_err(|e| format!("tar {}: {e}", p.display()))?;
                subdirs.push(p);
            } else if ft.is_symlink() {
                let Ok(target) = std::fs::read_link(&p) else {
                    continue;
                };
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                if tar.append_link(&mut h, rel, &target).is_err() {
                    continue;
                }
            } else if ft.is_file() {
                // Files that would overshoot the budget are left out.
                if *files + md.len() > budget {
                    continue;
                }
                let Ok(data) = std::fs::read(&p) else {
                    continue;
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, rel, data.as_slice())
                    .map_err(|e| format!("tar {}: {e}", p.display()))?;
                *files += data.len() as u64;
            } else {
                // Devices, FIFOs and sockets: not image content.
                continue;
            }
            *entries += 1;
        }
        // Depth first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// A writer that counts the bytes written through it.
struct Counting<W>(W, u64);

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn build_layers(total: u64) -> Res<Vec<Layer>> {
    let triplet = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    // (source, share of the total)
    let plan: [(&str, f64); 4] = [
        (triplet.as_str(), 0.40),
        ("/usr/share", 0.30),
        ("/usr/bin", 0.20),
        ("/usr/sbin", 0.10),
    ];
    let mut layers = Vec::new();
    for (src, share) in plan {
        let budget = (total as f64 * share) as u64;
        let enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(Counting(enc, 0));
        tar.mode(tar::HeaderMode::Complete);
        let (mut files, mut entries) = (0, 0);
        add_tree(&mut tar, Path::new(src), budget, &mut files, &mut entries)?;
        let enc = tar.into_inner().map_err(|e| format!("tar: {e}"))?;
        let Counting(enc, tar_bytes) = enc;
        let gz = enc.finish().map_err(|e| format!("gzip: {e}"))?;
        layers.push(Layer {
            source: src.to_string(),
            gz,
            tar_bytes,
            file_bytes: files,
            entries,
        });
    }
    Ok(layers)
}

// ---------------------------------------------------------------------------
// Child processes killed on drop.

struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn http() -> Res<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| e.to_string())
}

fn free_port() -> Res<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("bind: {e}"))
}

/// `docker-registry serve` on 127.0.0.1 with storage under `dir`.
async fn start_registry(dir: &Path) -> Res<(Proc, u16)> {
    let cfg = dir.join("config.yml");
    let log_path = dir.join("registry.log");
    for _ in 0..5 {
        let port = free_port()?;
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .map_err(|e| format!("registry config: {e}"))?;
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start docker-registry: {e}"))?;
        let mut p = Proc(Some(child));
        let c = http()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(p.0.as_mut().map(|c| c.try_wait()), Some(Ok(None))) {
                break;
            }
            if let Ok(r) = c.get(format!("http://127.0.0.1:{port}/v2/")).send().await {
                if r.status().is_success() {
                    return Ok((p, port));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(format!(
        "docker-registry did not start; log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    ))
}

async fn push_blob(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    digest: &str,
    bytes: &[u8],
) -> Res<()> {
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| format!("start upload: {e}"))?;
    if r.status().as_u16() != 202 {
        return Err(format!("start upload: {}", r.status()));
    }
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("upload without location")?
        .to_string();
    let mut url = reqwest::Url::parse(base)
        .and_then(|b| b.join(&loc))
        .map_err(|e| format!("upload url: {e}"))?;
    url.query_pairs_mut().append_pair("digest", digest);
    let r = c
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .map_err(|e| format!("upload {digest}: {e}"))?;
    if r.status().as_u16() != 201 {
        return Err(format!("upload {digest}: {}", r.status()));
    }
    Ok(())
}

async fn push_image(port: u16, repo: &str, tag: &str, layers: &[Layer]) -> Res<()> {
    let c = http()?;
    let base = format!("http://127.0.0.1:{port}");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| {
            let mut d = flate2::read::GzDecoder::new(l.gz.as_slice());
            let mut h = Sha256::new();
            std::io::copy(&mut d, &mut h).map(|_| format!("sha256:{}", hex::encode(h.finalize())))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("diff id: {e}"))?;
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/usr/bin/true"], "Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .map_err(|e| e.to_string())?;
    push_blob(&c, &base, repo, &sha256(&config), &config).await?;
    let mut descs = Vec::new();
    for l in layers {
        let d = sha256(&l.gz);
        push_blob(&c, &base, repo, &d, &l.gz).await?;
        descs.push(
            serde_json::json!({"mediaType": OCI_LAYER_GZIP, "digest": d, "size": l.gz.len()}),
        );
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len()},
        "layers": descs,
    }))
    .map_err(|e| e.to_string())?;
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .map_err(|e| format!("put manifest: {e}"))?;
    if r.status().as_u16() != 201 {
        return Err(format!(
            "put manifest: {} {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// sycri.

struct Server {
    dir: tempfile::TempDir,
    child: Proc,
}

impl Server {
    fn start() -> Res<(Server, PathBuf)> {
        let dir = tempfile::Builder::new()
            .prefix("sypb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        let config = d.join("sycri.toml");
        std::fs::write(&config, "").map_err(|e| format!("{}: {e}", config.display()))?;
        let cni = d.join("cni");
        std::fs::create_dir_all(&cni).map_err(|e| format!("{}: {e}", cni.display()))?;
        let sock = d.join("cri.sock");
        let log = std::fs::File::create(d.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(env!("CARGO_BIN_EXE_sycri"))
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
                child: Proc(Some(child)),
            },
            sock,
        ))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    async fn connect(&mut self, sock: &Path) -> Res<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if let Some(Ok(Some(st))) = self.child.0.as_mut().map(|c| c.try_wait()) {
                return Err(format!("sycri exited ({st}); log:\n{}", self.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("no socket after 20 s; log:\n{}", self.log()));
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
}

/// One PullImage on a fresh server; returns (seconds, SIF bytes).
async fn sycri_pull(image: &str) -> Res<(f64, u64)> {
    let (mut server, sock) = Server::start()?;
    let channel = server.connect(&sock).await?;
    let mut img = ImageServiceClient::new(channel);
    let t = Instant::now();
    let r = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let secs = t.elapsed().as_secs_f64();
    if let Err(e) = r {
        return Err(format!("PullImage: {e}; log:\n{}", server.log()));
    }
    let size = dir_bytes(&server.dir.path().join("store"));
    Ok((secs, size))
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if md.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| dir_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else if md.is_file() {
        md.len()
    } else {
        0
    }
}

// ---------------------------------------------------------------------------
// mksquashfs.

fn mksquashfs(tree: &Path, out: &Path, comp: &str) -> Res<(f64, u64)> {
    let _ = std::fs::remove_file(out);
    let t = Instant::now();
    let o = Command::new(MKSQUASHFS)
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress", "-comp", comp])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("mksquashfs: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        return Err(format!(
            "mksquashfs {comp}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok((secs, size))
}

// ---------------------------------------------------------------------------
// containerd.

/// A private containerd on a fresh root; stopped and removed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    child: Proc,
    sock: PathBuf,
}

impl Containerd {
    fn start() -> Res<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("ctdb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path();
        let sock = d.join("c.sock");
        let cfg = d.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\noom_score = 0\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"\"\n\
                 [debug]\n  address = \"\"\n  level = \"warn\"\n[metrics]\n  address = \"\"\n",
                d.join("root").display(),
                d.join("state").display(),
                sock.display()
            ),
        )
        .map_err(|e| format!("containerd config: {e}"))?;
        let log = std::fs::File::create(d.join("containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new(CONTAINERD)
            .arg("--config")
            .arg(&cfg)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start containerd: {e}"))?;
        let mut c = Containerd {
            dir,
            child: Proc(Some(child)),
            sock,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(st))) = c.child.0.as_mut().map(|c| c.try_wait()) {
                return Err(format!("containerd exited ({st}): {}", c.log_tail()));
            }
            if c.sock.exists() && c.ctr(&["version"]).is_ok() {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(format!("containerd not up after 30 s: {}", c.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let l = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = l.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    fn ctr(&self, args: &[&str]) -> Res<()> {
        let o = Command::new(CTR)
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", "bench"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ctr {}: {}: {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(c) = self.child.0.as_ref() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Some(Ok(Some(_))) = self.child.0.as_mut().map(|c| c.try_wait()) {
                    self.child.0 = None;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(self.child.0.take().map(|c| Proc(Some(c))));
        let d = self.dir.path();
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

/// One `ctr images pull` (fetch + unpack into the overlayfs snapshotter) on a
/// fresh containerd root; returns seconds.
fn containerd_pull(image: &str) -> Res<f64> {
    let c = Containerd::start()?;
    let t = Instant::now();
    c.ctr(&["images", "pull", "--plain-http", image])?;
    let secs = t.elapsed().as_secs_f64();
    let root = c.dir.path().join("root");
    let snaps = root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    let n = std::fs::read_dir(&snaps).map(|r| r.count()).unwrap_or(0);
    if n == 0 {
        return Err(format!("no snapshots unpacked under {}", snaps.display()));
    }
    Ok(secs)
}

// ---------------------------------------------------------------------------

async fn run() -> Res<()> {
    let rounds = env_num("SYCRI_BENCH_ROUNDS", 3);
    let total_mb = env_num("SYCRI_BENCH_PULL_MB", 100);
    let work = tempfile::Builder::new()
        .prefix("sypull")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;

    let t = Instant::now();
    let layers = tokio::task::spawn_blocking(move || build_layers((total_mb as u64) << 20))
        .await
        .map_err(|e| e.to_string())??;
    let gz: u64 = layers.iter().map(|l| l.gz.len() as u64).sum();
    let tar: u64 = layers.iter().map(|l| l.tar_bytes).sum();
    let files: u64 = layers.iter().map(|l| l.file_bytes).sum();
    println!(
        "pull bench: image of this machine's files (not a debootstrap rootfs), {} layers tar+gzip, built in {:.1} s:",
        layers.len(),
        t.elapsed().as_secs_f64()
    );
    for l in &layers {
        println!(
            "  {:<28} {:>6} entries  files {:>6.1} MB  tar {:>6.1} MB  gzip {:>5.1} MB",
            l.source,
            l.entries,
            l.file_bytes as f64 / MB,
            l.tar_bytes as f64 / MB,
            l.gz.len() as f64 / MB
        );
    }
    println!(
        "  total: files {:.1} MB, tar {:.1} MB (\"unpacked\"), gzip {:.1} MB (\"compressed\")",
        files as f64 / MB,
        tar as f64 / MB,
        gz as f64 / MB
    );

    // The same tree on disk, for mksquashfs.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    for l in &layers {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(l.gz.as_slice()));
        a.set_preserve_permissions(true);
        a.set_preserve_mtime(true);
        a.set_overwrite(true);
        a.unpack(&tree)
            .map_err(|e| format!("unpack {}: {e}", l.source))?;
    }

    let reg_dir = work.path().join("registry");
    std::fs::create_dir_all(&reg_dir).map_err(|e| e.to_string())?;
    let (_registry, port) = start_registry(&reg_dir).await?;
    push_image(port, "bench", "v1", &layers).await?;
    let image = format!("127.0.0.1:{port}/bench:v1");
    println!("  pushed as {image}; {rounds} runs per tool, fresh store each, median shown\n");
    drop(layers);

    let comp = sycri::convert::Compression::host_default();
    let comp_name = match comp {
        sycri::convert::Compression::Zstd => "zstd",
        sycri::convert::Compression::Gzip => "gzip",
    };

    // Warm the page cache for every tool alike (registry blobs, tree).
    let _ = sycri_pull(&image).await;

    let mut sy = Vec::new();
    let mut sy_size = 0;
    for _ in 0..rounds {
        let (s, n) = sycri_pull(&image).await?;
        sy.push(s);
        sy_size = n;
    }

    let out = work.path().join("out.sqfs");
    let mut sq: Vec<(String, Vec<f64>, u64)> = Vec::new();
    let mut comps = vec![comp_name];
    if comp_name != "gzip" {
        comps.push("gzip");
    }
    for c in comps {
        let mut v = Vec::new();
        let mut size = 0;
        for _ in 0..rounds {
            let (s, n) = mksquashfs(&tree, &out, c)?;
            v.push(s);
            size = n;
        }
        sq.push((format!("mksquashfs -comp {c}"), v, size));
    }

    let ctd: Res<Vec<f64>> = if !Path::new(CONTAINERD).exists() || !Path::new(CTR).exists() {
        Err(format!("{CONTAINERD} or {CTR} not installed"))
    } else {
        let img = image.clone();
        tokio::task::spawn_blocking(move || {
            (0..rounds)
                .map(|_| containerd_pull(&img))
                .collect::<Res<Vec<f64>>>()
        })
        .await
        .map_err(|e| e.to_string())?
    };

    let unpacked = tar as f64 / MB;
    let compressed = gz as f64 / MB;
    println!(
        "{:<44} {:>8} {:>8} {:>14} {:>14} {:>9}",
        "", "median s", "min s", "MB/s unpacked", "MB/s gzip in", "out MB"
    );
    let row = |name: &str, v: &[f64], out: Option<u64>, gz_rate: bool| {
        let m = median(v);
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "{:<44} {:>8.2} {:>8.2} {:>14.1} {:>14} {:>9}",
            name,
            m,
            min,
            unpacked / m,
            if gz_rate {
                format!("{:.1}", compressed / m)
            } else {
                "-".into()
            },
            out.map(|b| format!("{:.1}", b as f64 / MB))
                .unwrap_or_else(|| "-".into())
        );
    };
    row(
        &format!("sycri PullImage (fetch+convert, {comp_name} SIF)"),
        &sy,
        Some(sy_size),
        true,
    );
    for (name, v, size) in &sq {
        row(
            &format!("{name} of the unpacked tree"),
            v,
            Some(*size),
            false,
        );
    }
    match &ctd {
        Ok(v) => row(
            "containerd 1.6 ctr pull (fetch+unpack overlayfs)",
            v,
            None,
            true,
        ),
        Err(e) => println!("containerd: not measured ({e})"),
    }
    let sy_m = median(&sy);
    let sq_m = median(&sq[0].1);
    println!(
        "\ntarget: sycri no slower than mksquashfs -comp {comp_name} of the unpacked tree: \
         {sy_m:.2} s vs {sq_m:.2} s ({:.2}x) -> {}",
        sy_m / sq_m,
        if sy_m <= sq_m { "MET" } else { "NOT MET" }
    );
    println!(
        "(runs, s: sycri {:?}; mksquashfs {:?}{})",
        sy.iter()
            .map(|s| (s * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        sq[0]
            .1
            .iter()
            .map(|s| (s * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        match &ctd {
            Ok(v) => format!(
                "; containerd {:?}",
                v.iter()
                    .map(|s| (s * 100.0).round() / 100.0)
                    .collect::<Vec<_>>()
            ),
            Err(_) => String::new(),
        }
    );
    Ok(())
}
