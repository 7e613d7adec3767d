//! Converting OCI image layers into a squashfs root filesystem, and wrapping it
//! with the image config into a SIF.
//!
//! [`layers_to_squashfs`] makes two passes over the layers (blobs on disk, tar,
//! tar+gzip or tar+zstd; the compression is detected from the data):
//! 1. headers only: the merged view of all layers (overrides, whiteouts, opaque
//!    directories, hard links), see [`merge`];
//! 2. each layer again, copying the data of the entries that survive straight into
//!    one tar stream on the stdin of `tar2sqfs` (squashfs-tools-ng), which writes
//!    the squashfs. All directories go first, with their final attributes.
//!
//! Layers are untrusted: paths with `..` or absolute paths, device nodes, hard
//! links that escape or dangle, corrupt or truncated data and oversized input are
//! refused with a typed [`ConvertError`]. Nothing is extracted to disk, symlinks are
//! never followed, and the output appears atomically (temporary file in the same
//! directory, renamed on success, removed on failure).
//!
//! Choices: FIFOs are kept (inert in a read-only image); char/block devices are
//! refused; xattrs outside `user.`, `trusted.`, `security.` (e.g. POSIX ACLs) are
//! dropped because squashfs cannot store them; PAX global headers and aufs
//! `.wh..wh.*` metadata are ignored; times are clamped to squashfs' 32 bits.

mod layer;
mod merge;
mod tar_read;
mod tar_write;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use sycri_native::sif::{SifBuilder, SifError};

use merge::{DirMeta, Merger, Plan};
use tar_read::{Kind, TarReader};
use tar_write::{Meta, OutKind, TarWriter};

/// One layer blob on disk.
#[derive(Clone, Debug)]
pub struct Layer {
    pub path: PathBuf,
    /// The layer's media type from the manifest (empty if unknown).
    pub media_type: String,
}

/// Bounds on what a conversion reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Total uncompressed tar bytes over all layers.
    pub max_uncompressed: u64,
    /// Total tar entries over all layers (whiteouts and overridden ones included).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed: 8 << 30,
            max_entries: 1_000_000,
        }
    }
}

/// Block compression of the squashfs. The kernel must support it to mount the
/// image: gzip always is, zstd needs `CONFIG_SQUASHFS_ZSTD` (see [`Self::host_default`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
}

impl Compression {
    fn tar2sqfs_name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// zstd if the running kernel's config (`/proc/config.gz` or
    /// `/boot/config-<release>`) has `CONFIG_SQUASHFS_ZSTD=y`, else gzip. Looked up
    /// once per process.
    pub fn host_default() -> Compression {
        static HOST: std::sync::OnceLock<Compression> = std::sync::OnceLock::new();
        *HOST.get_or_init(|| {
            let zstd = kernel_config()
                .is_some_and(|c| c.lines().any(|l| l.trim() == "CONFIG_SQUASHFS_ZSTD=y"));
            if zstd {
                Compression::Zstd
            } else {
                Compression::Gzip
            }
        })
    }
}

