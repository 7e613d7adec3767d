//! Registry pull benchmark, sycri beside containerd in one run: PullImage over
//! the CRI socket of both (containerd 1.6 with its CRI plugin, unpacking into
//! overlayfs), from one local `docker-registry`, of
//! - a busybox-sized image (one layer: this machine's static busybox and a
//!   hard link per applet, as the busybox image has),
//! - a ~100 MB image of this machine's files in 4 tar+gzip layers
//!   (`SYCRI_BENCH_PULL_MB`),
//! - once, a ~1 GB image (`SYCRI_BENCH_BIG_MB`, 0 skips it) to show the
//!   servers' memory while they pull a big image.
//!
//! Each server runs once; every round pulls the image and then removes it
//! (RemoveImage), after a warm-up round, as critest's image benchmark does.
//! Printed per image and server: median and minimum PullImage time, the size
//! the image takes on disk (sycri: the SIF; containerd: its content store and
//! snapshots), and the server's resident memory during the pull (peak of
//! VmRSS sampled every 5 ms, and VmHWM). The target is sycri at most half of
//! containerd's time. It asserts nothing about time.
//!
//! Run as root: `cargo bench --bench pull`. Without root or `docker-registry`
//! it says so and exits 0; containerd is optional. SYCRI_BENCH_ROUNDS sets the
//! rounds (default 5).

mod common;

use common::{env_num, kb_field, loadavg, Res};
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use sycri::proto::cri;
use sycri::proto::cri::image_service_client::ImageServiceClient;
use tonic::transport::Channel;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const BUSYBOX: &str = "/bin/busybox";
const CONTAINERD: &str = "/usr/bin/containerd";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MB: f64 = 1024.0 * 1024.0;

fn main() -> ExitCode {
    if !common::is_root() {
        println!("pull bench: SKIPPED, needs root (sycri's server, containerd's snapshotter): run `cargo bench --bench pull` as root");
        return ExitCode::SUCCESS;
    }
    for (p, pkg) in [
        (REGISTRY_BIN, "docker-registry"),
        (BUSYBOX, "busybox-static"),
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
    gz: Vec<u8>,
    tar_bytes: u64,
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
        // /usr/sbin holds some 20 MB: big images take the rest of /usr/lib
        // (whose first files a later layer then overrides, as images do).
        (
            if total > 200 << 20 {
                "/usr/lib"
            } else {
                "/usr/sbin"
            },
            0.10,
        ),
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
        let _ = files;
        layers.push(Layer {
            gz,
            tar_bytes,
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

/// A busybox-like layer: the static busybox binary as /bin/busybox, a hard
/// link to it for each applet it lists, /etc/passwd and /etc/group.
fn busybox_layer() -> Res<Layer> {
    let bin = std::fs::read(BUSYBOX).map_err(|e| format!("{BUSYBOX}: {e}"))?;
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e}"))?;
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty() && *l != "busybox")
        .map(str::to_string)
        .collect();
    let enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(Counting(enc, 0));
    let mut entries = 0;
    let dir = |tar: &mut tar::Builder<_>, p: &str| -> Res<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, p, std::io::empty())
            .map_err(|e| e.to_string())
    };
    for d in ["bin", "etc", "tmp", "root"] {
        dir(&mut tar, d)?;
        entries += 1;
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(bin.len() as u64);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "bin/busybox", bin.as_slice())
        .map_err(|e| e.to_string())?;
    for a in &applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_link(&mut h, format!("bin/{a}"), "bin/busybox")
            .map_err(|e| e.to_string())?;
    }
    for (p, d) in [
        ("etc/passwd", &b"root:x:0:0:root:/root:/bin/sh\n"[..]),
        ("etc/group", b"root:x:0:\n"),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(d.len() as u64);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, p, d).map_err(|e| e.to_string())?;
    }
    entries += 3 + applets.len() as u64;
    let Counting(enc, tar_bytes) = tar.into_inner().map_err(|e| e.to_string())?;
    Ok(Layer {
        gz: enc.finish().map_err(|e| e.to_string())?,
        tar_bytes,
        entries,
    })
}

// ---------------------------------------------------------------------------
// The servers, driven over CRI.

