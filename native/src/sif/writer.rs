//! Building new SIF images.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::descriptor::{Descriptor, DESCRIPTOR_SIZE};
use super::error::SifError;
use super::header::{check_arch, host_arch, Header, HEADER_SIZE, LAUNCH_SCRIPT, SIF_VERSION};
use super::image::{SifImage, MAX_DESCRIPTORS};
use super::squashfs::SQUASHFS_MAGIC;
use super::types::{DataType, Extra, FsType, Link, PartType};

/// Descriptor slots in a new image (more are added when there are more objects).
pub const DEFAULT_DESCRIPTORS: u64 = 48;
/// Offset of the descriptor table in new images.
pub const DESCRIPTOR_OFFSET: u64 = 4096;
/// Offset of the data area in new images with the default slot count.
pub const DATA_OFFSET: u64 = DESCRIPTOR_OFFSET + DEFAULT_DESCRIPTORS * DESCRIPTOR_SIZE as u64;
/// Alignment of partitions in new images.
pub const PARTITION_ALIGN: u64 = 4096;

/// Name given to the primary partition.
const PRIMARY_NAME: &str = "rootfs.squashfs";
const COPY_BUF: usize = 128 * 1024;

enum Source<'a> {
    Bytes(Vec<u8>),
    Stream {
        reader: Box<dyn Read + 'a>,
        size: Option<u64>,
    },
}

struct Pending<'a> {
    data_type: DataType,
    name: String,
    extra: Extra,
    align: u64,
    source: Source<'a>,
}

/// Builds a SIF image: objects get IDs 1, 2, ... in the order they are added, all in
/// group 1. Nothing is read from partition sources until a `write_*` call, and then
/// they are streamed, never held in memory.
///
/// ```no_run
/// # use sycri_native::sif::SifBuilder;
/// # fn f(squashfs: std::fs::File) -> Result<(), sycri_native::sif::SifError> {
/// let img = SifBuilder::new()
///     .generic_json("oci-config.json", br#"{"Cmd":["sh"]}"#.to_vec())
///     .primary_squashfs(squashfs, None)
///     .write_to_path(std::path::Path::new("/tmp/out.sif"))?;
/// # Ok(()) }
/// ```
pub struct SifBuilder<'a> {
    launch_script: String,
    arch: String,
    uuid: Option<[u8; 16]>,
    time: Option<i64>,
    objects: Vec<Pending<'a>>,
}

