//! Reading a SIF image: [`SifImage::parse`] checks the global header and the
//! descriptor table against the stream's real length, so that later code can
//! trust every offset and size, and reads object data only on request.

use super::descriptor::{Descriptor, DESCRIPTOR_SIZE};
use super::error::SifError;
use super::header::{Header, HEADER_SIZE, SIF_MAGIC};
use super::squashfs::{SquashfsError, Superblock, SQUASHFS_MAGIC, SUPERBLOCK_SIZE};
use super::types::{DataType, FsType};
use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Most descriptors an image may declare.
pub const MAX_DESCRIPTORS: u64 = 65536;

/// Descriptors read per `read` call while parsing.
const DESCRIPTOR_CHUNK: usize = 64;

/// Parsed metadata of a SIF image (header and used descriptors, in slot order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SifImage {
    pub header: Header,
    pub descriptors: Vec<Descriptor>,
}

impl SifImage {
    /// Reads and validates the header and descriptors of a SIF image.
    ///
    /// Checks: magic and version, descriptor count and area, header data area, every
    /// used object inside the stream, no duplicate IDs, no object overlapping another
    /// object or the header/descriptor area. Object contents are not read.
    pub fn parse<R: Read + Seek>(r: &mut R) -> Result<SifImage, SifError> {
        let file_len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;

        let mut hb = [0u8; HEADER_SIZE];
        let have = read_up_to(r, &mut hb)?;
        if have >= 42 && &hb[32..42] != SIF_MAGIC {
            return Err(SifError::BadMagic);
        }
        if have < HEADER_SIZE {
            return Err(SifError::Truncated {
                what: "header",
                needed: HEADER_SIZE as u64,
                actual: file_len,
            });
        }
        let header = Header::decode(&hb)?;
        check_layout(&header, file_len)?;

        let descriptors = read_descriptors(r, &header)?;
        check_objects(&header, &descriptors, file_len)?;
        Ok(SifImage {
            header,
            descriptors,
        })
    }

    /// Opens `path` read-only and parses it; returns the open file for later reads.
    pub fn open(path: &Path) -> Result<(SifImage, File), SifError> {
        let mut f = File::open(path)?;
        let img = SifImage::parse(&mut f)?;
        Ok((img, f))
    }

    /// The descriptor with this object ID.
    pub fn descriptor(&self, id: u32) -> Option<&Descriptor> {
        self.descriptors.iter().find(|d| d.id == id)
    }

    /// The root file system: the single partition of type PrimSys.
    pub fn primary_partition(&self) -> Result<&Descriptor, SifError> {
        let mut found = self.descriptors.iter().filter(|d| d.is_primary_partition());
        let first = found.next().ok_or(SifError::NoPrimaryPartition)?;
        if found.next().is_some() {
            return Err(SifError::MultiplePrimaryPartitions);
        }
        Ok(first)
    }

    /// Checks that the primary partition is squashfs and its data starts with the
    /// squashfs magic; returns its descriptor.
    pub fn check_primary_squashfs<R: Read + Seek>(
        &self,
        r: &mut R,
    ) -> Result<&Descriptor, SifError> {
        let d = self.primary_partition()?;
        if let Some((fs, _, _)) = d.partition() {
            if fs != FsType::Squashfs {
                return Err(SifError::UnsupportedFilesystem { id: d.id, fs });
            }
        }
        let mut magic = [0u8; 4];
        let n = if d.size < 4 {
            0
        } else {
            r.seek(SeekFrom::Start(d.offset))?;
            read_up_to(r, &mut magic)?
        };
        if n < 4 || &magic != SQUASHFS_MAGIC {
            let found = if n < 4 {
                format!("only {} bytes of data", d.size)
            } else {
                magic.iter().map(|b| format!("{b:02x}")).collect()
            };
            return Err(SifError::NotSquashfs { id: d.id, found });
        }
        Ok(d)
    }

