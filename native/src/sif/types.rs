//! The small enumerations and value types stored in SIF descriptors.

use std::fmt;

/// Kind of object a descriptor points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Deffile,
    EnvVar,
    Labels,
    Partition,
    Signature,
    GenericJson,
    Generic,
    CryptoMessage,
    Sbom,
    OciRootIndex,
    OciBlob,
    Unknown(i32),
}

impl DataType {
    pub fn from_raw(v: i32) -> Self {
        match v {
            0x4001 => Self::Deffile,
            0x4002 => Self::EnvVar,
            0x4003 => Self::Labels,
            0x4004 => Self::Partition,
            0x4005 => Self::Signature,
            0x4006 => Self::GenericJson,
            0x4007 => Self::Generic,
            0x4008 => Self::CryptoMessage,
            0x4009 => Self::Sbom,
            0x400A => Self::OciRootIndex,
            0x400B => Self::OciBlob,
            other => Self::Unknown(other),
        }
    }

    pub fn to_raw(self) -> i32 {
        match self {
            Self::Deffile => 0x4001,
            Self::EnvVar => 0x4002,
            Self::Labels => 0x4003,
            Self::Partition => 0x4004,
            Self::Signature => 0x4005,
            Self::GenericJson => 0x4006,
            Self::Generic => 0x4007,
            Self::CryptoMessage => 0x4008,
            Self::Sbom => 0x4009,
            Self::OciRootIndex => 0x400A,
            Self::OciBlob => 0x400B,
            Self::Unknown(v) => v,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Deffile => "definition file",
            Self::EnvVar => "environment variables",
            Self::Labels => "labels",
            Self::Partition => "partition",
            Self::Signature => "signature",
            Self::GenericJson => "JSON",
            Self::Generic => "generic data",
            Self::CryptoMessage => "cryptographic message",
            Self::Sbom => "SBOM",
            Self::OciRootIndex => "OCI root index",
            Self::OciBlob => "OCI blob",
            Self::Unknown(v) => return write!(f, "unknown data type {v:#x}"),
        };
        f.write_str(s)
    }
}

/// File system held by a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    Squashfs,
    Ext3,
    ImmutableObject,
    Raw,
    EncryptedSquashfs,
    GocryptfsSquashfs,
    Unknown(i32),
}

impl FsType {
    pub fn from_raw(v: i32) -> Self {
        match v {
            1 => Self::Squashfs,
            2 => Self::Ext3,
            3 => Self::ImmutableObject,
            4 => Self::Raw,
            5 => Self::EncryptedSquashfs,
            6 => Self::GocryptfsSquashfs,
            other => Self::Unknown(other),
        }
    }

    pub fn to_raw(self) -> i32 {
        match self {
            Self::Squashfs => 1,
            Self::Ext3 => 2,
            Self::ImmutableObject => 3,
            Self::Raw => 4,
            Self::EncryptedSquashfs => 5,
            Self::GocryptfsSquashfs => 6,
            Self::Unknown(v) => v,
        }
    }
}

impl fmt::Display for FsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Squashfs => "squashfs",
            Self::Ext3 => "ext3",
            Self::ImmutableObject => "immutable object",
            Self::Raw => "raw data",
            Self::EncryptedSquashfs => "encrypted squashfs",
            Self::GocryptfsSquashfs => "gocryptfs squashfs",
            Self::Unknown(v) => return write!(f, "unknown file system type {v}"),
        };
        f.write_str(s)
    }
}

/// Role of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartType {
    System,
    PrimSys,
    Data,
    Overlay,
    Unknown(i32),
}

impl PartType {
    pub fn from_raw(v: i32) -> Self {
        match v {
            1 => Self::System,
            2 => Self::PrimSys,
            3 => Self::Data,
            4 => Self::Overlay,
            other => Self::Unknown(other),
        }
    }

    pub fn to_raw(self) -> i32 {
        match self {
            Self::System => 1,
            Self::PrimSys => 2,
            Self::Data => 3,
            Self::Overlay => 4,
            Self::Unknown(v) => v,
        }
    }
}

impl fmt::Display for PartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("system"),
            Self::PrimSys => f.write_str("primary system"),
            Self::Data => f.write_str("data"),
            Self::Overlay => f.write_str("overlay"),
            Self::Unknown(v) => write!(f, "unknown partition type {v}"),
        }
    }
}

/// What a descriptor links to (signatures link the object or group they sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    None,
    Object(u32),
    Group(u32),
}

/// Type specific information kept in the 384-byte "extra" field of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Extra {
    Partition {
        fs: FsType,
        part: PartType,
        /// SIF arch code of the partition, e.g. "02".
        arch: String,
    },
    Signature {
        /// 1 SHA256, 2 SHA384, 3 SHA512, 4 BLAKE2S, 5 BLAKE2B.
        hash_type: i32,
        /// PGP key fingerprint of the signer (all zero for DSSE signatures).
        entity: [u8; 20],
    },
    CryptoMessage {
        /// 1 OpenPGP, 2 PEM.
        format: i32,
        /// 0x100 clear signature, 0x200 RSA-OAEP.
        message_type: i32,
    },
    Sbom {
        /// 1..=8: cyclonedx-json, cyclonedx-xml, github-json, spdx-json, spdx-rdf,
        /// spdx-tag-value, spdx-yaml, syft-json.
        format: i32,
    },
    /// Digest of an OCI root index or blob, `sha256:<hex>`.
    OciDigest(String),
    None,
}
