//! The squashfs (version 4.0) superblock of a SIF's root file system, read and
//! checked against the partition that holds it, so that an image whose file
//! system cannot mount (a partition cut short, a corrupt or foreign superblock)
//! is refused when it is pulled rather than when a container is created.
//!
//! Layout (little-endian, 96 bytes at the start of the file system): magic
//! "hsqs", inode count, mkfs time, block size, fragment count (u32 each);
//! compression id, block log, flags, id count, major, minor (u16 each); then
//! u64s: root inode reference, bytes used, and the starts of the id index,
//! xattr id table, inode table, directory table, fragment index and inode
//! lookup (export) index. An absent optional table has start u64::MAX.

/// Magic bytes at the start of a squashfs file system.
pub const SQUASHFS_MAGIC: &[u8; 4] = b"hsqs";
/// Size of the superblock.
pub const SUPERBLOCK_SIZE: usize = 96;
/// Metadata blocks (inodes, directories, the tables) hold this much each,
/// uncompressed; each table's index has one u64 per block.
const METADATA_BLOCK: u64 = 8192;
/// Smallest and largest data block sizes (4 KiB, 1 MiB).
const BLOCK_LOG_MIN: u16 = 12;
const BLOCK_LOG_MAX: u16 = 20;
/// Start of an absent optional table.
const ABSENT: u64 = u64::MAX;
/// On-disk sizes of one id, fragment entry and lookup entry, and of the
/// header of the xattr id table.
const ID_BYTES: u64 = 4;
const FRAGMENT_ENTRY_BYTES: u64 = 16;
const LOOKUP_ENTRY_BYTES: u64 = 8;
const XATTR_TABLE_HEADER: u64 = 16;

/// Compressors a squashfs may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Lzma,
    Lzo,
    Xz,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_id(id: u16) -> Option<Compression> {
        Some(match id {
            1 => Compression::Gzip,
            2 => Compression::Lzma,
            3 => Compression::Lzo,
            4 => Compression::Xz,
            5 => Compression::Lz4,
            6 => Compression::Zstd,
            _ => return None,
        })
    }
}

/// Why a superblock is refused. Messages are meant for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SquashfsError {
    #[error("the partition is {0} bytes, too small for a squashfs superblock (96 bytes)")]
    TooSmall(u64),
    #[error("no squashfs magic \"hsqs\" at its start")]
    BadMagic,
    #[error("squashfs version {major}.{minor}, only 4.0 is supported")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("unknown squashfs compression id {0}")]
    UnknownCompression(u16),
    #[error("block size {size} with block log {log}: the size must be 2^log, from 4 KiB to 1 MiB")]
    BadBlockSize { size: u32, log: u16 },
    #[error("the file system uses {bytes_used} bytes but its partition has only {partition}")]
    LargerThanPartition { bytes_used: u64, partition: u64 },
    #[error("the file system claims to use {0} bytes, less than its own superblock")]
    SmallerThanSuperblock(u64),
    #[error("the {table} (bytes {start}..{end}) lies outside the {bytes_used} bytes the file system uses")]
    TableOutside {
        table: &'static str,
        start: u64,
        end: u64,
        bytes_used: u64,
    },
    #[error(
        "the {first} (at {first_start}) does not come before the {second} (at {second_start})"
    )]
    TablesOutOfOrder {
        first: &'static str,
        first_start: u64,
        second: &'static str,
        second_start: u64,
    },
    #[error("the file system has no uid/gid table")]
    NoIds,
    #[error("the root inode reference {0:#x} points outside the inode table")]
    BadRootInode(u64),
}

/// A decoded squashfs 4.0 superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub inodes: u32,
    pub mkfs_time: u32,
    pub block_size: u32,
    pub fragments: u32,
    pub compression: Compression,
    pub block_log: u16,
    pub flags: u16,
    pub ids: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table_start: u64,
    pub xattr_id_table_start: u64,
    pub inode_table_start: u64,
    pub directory_table_start: u64,
    pub fragment_table_start: u64,
    pub lookup_table_start: u64,
}