    /// The first GenericJSON object with this name (e.g. "oci-config.json").
    pub fn find_generic_json(&self, name: &str) -> Option<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.data_type == DataType::GenericJson && d.name == name)
    }

    /// Reads the whole data of `d`, refusing objects larger than `max` bytes.
    /// `d` must be one of this image's descriptors.
    pub fn read_object<R: Read + Seek>(
        &self,
        r: &mut R,
        d: &Descriptor,
        max: u64,
    ) -> Result<Vec<u8>, SifError> {
        if d.size > max {
            return Err(SifError::ObjectTooLarge {
                id: d.id,
                size: d.size,
                max,
            });
        }
        let mut rd = self.object_reader(r, d)?;
        let len = usize::try_from(d.size).map_err(|_| SifError::ObjectTooLarge {
            id: d.id,
            size: d.size,
            max: usize::MAX as u64,
        })?;
        let mut buf = vec![0u8; len];
        rd.read_exact(&mut buf)
            .map_err(|e| eof_as_truncated(e, d))?;
        Ok(buf)
    }

    /// A reader over the data of `d` (positioned at its start, limited to its size).
    /// `d` must be one of this image's descriptors.
    pub fn object_reader<'r, R: Read + Seek>(
        &self,
        r: &'r mut R,
        d: &Descriptor,
    ) -> Result<std::io::Take<&'r mut R>, SifError> {
        if self.descriptor(d.id) != Some(d) {
            return Err(SifError::UnknownObject { id: d.id });
        }
        r.seek(SeekFrom::Start(d.offset))?;
        Ok(r.take(d.size))
    }
}

fn eof_as_truncated(e: std::io::Error, d: &Descriptor) -> SifError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        SifError::Truncated {
            what: "object data",
            needed: d.offset.saturating_add(d.size),
            actual: d.offset,
        }
    } else {
        SifError::Io(e)
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Header-level checks against the file length.
fn check_layout(h: &Header, file_len: u64) -> Result<(), SifError> {
    if h.total_descriptors > MAX_DESCRIPTORS {
        return Err(SifError::TooManyDescriptors(h.total_descriptors));
    }
    if h.free_descriptors > h.total_descriptors {
        return Err(SifError::BadHeader(format!(
            "{} free descriptors but only {} in total",
            h.free_descriptors, h.total_descriptors
        )));
    }
    // Cannot overflow: total <= 65536.
    let expected = h.total_descriptors * DESCRIPTOR_SIZE as u64;
    if h.descriptor_size != expected {
        return Err(SifError::DescriptorArea(format!(
            "area size is {} bytes but {} descriptors need {expected}",
            h.descriptor_size, h.total_descriptors
        )));
    }
    if h.descriptor_size > 0 {
        if h.descriptor_offset < HEADER_SIZE as u64 {
            return Err(SifError::DescriptorArea(format!(
                "area at offset {} overlaps the header",
                h.descriptor_offset
            )));
        }
        if h.descriptor_offset >= file_len {
            return Err(SifError::DescriptorArea(format!(
                "area starts at offset {}, past the end of the file ({file_len} bytes)",
                h.descriptor_offset
            )));
        }
        let end = h
            .descriptor_offset
            .checked_add(h.descriptor_size)
            .ok_or_else(|| SifError::DescriptorArea("area end overflows".into()))?;
        if end > file_len {
            return Err(SifError::Truncated {
                what: "descriptor area",
                needed: end,
                actual: file_len,
            });
        }
    }
    let data_end = h
        .data_offset
        .checked_add(h.data_size)
        .ok_or_else(|| SifError::BadHeader("data area end overflows".into()))?;
    if data_end > file_len {
        return Err(SifError::Truncated {
            what: "data area",
            needed: data_end,
            actual: file_len,
        });
    }
    Ok(())
}

/// Reads the descriptor table in bounded chunks, keeping used slots.
fn read_descriptors<R: Read + Seek>(r: &mut R, h: &Header) -> Result<Vec<Descriptor>, SifError> {
    let total = h.total_descriptors;
    let mut out = Vec::new();
    if total == 0 {
        return Ok(out);
    }
    r.seek(SeekFrom::Start(h.descriptor_offset))?;
    let mut buf = vec![0u8; DESCRIPTOR_CHUNK * DESCRIPTOR_SIZE];
    let mut slot = 0u64;
    while slot < total {
        // Bounded by DESCRIPTOR_CHUNK, so the cast cannot truncate.
        let n = (total - slot).min(DESCRIPTOR_CHUNK as u64) as usize;
        let chunk = &mut buf[..n * DESCRIPTOR_SIZE];
        r.read_exact(chunk).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                SifError::Truncated {
                    what: "descriptor area",
                    needed: h.descriptor_offset.saturating_add(h.descriptor_size),
                    actual: h
                        .descriptor_offset
                        .saturating_add(slot * DESCRIPTOR_SIZE as u64),
                }
            } else {
                SifError::Io(e)
            }
        })?;
        for rec in chunk.chunks_exact(DESCRIPTOR_SIZE) {
            if let Some(d) = Descriptor::decode(slot, rec)? {
                out.push(d);
            }
            slot += 1;
        }
    }
    Ok(out)
}

