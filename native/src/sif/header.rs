//! The 128-byte global header at the start of every SIF file.

use super::error::SifError;

/// Size of the global header in bytes.
pub const HEADER_SIZE: usize = 128;
/// Magic bytes at offset 32.
pub const SIF_MAGIC: &[u8; 10] = b"SIF_MAGIC\0";
/// The only SIF format version in use.
pub const SIF_VERSION: &str = "01";
/// Launch script written into new images.
pub const LAUNCH_SCRIPT: &str = "#!/usr/bin/env run-singularity\n";

const LAUNCH_LEN: usize = 32;
const MAGIC_OFF: usize = 32;
const VERSION_OFF: usize = 42;
const ARCH_OFF: usize = 45;
const UUID_OFF: usize = 48;
const INTS_OFF: usize = 64;

/// Decoded global header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Launch script ("#!/usr/bin/env run-singularity\n" or empty).
    pub launch_script: String,
    /// Format version, always "01" for accepted images.
    pub version: String,
    /// SIF arch code of the primary partition, e.g. "02" for amd64.
    pub arch: String,
    pub uuid: [u8; 16],
    /// Creation time, unix seconds.
    pub ctime: i64,
    /// Modification time, unix seconds.
    pub mtime: i64,
    pub free_descriptors: u64,
    pub total_descriptors: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub data_offset: u64,
    pub data_size: u64,
}

/// Text of a fixed-size NUL padded field, up to the first NUL.
pub(crate) fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

pub(crate) fn le_i32(b: &[u8], off: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    i32::from_le_bytes(a)
}

pub(crate) fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn le_i64(b: &[u8], off: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    i64::from_le_bytes(a)
}

/// Copies `src` into the NUL padded field `dst`; the caller checks the length.
pub(crate) fn put_str(dst: &mut [u8], src: &str) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src.as_bytes()[..n]);
}

/// An i64 that must not be negative, as u64.
fn non_negative(v: i64, field: &str) -> Result<u64, SifError> {
    u64::try_from(v).map_err(|_| SifError::BadHeader(format!("{field} is negative ({v})")))
}

impl Header {
    /// Decodes and checks magic and version (layout checks need the file length and
    /// happen in `SifImage::parse`).
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Header, SifError> {
        if &b[MAGIC_OFF..MAGIC_OFF + 10] != SIF_MAGIC {
            return Err(SifError::BadMagic);
        }
        let version = c_string(&b[VERSION_OFF..VERSION_OFF + 3]);
        if version != SIF_VERSION {
            return Err(SifError::UnsupportedVersion(version));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[UUID_OFF..UUID_OFF + 16]);
        let int = |i: usize| le_i64(b, INTS_OFF + 8 * i);
        Ok(Header {
            launch_script: c_string(&b[..LAUNCH_LEN]),
            version,
            arch: c_string(&b[ARCH_OFF..ARCH_OFF + 3]),
            uuid,
            ctime: int(0),
            mtime: int(1),
            free_descriptors: non_negative(int(2), "free descriptor count")?,
            total_descriptors: non_negative(int(3), "total descriptor count")?,
            descriptor_offset: non_negative(int(4), "descriptor offset")?,
            descriptor_size: non_negative(int(5), "descriptor area size")?,
            data_offset: non_negative(int(6), "data offset")?,
            data_size: non_negative(int(7), "data size")?,
        })
    }

    /// Encodes the header. Fails if a string does not fit or a number exceeds i64.
    pub fn encode(&self) -> Result<[u8; HEADER_SIZE], SifError> {
        if self.launch_script.len() > LAUNCH_LEN {
            return Err(SifError::InvalidInput(format!(
                "launch script is {} bytes, at most {LAUNCH_LEN} fit",
                self.launch_script.len()
            )));
        }
        if self.version.len() > 2 {
            return Err(SifError::InvalidInput(format!(
                "version {:?} is too long",
                self.version
            )));
        }
        check_arch(&self.arch)?;
        let mut b = [0u8; HEADER_SIZE];
        put_str(&mut b[..LAUNCH_LEN], &self.launch_script);
        b[MAGIC_OFF..MAGIC_OFF + 10].copy_from_slice(SIF_MAGIC);
        put_str(&mut b[VERSION_OFF..VERSION_OFF + 2], &self.version);
        put_str(&mut b[ARCH_OFF..ARCH_OFF + 2], &self.arch);
        b[UUID_OFF..UUID_OFF + 16].copy_from_slice(&self.uuid);
        let unsigned = [
            self.free_descriptors,
            self.total_descriptors,
            self.descriptor_offset,
            self.descriptor_size,
            self.data_offset,
            self.data_size,
        ];
        let mut ints = [self.ctime, self.mtime, 0, 0, 0, 0, 0, 0];
        for (slot, v) in ints[2..].iter_mut().zip(unsigned) {
            *slot = i64::try_from(v)
                .map_err(|_| SifError::InvalidInput(format!("header value {v} exceeds i64")))?;
        }
        for (i, v) in ints.iter().enumerate() {
            let off = INTS_OFF + 8 * i;
            b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        Ok(b)
    }
}

/// A SIF arch code is two ASCII digits ("00".."13" today).
pub(crate) fn check_arch(arch: &str) -> Result<(), SifError> {
    if arch.len() == 2 && arch.bytes().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(SifError::InvalidInput(format!(
            "arch code {arch:?} is not two digits"
        )))
    }
}

/// SIF arch code of the target this crate is built for ("02" on x86_64, "04" on
/// aarch64, "00" when SIF has no code for it).
pub fn host_arch() -> &'static str {
    if cfg!(target_arch = "x86_64") {
        "02"
    } else if cfg!(target_arch = "x86") {
        "01"
    } else if cfg!(target_arch = "aarch64") {
        "04"
    } else if cfg!(target_arch = "arm") {
        "03"
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "big")) {
        "05"
    } else if cfg!(all(target_arch = "powerpc64", target_endian = "little")) {
        "06"
    } else if cfg!(all(target_arch = "mips", target_endian = "big")) {
        "07"
    } else if cfg!(all(target_arch = "mips", target_endian = "little")) {
        "08"
    } else if cfg!(all(target_arch = "mips64", target_endian = "big")) {
        "09"
    } else if cfg!(all(target_arch = "mips64", target_endian = "little")) {
        "10"
    } else if cfg!(target_arch = "s390x") {
        "11"
    } else if cfg!(target_arch = "riscv64") {
        "12"
    } else if cfg!(target_arch = "loongarch64") {
        "13"
    } else {
        "00"
    }
}

/// Go-style architecture name of a SIF arch code ("02" -> "amd64"); `None` if unknown.
pub fn arch_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "00" => "unknown",
        "01" => "386",
        "02" => "amd64",
        "03" => "arm",
        "04" => "arm64",
        "05" => "ppc64",
        "06" => "ppc64le",
        "07" => "mips",
        "08" => "mipsle",
        "09" => "mips64",
        "10" => "mips64le",
        "11" => "s390x",
        "12" => "riscv64",
        "13" => "loong64",
        _ => return None,
    })
}