fn u16_at(b: &[u8; SUPERBLOCK_SIZE], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8; SUPERBLOCK_SIZE], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8; SUPERBLOCK_SIZE], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Bytes of the index of a table of `count` entries of `entry` bytes each:
/// one u64 per metadata block the entries fill.
fn index_bytes(count: u64, entry: u64) -> u64 {
    count.saturating_mul(entry).div_ceil(METADATA_BLOCK) * 8
}

impl Superblock {
    /// Decodes the fields that every squashfs 4.0 superblock must get right:
    /// magic, version, compressor and block size.
    pub fn decode(b: &[u8; SUPERBLOCK_SIZE]) -> Result<Superblock, SquashfsError> {
        if &b[0..4] != SQUASHFS_MAGIC {
            return Err(SquashfsError::BadMagic);
        }
        let (major, minor) = (u16_at(b, 28), u16_at(b, 30));
        if (major, minor) != (4, 0) {
            return Err(SquashfsError::UnsupportedVersion { major, minor });
        }
        let id = u16_at(b, 20);
        let compression = Compression::from_id(id).ok_or(SquashfsError::UnknownCompression(id))?;
        let block_size = u32_at(b, 12);
        let block_log = u16_at(b, 22);
        if !(BLOCK_LOG_MIN..=BLOCK_LOG_MAX).contains(&block_log)
            || u64::from(block_size) != 1u64 << block_log
        {
            return Err(SquashfsError::BadBlockSize {
                size: block_size,
                log: block_log,
            });
        }
        Ok(Superblock {
            inodes: u32_at(b, 4),
            mkfs_time: u32_at(b, 8),
            block_size,
            fragments: u32_at(b, 16),
            compression,
            block_log,
            flags: u16_at(b, 24),
            ids: u16_at(b, 26),
            root_inode: u64_at(b, 32),
            bytes_used: u64_at(b, 40),
            id_table_start: u64_at(b, 48),
            xattr_id_table_start: u64_at(b, 56),
            inode_table_start: u64_at(b, 64),
            directory_table_start: u64_at(b, 72),
            fragment_table_start: u64_at(b, 80),
            lookup_table_start: u64_at(b, 88),
        })
    }

    /// Checks that the file system fits in a partition of `partition` bytes
    /// and that every table it names lies inside the bytes it uses, in the
    /// order the kernel relies on (inode table, directory table, then the
    /// rest).
    pub fn check(&self, partition: u64) -> Result<(), SquashfsError> {
        let used = self.bytes_used;
        if used > partition {
            return Err(SquashfsError::LargerThanPartition {
                bytes_used: used,
                partition,
            });
        }
        if used < SUPERBLOCK_SIZE as u64 {
            return Err(SquashfsError::SmallerThanSuperblock(used));
        }
        if self.ids == 0 {
            return Err(SquashfsError::NoIds);
        }
        let inside = |table: &'static str, start: u64, len: u64| {
            let end = start.saturating_add(len);
            if start < SUPERBLOCK_SIZE as u64 || start >= used || end > used {
                return Err(SquashfsError::TableOutside {
                    table,
                    start,
                    end,
                    bytes_used: used,
                });
            }
            Ok(())
        };
        // The inode and directory tables are runs of metadata blocks: at
        // least their starts must lie inside.
        inside("inode table", self.inode_table_start, 1)?;
        inside("directory table", self.directory_table_start, 1)?;
        let mut later = vec![(
            "id table",
            self.id_table_start,
            index_bytes(u64::from(self.ids), ID_BYTES),
        )];
        if self.fragments > 0 {
            later.push((
                "fragment table",
                self.fragment_table_start,
                index_bytes(u64::from(self.fragments), FRAGMENT_ENTRY_BYTES),
            ));
        }
        if self.lookup_table_start != ABSENT {
            later.push((
                "export table",
                self.lookup_table_start,
                index_bytes(u64::from(self.inodes), LOOKUP_ENTRY_BYTES),
            ));
        }
        if self.xattr_id_table_start != ABSENT {
            later.push((
                "xattr id table",
                self.xattr_id_table_start,
                XATTR_TABLE_HEADER,
            ));
        }
        for (table, start, len) in &later {
            inside(table, *start, *len)?;
        }
        let ordered = |first: &'static str, a: u64, second: &'static str, b: u64| {
            if a < b {
                Ok(())
            } else {
                Err(SquashfsError::TablesOutOfOrder {
                    first,
                    first_start: a,
                    second,
                    second_start: b,
                })
            }
        };
        ordered(
            "inode table",
            self.inode_table_start,
            "directory table",
            self.directory_table_start,
        )?;
        for (table, start, _) in &later {
            ordered("directory table", self.directory_table_start, table, *start)?;
        }
        // The root inode: a metadata block (relative to the inode table) that
        // starts before the directory table, and an offset inside it.
        let block = self.root_inode >> 16;
        let offset = self.root_inode & 0xffff;
        if offset >= METADATA_BLOCK
            || self.inode_table_start.saturating_add(block) >= self.directory_table_start
        {
            return Err(SquashfsError::BadRootInode(self.root_inode));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The superblock of a small, well-formed gzip image of 8000 bytes: 128
    /// KiB blocks, 10 inodes, 2 fragments, 1 id, an export table and no
    /// xattrs, tables in mksquashfs's order.
    fn good() -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[0..4].copy_from_slice(b"hsqs");
        put32(&mut b, 4, 10); // inodes
        put32(&mut b, 8, 1_700_000_000);
        put32(&mut b, 12, 128 * 1024);
        put32(&mut b, 16, 2); // fragments
        put16(&mut b, 20, 1); // gzip
        put16(&mut b, 22, 17);
        put16(&mut b, 24, 0x00c0);
        put16(&mut b, 26, 1); // ids
        put16(&mut b, 28, 4);
        put16(&mut b, 30, 0);
        put64(&mut b, 32, 0x0000_0000_0000_0040); // root: block 0, offset 64
        put64(&mut b, 40, 8000); // bytes used
        put64(&mut b, 48, 7992); // id index: 1 block, 8 bytes
        put64(&mut b, 56, u64::MAX); // no xattrs
        put64(&mut b, 64, 5000); // inode table
        put64(&mut b, 72, 6000); // directory table
        put64(&mut b, 80, 7000); // fragment index
        put64(&mut b, 88, 7500); // export index
        b
    }

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn check(b: &[u8; SUPERBLOCK_SIZE], partition: u64) -> Result<Superblock, SquashfsError> {
        let sb = Superblock::decode(b)?;
        sb.check(partition)?;
        Ok(sb)
    }

