//! Going on from an image's first layer instead of converting it again.
//!
//! Images share base layers (every `FROM busybox` image starts with busybox's
//! layer), and containerd unpacks a shared layer once. A SIF holds one merged
//! squashfs, but the converter writes file data in arrival order, so the
//! first layer's data blocks are the start of the data area of every image
//! that begins with that layer. After the first layer the converter saves its
//! state ([`BaseLayer`]: the merged tree so far, the open fragment, where
//! each block went); the image store keeps it beside the SIF. Converting
//! another image with the same first layer (same digest, compression, level
//! and block size) then copies that stretch of the stored image and resumes
//! from the saved state (`Converter::resume_checked`): the first layer is neither
//! downloaded nor decompressed, and the result is byte for byte the image a
//! full conversion makes.
//!
//! The saved state comes from a file: everything it names (blocks, fragments,
//! inodes, offsets) is checked against the image it is copied from before it
//! is used, so a damaged file is refused ([`ConvertError::Base`]), never
//! written into an image.

use std::fs::File;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ConvertError;
use super::merge::Merger;
use super::options::{Compression, ConvertOptions};
use super::sqfs::{self, Boundary, Codec, FileData, SqfsWriter};

/// Version of the saved state's layout: it holds the converter's own types
/// (merge's tree, tar_read's entries, sqfs' block maps) as serde writes
/// them, so a change to any of those must bump it (an old state is then
/// refused and the layer converted again); so must a change in how blocks
/// are packed or compressed (a new zstd), or images made from a state stop
/// being byte for byte a full conversion's.
const FORMAT: u32 = 1;

/// The converter's state after an image's first layer, with where that
/// layer's blocks are in the image it was saved from.
#[derive(Clone, Debug)]
pub struct BaseLayer {
    header: Header,
    merger: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    format: u32,
    compression: Compression,
    level: i32,
    block_size: u32,
    /// Uncompressed bytes of the layer (counted against the image's limit).
    used: u64,
    boundary: Boundary,
    /// (offset in the squashfs, size field) of each block the layer wrote.
    placed: Vec<(u64, u32)>,
    /// Where the layer's blocks end in the squashfs.
    data_end: u64,
}

/// What the converter keeps after the first layer until the image is done.
pub(super) struct Pending {
    pub boundary: Boundary,
    pub merger: Vec<u8>,
    pub used: u64,
}

impl Pending {
    /// The saved state, once the image's block placement is known.
    pub fn complete(self, codec: Codec, placed: &[(u64, u32)], data_end: u64) -> Option<BaseLayer> {
        let k = usize::try_from(self.boundary.next_seq).ok()?;
        let mine = placed.get(..k)?.to_vec();
        let end = placed.get(k).map_or(data_end, |p| p.0);
        Some(BaseLayer {
            header: Header {
                format: FORMAT,
                compression: codec.kind,
                level: codec.level,
                block_size: sqfs::BLOCK_SIZE as u32,
                used: self.used,
                boundary: self.boundary,
                placed: mine,
                data_end: end,
            },
            merger: self.merger,
        })
    }
}

impl BaseLayer {
    /// The file form: the header as one JSON line, then the merged tree.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.header).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.merger);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<BaseLayer, ConvertError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("no header line"))?;
        let header: Header =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| bad(&format!("header: {e}")))?;
        if header.format != FORMAT {
            return Err(bad(&format!("format {} is not {FORMAT}", header.format)));
        }
        Ok(BaseLayer {
            header,
            merger: bytes[nl + 1..].to_vec(),
        })
    }

    /// Whether a conversion with `opts` writes the blocks this state has.
    pub fn fits(&self, opts: &ConvertOptions) -> bool {
        let level = opts
            .level
            .unwrap_or_else(|| opts.compression.default_level());
        self.header.compression == opts.compression
            && self.header.level == level
            && self.header.block_size == sqfs::BLOCK_SIZE as u32
    }
}

fn bad(why: &str) -> ConvertError {
    ConvertError::Base(why.to_string())
}

/// A saved state checked against the stored squashfs it was saved from,
/// ready to go on from (`Converter::resume_checked`).
pub struct Checked {
    base: BaseLayer,
    merger: Merger<Option<FileData>>,
    layers: usize,
}

