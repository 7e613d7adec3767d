//! OCI images for the registry pull tests: a local registry (Debian's
//! `docker-registry`), images built in memory from Debian's busybox-static,
//! pushed as OCI or Docker schema 2 manifests, indexes and manifest lists,
//! a tiny HTTP server for what a real registry would refuse to serve, and a
//! sycri server started with a config file.

use super::Server;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sycri_native::testing::skip;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const BUSYBOX: &str = "/bin/busybox";

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether the registry and busybox are installed; reports `test` skipped if not.
pub fn tools_present(test: &str) -> bool {
    for (path, package) in [
        (REGISTRY_BIN, "docker-registry"),
        (BUSYBOX, "busybox-static"),
    ] {
        if !Path::new(path).exists() {
            skip(
                test,
                &format!("{path} not found (apt-get install -y {package})"),
            );
            return false;
        }
    }
    true
}

/// This machine's architecture, named as in OCI platforms.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// An architecture this machine is not.
pub fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

// ---------------------------------------------------------------------------
// The registry.

/// `docker-registry serve` on 127.0.0.1 with its storage in a temporary
/// directory; killed when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Registry {
    pub async fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("reg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let cfg = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display()
                ),
            )
            .expect("write registry config");
            let log = std::fs::File::create(&log_path).expect("registry log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("start docker-registry");
            if wait_ready(port, &mut child).await {
                return Registry {
                    dir,
                    port,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "docker-registry did not start; log:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }

    /// `127.0.0.1:<port>`, as in image references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `GET /v2/` answers 200; false if the registry died or took too long.
async fn wait_ready(port: u16, child: &mut Child) -> bool {
    let client = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        // An exit (or a reaped child: Err) means the port was taken or the config is bad.
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/v2/"))
            .send()
            .await
        {
            if r.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---------------------------------------------------------------------------
// Layers.

const MTIME: u64 = 1_700_000_000;

/// A tar archive built in memory. Names are written as given (up to 100
/// bytes), without the checks of the `tar` crate, so hostile entries can be made.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// One entry, exactly as described.
    #[allow(clippy::too_many_arguments)]
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: tar::EntryType,
        link: &[u8],
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        assert!(name.len() <= 100 && link.len() <= 100, "short names only");
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name);
            old.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).expect("append tar entry");
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.dir_owned(path, mode, 0, 0)
    }

    pub fn dir_owned(&mut self, path: &str, mode: u32, uid: u64, gid: u64) -> &mut Self {
        self.raw(
            format!("{path}/").as_bytes(),
            tar::EntryType::Directory,
            b"",
            b"",
            mode,
            uid,
            gid,
        )
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Regular,
            b"",
            data,
            mode,
            uid,
            gid,
        )
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Symlink,
            target.as_bytes(),
            b"",
            0o777,
            0,
            0,
        )
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.raw(
            path.as_bytes(),
            tar::EntryType::Link,
            target.as_bytes(),
            b"",
            0o644,
            0,
            0,
        )
    }

    /// A regular file with a name of any length (a GNU long-name entry when
    /// over 100 bytes), written by the `tar` crate.
    pub fn long_file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        h.set_size(data.len() as u64);
        self.b
            .append_data(&mut h, path, data)
            .expect("append long name");
        self
    }

    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_entry_type(tar::EntryType::Char);
        h.set_mode(0o666);
        h.set_mtime(MTIME);
        h.set_size(0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        h.set_cksum();
        self.b.append(&h, &[][..]).expect("append device");
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("finish tar")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// A layer blob with the media types it goes by.
#[derive(Clone, Debug)]
pub struct Layer {
    pub bytes: Vec<u8>,
    pub oci_type: String,
    pub docker_type: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

impl Layer {
    pub fn new(tar: &[u8], compression: Compression) -> Layer {
        let diff_id = sha256(tar);
        let (bytes, oci, docker) = match compression {
            Compression::None => (
                tar.to_vec(),
                "application/vnd.oci.image.layer.v1.tar",
                "application/vnd.docker.image.rootfs.diff.tar",
            ),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).expect("gzip");
                (
                    e.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    "application/vnd.docker.image.rootfs.diff.tar.gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(tar, 3).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
                // Docker has no zstd type; the OCI one is what tools push.
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        Layer {
            bytes,
            oci_type: oci.into(),
            docker_type: docker.into(),
            diff_id,
        }
    }

    pub fn gzip(tar: &[u8]) -> Layer {
        Layer::new(tar, Compression::Gzip)
    }

    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }
}

/// The applets the test images link to busybox.
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "id", "sleep", "echo", "stat", "pwd", "env", "test", "true", "false",
    "grep", "wc", "printf", "readlink", "find", "sort", "tr", "hostname",
];

/// Layer 1 of the test image: busybox and its applets, users `root` and `app`
/// (1000:1000), `/tmp` 1777, `/data/old.txt`, `/data/keep.txt`, `/opq/{a,b}`,
/// `/etc/motd` ("layer1"), `/home/app` owned by app.
pub fn busybox_layer() -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).expect("read /bin/busybox");
    let mut t = TarBuilder::new();
    t.dir("bin", 0o755).file("bin/busybox", &busybox, 0o755);
    for a in APPLETS {
        t.symlink(&format!("bin/{a}"), "busybox");
    }
    t.dir("etc", 0o755)
        .file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
            0o644,
        )
        .file("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
        .file("etc/motd", b"layer1\n", 0o644)
        .dir("tmp", 0o1777)
        .dir("root", 0o700)
        .dir("home", 0o755)
        .dir_owned("home/app", 0o755, 1000, 1000)
        .dir("data", 0o755)
        .file("data/old.txt", b"old\n", 0o644)
        .file("data/keep.txt", b"keep\n", 0o644)
        .dir("opq", 0o755)
        .file("opq/a", b"a\n", 0o644)
        .file("opq/b", b"b\n", 0o644);
    t.finish()
}

