//! The image store: SIF files, content-addressed by the sha256 of the file,
//! with an index (tags, digests, what containers need from the image) that
//! survives restarts, and where each image's root filesystem is mounted
//! (the mounting itself is the engine's, driven by the service).

use crate::error::{Error, Result};
use crate::util::random_hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use sycri_native::sif::{SifError, SifImage};
use sycri_native::util::{now_ns, write_durable};

/// The part of an OCI image config that containers use, as stored in a SIF's
/// `oci-config.json` object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    #[serde(deserialize_with = "null_as_default")]
    pub user: String,
    #[serde(deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(deserialize_with = "null_as_default")]
    pub working_dir: String,
    #[serde(deserialize_with = "null_as_default")]
    pub stop_signal: String,
    pub labels: Option<HashMap<String, String>>,
    pub exposed_ports: Option<HashMap<String, serde_json::Value>>,
    pub volumes: Option<HashMap<String, serde_json::Value>>,
}

/// Image configs written by some tools say `"Env": null`: read null as empty.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the SIF file.
    pub id: String,
    pub tags: Vec<String>,
    #[serde(default)]
    pub digests: Vec<String>,
    pub size: u64,
    /// File name inside the store's blob directory.
    pub file: String,
    /// Where the root filesystem (squashfs) lies in the file.
    pub rootfs_offset: u64,
    pub rootfs_size: u64,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub pulled_at_ns: i64,
    /// Digest of the first layer whose converter state is kept beside the
    /// SIF (`<hex>.base`), for images that start with the same layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_layer: Option<String>,
    /// CRC-32 of the root filesystem while the file may be only in the page
    /// cache (a pull writes it without fsync and answers; [`ImageStore::sync`]
    /// then makes it durable and clears this). A record that still has it
    /// when the store opens is checked against its file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_crc: Option<u32>,
}