impl BaseLayer {
    /// Checks everything the state names against a stored squashfs of `len`
    /// bytes and `opts`, for a conversion of `layers` layers (the first one
    /// included). Consumes the state: the checked one carries it on (it is
    /// the new image's state too).
    pub fn check(
        self,
        opts: &ConvertOptions,
        layers: usize,
        len: u64,
    ) -> Result<Checked, ConvertError> {
        if !self.fits(opts) {
            return Err(bad("saved with another compression or block size"));
        }
        let h = &self.header;
        let b = &h.boundary;
        let start = sqfs::base_data_start();
        let blocks_inside = h.placed.iter().all(|&(at, size)| {
            at >= start
                && at
                    .checked_add(u64::from(size & !sqfs::BLOCK_UNCOMPRESSED))
                    .is_some_and(|e| e <= h.data_end)
        });
        if h.data_end < start
            || h.data_end > len
            || h.placed.len() as u64 != b.next_seq
            || !blocks_inside
            || b.frag.len() > sqfs::BLOCK_SIZE
            || b.frag_seqs.iter().any(|&s| s >= b.next_seq)
            || layers == 0
            || h.used > opts.limits.max_uncompressed
        {
            return Err(bad("it names data the stored image does not have"));
        }
        let (next_seq, frags, open) = (b.next_seq, b.frag_seqs.len(), b.frag.len());
        let merger = Merger::restore(
            &self.merger,
            opts.limits.max_entries,
            |d: &Option<FileData>| d.as_ref().is_none_or(|d| d.fits(next_seq, frags, open)),
        )
        .map_err(|e| bad(&e))?;
        Ok(Checked {
            base: self,
            merger,
            layers,
        })
    }
}

impl Checked {
    /// A writer over `file` that goes on after the layer: its blocks are
    /// copied first from the squashfs at `offset` in `src`.
    pub(super) fn start_writer(
        &self,
        src: &File,
        offset: u64,
        file: File,
        codec: Codec,
        jobs: usize,
    ) -> Result<SqfsWriter, ConvertError> {
        let h = &self.base.header;
        let start = sqfs::base_data_start();
        copy_range(src, offset + start, &file, start, h.data_end - start).map_err(|e| {
            ConvertError::Io {
                context: "copy the first layer's blocks from the stored image".into(),
                source: e,
            }
        })?;
        SqfsWriter::resume(
            file,
            codec,
            jobs,
            h.boundary.clone(),
            h.placed.clone(),
            h.data_end,
        )
        .map_err(|e| ConvertError::Io {
            context: "start the squashfs writer".into(),
            source: e,
        })
    }

    /// The state, the merged tree, the image's layer count and the bytes the
    /// first layer used.
    pub(super) fn into_parts(self) -> (BaseLayer, Merger<Option<FileData>>, usize, u64) {
        let used = self.base.header.used;
        (self.base, self.merger, self.layers, used)
    }
}

/// Copies `len` bytes at `from` in `src` to `to` in `dst`. std's copy of
/// one file into another is copy_file_range(2) on Linux: the kernel moves
/// the bytes, none pass through here.
fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let (mut s, mut d) = (src, dst);
    s.seek(SeekFrom::Start(from))?;
    d.seek(SeekFrom::Start(to))?;
    let n = std::io::copy(&mut s.take(len), &mut d)?;
    if n != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{n} of {len} bytes: the stored image is shorter than its record says"),
        ));
    }
    Ok(())
}

/// Largest saved state read back (a million entries take about 400 MB).
const MAX_STATE: u64 = 1 << 29;

/// Reads a saved state from `path`.
pub fn load(path: &Path) -> Result<BaseLayer, ConvertError> {
    let io = |e| ConvertError::Io {
        context: format!("read {}", path.display()),
        source: e,
    };
    let f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len > MAX_STATE {
        return Err(bad(&format!("{len} bytes, more than {MAX_STATE}")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_STATE + 1), &mut bytes)
        .map_err(io)?;
    BaseLayer::from_bytes(&bytes)
}
