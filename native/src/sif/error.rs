//! Errors produced while reading or writing SIF images.

use super::squashfs::SquashfsError;
use super::types::FsType;

/// Everything that can go wrong with a SIF image. Messages are meant for users.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SifError {
    #[error("SIF I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("not a SIF image: the magic bytes \"SIF_MAGIC\" are missing at offset 32")]
    BadMagic,

    #[error("unsupported SIF version {0:?} (only version \"01\" is supported)")]
    UnsupportedVersion(String),

    #[error(
        "SIF image is truncated: the {what} needs {needed} bytes but the file has only {actual}"
    )]
    Truncated {
        what: &'static str,
        needed: u64,
        actual: u64,
    },

    #[error("invalid SIF header: {0}")]
    BadHeader(String),

    #[error(
        "SIF header declares {0} descriptors, which is more than the supported maximum of 65536"
    )]
    TooManyDescriptors(u64),

    #[error("invalid SIF descriptor area: {0}")]
    DescriptorArea(String),

    #[error("invalid SIF descriptor in slot {slot}: {reason}")]
    BadDescriptor { slot: u64, reason: String },

    #[error("SIF image has two objects with the same ID {0}")]
    DuplicateId(u32),

    #[error("SIF object {id} (offset {offset}, size {size}) extends past the end of the file ({file_len} bytes)")]
    ObjectOutOfBounds {
        id: u32,
        offset: u64,
        size: u64,
        file_len: u64,
    },

    #[error("SIF objects {a} and {b} overlap each other")]
    OverlappingObjects { a: u32, b: u32 },

    #[error("SIF object {id} overlaps the SIF header or descriptor area")]
    ObjectOverlapsMetadata { id: u32 },

    #[error("SIF image has no root filesystem (no primary system partition)")]
    NoPrimaryPartition,

    #[error("SIF image has more than one primary system partition")]
    MultiplePrimaryPartitions,

    #[error("SIF partition {id} claims to be squashfs but does not start with the squashfs magic \"hsqs\" (found {found})")]
    NotSquashfs { id: u32, found: String },

    #[error("SIF root filesystem (partition {id}) cannot be mounted: {source}")]
    BadSquashfs {
        id: u32,
        #[source]
        source: SquashfsError,
    },

    #[error("SIF root filesystem (partition {id}) has type {fs}, only squashfs is supported")]
    UnsupportedFilesystem { id: u32, fs: FsType },

    #[error("SIF object {id} is {size} bytes, more than the allowed {max} bytes")]
    ObjectTooLarge { id: u32, size: u64, max: u64 },

    #[error("SIF object {id} is not described by this image")]
    UnknownObject { id: u32 },

    #[error("cannot build SIF image: {0}")]
    InvalidInput(String),

    #[error("partition source gave {actual} bytes but {expected} were announced")]
    SourceSizeMismatch { expected: u64, actual: u64 },
}