/// A channel to the server at `sock` once it answers ListImages (30 s at most;
/// `alive` fails as soon as the server is found gone).
async fn connect_unix(sock: &Path, what: &str, mut alive: impl FnMut() -> Res<()>) -> Res<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        alive()?;
        if sock.exists() {
            if let Ok(ch) = common::connect_unix(sock).await {
                let mut img = ImageServiceClient::new(ch.clone());
                if img
                    .list_images(cri::ListImagesRequest::default())
                    .await
                    .is_ok()
                {
                    return Ok(ch);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: no CRI socket after 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CRI server under test: its process, socket and where it keeps images.
struct Cri {
    name: &'static str,
    dir: tempfile::TempDir,
    child: Proc,
    img: ImageServiceClient<Channel>,
    /// What counts as the image's size on disk.
    store: Vec<PathBuf>,
}

fn log_tail(p: &Path) -> String {
    let l = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = l.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

async fn start_sycri() -> Res<Cri> {
    let dir = tempfile::Builder::new()
        .prefix("sypb")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let d = dir.path().to_path_buf();
    // SYCRI_BENCH_SYCRI_TOML: the server's config (e.g. another image_compression_level).
    let toml = std::env::var("SYCRI_BENCH_SYCRI_TOML").unwrap_or_default();
    std::fs::write(d.join("sycri.toml"), toml).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("cni")).map_err(|e| e.to_string())?;
    let sock = d.join("cri.sock");
    let log = std::fs::File::create(d.join("server.log")).map_err(|e| e.to_string())?;
    let child = Command::new(env!("CARGO_BIN_EXE_sycri"))
        .arg("--config")
        .arg(d.join("sycri.toml"))
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--storage-dir")
        .arg(d.join("store"))
        .arg("--run-dir")
        .arg(d.join("run"))
        .arg("--cni-conf-dir")
        .arg(d.join("cni"))
        .arg("--log-level")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("start sycri: {e}"))?;
    let mut child = Proc(Some(child));
    let logp = d.join("server.log");
    let ch = connect_unix(&sock, "sycri", || {
        match child.0.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Err(format!("sycri exited ({st}): {}", log_tail(&logp))),
            _ => Ok(()),
        }
    })
    .await?;
    Ok(Cri {
        name: "sycri",
        store: vec![d.join("store/images/sha256")],
        dir,
        child,
        img: ImageServiceClient::new(ch),
    })
}

async fn start_containerd(port: u16) -> Res<Cri> {
    let dir = tempfile::Builder::new()
        .prefix("ctdb")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let d = dir.path().to_path_buf();
    let sock = d.join("c.sock");
    let certs = d.join("certs.d").join(format!("127.0.0.1:{port}"));
    std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{port}\"\n[host.\"http://127.0.0.1:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(d.join("cni")).map_err(|e| e.to_string())?;
    let cfg = d.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\noom_score = 0\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"\"\n\
             [debug]\n  address = \"\"\n  level = \"warn\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n\
               disable_apparmor = true\n  tolerate_missing_hugetlb_controller = true\n\
               stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/usr/lib/cni\"\n  conf_dir = \"{cni}\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{certs}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
            cni = d.join("cni").display(),
            certs = d.join("certs.d").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
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
    let mut child = Proc(Some(child));
    let logp = d.join("containerd.log");
    let ch = connect_unix(&sock, "containerd", || {
        match child.0.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => Err(format!("containerd exited ({st}): {}", log_tail(&logp))),
            _ => Ok(()),
        }
    })
    .await?;
    Ok(Cri {
        name: "containerd",
        store: vec![
            d.join("root/io.containerd.content.v1.content"),
            d.join("root/io.containerd.snapshotter.v1.overlayfs"),
        ],
        dir,
        child,
        img: ImageServiceClient::new(ch),
    })
}

impl Drop for Cri {
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
        for m in sycri_native::mounts::mounts_under(d).unwrap_or_default() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Allocated bytes under `p`, each inode once (hard links share their blocks).
fn dir_bytes(p: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return 0;
        };
        if md.is_dir() {
            std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path(), seen)).sum())
                .unwrap_or(0)
        } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
            md.blocks() * 512
        } else {
            0
        }
    }
    walk(p, &mut std::collections::HashSet::new())
}

/// kB values of VmRSS and VmHWM of a process (0 when gone).
fn rss_kb(pid: u32) -> (u64, u64) {
    let status = format!("/proc/{pid}/status");
    let get = |k: &str| kb_field(&status, k).unwrap_or(0);
    (get("VmRSS:"), get("VmHWM:"))
}

/// One measured pull: seconds, bytes on disk, peak VmRSS and VmHWM in kB.
struct Sample {
    secs: f64,
    disk: u64,
    peak_kb: u64,
    hwm_kb: u64,
}

async fn pull_once(c: &mut Cri, image: &str) -> Res<Sample> {
    let pid = c.child.0.as_ref().map(|p| p.id()).unwrap_or(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_kb(pid).0);
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    });
    let t = Instant::now();
    let r = c
        .img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kb = sampler.join().unwrap_or(0).max(rss_kb(pid).0);
    let id = r
        .map_err(|e| format!("{} PullImage {image}: {e}", c.name))?
        .into_inner()
        .image_ref;
    let disk = c.store.iter().map(|p| dir_bytes(p)).sum();
    let hwm_kb = rss_kb(pid).1;
    c.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: id,
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| format!("{} RemoveImage: {e}", c.name))?;
    Ok(Sample {
        secs,
        disk,
        peak_kb,
        hwm_kb,
    })
}

// ---------------------------------------------------------------------------

