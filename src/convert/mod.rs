//! Converting OCI image layers into a squashfs root filesystem, and wrapping it
//! with the image config into a SIF.
//!
//! A [`Converter`] takes the layers (bottom first; tar, tar+gzip or tar+zstd,
//! the compression detected from the data) one after the other, each as a
//! stream that is read once, while it downloads: each entry's header goes into
//! the merged view of the image ([`merge`]: overrides, whiteouts, opaque
//! directories, hard links) and each regular file's data straight into the
//! data area of the squashfs, compressed on worker threads ([`sqfs`]).
//! [`Converter::finish`] writes the image's tables. Data of files that a later
//! layer replaces or deletes stays in the image, unreferenced (the stats count
//! it); containerd keeps such files on disk too, in the lower snapshots.
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
//! `.wh..wh.*` metadata are ignored; times are clamped to squashfs' 32 bits;
//! uids and gids must fit 32 bits.

mod base;
mod error;
mod layer;
mod merge;
mod options;
mod sqfs;
mod tar_read;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sycri_native::sif::SifBuilder;

pub use base::{load as load_base, BaseLayer, Checked};
pub use error::ConvertError;
pub use layer::check_media_type;
use merge::{DirMeta, Merger};
pub use options::{Compression, ConvertOptions, ConvertStats, Layer, Limits};
use sqfs::{Attrs, Codec, FileData, NodeData, SqfsWriter, Tree, TreeInode};
use tar_read::{Entry, Kind, TarReader};

/// Xattr namespaces squashfs can store; others (e.g. `system.posix_acl_*`) are dropped.
const XATTR_PREFIXES: &[&[u8]] = &[b"user.", b"trusted.", b"security."];

/// Whether an xattr can be stored in the image.
pub(crate) fn xattr_supported(name: &[u8]) -> bool {
    XATTR_PREFIXES
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
        && !name.contains(&0)
}

/// Merges layers, given one after the other as streams, into a squashfs image.
/// Blocking; run it on a blocking thread.
pub struct Converter {
    merger: Merger<Option<FileData>>,
    sqfs: SqfsWriter,
    tmp: TempOut,
    out: PathBuf,
    limit: u64,
    used: u64,
    layers: usize,
    next: usize,
    started: Instant,
    compression: Compression,
    /// The state after the first layer this image went on from, if any.
    base: Option<BaseLayer>,
    /// The state after the first layer, until the block placement is known.
    pending: Option<base::Pending>,
    /// Whether to save the state after the first layer (see [`base`]).
    keep_first_layer: bool,
}

impl Converter {
    /// A conversion of `layers` layers into `out` (written atomically by [`Self::finish`]).
    pub fn new(
        out: &Path,
        layers: usize,
        opts: &ConvertOptions,
    ) -> Result<Converter, ConvertError> {
        let (codec, jobs, tmp, file) = Self::prepare(out, opts)?;
        let sqfs = SqfsWriter::new(file, codec, jobs).map_err(|e| ConvertError::Io {
            context: "start the squashfs writer".into(),
            source: e,
        })?;
        let merger = Merger::new(opts.limits.max_entries);
        Ok(Self::assemble(out, layers, opts, merger, sqfs, tmp))
    }

    /// A conversion into `out` that goes on after the first layer, from a
    /// saved state checked ([`BaseLayer::check`]) against the squashfs at
    /// `offset` in `src`, whose first-layer blocks are copied.
    /// [`Converter::add_layer`] then takes the second layer on.
    pub fn resume_checked(
        out: &Path,
        opts: &ConvertOptions,
        checked: Checked,
        src: &File,
        offset: u64,
    ) -> Result<Converter, ConvertError> {
        let (codec, jobs, tmp, file) = Self::prepare(out, opts)?;
        let sqfs = checked.start_writer(src, offset, file, codec, jobs)?;
        let (base, merger, layers, used) = checked.into_parts();
        let mut c = Self::assemble(out, layers, opts, merger, sqfs, tmp);
        c.used = used;
        c.next = 1;
        c.base = Some(base);
        Ok(c)
    }

    /// The codec and compressor threads `opts` ask for, and the temporary
    /// output file.
    fn prepare(
        out: &Path,
        opts: &ConvertOptions,
    ) -> Result<(Codec, usize, TempOut, File), ConvertError> {
        let level = opts
            .level
            .unwrap_or_else(|| opts.compression.default_level());
        if !opts.compression.levels().contains(&level) {
            return Err(ConvertError::InvalidConfig(format!(
                "{} level {level} is not in {:?}",
                opts.compression.name(),
                opts.compression.levels()
            )));
        }
        let (tmp, file) = TempOut::create(out)?;
        let codec = Codec {
            kind: opts.compression,
            level,
        };
        // Blocks stored as they are need no compressor threads.
        let jobs = if opts.compression == Compression::None {
            1
        } else {
            opts.jobs
        };
        Ok((codec, jobs, tmp, file))
    }