    #[test]
    fn a_good_superblock_is_decoded_field_by_field() {
        let sb = check(&good(), 8192).expect("good");
        assert_eq!(
            sb,
            Superblock {
                inodes: 10,
                mkfs_time: 1_700_000_000,
                block_size: 131072,
                fragments: 2,
                compression: Compression::Gzip,
                block_log: 17,
                flags: 0xc0,
                ids: 1,
                root_inode: 0x40,
                bytes_used: 8000,
                id_table_start: 7992,
                xattr_id_table_start: u64::MAX,
                inode_table_start: 5000,
                directory_table_start: 6000,
                fragment_table_start: 7000,
                lookup_table_start: 7500,
            }
        );
        // Exactly as large as the partition is fine.
        check(&good(), 8000).expect("bytes_used == partition");
    }

    #[test]
    fn a_file_system_larger_than_its_partition_is_refused() {
        assert_eq!(
            check(&good(), 7999),
            Err(SquashfsError::LargerThanPartition {
                bytes_used: 8000,
                partition: 7999
            })
        );
        let mut b = good();
        put64(&mut b, 40, 50);
        assert_eq!(
            check(&b, 8192),
            Err(SquashfsError::SmallerThanSuperblock(50))
        );
    }

    #[test]
    fn magic_version_and_compression_are_checked() {
        let mut b = good();
        b[0..4].copy_from_slice(b"sqsh"); // big-endian squashfs
        assert_eq!(check(&b, 8192), Err(SquashfsError::BadMagic));
        for (major, minor) in [(3, 1), (4, 1), (5, 0)] {
            let mut b = good();
            put16(&mut b, 28, major);
            put16(&mut b, 30, minor);
            assert_eq!(
                check(&b, 8192),
                Err(SquashfsError::UnsupportedVersion { major, minor })
            );
        }
        for id in [0u16, 7, 0xffff] {
            let mut b = good();
            put16(&mut b, 20, id);
            assert_eq!(check(&b, 8192), Err(SquashfsError::UnknownCompression(id)));
        }
        for (id, c) in [
            (2, Compression::Lzma),
            (4, Compression::Xz),
            (6, Compression::Zstd),
        ] {
            let mut b = good();
            put16(&mut b, 20, id);
            assert_eq!(check(&b, 8192).expect("known").compression, c);
        }
    }