/// Layer 2: whiteout of `/data/old.txt`, `/opq` made opaque with a new `c`,
/// `/data/new.txt` with a hard link `/data/new-link`, a hard link
/// `/data/lower-link` to layer 1's `/data/keep.txt`, `/data/secret` 0750 1000:1000,
/// and a file with a long name, [`long_path`].
pub fn changes_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.file("data/.wh.old.txt", b"", 0o644)
        .file("opq/.wh..wh..opq", b"", 0o644)
        .file("opq/c", b"c\n", 0o644)
        .file("data/new.txt", b"new\n", 0o644)
        .hardlink("data/new-link", "data/new.txt")
        .hardlink("data/lower-link", "data/keep.txt")
        .file_owned("data/secret", b"secret\n", 0o750, 1000, 1000)
        .long_file(&long_path(), b"deep\n");
    t.finish()
}

/// A path of more than 100 bytes (in layer 2), below `/data/deep`.
pub fn long_path() -> String {
    format!("data/deep/{}/{}.txt", "d".repeat(90), "f".repeat(60))
}

/// Layer 3: overrides `/etc/motd`.
pub fn override_layer() -> Vec<u8> {
    let mut t = TarBuilder::new();
    t.file("etc/motd", b"layer3\n", 0o644);
    t.finish()
}

/// The runtime part of the test image's config.
pub fn test_runtime_config() -> Value {
    json!({
        "User": "app",
        "Env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FOO=from-image",
            "BAR=kept"
        ],
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["echo foo=$FOO bar=$BAR; pwd; id -u; id -g"],
        "WorkingDir": "/home/app",
        "StopSignal": "SIGINT",
        "Labels": {"org.example.test": "sycri"},
        "ExposedPorts": {"8080/tcp": {}},
        "Volumes": {"/vol": {}}
    })
}

// ---------------------------------------------------------------------------
// Images and manifests.

#[derive(Clone, Debug)]
pub struct Image {
    pub layers: Vec<Layer>,
    /// The config blob.
    pub config: Vec<u8>,
}

impl Image {
    /// An image for this machine with `runtime` as the config's `config` object.
    pub fn new(layers: Vec<Layer>, runtime: Value) -> Image {
        Image::for_arch(host_arch(), layers, runtime)
    }