    fn assemble(
        out: &Path,
        layers: usize,
        opts: &ConvertOptions,
        merger: Merger<Option<FileData>>,
        sqfs: SqfsWriter,
        tmp: TempOut,
    ) -> Converter {
        Converter {
            merger,
            sqfs,
            tmp,
            out: out.to_path_buf(),
            limit: opts.limits.max_uncompressed,
            used: 0,
            layers,
            next: 0,
            started: Instant::now(),
            compression: opts.compression,
            base: None,
            pending: None,
            keep_first_layer: false,
        }
    }

    /// Saves the state after the first layer, for
    /// [`Self::finish_with_base`] to return.
    pub fn keep_first_layer(&mut self) {
        self.keep_first_layer = true;
    }

    /// Reads the next layer from `blob` (its media type as the manifest says).
    pub fn add_layer<R: Read>(&mut self, media_type: &str, blob: R) -> Result<(), ConvertError> {
        let i = self.next;
        if i >= self.layers {
            return Err(ConvertError::InvalidLayer {
                layer: i,
                reason: format!("only {} layers were announced", self.layers),
            });
        }
        let (stream, codec) = layer::decompress(i, blob, media_type)?;
        let mut r = TarReader::new(stream, i, self.used, self.limit);
        let mut index = 0u64;
        let mut files = 0u64;
        while let Some(e) = r.next_entry()? {
            if e.uid > u64::from(u32::MAX) || e.gid > u64::from(u32::MAX) {
                return Err(ConvertError::InvalidLayer {
                    layer: i,
                    reason: format!("{} has a uid or gid that does not fit 32 bits", e.display()),
                });
            }
            let whiteout = e.path.as_deref().is_some_and(merge::is_whiteout);
            let data = if e.kind == Kind::Regular && !whiteout {
                files += 1;
                Some(self.sqfs.add_file(e.size, &mut |buf| r.read_data(buf))?)
            } else {
                None
            };
            self.merger.add(i, e, data)?;
            index += 1;
        }
        tracing::debug!(
            layer = i,
            ?codec,
            entries = index,
            files,
            bytes = r.used() - self.used,
            "converted layer"
        );
        self.used = r.used();
        self.next += 1;
        if i == 0 && self.keep_first_layer {
            // Saved now, completed by finish: another image with this first
            // layer can go on from here.
            match self.merger.save() {
                Ok(merger) => {
                    self.pending = Some(base::Pending {
                        boundary: self.sqfs.boundary(),
                        merger,
                        used: self.used,
                    })
                }
                Err(e) => tracing::debug!(error = %e, "the first layer's state is not kept"),
            }
        }
        Ok(())
    }

    /// Writes the image's tables and puts the image at its path (not synced:
    /// it is an intermediate file; what keeps it must sync it).
    pub fn finish(self) -> Result<ConvertStats, ConvertError> {
        self.finish_with_base().map(|(stats, _)| stats)
    }

    /// [`Self::finish`], and the state after the image's first layer, for
    /// images that start with the same layer (see [`base`]).
    pub fn finish_with_base(mut self) -> Result<(ConvertStats, Option<BaseLayer>), ConvertError> {
        if self.next != self.layers {
            return Err(ConvertError::InvalidLayer {
                layer: self.next,
                reason: format!("{} of {} layers were converted", self.next, self.layers),
            });
        }
        let plan = self.merger.plan();
        let entries = plan.entries;
        let unreferenced_bytes = plan
            .orphans
            .iter()
            .filter_map(|o| o.data.as_ref().map(|d| d.size))
            .sum();
        let tree = Tree {
            root: attrs(&plan.root),
            dirs: plan
                .dirs
                .iter()
                .map(|(p, m)| (p.clone(), attrs(m)))
                .collect(),
            inodes: plan
                .inodes
                .into_iter()
                .map(|(names, info)| {
                    let a = entry_attrs(&info.entry);
                    let data = match info.entry.kind {
                        Kind::Symlink => NodeData::Symlink(info.entry.link),
                        Kind::Fifo => NodeData::Fifo,
                        _ => NodeData::File(info.data.unwrap_or_default()),
                    };
                    TreeInode {
                        names,
                        attrs: a,
                        data,
                    }
                })
                .collect(),
        };
        drop(plan.dirs);
        let codec = self.sqfs.codec();
        let written = self.sqfs.finish(tree)?;
        let base = match (self.base.take(), self.pending.take()) {
            (Some(b), _) => Some(b),
            (None, Some(p)) => p.complete(codec, &written.placed, written.data_end),
            (None, None) => None,
        };
        let squashfs_bytes = self.tmp.commit(&self.out)?;
        debug_assert_eq!(squashfs_bytes, written.bytes);
        let stats = ConvertStats {
            entries,
            uncompressed_bytes: self.used,
            squashfs_bytes,
            unreferenced_bytes,
        };
        tracing::info!(
            layers = self.layers,
            entries,
            inodes = written.inodes,
            uncompressed_bytes = self.used,
            squashfs_bytes,
            unreferenced_bytes,
            compression = self.compression.name(),
            ms = self.started.elapsed().as_millis() as u64,
            out = %self.out.display(),
            "converted layers to squashfs"
        );
        Ok((stats, base))
    }
}