async fn run() -> Res<()> {
    let rounds = env_num("SYCRI_BENCH_ROUNDS", 5);
    let total_mb = env_num("SYCRI_BENCH_PULL_MB", 100);
    let big_mb = std::env::var("SYCRI_BENCH_BIG_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024);
    let work = tempfile::Builder::new()
        .prefix("sypull")
        .tempdir_in("/tmp")
        .map_err(|e| format!("temp dir: {e}"))?;
    let t = Instant::now();
    let mut images: Vec<(String, Vec<Layer>, usize)> = Vec::new();
    images.push(("busybox".into(), vec![busybox_layer()?], rounds));
    let mb = total_mb as u64;
    let layers = tokio::task::spawn_blocking(move || build_layers(mb << 20))
        .await
        .map_err(|e| e.to_string())??;
    images.push((format!("{total_mb}mb"), layers, rounds));
    if big_mb > 0 {
        let layers = tokio::task::spawn_blocking(move || build_layers(big_mb << 20))
            .await
            .map_err(|e| e.to_string())??;
        images.push((format!("{big_mb}mb"), layers, 1));
    }
    println!(
        "pull bench: images of this machine's files, tar+gzip layers, built in {:.1} s:",
        t.elapsed().as_secs_f64()
    );
    for (name, layers, _) in &images {
        let gz: u64 = layers.iter().map(|l| l.gz.len() as u64).sum();
        let tar: u64 = layers.iter().map(|l| l.tar_bytes).sum();
        let entries: u64 = layers.iter().map(|l| l.entries).sum();
        println!(
            "  {name:<8} {} layers, {entries} entries, tar {:.1} MB, gzip {:.1} MB",
            layers.len(),
            tar as f64 / MB,
            gz as f64 / MB
        );
    }
    let reg_dir = work.path().join("registry");
    std::fs::create_dir_all(&reg_dir).map_err(|e| e.to_string())?;
    let (_registry, port) = start_registry(&reg_dir).await?;
    let mut refs = Vec::new();
    for (name, layers, n) in &images {
        push_image(port, "bench", name, layers).await?;
        refs.push((name.clone(), format!("127.0.0.1:{port}/bench:{name}"), *n));
    }
    drop(images);

    let mut servers = vec![start_sycri().await?];
    let have_ctd = Path::new(CONTAINERD).exists();
    if have_ctd {
        servers.push(start_containerd(port).await?);
    } else {
        println!("containerd: not measured ({CONTAINERD} not installed)");
    }
    let toml_text = std::env::var("SYCRI_BENCH_SYCRI_TOML").unwrap_or_default();
    let cfg: sycri::config::Config = toml::from_str(&toml_text).unwrap_or_default();
    let comp = cfg
        .image_compression
        .resolve()
        .unwrap_or_else(sycri::convert::Compression::host_default);
    println!(
        "  sycri converts to a {} squashfs (level {}; config {toml_text:?}) in a SIF; containerd unpacks into overlayfs and keeps the compressed layers",
        comp.name(),
        cfg.image_compression_level.unwrap_or(comp.default_level()),
    );
    println!(
        "  {rounds} rounds (pull, then RemoveImage) after a warm-up, one server each; load average before: {}\n",
        loadavg()
    );
    println!(
        "{:<9} {:<11} {:>9} {:>9} {:>11} {:>13} {:>11}",
        "image", "server", "median ms", "min ms", "disk MB", "peak RSS MB", "VmHWM MB"
    );
    let mut medians: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, image, n) in &refs {
        let mut row = Vec::new();
        for c in servers.iter_mut() {
            if *n > 1 {
                pull_once(c, image).await?;
            }
            let mut samples = Vec::new();
            for _ in 0..*n {
                samples.push(pull_once(c, image).await?);
            }
            let times: Vec<f64> = samples.iter().map(|s| s.secs * 1000.0).collect();
            let m = median(&times);
            let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
            let last = samples.last().ok_or("no samples")?;
            let peak = samples.iter().map(|s| s.peak_kb).max().unwrap_or(0);
            println!(
                "{:<9} {:<11} {:>9.1} {:>9.1} {:>11.1} {:>13.1} {:>11.1}",
                name,
                c.name,
                m,
                min,
                last.disk as f64 / MB,
                peak as f64 / 1024.0,
                last.hwm_kb as f64 / 1024.0
            );
            row.push(m);
        }
        medians.push((name.clone(), row));
    }
    println!("\nload average after: {}", loadavg());
    if have_ctd {
        for (name, row) in &medians {
            if let [sy, ctd] = row[..] {
                println!(
                    "target {name}: sycri at most half of containerd's pull+unpack time: {sy:.1} ms vs {ctd:.1} ms ({:.2}x) -> {}",
                    sy / ctd,
                    if sy <= ctd / 2.0 { "MET" } else { "NOT MET" }
                );
            }
        }
    }
    if let Some(c) = servers.first() {
        println!(
            "sycri VmHWM over the whole run (target < 100 MB while pulling 1 GB): {:.1} MB",
            rss_kb(c.child.0.as_ref().map(|p| p.id()).unwrap_or(0)).1 as f64 / 1024.0
        );
    }
    Ok(())
}