/// Bounds, uniqueness and overlap checks of the used objects.
fn check_objects(h: &Header, ds: &[Descriptor], file_len: u64) -> Result<(), SifError> {
    let mut ids = HashSet::with_capacity(ds.len());
    let desc_start = h.descriptor_offset;
    let desc_end = h.descriptor_offset + h.descriptor_size; // checked in check_layout
    let mut spans = Vec::with_capacity(ds.len());
    for d in ds {
        if !ids.insert(d.id) {
            return Err(SifError::DuplicateId(d.id));
        }
        let end = match d.offset.checked_add(d.size) {
            Some(end) if end <= file_len => end,
            _ => {
                return Err(SifError::ObjectOutOfBounds {
                    id: d.id,
                    offset: d.offset,
                    size: d.size,
                    file_len,
                })
            }
        };
        if d.size == 0 {
            continue;
        }
        let overlaps = |s: u64, e: u64| d.offset < e && s < end;
        if overlaps(0, HEADER_SIZE as u64)
            || (h.descriptor_size > 0 && overlaps(desc_start, desc_end))
        {
            return Err(SifError::ObjectOverlapsMetadata { id: d.id });
        }
        spans.push((d.offset, end, d.id));
    }
    spans.sort_unstable();
    let mut prev: Option<(u64, u32)> = None; // furthest end so far and its object
    for (start, end, id) in spans {
        if let Some((prev_end, prev_id)) = prev {
            if start < prev_end {
                return Err(SifError::OverlappingObjects { a: prev_id, b: id });
            }
        }
        if prev.is_none_or(|(pe, _)| end > pe) {
            prev = Some((end, id));
        }
    }
    Ok(())
}

/// Reads the superblock at the start of partition `d` and checks it against
/// the partition's size (see [`Superblock::check`]). `d` must be a partition
/// of the image `r` holds, already checked to lie inside it.
pub fn check_squashfs<R: Read + Seek>(r: &mut R, d: &Descriptor) -> Result<Superblock, SifError> {
    let bad = |source| SifError::BadSquashfs { id: d.id, source };
    if d.size < SUPERBLOCK_SIZE as u64 {
        return Err(bad(SquashfsError::TooSmall(d.size)));
    }
    let mut b = [0u8; SUPERBLOCK_SIZE];
    r.seek(SeekFrom::Start(d.offset))?;
    r.read_exact(&mut b).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SifError::Truncated {
                what: "squashfs superblock",
                needed: d.offset.saturating_add(SUPERBLOCK_SIZE as u64),
                actual: d.offset,
            }
        } else {
            SifError::Io(e)
        }
    })?;
    let sb = Superblock::decode(&b).map_err(bad)?;
    sb.check(d.size).map_err(bad)?;
    Ok(sb)
}
