//! What a conversion is given and what it reports: the layers, the limits on
//! what it reads, the squashfs compression, and its statistics.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    /// Every block stored as it is: no compression work at all, the image is
    /// as large as the files (every squashfs reader reads it).
    None,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// The level used when none is configured: zstd 1 (fast, within a few
    /// percent of level 3's size on binaries), gzip 6 (zlib's default); none
    /// has only level 0.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 1,
            Compression::None => 0,
        }
    }

    /// The levels accepted.
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Compression::Gzip => 1..=9,
            Compression::Zstd => 1..=22,
            Compression::None => 0..=0,
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
pub(super) fn kernel_config() -> Option<String> {
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
    /// Compression level; `None`: [`Compression::default_level`].
    pub level: Option<i32>,
    /// Compressor threads (1: compress on the converting thread).
    pub jobs: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            limits: Limits::default(),
            compression: Compression::default(),
            level: None,
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Entries in the image: the root, directories, and every name of files,
    /// symlinks and FIFOs (each hard link counts).
    pub entries: u64,
    /// Uncompressed bytes of all layers.
    pub uncompressed_bytes: u64,
    /// Size of the squashfs file.
    pub squashfs_bytes: u64,
    /// File bytes in the image that no name reaches (files replaced or deleted
    /// by a later layer).
    pub unreferenced_bytes: u64,
}