/// The running kernel's build config, if it can be found.
fn kernel_config() -> Option<String> {
    const MAX: u64 = 16 << 20;
    let mut s = String::new();
    if let Ok(f) = File::open("/proc/config.gz") {
        if flate2::read::GzDecoder::new(f)
            .take(MAX)
            .read_to_string(&mut s)
            .is_ok()
        {
            return Some(s);
        }
        s.clear();
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let f = File::open(format!("/boot/config-{}", release.trim())).ok()?;
    f.take(MAX).read_to_string(&mut s).ok()?;
    Some(s)
}

/// How to run a conversion.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub limits: Limits,
    pub compression: Compression,
    /// Compressor threads of tar2sqfs.
    pub jobs: usize,
    /// The tar2sqfs program (looked up in PATH unless it contains a slash).
    pub tar2sqfs: PathBuf,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            limits: Limits::default(),
            compression: Compression::default(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
            tar2sqfs: PathBuf::from("tar2sqfs"),
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Entries in the image: the root, directories, and every name of files,
    /// symlinks and FIFOs (each hard link counts).
    pub entries: u64,
    /// Uncompressed bytes of all layers (what pass 1 read).
    pub uncompressed_bytes: u64,
    /// Size of the squashfs file.
    pub squashfs_bytes: u64,
}

/// Why a conversion failed. Suggested gRPC codes: `UnsupportedMediaType`,
/// `InvalidLayer`, `Unsafe`, `InvalidConfig` → InvalidArgument (the image is bad);
/// `TooLarge` → ResourceExhausted; `ToolMissing` → FailedPrecondition (host setup);
/// `Tool`, `Io`, `Sif` → Internal. `From<ConvertError> for crate::error::Error` does
/// this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("layer {layer} has media type {media_type:?}, which is not a tar layer this runtime can unpack")]
    UnsupportedMediaType { layer: usize, media_type: String },

    #[error("layer {layer} is not a valid image layer: {reason}")]
    InvalidLayer { layer: usize, reason: String },

    #[error("layer {layer} has an unsafe entry {path:?}: {reason}")]
    Unsafe {
        layer: usize,
        path: String,
        reason: String,
    },

    #[error("image is too large: the {what} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },

    #[error("invalid image config: {0}")]
    InvalidConfig(String),

    #[error("{program} is not installed (package squashfs-tools-ng): {source}")]
    ToolMissing {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error("tar2sqfs failed ({status}): {stderr}")]
    Tool { status: String, stderr: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the SIF image: {0}")]
    Sif(#[from] SifError),
}

impl From<ConvertError> for crate::error::Error {
    fn from(e: ConvertError) -> Self {
        use crate::error::Error;
        match e {
            ConvertError::UnsupportedMediaType { .. }
            | ConvertError::InvalidLayer { .. }
            | ConvertError::Unsafe { .. }
            | ConvertError::InvalidConfig(_) => Error::InvalidArgument(e.to_string()),
            ConvertError::TooLarge { .. } => Error::ResourceExhausted(e.to_string()),
            ConvertError::ToolMissing { .. } => Error::FailedPrecondition(e.to_string()),
            ConvertError::Io { context, source } => Error::Io { context, source },
            ConvertError::Tool { .. } | ConvertError::Sif(_) => Error::Internal(e.to_string()),
        }
    }
}

/// Context of errors writing to tar2sqfs (a broken pipe means it failed).
const TO_TOOL: &str = "write the merged layers to tar2sqfs";

fn to_tool(e: std::io::Error) -> ConvertError {
    ConvertError::Io {
        context: TO_TOOL.to_string(),
        source: e,
    }
}

/// Merges `layers` (bottom first) into a squashfs image at `out`, atomically.
/// Blocking; run it on a blocking thread.
pub fn layers_to_squashfs(
    layers: &[Layer],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, ConvertError> {
    let started = Instant::now();
    for (i, l) in layers.iter().enumerate() {
        layer::check_media_type(i, &l.media_type)?;
    }
    let limit = opts.limits.max_uncompressed;

    // Pass 1: headers only.
    let mut merger = Merger::new(layers.len(), opts.limits.max_entries);
    let mut used = 0;
    for (i, l) in layers.iter().enumerate() {
        let (stream, codec) = layer::open(i, &l.path, &l.media_type)?;
        let mut r = TarReader::new(stream, i, used, limit);
        let mut index = 0;
        while let Some(e) = r.next_entry()? {
            merger.add(i, index, e)?;
            index += 1;
        }
        tracing::debug!(
            layer = i,
            ?codec,
            entries = index,
            bytes = r.used() - used,
            "read layer headers"
        );
        used = r.used();
    }
    let plan = merger.plan();
    let entries = plan.entries;

    // Pass 2: stream the surviving entries into tar2sqfs.
    let tmp = TempOut::create(out)?;
    let mut tool = Tool::spawn(opts, &tmp.path)?;
    let stdin = tool.stdin()?;
    match write_merged(
        layers,
        plan,
        limit,
        BufWriter::with_capacity(256 * 1024, stdin),
    ) {
        Ok(w) => {
            drop(w); // EOF for tar2sqfs
            tool.wait()?;
        }
        Err(e) => {
            let broken_pipe = matches!(&e, ConvertError::Io { context, source }
                if context == TO_TOOL && source.kind() == ErrorKind::BrokenPipe);
            if broken_pipe {
                // tar2sqfs quit: its own message says why.
                tool.wait()?;
            }
            return Err(e);
        }
    }
    let squashfs_bytes = tmp.commit(out, true)?;
    let stats = ConvertStats {
        entries,
        uncompressed_bytes: used,
        squashfs_bytes,
    };
    tracing::info!(
        layers = layers.len(),
        entries,
        uncompressed_bytes = used,
        squashfs_bytes,
        compression = opts.compression.tar2sqfs_name(),
        ms = started.elapsed().as_millis() as u64,
        out = %out.display(),
        "converted layers to squashfs"
    );
    Ok(stats)
}

fn dir_meta(m: &DirMeta) -> Meta<'_> {
    Meta {
        mode: m.mode,
        uid: m.uid,
        gid: m.gid,
        mtime: m.mtime,
        xattrs: &m.xattrs,
    }
}

/// Pass 2: writes the root and all directories, then the surviving entries of
/// each layer in order. Returns the sink, flushed.
fn write_merged<W: Write>(
    layers: &[Layer],
    mut plan: Plan,
    limit: u64,
    w: W,
) -> Result<W, ConvertError> {
    let mut tw = TarWriter::new(w);
    tw.header(b"", OutKind::Dir, &dir_meta(&plan.root))
        .map_err(to_tool)?;
    for (path, meta) in &plan.dirs {
        tw.header(path, OutKind::Dir, &dir_meta(meta))
            .map_err(to_tool)?;
    }
    let mut used = 0;
    for (i, l) in layers.iter().enumerate() {
        let mut emits = plan
            .emits
            .get_mut(i)
            .map(std::mem::take)
            .unwrap_or_default();
        if emits.is_empty() {
            continue;
        }
        let changed = |what: &str| ConvertError::InvalidLayer {
            layer: i,
            reason: format!("the layer changed while it was converted ({what})"),
        };
        let (stream, _) = layer::open(i, &l.path, &l.media_type)?;
        let mut r = TarReader::new(stream, i, used, limit);
        let mut index = 0;
        while !emits.is_empty() {
            let Some(e) = r.next_entry()? else {
                return Err(changed("fewer entries"));
            };
            if let Some(emit) = emits.remove(&index) {
                if e.kind != emit.kind || e.size != emit.size {
                    return Err(changed(&e.display()));
                }
                let Some((first, others)) = emit.names.split_first() else {
                    continue;
                };
                let meta = Meta {
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime: e.mtime,
                    xattrs: &e.xattrs,
                };
                let kind = match e.kind {
                    Kind::Regular => OutKind::Regular { size: e.size },
                    Kind::Symlink => OutKind::Symlink { target: &e.link },
                    Kind::Fifo => OutKind::Fifo,
                    Kind::Dir | Kind::Hardlink => return Err(changed(&e.display())),
                };
                tw.header(first, kind, &meta).map_err(to_tool)?;
                if e.kind == Kind::Regular {
                    r.copy_data(tw.data(), TO_TOOL)?;
                    tw.pad(e.size).map_err(to_tool)?;
                }
                for name in others {
                    tw.header(name, OutKind::Hardlink { target: first }, &meta)
                        .map_err(to_tool)?;
                }
            }
            index += 1;
        }
        used = r.used();
    }
    tw.finish().map_err(to_tool)
}

/// A temporary output file next to the final path; removed unless committed.
struct TempOut {
    path: PathBuf,
    dir: PathBuf,
    armed: bool,
}

impl TempOut {
    fn create(out: &Path) -> Result<TempOut, ConvertError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = out.file_name().ok_or_else(|| ConvertError::Io {
            context: format!("output {}", out.display()),
            source: std::io::Error::new(ErrorKind::InvalidInput, "path has no file name"),
        })?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // A relative directory gets "./" so that the path never looks like an option.
        let dir = if dir.is_absolute() || dir.starts_with(".") {
            dir
        } else {
            Path::new(".").join(dir)
        };
        let mut last = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(
                ".{}.tmp-{}-{n}",
                name.to_string_lossy(),
                std::process::id()
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(_) => {
                    return Ok(TempOut {
                        path,
                        dir,
                        armed: true,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(ConvertError::Io {
                        context: format!("create a temporary file in {}", dir.display()),
                        source: e,
                    })
                }
            }
        }
        Err(ConvertError::Io {
            context: format!("create a temporary file in {}", dir.display()),
            source: last.unwrap_or_else(|| ErrorKind::AlreadyExists.into()),
        })
    }

    /// Syncs the file, checks the squashfs magic (if asked), renames it to `out`;
    /// returns its size.
    fn commit(mut self, out: &Path, squashfs: bool) -> Result<u64, ConvertError> {
        let io = |what: &str, e| ConvertError::Io {
            context: format!("{what} {}", self.path.display()),
            source: e,
        };
        let mut f = File::open(&self.path).map_err(|e| io("open", e))?;
        if squashfs {
            let mut magic = [0u8; 4];
            f.read_exact(&mut magic).map_err(|e| io("read", e))?;
            if &magic != sycri_native::sif::SQUASHFS_MAGIC {
                return Err(ConvertError::Tool {
                    status: "exit status 0".into(),
                    stderr: "the output is not a squashfs image".into(),
                });
            }
        }
        f.sync_all().map_err(|e| io("sync", e))?;
        let len = f.metadata().map_err(|e| io("stat", e))?.len();
        drop(f);
        std::fs::rename(&self.path, out).map_err(|e| ConvertError::Io {
            context: format!("rename {} to {}", self.path.display(), out.display()),
            source: e,
        })?;
        self.armed = false;
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(len)
    }
}

impl Drop for TempOut {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Most of tar2sqfs' stderr kept for error messages.
const MAX_STDERR: usize = 16 * 1024;

/// A running tar2sqfs; killed if dropped before it was waited for.
struct Tool {
    child: Option<Child>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

impl Tool {
    fn spawn(opts: &ConvertOptions, out: &Path) -> Result<Tool, ConvertError> {
        let program = opts.tar2sqfs.display().to_string();
        let mut cmd = Command::new(&opts.tar2sqfs);
        cmd.arg("--quiet")
            .arg("--no-skip")
            .arg("--force")
            .arg("--compressor")
            .arg(opts.compression.tar2sqfs_name())
            .arg("--num-jobs")
            .arg(opts.jobs.max(1).to_string())
            .arg("--defaults")
            .arg("uid=0,gid=0,mode=0755,mtime=0")
            .arg(out)
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                ConvertError::ToolMissing {
                    program: program.clone(),
                    source: e,
                }
            } else {
                ConvertError::Io {
                    context: format!("start {program}"),
                    source: e,
                }
            }
        })?;
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let room = MAX_STDERR.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                kept
            })
        });
        Ok(Tool {
            child: Some(child),
            stderr,
        })
    }

    fn stdin(&mut self) -> Result<ChildStdin, ConvertError> {
        self.child
            .as_mut()
            .and_then(|c| c.stdin.take())
            .ok_or_else(|| ConvertError::Io {
                context: "tar2sqfs stdin".into(),
                source: ErrorKind::BrokenPipe.into(),
            })
    }

    /// Waits for tar2sqfs to exit; an error unless it succeeded.
    fn wait(&mut self) -> Result<(), ConvertError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().map_err(|e| ConvertError::Io {
            context: "wait for tar2sqfs".into(),
            source: e,
        })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(ConvertError::Tool {
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
            })
        }
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