impl Default for SifBuilder<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> SifBuilder<'a> {
    /// A builder with the standard launch script, host arch, random UUID and the
    /// current time.
    pub fn new() -> Self {
        SifBuilder {
            launch_script: LAUNCH_SCRIPT.to_string(),
            arch: host_arch().to_string(),
            uuid: None,
            time: None,
            objects: Vec::new(),
        }
    }

    /// Replaces the launch script (at most 32 bytes; empty for none).
    pub fn launch_script(mut self, script: &str) -> Self {
        self.launch_script = script.to_string();
        self
    }

    /// SIF arch code of the image and its primary partition (default: [`host_arch`]).
    pub fn arch(mut self, code: &str) -> Self {
        self.arch = code.to_string();
        self
    }

    /// Fixed UUID instead of a random one.
    pub fn uuid(mut self, uuid: [u8; 16]) -> Self {
        self.uuid = Some(uuid);
        self
    }

    /// Fixed creation/modification time (unix seconds) for header and objects.
    pub fn time(mut self, unix_secs: i64) -> Self {
        self.time = Some(unix_secs);
        self
    }

    fn push_bytes(mut self, data_type: DataType, name: &str, data: Vec<u8>) -> Self {
        self.objects.push(Pending {
            data_type,
            name: name.to_string(),
            extra: Extra::None,
            align: 1,
            source: Source::Bytes(data),
        });
        self
    }

    /// Adds the definition file the image was built from.
    pub fn deffile(self, data: impl Into<Vec<u8>>) -> Self {
        self.push_bytes(DataType::Deffile, "", data.into())
    }

    /// Adds a labels object (JSON).
    pub fn labels(self, data: impl Into<Vec<u8>>) -> Self {
        self.push_bytes(DataType::Labels, "", data.into())
    }

    /// Adds a GenericJSON object, e.g. named "oci-config.json".
    pub fn generic_json(self, name: &str, data: impl Into<Vec<u8>>) -> Self {
        self.push_bytes(DataType::GenericJson, name, data.into())
    }

    /// Adds a Generic object.
    pub fn generic(self, name: &str, data: impl Into<Vec<u8>>) -> Self {
        self.push_bytes(DataType::Generic, name, data.into())
    }

    /// Adds the primary system partition, a squashfs read from `reader`. With
    /// `size = Some(n)` exactly `n` bytes are copied (fewer is an error); with `None`
    /// the reader is copied to its end. The data must start with "hsqs".
    pub fn primary_squashfs<R: Read + 'a>(mut self, reader: R, size: Option<u64>) -> Self {
        self.objects.push(Pending {
            data_type: DataType::Partition,
            name: PRIMARY_NAME.to_string(),
            extra: Extra::Partition {
                fs: FsType::Squashfs,
                part: PartType::PrimSys,
                arch: String::new(), // set to the image arch when writing
            },
            align: PARTITION_ALIGN,
            source: Source::Stream {
                reader: Box::new(reader),
                size,
            },
        });
        self
    }

    fn validate(&self) -> Result<(), SifError> {
        if self.launch_script.len() > 32 {
            return Err(SifError::InvalidInput(format!(
                "launch script is {} bytes, at most 32 fit",
                self.launch_script.len()
            )));
        }
        check_arch(&self.arch)?;
        let primaries = self
            .objects
            .iter()
            .filter(|o| {
                matches!(
                    o.extra,
                    Extra::Partition {
                        part: PartType::PrimSys,
                        ..
                    }
                )
            })
            .count();
        if primaries > 1 {
            return Err(SifError::MultiplePrimaryPartitions);
        }
        if self.objects.len() as u64 > MAX_DESCRIPTORS {
            return Err(SifError::TooManyDescriptors(self.objects.len() as u64));
        }
        if let Some(o) = self.objects.iter().find(|o| o.name.len() > 128) {
            return Err(SifError::InvalidInput(format!(
                "object name {:?} is longer than 128 bytes",
                o.name
            )));
        }
        Ok(())
    }

    /// Writes the image to `w` starting at offset 0 and leaves `w` positioned at the
    /// end of the image. Returns the metadata that was written.
    pub fn write_to<W: Write + Seek>(self, w: &mut W) -> Result<SifImage, SifError> {
        self.validate()?;
        let now = match self.time {
            Some(t) => t,
            None => now_unix(),
        };
        let uuid = match self.uuid {
            Some(u) => u,
            None => random_uuid()?,
        };
        let count = self.objects.len() as u64;
        let total = count.max(DEFAULT_DESCRIPTORS);
        let descriptor_size = total * DESCRIPTOR_SIZE as u64;
        let data_offset = DESCRIPTOR_OFFSET + descriptor_size;

        // Placeholder for header and descriptor table, filled in at the end.
        w.seek(SeekFrom::Start(0))?;
        write_zeros(w, data_offset)?;

        let mut pos = data_offset;
        let mut descriptors = Vec::with_capacity(self.objects.len());
        for (i, obj) in self.objects.into_iter().enumerate() {
            let id = u32::try_from(i + 1)
                .map_err(|_| SifError::InvalidInput("too many objects".into()))?;
            let start = align_up(pos, obj.align)?;
            write_zeros(w, start - pos)?;
            let size = match obj.source {
                Source::Bytes(b) => {
                    w.write_all(&b)?;
                    b.len() as u64
                }
                Source::Stream { reader, size } => {
                    let check_magic = matches!(
                        obj.extra,
                        Extra::Partition {
                            fs: FsType::Squashfs,
                            ..
                        }
                    );
                    copy_stream(reader, w, size, check_magic.then_some(id))?
                }
            };
            let extra = match obj.extra {
                Extra::Partition { fs, part, .. } => Extra::Partition {
                    fs,
                    part,
                    arch: self.arch.clone(),
                },
                other => other,
            };
            descriptors.push(Descriptor {
                data_type: obj.data_type,
                id,
                group_id: Some(1),
                link: Link::None,
                offset: start,
                size,
                size_with_padding: (start - pos) + size,
                ctime: now,
                mtime: now,
                name: obj.name,
                extra,
            });
            pos = start
                .checked_add(size)
                .ok_or_else(|| SifError::InvalidInput("image size overflows".into()))?;
        }

        let header = Header {
            launch_script: self.launch_script,
            version: SIF_VERSION.to_string(),
            arch: self.arch,
            uuid,
            ctime: now,
            mtime: now,
            free_descriptors: total - count,
            total_descriptors: total,
            descriptor_offset: DESCRIPTOR_OFFSET,
            descriptor_size,
            data_offset,
            data_size: pos - data_offset,
        };
        w.seek(SeekFrom::Start(0))?;
        w.write_all(&header.encode()?)?;
        debug_assert!(HEADER_SIZE as u64 <= DESCRIPTOR_OFFSET);
        w.seek(SeekFrom::Start(DESCRIPTOR_OFFSET))?;
        for d in &descriptors {
            w.write_all(&d.encode()?)?;
        }
        w.seek(SeekFrom::Start(pos))?;
        w.flush()?;
        Ok(SifImage {
            header,
            descriptors,
        })
    }

    /// Writes the image to `path` atomically: into a new temporary file in the same
    /// directory, synced, then renamed over `path`.
    pub fn write_to_path(self, path: &Path) -> Result<SifImage, SifError> {
        self.write_renamed(path, true)
    }

    /// Like [`Self::write_to_path`] without the fsyncs: the image is whole
    /// once `path` exists, but only in the page cache. For callers that make
    /// it durable later and can tell a copy a power loss cut short.
    pub fn write_to_path_unsynced(self, path: &Path) -> Result<SifImage, SifError> {
        self.write_renamed(path, false)
    }

    fn write_renamed(self, path: &Path, sync: bool) -> Result<SifImage, SifError> {
        let file_name = path.file_name().ok_or_else(|| {
            SifError::InvalidInput(format!("{} has no file name", path.display()))
        })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let (file, tmp) = create_temp(dir, &file_name.to_string_lossy())?;
        let guard = TempGuard(Some(tmp.clone()));
        let mut bw = BufWriter::with_capacity(COPY_BUF, file);
        let img = self.write_to(&mut bw)?;
        let file = bw.into_inner().map_err(|e| SifError::Io(e.into_error()))?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        std::fs::rename(&tmp, path)?;
        guard.disarm();
        // Make the rename durable; failure here does not undo a complete image.
        if sync {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(img)
    }
}