    pub fn for_arch(arch: &str, layers: Vec<Layer>, runtime: Value) -> Image {
        let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch,
            "os": "linux",
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "sycri tests"}]
        });
        Image {
            layers,
            config: serde_json::to_vec(&config).expect("config json"),
        }
    }

    /// An image whose config is `config` exactly.
    pub fn with_raw_config(layers: Vec<Layer>, config: Vec<u8>) -> Image {
        Image { layers, config }
    }

    /// The three-layer busybox image (gzip, plain tar, zstd).
    pub fn busybox3(runtime: Value) -> Image {
        Image::new(
            vec![
                Layer::new(&busybox_layer(), Compression::Gzip),
                Layer::new(&changes_layer(), Compression::None),
                Layer::new(&override_layer(), Compression::Zstd),
            ],
            runtime,
        )
    }

    /// A small image: `/data/ok` only, with a label to tell images apart.
    pub fn tiny(label: &str) -> Image {
        let mut t = TarBuilder::new();
        t.dir("data", 0o755)
            .file("data/ok", label.as_bytes(), 0o644);
        Image::new(
            vec![Layer::gzip(&t.finish())],
            json!({"Labels": {"name": label}}),
        )
    }

    pub fn config_digest(&self) -> String {
        sha256(&self.config)
    }

    /// The image manifest (media type, bytes) in OCI or Docker schema 2 form.
    pub fn manifest(&self, docker: bool) -> (&'static str, Vec<u8>) {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .map(|l| {
                json!({
                    "mediaType": if docker { &l.docker_type } else { &l.oci_type },
                    "digest": l.digest(),
                    "size": l.bytes.len(),
                })
            })
            .collect();
        let (mt, cfg_mt) = if docker {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let m = json!({
            "schemaVersion": 2,
            "mediaType": mt,
            "config": {"mediaType": cfg_mt, "digest": self.config_digest(), "size": self.config.len()},
            "layers": layers,
        });
        (mt, serde_json::to_vec_pretty(&m).expect("manifest json"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OCI index: another architecture's image first, then this machine's.
    OciIndex,
    OciManifest,
    /// Docker manifest list, like `OciIndex`.
    DockerList,
    DockerManifest,
}

impl Flavor {
    pub const ALL: [Flavor; 4] = [
        Flavor::OciIndex,
        Flavor::OciManifest,
        Flavor::DockerList,
        Flavor::DockerManifest,
    ];

    fn docker(self) -> bool {
        matches!(self, Flavor::DockerList | Flavor::DockerManifest)
    }
}

/// Everything a registry serves for one image pushed in one flavor.
#[derive(Clone, Debug)]
pub struct Documents {
    /// digest → bytes.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// Manifests named only by digest (index entries): (digest, media type, bytes).
    pub children: Vec<(String, &'static str, Vec<u8>)>,
    /// What the tag names: (digest, media type, bytes).
    pub top: (String, &'static str, Vec<u8>),
    /// The image manifest for this machine.
    pub image_manifest_digest: String,
    pub config_digest: String,
}

/// A dummy image for the other architecture (index entries must exist).
fn dummy_other_arch() -> Image {
    let mut t = TarBuilder::new();
    t.file("wrong-arch", b"not for this machine\n", 0o644);
    Image::for_arch(
        other_arch(),
        vec![Layer::gzip(&t.finish())],
        json!({"Cmd": ["/wrong-arch"]}),
    )
}

pub fn documents(image: &Image, flavor: Flavor) -> Documents {
    let docker = flavor.docker();
    let mut blobs = vec![(image.config_digest(), image.config.clone())];
    for l in &image.layers {
        blobs.push((l.digest(), l.bytes.clone()));
    }
    let (mt, bytes) = image.manifest(docker);
    let digest = sha256(&bytes);
    let config_digest = image.config_digest();
    match flavor {
        Flavor::OciManifest | Flavor::DockerManifest => Documents {
            blobs,
            children: Vec::new(),
            top: (digest.clone(), mt, bytes),
            image_manifest_digest: digest,
            config_digest,
        },
        Flavor::OciIndex | Flavor::DockerList => {
            let other = dummy_other_arch();
            blobs.push((other.config_digest(), other.config.clone()));
            for l in &other.layers {
                blobs.push((l.digest(), l.bytes.clone()));
            }
            let (omt, obytes) = other.manifest(docker);
            let odigest = sha256(&obytes);
            let mut other_platform = json!({"architecture": other_arch(), "os": "linux"});
            if other_arch() == "arm64" {
                other_platform["variant"] = json!("v8");
            }
            let index_mt = if docker { DOCKER_LIST } else { OCI_INDEX };
            let index = json!({
                "schemaVersion": 2,
                "mediaType": index_mt,
                "manifests": [
                    {"mediaType": omt, "digest": odigest, "size": obytes.len(), "platform": other_platform},
                    {"mediaType": mt, "digest": digest, "size": bytes.len(),
                     "platform": {"architecture": host_arch(), "os": "linux"}},
                ],
            });
            let ibytes = serde_json::to_vec_pretty(&index).expect("index json");
            Documents {
                blobs,
                children: vec![(odigest, omt, obytes), (digest.clone(), mt, bytes)],
                top: (sha256(&ibytes), index_mt, ibytes),
                image_manifest_digest: digest,
                config_digest,
            }
        }
    }
}

/// What a push made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The digest the tag names (the index for indexes): the repo digest.
    pub manifest_digest: String,
    pub image_manifest_digest: String,
    pub config_digest: String,
}

/// Uploads a blob in one piece: POST an upload, PUT its bytes with `?digest=`.
pub async fn push_blob(reg: &Registry, repo: &str, digest: &str, bytes: &[u8]) {
    let c = http();
    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", reg.url()))
        .send()
        .await
        .expect("start upload");
    assert_eq!(r.status().as_u16(), 202, "start upload: {r:?}");
    let loc = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload location")
        .to_string();
    let mut url = reqwest::Url::parse(&reg.url())
        .and_then(|b| b.join(&loc))
        .expect("upload url");
    url.query_pairs_mut().append_pair("digest", digest);
    let r = c
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .await
        .expect("upload blob");
    let status = r.status().as_u16();
    assert_eq!(
        status,
        201,
        "upload blob {digest}: {}",
        r.text().await.unwrap_or_default()
    );
}

/// PUTs a manifest under `tag_or_digest` and checks the digest the registry computed.
pub async fn push_manifest(
    reg: &Registry,
    repo: &str,
    tag_or_digest: &str,
    media_type: &str,
    bytes: &[u8],
) -> String {
    let r = http()
        .put(format!("{}/v2/{repo}/manifests/{tag_or_digest}", reg.url()))
        .header("content-type", media_type)
        .body(bytes.to_vec())
        .send()
        .await
        .expect("put manifest");
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        status,
        201,
        "put manifest {repo}:{tag_or_digest}: {}",
        r.text().await.unwrap_or_default()
    );
    assert_eq!(
        digest,
        sha256(bytes),
        "the registry's digest of the manifest"
    );
    digest
}

/// Pushes `image` as `repo:tag` in `flavor`; returns the digests.
pub async fn push(reg: &Registry, repo: &str, tag: &str, image: &Image, flavor: Flavor) -> Pushed {
    let docs = documents(image, flavor);
    for (d, b) in &docs.blobs {
        push_blob(reg, repo, d, b).await;
    }
    for (d, mt, b) in &docs.children {
        push_manifest(reg, repo, d, mt, b).await;
    }
    let (_, mt, b) = &docs.top;
    let manifest_digest = push_manifest(reg, repo, tag, mt, b).await;
    Pushed {
        manifest_digest,
        image_manifest_digest: docs.image_manifest_digest,
        config_digest: docs.config_digest,
    }
}

// ---------------------------------------------------------------------------
// A tiny HTTP server, for answers no real registry gives.

/// What the tiny server answers for a path.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Status, content type, body (with a Content-Length).
    Body(u16, String, Vec<u8>),
    /// These bytes, whatever they are, then the connection closes.
    Raw(Vec<u8>),
    /// A 200 announcing `body`'s length that sends `first` bytes of it and then stalls.
    Stall(String, Vec<u8>, usize),
    /// A 200 that sends `body` in pieces of `chunk` bytes, one every `every_ms`.
    Drip(String, Vec<u8>, usize, u64),
}

pub type Routes = Arc<Mutex<HashMap<String, Reply>>>;

/// A one-request-per-connection HTTP server on 127.0.0.1; stops when dropped.
pub struct TinyServer {
    pub port: u16,
    pub routes: Routes,
    /// Paths asked for, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Paths whose answer the client stopped reading (the connection closed).
    pub aborted: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TinyServer {
    pub async fn start() -> TinyServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tiny server");
        let port = listener.local_addr().expect("addr").port();
        let routes: Routes = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let aborted: Arc<Mutex<Vec<String>>> = Arc::default();
        let (r2, q2, a2) = (routes.clone(), requests.clone(), aborted.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (routes, requests, aborted) = (r2.clone(), q2.clone(), a2.clone());
                tokio::spawn(async move {
                    let _ = serve_one(conn, routes, requests, aborted).await;
                });
            }
        });
        TinyServer {
            port,
            routes,
            requests,
            aborted,
            task,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set(&self, path: &str, reply: Reply) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), reply);
    }

    /// Serves `image` as `repo:tag` (blobs and manifests, by tag and digest).
    pub fn serve_image(&self, repo: &str, tag: &str, image: &Image, flavor: Flavor) -> Documents {
        let docs = documents(image, flavor);
        for (d, b) in &docs.blobs {
            self.set(
                &format!("/v2/{repo}/blobs/{d}"),
                Reply::Body(200, "application/octet-stream".into(), b.clone()),
            );
        }
        let (_, tmt, tb) = &docs.top;
        for (d, mt, b) in docs.children.iter().chain([&docs.top]) {
            self.set(
                &format!("/v2/{repo}/manifests/{d}"),
                Reply::Body(200, mt.to_string(), b.clone()),
            );
        }
        self.set(
            &format!("/v2/{repo}/manifests/{tag}"),
            Reply::Body(200, tmt.to_string(), tb.clone()),
        );
        docs
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut conn: tokio::net::TcpStream,
    routes: Routes,
    requests: Arc<Mutex<Vec<String>>>,
    aborted: Arc<Mutex<Vec<String>>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 64 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let target = line.split(' ').nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_string();
    requests.lock().expect("requests").push(path.clone());
    let reply = routes.lock().expect("routes").get(&path).cloned();
    let reply = match reply {
        Some(r) => r,
        None if path == "/v2/" => Reply::Body(200, "application/json".into(), b"{}".to_vec()),
        None => Reply::Body(
            404,
            "application/json".into(),
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#.to_vec(),
        ),
    };
    let head = |status: u16, ct: &str, len: usize| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {ct}\r\nContent-Length: {len}\r\n\
             Docker-Distribution-Api-Version: registry/2.0\r\nConnection: close\r\n\r\n"
        )
    };
    match reply {
        Reply::Body(status, ct, body) => {
            conn.write_all(head(status, &ct, body.len()).as_bytes())
                .await?;
            conn.write_all(&body).await?;
        }
        Reply::Raw(bytes) => conn.write_all(&bytes).await?,
        Reply::Stall(ct, body, first) => {
            conn.write_all(head(200, &ct, body.len()).as_bytes())
                .await?;
            conn.write_all(&body[..first.min(body.len())]).await?;
            conn.flush().await?;
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        Reply::Drip(ct, body, chunk, every_ms) => {
            let sent = async {
                conn.write_all(head(200, &ct, body.len()).as_bytes())
                    .await?;
                for piece in body.chunks(chunk.max(1)) {
                    conn.write_all(piece).await?;
                    conn.flush().await?;
                    tokio::time::sleep(Duration::from_millis(every_ms)).await;
                }
                Ok::<_, std::io::Error>(())
            }
            .await;
            if sent.is_err() {
                aborted.lock().expect("aborted").push(path.clone());
                return Ok(());
            }
        }
    }
    conn.flush().await?;
    let _ = conn.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// A sycri server with a config file.

/// Starts sycri like [`Server::start`], with `--config` naming a file that holds `toml`.
pub async fn start_server_with_config(toml: &str) -> Server {
    Server::start_with_config(toml).await
}