impl ImageRecord {
    pub fn hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Index {
    images: Vec<ImageRecord>,
}

pub struct ImageStore {
    dir: PathBuf,
    blobs: PathBuf,
    mounts: PathBuf,
    index: Mutex<Index>,
}

/// Largest `oci-config.json` we accept.
const MAX_CONFIG: u64 = 1 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A local image reference (`/abs/path.sif` or `file:///abs/path.sif`) as the
/// absolute path it names, or None when the reference is not local.
pub fn local_path(reference: &str) -> Option<PathBuf> {
    let p = reference.strip_prefix("file://").unwrap_or(reference);
    p.starts_with('/').then(|| PathBuf::from(p))
}

/// The name a reference is stored under: local files by their plain path,
/// registry images by their full normalized reference (a repo digest when the
/// reference has a digest).
pub fn normalize(reference: &str) -> String {
    if let Some(p) = local_path(reference) {
        return p.to_string_lossy().into_owned();
    }
    if reference.contains("://") && !reference.starts_with("docker://") {
        return reference.to_string();
    }
    match crate::registry::Reference::parse(reference) {
        Ok(r) => match &r.digest {
            Some(d) => format!("{}@{d}", r.name()),
            None => r.to_string(),
        },
        Err(_) => reference.to_string(),
    }
}

fn sif_error(source: &str, e: SifError) -> Error {
    match e {
        SifError::Io(io) => Error::io(format!("read {source}"), io),
        other => Error::InvalidArgument(format!("{source}: {other}")),
    }
}

/// File name suffix of a saved first-layer state beside `<hex>.sif`.
const BASE_SUFFIX: &str = ".base";

impl ImageStore {
    pub fn open(storage_dir: &Path, run_dir: &Path) -> Result<ImageStore> {
        let dir = storage_dir.join("images");
        let blobs = dir.join("sha256");
        let mounts = run_dir.join("images");
        for d in [&dir, &blobs, &mounts] {
            fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let index_path = dir.join("index.json");
        let mut index: Index = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                Error::Internal(format!(
                    "image index {} is corrupt: {e}",
                    index_path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(Error::io(format!("read {}", index_path.display()), e)),
        };
        // Images written without fsync whose sync had not happened: a power
        // loss may have cut them short.
        let unsynced = index.images.iter().any(|r| r.unsynced_crc.is_some());
        if unsynced {
            index.images.retain_mut(|r| settle_unsynced(&blobs, r));
        }
        // Drop what interrupted pulls left, and saved layer states whose
        // image is gone (a removal interrupted between the two files).
        let _ = fs::remove_dir_all(dir.join("tmp"));
        if let Ok(rd) = fs::read_dir(&blobs) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let stray_base = name.strip_suffix(BASE_SUFFIX).is_some_and(|hex| {
                    !index
                        .images
                        .iter()
                        .any(|r| r.hex() == hex && r.base_layer.is_some())
                });
                let base_temp = name.starts_with('.') && name.contains(".base.tmp");
                if name.starts_with(".pull-") || stray_base || base_temp {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let store = ImageStore {
            dir,
            blobs,
            mounts,
            index: Mutex::new(index),
        };
        if unsynced {
            store.save(&lock(&store.index))?;
        }
        Ok(store)
    }

    /// Makes the image `id` durable (its file and the directory entry) and
    /// records that it is; nothing when it is gone or synced already.
    /// Blocking: run after the pull has answered.
    pub fn sync(&self, id: &str) -> Result<()> {
        let Some(rec) = self.get(id).filter(|r| r.unsynced_crc.is_some()) else {
            return Ok(());
        };
        let path = self.blob_path(&rec);
        let synced = match sync_file(&path, &self.blobs) {
            Ok(ino) => ino,
            // Removed in the meantime.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("sync {}", path.display()), e)),
        };
        let mut index = lock(&self.index);
        // Still the file that was synced: not removed and pulled again since
        // (that pull's own sync is the one to clear it).
        use std::os::unix::fs::MetadataExt;
        let same = fs::metadata(&path).is_ok_and(|m| m.ino() == synced);
        let Some(r) = index
            .images
            .iter_mut()
            .find(|r| r.id == rec.id && r.unsynced_crc.is_some())
            .filter(|_| same)
        else {
            return Ok(());
        };
        r.unsynced_crc = None;
        self.save(&index)
    }

    fn save(&self, index: &Index) -> Result<()> {
        let data = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::Internal(format!("encode image index: {e}")))?;
        let p = self.dir.join("index.json");
        write_durable(&p, &data).map_err(|e| Error::io(format!("write {}", p.display()), e))
    }

    pub fn blob_path(&self, rec: &ImageRecord) -> PathBuf {
        self.blobs.join(&rec.file)
    }

    fn base_path(&self, hex: &str) -> PathBuf {
        base_file(&self.blobs, hex)
    }

    /// Forgets a saved first-layer state that cannot be used (its record
    /// keeps naming the layer; the file is what counts).
    pub fn drop_base(&self, path: &Path) {
        if path.parent() == Some(self.blobs.as_path()) {
            let _ = fs::remove_file(path);
        }
    }

    /// The stored images whose first layer is `layer` and whose converter
    /// state after it is kept: their records and the states' files.
    pub fn bases_for(&self, layer: &str) -> Vec<(ImageRecord, PathBuf)> {
        let index = lock(&self.index);
        index
            .images
            .iter()
            .filter(|r| r.base_layer.as_deref() == Some(layer))
            .map(|r| (r.clone(), self.base_path(r.hex())))
            .filter(|(_, p)| p.exists())
            .collect()
    }

    /// Where the image's root filesystem is mounted (shared by its containers).
    pub fn mount_point(&self, rec: &ImageRecord) -> PathBuf {
        self.mounts.join(rec.hex()).join("rootfs")
    }

    /// Finds an image by id (`sha256:<hex>`, `<hex>` or a unique prefix of it), tag
    /// or repo digest; registry references are normalized first (`busybox` is
    /// `docker.io/library/busybox:latest`).
    pub fn get(&self, reference: &str) -> Option<ImageRecord> {
        let index = lock(&self.index);
        let norm = normalize(reference);
        if let Some(r) = index.images.iter().find(|r| {
            r.id == reference
                || r.hex() == reference
                || r.tags.contains(&norm)
                || r.digests.iter().any(|d| d == reference || *d == norm)
        }) {
            return Some(r.clone());
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut it = index.images.iter().filter(|r| r.hex().starts_with(hex));
            if let (Some(one), None) = (it.next(), it.next()) {
                return Some(one.clone());
            }
        }
        None
    }

    pub fn list(&self) -> Vec<ImageRecord> {
        lock(&self.index).images.clone()
    }

    /// Pulls a SIF file from the local filesystem into the store. Blocking.
    pub fn pull_local(&self, reference: &str, path: &Path) -> Result<ImageRecord> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer; the type check
        // below refuses anything but a regular file.
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Error::NotFound(format!("image file {} does not exist", path.display()))
                }
                _ => Error::io(format!("open image file {}", path.display()), e),
            })?;
        let meta = src
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "image {} is not a regular file",
                path.display()
            )));
        }
        let source = path.display().to_string();
        // Check it before copying anything.
        let (config, offset, size) = inspect_sif(&mut src, &source)?;

        let tmp = self
            .blobs
            .join(format!(".pull-{}-{}", std::process::id(), random_hex(8)));
        let copied = (|| -> Result<(String, u64)> {
            let mut out = File::create(&tmp)
                .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            use std::io::Seek;
            src.seek(std::io::SeekFrom::Start(0))
                .map_err(|e| Error::io("seek", e))?;
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(|e| Error::io(format!("read {source}"), e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
                total += n as u64;
            }
            out.sync_all()
                .map_err(|e| Error::io(format!("sync {}", tmp.display()), e))?;
            Ok((hex::encode(hasher.finalize()), total))
        })();
        let (hex, total) = match copied {
            Ok(v) => v,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if total != meta.len() {
            let _ = fs::remove_file(&tmp);
            return Err(Error::FailedPrecondition(format!(
                "{source} changed while it was being copied"
            )));
        }
        self.insert(
            &tmp,
            &hex,
            total,
            offset,
            size,
            config,
            Some(normalize(reference)),
            None,
            None,
            None,
        )
    }

    /// A fresh directory for a pull in progress (removed by the caller, and at
    /// the next start if we die first).
    pub fn temp_dir(&self) -> Result<PathBuf> {
        let d = self.dir.join("tmp").join(random_hex(8));
        fs::create_dir_all(&d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        Ok(d)
    }

    /// Adds a SIF made from a registry image (`sif` is moved into the store)
    /// under its id (the image config's digest), with a tag and a repo digest.
    /// `base`: the digest of the image's first layer and the converter's
    /// state after it, kept for images that start with the same layer.
    /// `unsynced_crc`: the root filesystem's CRC-32 when `sif` was written
    /// without fsync ([`Self::sync`] is then the caller's to run).
    #[allow(clippy::too_many_arguments)]
    pub fn add_converted(
        &self,
        sif: &Path,
        id: &str,
        tag: Option<String>,
        repo_digest: Option<String>,
        base: Option<(String, Vec<u8>)>,
        unsynced_crc: Option<u32>,
    ) -> Result<ImageRecord> {
        let hex = id
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!("image id {id:?} is not a sha256 digest"))
            })?;
        let mut f = File::open(sif).map_err(|e| Error::io(format!("open {}", sif.display()), e))?;
        let total = f
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", sif.display()), e))?
            .len();
        let (config, offset, size) = inspect_sif(&mut f, &sif.display().to_string())?;
        self.insert(
            sif,
            hex,
            total,
            offset,
            size,
            config,
            tag,
            repo_digest,
            base,
            unsynced_crc,
        )
    }

    /// Adds a tag and a repo digest to an image already stored.
    pub fn add_names(
        &self,
        id: &str,
        tag: Option<String>,
        repo_digest: Option<String>,
    ) -> Result<ImageRecord> {
        let mut index = lock(&self.index);
        if let Some(t) = &tag {
            for r in index.images.iter_mut() {
                r.tags.retain(|x| x != t);
            }
        }
        let rec = index
            .images
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| Error::NotFound(format!("image {id} not found")))?;
        rec.tags.extend(tag);
        if let Some(d) = repo_digest {
            if !rec.digests.contains(&d) {
                rec.digests.push(d);
            }
        }
        let rec = rec.clone();
        self.save(&index)?;
        Ok(rec)
    }

    /// Moves `file` into the store as `<hex>.sif` and records it (or adds the
    /// tag and digest to the record that already has this id).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &self,
        file_path: &Path,
        hex: &str,
        total: u64,
        offset: u64,
        size: u64,
        config: Option<ImageConfig>,
        tag: Option<String>,
        repo_digest: Option<String>,
        base: Option<(String, Vec<u8>)>,
        unsynced_crc: Option<u32>,
    ) -> Result<ImageRecord> {
        let file = format!("{hex}.sif");
        let dest = self.blobs.join(&file);
        let id = format!("sha256:{hex}");
        // The first layer's state is written before the index is locked (it
        // can be large) and put in place only for a new record: one that
        // exists keeps its own, which matches its own SIF. Not synced: a
        // state lost in a crash only means that the next image with this
        // first layer converts it again (one that cannot be read is deleted).
        let base = base.and_then(|(layer, bytes)| {
            let tmp = self
                .blobs
                .join(format!(".{hex}{BASE_SUFFIX}.tmp-{}", random_hex(8)));
            match fs::write(&tmp, &bytes) {
                Ok(()) => Some((layer, tmp)),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    tracing::warn!(image = %id, error = %e, "the first layer's state is not kept");
                    None
                }
            }
        });
        let mut index = lock(&self.index);
        let exists = index.images.iter().any(|r| r.id == id);
        if exists {
            // Stored once: the new copy is not needed.
            let _ = fs::remove_file(file_path);
        } else {
            fs::rename(file_path, &dest).map_err(|e| {
                let _ = fs::remove_file(file_path);
                if let Some((_, tmp)) = &base {
                    let _ = fs::remove_file(tmp);
                }
                Error::io(format!("store {}", dest.display()), e)
            })?;
            if unsynced_crc.is_none() {
                // A synced file: its new name is made durable before the
                // index names it (an unsynced one gets both from `sync`).
                // The image is stored either way: a failure is only logged.
                if let Err(e) = File::open(&self.blobs).and_then(|d| d.sync_all()) {
                    tracing::warn!(dir = %self.blobs.display(), error = %e, "syncing the image directory");
                }
            }
        }
        if let Some(t) = &tag {
            // A tag names one image: move it.
            for r in index.images.iter_mut() {
                r.tags.retain(|x| x != t);
            }
        }
        let rec = match index.images.iter_mut().find(|r| r.id == id) {
            Some(r) => {
                r.tags.extend(tag);
                if let Some(d) = repo_digest {
                    if !r.digests.contains(&d) {
                        r.digests.push(d);
                    }
                }
                r.clone()
            }
            None => {
                let base_layer = base.as_ref().and_then(|(layer, tmp)| {
                    match fs::rename(tmp, self.base_path(hex)) {
                        Ok(()) => Some(layer.clone()),
                        Err(e) => {
                            tracing::warn!(image = %id, error = %e, "the first layer's state is not kept");
                            None
                        }
                    }
                });
                let rec = ImageRecord {
                    id,
                    tags: tag.into_iter().collect(),
                    digests: repo_digest.into_iter().collect(),
                    size: total,
                    file,
                    rootfs_offset: offset,
                    rootfs_size: size,
                    config,
                    pulled_at_ns: now_ns(),
                    base_layer,
                    unsynced_crc,
                };
                index.images.push(rec.clone());
                rec
            }
        };
        if let Some((_, tmp)) = &base {
            // Not taken (the image was stored already), or renamed away.
            let _ = fs::remove_file(tmp);
        }
        // Images that lost their last tag stay (by id) until removed, as in containerd.
        self.save(&index)?;
        Ok(rec)
    }

    /// Removes an image's record and file. Refuses while `in_use` says containers use it.
    pub fn remove(
        &self,
        reference: &str,
        in_use: impl Fn(&str) -> bool,
    ) -> Result<Option<ImageRecord>> {
        let Some(rec) = self.get(reference) else {
            return Ok(None);
        };
        if in_use(&rec.id) {
            return Err(Error::FailedPrecondition(format!(
                "image {} is in use by a container",
                rec.id
            )));
        }
        let mut index = lock(&self.index);
        index.images.retain(|r| r.id != rec.id);
        self.save(&index)?;
        drop(index);
        let _ = fs::remove_dir_all(self.mounts.join(rec.hex()));
        let _ = fs::remove_file(self.base_path(rec.hex()));
        match fs::remove_file(self.blob_path(&rec)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove image file", e)),
        }
        Ok(Some(rec))
    }

    /// The directories where images' root filesystems are (or were)
    /// mounted, by the image's hex id: also those of images no longer stored.
    pub fn mount_dirs(&self) -> Vec<(String, PathBuf)> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(&self.mounts) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    v.push((e.file_name().to_string_lossy().into_owned(), e.path()));
                }
            }
        }
        v
    }

    /// Bytes and inodes used by the store.
    pub fn usage(&self) -> (u64, u64) {
        let mut bytes = 0;
        let mut inodes = 0;
        if let Ok(rd) = fs::read_dir(&self.blobs) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    bytes += m.len();
                    inodes += 1;
                }
            }
        }
        (bytes, inodes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Validates a SIF and extracts what containers need: the image config (if any)
/// and the root filesystem's place in the file.
fn inspect_sif(f: &mut File, source: &str) -> Result<(Option<ImageConfig>, u64, u64)> {
    let sif = SifImage::parse(f).map_err(|e| sif_error(source, e))?;
    let part = sif
        .check_primary_squashfs(f)
        .map_err(|e| sif_error(source, e))?
        .clone();
    // Its superblock must fit its partition, or the image would only fail
    // at CreateContainer, as a mount error.
    sycri_native::sif::check_squashfs(f, &part).map_err(|e| sif_error(source, e))?;
    if let Some((_, _, arch)) = part.partition() {
        let host = sycri_native::sif::host_arch();
        if arch != host && arch != "00" {
            return Err(Error::FailedPrecondition(format!(
                "{source}: image is built for {} but this host runs {}",
                sycri_native::sif::arch_name(arch).unwrap_or(arch),
                sycri_native::sif::arch_name(host).unwrap_or(host)
            )));
        }
    }
    let config = match sif.find_generic_json("oci-config.json") {
        Some(d) => {
            let d = d.clone();
            let bytes = sif
                .read_object(f, &d, MAX_CONFIG)
                .map_err(|e| sif_error(source, e))?;
            Some(serde_json::from_slice::<ImageConfig>(&bytes).map_err(|e| {
                Error::InvalidArgument(format!("{source}: oci-config.json is not valid: {e}"))
            })?)
        }
        None => None,
    };
    Ok((config, part.offset, part.size))
}

/// The saved first-layer state of the image `<hex>.sif` in `blobs`.
fn base_file(blobs: &Path, hex: &str) -> PathBuf {
    blobs.join(format!("{hex}{BASE_SUFFIX}"))
}

/// fsync of a file, then of the directory that holds its name; the file's
/// inode number.
fn sync_file(path: &Path, dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let f = File::open(path)?;
    f.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(f.metadata()?.ino())
}

/// At open, for a record whose file was not known to be synced: keeps it
/// (synced now) when the file is whole: the size recorded, the root
/// filesystem where recorded, with the CRC recorded; otherwise removes the
/// file and its saved first-layer state and says so. Whether to keep it.
fn settle_unsynced(blobs: &Path, rec: &mut ImageRecord) -> bool {
    let Some(want) = rec.unsynced_crc else {
        return true;
    };
    let path = blobs.join(&rec.file);
    let checked = (|| -> std::result::Result<(), String> {
        let mut f = File::open(&path).map_err(|e| e.to_string())?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len != rec.size {
            return Err(format!("{len} bytes, {} were written", rec.size));
        }
        let (_, offset, size) =
            inspect_sif(&mut f, &path.display().to_string()).map_err(|e| e.to_string())?;
        if (offset, size) != (rec.rootfs_offset, rec.rootfs_size) {
            return Err("its root filesystem is not where it was written".into());
        }
        let got = crc_of(&mut f, offset, size).map_err(|e| e.to_string())?;
        if got != want {
            return Err(format!("CRC-32 {got:08x}, {want:08x} was written"));
        }
        sync_file(&path, blobs).map(drop).map_err(|e| e.to_string())
    })();
    match checked {
        Ok(()) => {
            rec.unsynced_crc = None;
            true
        }
        Err(why) => {
            tracing::warn!(image = %rec.id, file = %path.display(), error = %why, "an image written before a crash is not whole; dropping it (pull it again)");
            let _ = fs::remove_file(&path);
            let _ = fs::remove_file(base_file(blobs, rec.hex()));
            false
        }
    }
}

/// CRC-32 of `size` bytes of `f` from `offset` on.
fn crc_of(f: &mut File, offset: u64, size: u64) -> std::io::Result<u32> {
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(offset))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(crc.finalize())
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}