    #[test]
    fn block_size_and_log_must_agree_and_be_in_range() {
        for (size, log) in [
            (131072u32, 16u16),
            (100_000, 17),
            (2048, 11),
            (2 << 20, 21),
            (0, 0),
        ] {
            let mut b = good();
            put32(&mut b, 12, size);
            put16(&mut b, 22, log);
            assert_eq!(
                check(&b, 8192),
                Err(SquashfsError::BadBlockSize { size, log }),
                "{size} {log}"
            );
        }
        for (size, log) in [(4096u32, 12u16), (1 << 20, 20)] {
            let mut b = good();
            put32(&mut b, 12, size);
            put16(&mut b, 22, log);
            check(&b, 8192).expect("in range");
        }
    }

    #[test]
    fn every_table_must_lie_inside_the_bytes_used() {
        for (off, table, start) in [
            (64, "inode table", 8000u64),
            (72, "directory table", 9000),
            (48, "id table", 8000),
            (80, "fragment table", 1 << 40),
            (88, "export table", 8001),
            (56, "xattr id table", 7990),
        ] {
            let mut b = good();
            put64(&mut b, off, start);
            match check(&b, 8192) {
                Err(SquashfsError::TableOutside { table: t, .. }) => assert_eq!(t, table),
                other => panic!("{table} at {start}: {other:?}"),
            }
        }
        // The id index of 1 id is 8 bytes: at 7993 it would end past 8000.
        let mut b = good();
        put64(&mut b, 48, 7993);
        assert_eq!(
            check(&b, 8192),
            Err(SquashfsError::TableOutside {
                table: "id table",
                start: 7993,
                end: 8001,
                bytes_used: 8000
            })
        );
        // Inside the superblock itself.
        let mut b = good();
        put64(&mut b, 64, 10);
        assert!(matches!(
            check(&b, 8192),
            Err(SquashfsError::TableOutside {
                table: "inode table",
                ..
            })
        ));
        // 3000 ids (12000 bytes) fill two metadata blocks: a 16-byte index.
        let mut b = good();
        put16(&mut b, 26, 3000);
        assert!(matches!(
            check(&b, 8192),
            Err(SquashfsError::TableOutside {
                table: "id table",
                end: 8008,
                ..
            })
        ));
    }

    #[test]
    fn absent_tables_are_not_looked_at() {
        let mut b = good();
        put32(&mut b, 16, 0); // no fragments: whatever the start says
        put64(&mut b, 80, 1 << 50);
        put64(&mut b, 88, u64::MAX); // not exportable
        check(&b, 8192).expect("no fragment or export table");
        put64(&mut b, 56, 7900); // xattrs present, inside
        check(&b, 8192).expect("xattr table inside");
    }

    #[test]
    fn tables_must_come_in_order() {
        let mut b = good();
        put64(&mut b, 64, 6500); // inode table after the directory table
        assert_eq!(
            check(&b, 8192),
            Err(SquashfsError::TablesOutOfOrder {
                first: "inode table",
                first_start: 6500,
                second: "directory table",
                second_start: 6000
            })
        );
        let mut b = good();
        put64(&mut b, 80, 5500); // fragment index before the directory table
        assert!(matches!(
            check(&b, 8192),
            Err(SquashfsError::TablesOutOfOrder {
                second: "fragment table",
                ..
            })
        ));
    }

    #[test]
    fn the_root_inode_and_the_ids_are_checked() {
        let mut b = good();
        put64(&mut b, 32, 1000 << 16); // block 1000 bytes into a 1000-byte table
        assert_eq!(
            check(&b, 8192),
            Err(SquashfsError::BadRootInode(1000 << 16))
        );
        let mut b = good();
        put64(&mut b, 32, 8192);
        assert_eq!(check(&b, 8192), Err(SquashfsError::BadRootInode(8192)));
        let mut b = good();
        put16(&mut b, 26, 0);
        assert_eq!(check(&b, 8192), Err(SquashfsError::NoIds));
    }
}