/// Largest `oci-config.json` accepted (what the image store reads back).
const MAX_CONFIG: usize = 1 << 20;

/// The runtime part (`config` object) of an OCI image config blob, as stored in a
/// SIF's `oci-config.json`; `{}` when the blob has none.
pub fn runtime_config(image_config: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let v: serde_json::Value = serde_json::from_slice(image_config)
        .map_err(|e| ConvertError::InvalidConfig(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ConvertError::InvalidConfig("not a JSON object".into()))?;
    let config = match obj.get("config") {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(c @ serde_json::Value::Object(_)) => c.clone(),
        Some(_) => {
            return Err(ConvertError::InvalidConfig(
                "\"config\" is not an object".into(),
            ))
        }
    };
    serde_json::to_vec(&config).map_err(|e| ConvertError::InvalidConfig(e.to_string()))
}

/// Wraps a squashfs and the runtime config JSON (the OCI config's `config` object,
/// PascalCase keys as in [`crate::images::ImageConfig`]) into a SIF at `out`,
/// atomically; the config is stored as the GenericJSON object `oci-config.json`.
pub fn squashfs_to_sif(
    squashfs: &Path,
    oci_config_json: &[u8],
    out: &Path,
) -> Result<(), ConvertError> {
    if oci_config_json.len() > MAX_CONFIG {
        return Err(ConvertError::InvalidConfig(format!(
            "{} bytes, more than the allowed {MAX_CONFIG}",
            oci_config_json.len()
        )));
    }
    // The image store must be able to read it back.
    serde_json::from_slice::<crate::images::ImageConfig>(oci_config_json)
        .map_err(|e| ConvertError::InvalidConfig(e.to_string()))?;
    let f = File::open(squashfs).map_err(|e| ConvertError::Io {
        context: format!("open {}", squashfs.display()),
        source: e,
    })?;
    let size = f
        .metadata()
        .map_err(|e| ConvertError::Io {
            context: format!("stat {}", squashfs.display()),
            source: e,
        })?
        .len();
    SifBuilder::new()
        .generic_json("oci-config.json", oci_config_json.to_vec())
        .primary_squashfs(std::io::BufReader::with_capacity(256 * 1024, f), Some(size))
        .write_to_path(out)?;
    tracing::debug!(out = %out.display(), squashfs_bytes = size, "wrote SIF");
    Ok(())
}