fn clamp_time(t: i64) -> u32 {
    u32::try_from(t.clamp(0, i64::from(u32::MAX))).unwrap_or(0)
}

fn keep_xattrs(x: &[(Vec<u8>, Vec<u8>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    x.iter()
        .filter(|(n, _)| {
            let ok = xattr_supported(n);
            if !ok {
                tracing::debug!(xattr = %String::from_utf8_lossy(n), "dropping an xattr squashfs cannot store");
            }
            ok
        })
        .cloned()
        .collect()
}

fn attrs_of(mode: u32, uid: u64, gid: u64, mtime: i64, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Attrs {
    Attrs {
        // Masked to 12 bits by the reader; ids were checked against 32 bits.
        mode: (mode & 0o7777) as u16,
        uid: u32::try_from(uid).unwrap_or(u32::MAX),
        gid: u32::try_from(gid).unwrap_or(u32::MAX),
        mtime: clamp_time(mtime),
        xattrs: keep_xattrs(xattrs),
    }
}

fn attrs(m: &DirMeta) -> Attrs {
    attrs_of(m.mode, m.uid, m.gid, m.mtime, &m.xattrs)
}

fn entry_attrs(e: &Entry) -> Attrs {
    attrs_of(e.mode, e.uid, e.gid, e.mtime, &e.xattrs)
}

/// Merges `layers` (files on disk, bottom first) into a squashfs image at `out`,
/// atomically. Blocking; run it on a blocking thread.
pub fn layers_to_squashfs(
    layers: &[Layer],
    out: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, ConvertError> {
    for (i, l) in layers.iter().enumerate() {
        layer::check_media_type(i, &l.media_type)?;
    }
    let mut c = Converter::new(out, layers.len(), opts)?;
    for (i, l) in layers.iter().enumerate() {
        let f = File::open(&l.path).map_err(|e| ConvertError::Io {
            context: format!("open layer {i} ({})", l.path.display()),
            source: e,
        })?;
        c.add_layer(&l.media_type, f)?;
    }
    c.finish()
}

/// A temporary output file next to the final path; removed unless committed.
struct TempOut {
    path: PathBuf,
    armed: bool,
}

impl TempOut {
    fn create(out: &Path) -> Result<(TempOut, File), ConvertError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = out.file_name().ok_or_else(|| ConvertError::Io {
            context: format!("output {}", out.display()),
            source: std::io::Error::new(ErrorKind::InvalidInput, "path has no file name"),
        })?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
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
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&path)
            {
                Ok(f) => return Ok((TempOut { path, armed: true }, f)),
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

    /// Renames the file to `out`; returns its size. No fsync: the image is an
    /// intermediate file that the SIF copies (and syncs).
    fn commit(mut self, out: &Path) -> Result<u64, ConvertError> {
        let len = std::fs::metadata(&self.path)
            .map_err(|e| ConvertError::Io {
                context: format!("stat {}", self.path.display()),
                source: e,
            })?
            .len();
        std::fs::rename(&self.path, out).map_err(|e| ConvertError::Io {
            context: format!("rename {} to {}", self.path.display(), out.display()),
            source: e,
        })?;
        self.armed = false;
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
/// Not synced (the image store does that after the pull has answered): the
/// CRC-32 of the squashfs, returned, is what tells a copy that a power loss
/// cut short.
pub fn squashfs_to_sif(
    squashfs: &Path,
    oci_config_json: &[u8],
    out: &Path,
) -> Result<u32, ConvertError> {
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
    let mut crc = crc32fast::Hasher::new();
    let reader = CrcReader {
        inner: std::io::BufReader::with_capacity(256 * 1024, f),
        crc: &mut crc,
    };
    SifBuilder::new()
        .generic_json("oci-config.json", oci_config_json.to_vec())
        .primary_squashfs(reader, Some(size))
        .write_to_path_unsynced(out)?;
    tracing::debug!(out = %out.display(), squashfs_bytes = size, "wrote SIF");
    Ok(crc.finalize())
}

/// Passes reads through, keeping the CRC-32 of what went by.
struct CrcReader<'a, R> {
    inner: R,
    crc: &'a mut crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}
