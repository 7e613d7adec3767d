//! SIF (Singularity Image Format) reading and writing.
//!
//! [`SifImage::parse`] reads the global header and the descriptor table and validates
//! every used object against the real length of the stream, so that later code can
//! trust offsets and sizes. Object data is never loaded by parsing; use
//! [`SifImage::read_object`] (bounded) or [`SifImage::object_reader`] (streaming).
//! [`check_squashfs`] checks the root file system's superblock against its
//! partition. [`SifBuilder`] writes new images in the modern layout.

mod descriptor;
mod error;
mod header;
mod image;
pub mod squashfs;
mod types;
mod writer;

pub use descriptor::{Descriptor, DESCRIPTOR_SIZE, GROUP_MASK};
pub use error::SifError;
pub use header::{
    arch_name, host_arch, Header, HEADER_SIZE, LAUNCH_SCRIPT, SIF_MAGIC, SIF_VERSION,
};
pub use image::{check_squashfs, SifImage, MAX_DESCRIPTORS};
pub use squashfs::SQUASHFS_MAGIC;
pub use types::{DataType, Extra, FsType, Link, PartType};
pub use writer::{
    SifBuilder, DATA_OFFSET, DEFAULT_DESCRIPTORS, DESCRIPTOR_OFFSET, PARTITION_ALIGN,
};
