//! The 585-byte object descriptors.

use super::error::SifError;
use super::header::{c_string, check_arch, le_i32, le_i64, le_u32, put_str};
use super::types::{DataType, Extra, FsType, Link, PartType};

/// Size of one descriptor on disk.
pub const DESCRIPTOR_SIZE: usize = 585;
/// Bits that mark a group ID (in the group field and in group links).
pub const GROUP_MASK: u32 = 0xf000_0000;

const NAME_OFF: usize = 73;
const NAME_LEN: usize = 128;
const EXTRA_OFF: usize = 201;
const EXTRA_LEN: usize = 384;
const FINGERPRINT_LEN: usize = 20;

/// One used descriptor, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub data_type: DataType,
    /// Object ID, 1-based, unique within the image.
    pub id: u32,
    /// Group the object belongs to; `None` when the descriptor has no group.
    pub group_id: Option<u32>,
    pub link: Link,
    /// Absolute offset of the object's data in the file.
    pub offset: u64,
    /// Size of the object's data.
    pub size: u64,
    /// Size including the alignment gap before the object.
    pub size_with_padding: u64,
    pub ctime: i64,
    pub mtime: i64,
    pub name: String,
    pub extra: Extra,
}

impl Descriptor {
    /// File system, partition type and arch code when this is a partition.
    pub fn partition(&self) -> Option<(FsType, PartType, &str)> {
        match &self.extra {
            Extra::Partition { fs, part, arch } => Some((*fs, *part, arch.as_str())),
            _ => None,
        }
    }

    /// True for a partition whose type is PrimSys (the root file system).
    pub fn is_primary_partition(&self) -> bool {
        self.data_type == DataType::Partition
            && matches!(
                self.extra,
                Extra::Partition {
                    part: PartType::PrimSys,
                    ..
                }
            )
    }

    /// Decodes one slot; `Ok(None)` for an unused slot.
    pub(crate) fn decode(slot: u64, b: &[u8]) -> Result<Option<Descriptor>, SifError> {
        debug_assert_eq!(b.len(), DESCRIPTOR_SIZE);
        if b[4] == 0 {
            return Ok(None);
        }
        let bad = |reason: String| SifError::BadDescriptor { slot, reason };
        let data_type = DataType::from_raw(le_i32(b, 0));
        let id = le_u32(b, 5);
        if id == 0 {
            return Err(bad("object ID is 0".into()));
        }
        let raw_group = le_u32(b, 9);
        let group = raw_group & !GROUP_MASK;
        let group_id = (group != 0).then_some(group);
        let raw_link = le_u32(b, 13);
        let link = if raw_link == 0 {
            Link::None
        } else if raw_link & GROUP_MASK == GROUP_MASK {
            Link::Group(raw_link & !GROUP_MASK)
        } else {
            Link::Object(raw_link)
        };
        let field = |off: usize, what: &str| -> Result<u64, SifError> {
            let v = le_i64(b, off);
            u64::try_from(v).map_err(|_| bad(format!("object {id}: {what} is negative ({v})")))
        };
        let offset = field(17, "data offset")?;
        let size = field(25, "data size")?;
        let size_with_padding = field(33, "padded size")?;
        let extra_b = &b[EXTRA_OFF..EXTRA_OFF + EXTRA_LEN];
        let extra = match data_type {
            DataType::Partition => Extra::Partition {
                fs: FsType::from_raw(le_i32(extra_b, 0)),
                part: PartType::from_raw(le_i32(extra_b, 4)),
                arch: c_string(&extra_b[8..11]),
            },
            DataType::Signature => {
                let mut entity = [0u8; FINGERPRINT_LEN];
                entity.copy_from_slice(&extra_b[4..4 + FINGERPRINT_LEN]);
                Extra::Signature {
                    hash_type: le_i32(extra_b, 0),
                    entity,
                }
            }
            DataType::CryptoMessage => Extra::CryptoMessage {
                format: le_i32(extra_b, 0),
                message_type: le_i32(extra_b, 4),
            },
            DataType::Sbom => Extra::Sbom {
                format: le_i32(extra_b, 0),
            },
            DataType::OciRootIndex | DataType::OciBlob => Extra::OciDigest(c_string(extra_b)),
            _ => Extra::None,
        };
        Ok(Some(Descriptor {
            data_type,
            id,
            group_id,
            link,
            offset,
            size,
            size_with_padding,
            ctime: le_i64(b, 41),
            mtime: le_i64(b, 49),
            name: c_string(&b[NAME_OFF..NAME_OFF + NAME_LEN]),
            extra,
        }))
    }

    /// Encodes a used descriptor (uid/gid fields are written as 0).
    pub(crate) fn encode(&self) -> Result<[u8; DESCRIPTOR_SIZE], SifError> {
        let invalid = |m: String| SifError::InvalidInput(format!("object {}: {m}", self.id));
        if self.id == 0 || self.id & GROUP_MASK != 0 {
            return Err(invalid("ID must be between 1 and 0x0fffffff".into()));
        }
        if self.name.len() > NAME_LEN {
            return Err(invalid(format!("name is longer than {NAME_LEN} bytes")));
        }
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..4].copy_from_slice(&self.data_type.to_raw().to_le_bytes());
        b[4] = 1;
        b[5..9].copy_from_slice(&self.id.to_le_bytes());
        let group = match self.group_id {
            None => GROUP_MASK,
            Some(g) if g != 0 && g & GROUP_MASK == 0 => GROUP_MASK | g,
            Some(g) => return Err(invalid(format!("group ID {g} out of range"))),
        };
        b[9..13].copy_from_slice(&group.to_le_bytes());
        let link = match self.link {
            Link::None => 0,
            Link::Object(o) if o != 0 && o & GROUP_MASK == 0 => o,
            Link::Group(g) if g & GROUP_MASK == 0 => GROUP_MASK | g,
            other => return Err(invalid(format!("link {other:?} out of range"))),
        };
        b[13..17].copy_from_slice(&link.to_le_bytes());
        for (off, v) in [
            (17, self.offset),
            (25, self.size),
            (33, self.size_with_padding),
        ] {
            let v = i64::try_from(v).map_err(|_| invalid(format!("value {v} exceeds i64")))?;
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[41..49].copy_from_slice(&self.ctime.to_le_bytes());
        b[49..57].copy_from_slice(&self.mtime.to_le_bytes());
        put_str(&mut b[NAME_OFF..NAME_OFF + NAME_LEN], &self.name);
        let e = &mut b[EXTRA_OFF..EXTRA_OFF + EXTRA_LEN];
        match &self.extra {
            Extra::Partition { fs, part, arch } => {
                check_arch(arch)?;
                e[0..4].copy_from_slice(&fs.to_raw().to_le_bytes());
                e[4..8].copy_from_slice(&part.to_raw().to_le_bytes());
                put_str(&mut e[8..10], arch);
            }
            Extra::Signature { hash_type, entity } => {
                e[0..4].copy_from_slice(&hash_type.to_le_bytes());
                e[4..4 + FINGERPRINT_LEN].copy_from_slice(entity);
            }
            Extra::CryptoMessage {
                format,
                message_type,
            } => {
                e[0..4].copy_from_slice(&format.to_le_bytes());
                e[4..8].copy_from_slice(&message_type.to_le_bytes());
            }
            Extra::Sbom { format } => e[0..4].copy_from_slice(&format.to_le_bytes()),
            Extra::OciDigest(d) => {
                if d.len() >= EXTRA_LEN {
                    return Err(invalid("OCI digest too long".into()));
                }
                put_str(e, d);
            }
            Extra::None => {}
        }
        Ok(b)
    }
}