/// Removes the temporary file unless disarmed.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn create_temp(dir: &Path, base: &str) -> Result<(File, PathBuf), SifError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut last_err = None;
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{base}.tmp-{}-{n}-{nanos}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(SifError::Io(last_err.unwrap_or_else(|| {
        std::io::Error::new(ErrorKind::AlreadyExists, "no free temporary file name")
    })))
}

/// Copies a partition source, returning its length; checks the announced size and,
/// when `squashfs_id` is set, the squashfs magic.
fn copy_stream<W: Write>(
    mut reader: Box<dyn Read + '_>,
    w: &mut W,
    size: Option<u64>,
    squashfs_id: Option<u32>,
) -> Result<u64, SifError> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut head = [0u8; 4];
    let mut copied: u64 = 0;
    loop {
        let want = match size {
            Some(n) if copied >= n => break,
            // Bounded by COPY_BUF, so the cast cannot truncate.
            Some(n) => (n - copied).min(COPY_BUF as u64) as usize,
            None => COPY_BUF,
        };
        let k = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if copied < 4 {
            let at = copied as usize; // < 4
            let n = (4 - at).min(k);
            head[at..at + n].copy_from_slice(&buf[..n]);
        }
        w.write_all(&buf[..k])?;
        copied += k as u64;
    }
    if let Some(n) = size {
        if copied != n {
            return Err(SifError::SourceSizeMismatch {
                expected: n,
                actual: copied,
            });
        }
    }
    if let Some(id) = squashfs_id {
        if copied < 4 || &head != SQUASHFS_MAGIC {
            let found = if copied < 4 {
                format!("only {copied} bytes of data")
            } else {
                head.iter().map(|b| format!("{b:02x}")).collect()
            };
            return Err(SifError::NotSquashfs { id, found });
        }
    }
    Ok(copied)
}

fn write_zeros<W: Write>(w: &mut W, mut n: u64) -> std::io::Result<()> {
    let zeros = [0u8; 4096];
    while n > 0 {
        // Bounded by the buffer length, so the cast cannot truncate.
        let k = n.min(zeros.len() as u64) as usize;
        w.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

fn align_up(v: u64, align: u64) -> Result<u64, SifError> {
    if align <= 1 {
        return Ok(v);
    }
    v.checked_add(align - 1)
        .map(|x| x / align * align)
        .ok_or_else(|| SifError::InvalidInput("image size overflows".into()))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A random (version 4) UUID from the kernel's random source.
fn random_uuid() -> Result<[u8; 16], SifError> {
    let mut u = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut u)?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}
