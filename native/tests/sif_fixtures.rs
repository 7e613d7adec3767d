//! Parses the real SIF files in shared/fixtures/sif and checks them against what the
//! fixtures README says they contain.

use std::fs::File;
use std::io::Cursor;
use std::path::PathBuf;

use sycri_native::sif::{DataType, Descriptor, Extra, FsType, Link, PartType, SifError, SifImage};

/// Go's zero time, used by deterministic images.
const GO_ZERO_TIME: i64 = -62135596800;
const LAUNCH: &str = "#!/usr/bin/env run-singularity\n";

/// Every fixture the README lists, with its size in bytes.
const FIXTURES: &[(&str, u64)] = &[
    ("busybox_amd64.sif", 792293),
    ("busybox_arm64.sif", 841445),
    ("empty.sif", 32176),
    ("empty-id.sif", 32176),
    ("empty-launch-script.sif", 32176),
    ("one-object-time.sif", 32178),
    ("one-object-generic-json.sif", 32178),
    ("one-object-crypt-message.sif", 32180),
    ("one-object-sbom.sif", 32630),
    ("one-object-oci-root-index.sif", 32882),
    ("one-object-oci-blob.sif", 33023),
    ("one-group.sif", 40960),
    ("one-group-signed-pgp.sif", 42008),
    ("one-group-signed-dsse.sif", 42654),
    ("one-group-signed-legacy.sif", 41569),
    ("one-group-signed-legacy-group.sif", 41569),
    ("one-group-signed-legacy-all.sif", 45665),
    ("two-groups.sif", 303104),
    ("two-groups-signed-pgp.sif", 305001),
    ("two-groups-signed-dsse.sif", 306224),
    ("two-groups-signed-legacy.sif", 45665),
    ("two-groups-signed-legacy-group.sif", 45665),
    ("two-groups-signed-legacy-all.sif", 49761),
    ("empty.oci.sif", 32179),
];

/// The fixtures folder: $SYCRI_FIXTURES/sif or $SYCRI_FIXTURES, else
/// <manifest>/../../shared/fixtures/sif. `None` (after reporting `test` skipped) if absent.
fn fixtures_dir(test: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SYCRI_FIXTURES") {
        Some(v) => {
            let base = PathBuf::from(v);
            if base.join("sif").is_dir() {
                base.join("sif")
            } else {
                base
            }
        }
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sif"),
    };
    if dir.join("empty.sif").is_file() {
        Some(dir)
    } else {
        sycri_native::testing::skip(
            test,
            &format!("SIF fixtures not found at {}", dir.display()),
        );
        None
    }
}

struct Fixture {
    img: SifImage,
    file: File,
    len: u64,
}

impl Fixture {
    fn obj(&self, id: u32) -> &Descriptor {
        self.img
            .descriptor(id)
            .unwrap_or_else(|| panic!("object {id} missing"))
    }

    fn data(&self, id: u32) -> Vec<u8> {
        let d = self.obj(id).clone();
        let mut f = &self.file;
        self.img
            .read_object(&mut f, &d, 1 << 20)
            .expect("read object")
    }
}

fn open(test: &str, name: &str) -> Option<Fixture> {
    let dir = fixtures_dir(test)?;
    let path = dir.join(name);
    let (img, file) = SifImage::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let len = file.metadata().expect("metadata").len();
    Some(Fixture { img, file, len })
}

/// Checks the ID, type, group, link, placement and name of an object.
#[allow(clippy::too_many_arguments)]
fn check_obj(
    fx: &Fixture,
    id: u32,
    data_type: DataType,
    group: Option<u32>,
    link: Link,
    offset: u64,
    size: u64,
    name: &str,
) {
    let d = fx.obj(id);
    assert_eq!(d.data_type, data_type, "object {id} type");
    assert_eq!(d.group_id, group, "object {id} group");
    assert_eq!(d.link, link, "object {id} link");
    assert_eq!(d.offset, offset, "object {id} offset");
    assert_eq!(d.size, size, "object {id} size");
    assert_eq!(d.name, name, "object {id} name");
}

fn part(fs: FsType, part: PartType, arch: &str) -> Extra {
    Extra::Partition {
        fs,
        part,
        arch: arch.to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn assert_deterministic(fx: &Fixture) {
    assert_eq!(fx.img.header.uuid, [0u8; 16]);
    assert_eq!(fx.img.header.ctime, GO_ZERO_TIME);
    assert_eq!(fx.img.header.mtime, GO_ZERO_TIME);
    for d in &fx.img.descriptors {
        assert_eq!(
            (d.ctime, d.mtime),
            (GO_ZERO_TIME, GO_ZERO_TIME),
            "object {}",
            d.id
        );
    }
}

fn is_no_primary(r: Result<&Descriptor, SifError>) -> bool {
    matches!(r, Err(SifError::NoPrimaryPartition))
}

#[test]
fn every_fixture_parses_with_consistent_layout() {
    let Some(dir) = fixtures_dir("every_fixture_parses_with_consistent_layout") else {
        return;
    };
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("read fixtures dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sif"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "fixture files differ from the README list");

    for (name, size) in FIXTURES {
        let (img, file) = SifImage::open(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let len = file.metadata().unwrap().len();
        assert_eq!(len, *size, "{name} size");
        let h = &img.header;
        assert_eq!(h.version, "01", "{name}");
        assert_eq!(h.total_descriptors, 48, "{name}");
        assert_eq!(h.descriptor_offset, 4096, "{name}");
        assert_eq!(h.descriptor_size, 48 * 585, "{name}");
        assert_eq!(
            h.data_offset + h.data_size,
            len,
            "{name} data area ends at EOF"
        );
        assert_eq!(
            h.free_descriptors + img.descriptors.len() as u64,
            48,
            "{name} free count"
        );
        for d in &img.descriptors {
            assert!(
                d.offset >= h.data_offset,
                "{name} object {} before data",
                d.id
            );
            assert!(d.offset + d.size <= len, "{name} object {} past EOF", d.id);
        }
        // The same bytes through the generic Read+Seek path give the same result.
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let again = SifImage::parse(&mut Cursor::new(&bytes)).unwrap();
        assert_eq!(again, img, "{name}: Cursor parse differs from File parse");
        // Dropping the last byte makes every fixture invalid (data area reaches EOF).
        let cut = SifImage::parse(&mut Cursor::new(&bytes[..bytes.len() - 1]));
        assert!(
            matches!(cut, Err(SifError::Truncated { .. })),
            "{name} minus one byte: {cut:?}"
        );
    }
}

fn check_busybox(
    name: &str,
    arch: &str,
    uuid: &str,
    time: i64,
    inspect_size: u64,
    part_size: u64,
    data_size: u64,
) {
    // The tests are named after their fixture: busybox_amd64 checks busybox_amd64.sif.
    let Some(fx) = open(name.trim_end_matches(".sif"), name) else {
        return;
    };
    let h = &fx.img.header;
    assert_eq!(h.launch_script, LAUNCH);
    assert_eq!(h.arch, arch);
    assert_eq!(hex(&h.uuid), uuid);
    assert_eq!((h.ctime, h.mtime), (time, time));
    assert_eq!(h.free_descriptors, 43);
    assert_eq!(h.data_offset, 32768);
    assert_eq!(h.data_size, data_size);
    assert_eq!(fx.img.descriptors.len(), 5);
    let g1 = Some(1);
    check_obj(&fx, 1, DataType::Deffile, g1, Link::None, 32768, 39, ".");
    check_obj(
        &fx,
        2,
        DataType::GenericJson,
        g1,
        Link::None,
        36864,
        inspect_size,
        "inspect-metadata.json",
    );
    check_obj(
        &fx,
        3,
        DataType::GenericJson,
        g1,
        Link::None,
        40960,
        90,
        "oci-config.json",
    );
    check_obj(
        &fx,
        4,
        DataType::Partition,
        g1,
        Link::None,
        45056,
        part_size,
        fx.obj(4).name.as_str(),
    );
    assert!(fx.obj(4).name.starts_with("squashfs-"));
    assert_eq!(
        fx.obj(4).extra,
        part(FsType::Squashfs, PartType::PrimSys, arch)
    );
    assert_eq!(fx.obj(4).size_with_padding, part_size + 4006);
    check_obj(
        &fx,
        5,
        DataType::Signature,
        None,
        Link::Group(1),
        fx.obj(5).offset,
        1765,
        ".",
    );
    assert_eq!(
        fx.obj(5).extra,
        Extra::Signature {
            hash_type: 1,
            entity:
                *b"\x11\x37\xe7\x2e\x68\x16\xbf\xc0\x6d\x9c\xaa\x0d\x15\xf3\xf4\xf4\xf1\x4b\x03\xb2",
        }
    );
    assert_eq!(
        fx.obj(5).offset + 1765,
        fx.len,
        "signature is the last object"
    );

    let deffile = fx.data(1);
    assert_eq!(deffile, b"BootStrap: docker\nFrom: busybox:1.33.1\n");

    let cfg_d = fx
        .img
        .find_generic_json("oci-config.json")
        .expect("oci-config.json");
    assert_eq!(cfg_d.id, 3);
    assert!(fx.img.find_generic_json("no-such.json").is_none());
    let cfg: serde_json::Value = serde_json::from_slice(&fx.data(3)).expect("config is JSON");
    assert_eq!(cfg["Cmd"], serde_json::json!(["sh"]));
    assert!(cfg["Env"][0]
        .as_str()
        .unwrap()
        .starts_with("PATH=/usr/local/sbin"));
    let inspect: serde_json::Value = serde_json::from_slice(&fx.data(2)).expect("inspect JSON");
    assert!(inspect["data"]["attributes"].is_object());

    assert!(fx
        .data(5)
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n"));

    let p = fx.img.primary_partition().expect("primary partition");
    assert_eq!(p.id, 4);
    let mut f = &fx.file;
    assert_eq!(
        fx.img.check_primary_squashfs(&mut f).expect("squashfs").id,
        4
    );

    // Bounded reads: the partition is refused under a small limit, read whole otherwise.
    let p = p.clone();
    match fx.img.read_object(&mut f, &p, 4096) {
        Err(SifError::ObjectTooLarge {
            id: 4,
            size,
            max: 4096,
        }) => assert_eq!(size, part_size),
        other => panic!("expected ObjectTooLarge, got {other:?}"),
    }
    let sq = fx
        .img
        .read_object(&mut f, &p, part_size)
        .expect("read partition");
    assert_eq!(sq.len() as u64, part_size);
    assert_eq!(&sq[..4], b"hsqs");
    // squashfs superblock: compression id (u16 @20) 1 = gzip; bytes_used (u64 @40).
    assert_eq!(u16::from_le_bytes([sq[20], sq[21]]), 1, "gzip");
    let mut used = [0u8; 8];
    used.copy_from_slice(&sq[40..48]);
    assert!(u64::from_le_bytes(used) <= part_size);
    if name == "busybox_amd64.sif" {
        assert_eq!(
            u32::from_le_bytes([sq[4], sq[5], sq[6], sq[7]]),
            55,
            "inode count"
        );
    }
}

#[test]
fn busybox_amd64() {
    check_busybox(
        "busybox_amd64.sif",
        "02",
        "4f307b4c58a847539c0f21dceefed4a6",
        1627931376,
        1896,
        745472,
        759525,
    );
}

#[test]
fn busybox_arm64() {
    check_busybox(
        "busybox_arm64.sif",
        "04",
        "a46b411dd08c4f718f4ef77318d7edf2",
        1627940488,
        1897,
        794624,
        808677,
    );
}

#[test]
fn empty_images() {
    for (name, launch, uuid) in [
        ("empty.sif", "", "00000000000000000000000000000000"),
        ("empty-id.sif", "", "3fa802cc358b45e3bcc069dc7a45f9f8"),
        (
            "empty-launch-script.sif",
            "#!/usr/bin/env run-script\n",
            "00000000000000000000000000000000",
        ),
    ] {
        let Some(fx) = open("empty_images", name) else {
            return;
        };
        let h = &fx.img.header;
        assert!(fx.img.descriptors.is_empty(), "{name}");
        assert_eq!(h.launch_script, launch, "{name}");
        assert_eq!(hex(&h.uuid), uuid, "{name}");
        assert_eq!((h.ctime, h.mtime), (GO_ZERO_TIME, GO_ZERO_TIME), "{name}");
        assert_eq!(h.arch, "00", "{name}");
        assert_eq!(
            (h.free_descriptors, h.data_offset, h.data_size),
            (48, 32176, 0),
            "{name}"
        );
        assert!(is_no_primary(fx.img.primary_partition()), "{name}");
        let mut f = &fx.file;
        assert!(
            is_no_primary(fx.img.check_primary_squashfs(&mut f)),
            "{name}"
        );
    }
}

#[test]
fn one_object_images() {
    let t = "one_object_images";
    for name in ["one-object-time.sif", "one-object-generic-json.sif"] {
        let Some(fx) = open(t, name) else { return };
        assert_eq!(fx.img.descriptors.len(), 1);
        check_obj(
            &fx,
            1,
            DataType::GenericJson,
            Some(1),
            Link::None,
            32176,
            2,
            "data.json",
        );
        assert_eq!(fx.data(1), b"{}");
        assert_eq!(fx.img.find_generic_json("data.json").map(|d| d.id), Some(1));
        if name == "one-object-time.sif" {
            assert_eq!(fx.img.header.ctime, 1593475316);
            assert_eq!(fx.obj(1).ctime, 1593475316);
            assert_eq!(fx.img.header.uuid, [0; 16]);
        } else {
            assert_deterministic(&fx);
        }
    }

    let Some(fx) = open(t, "one-object-crypt-message.sif") else {
        return;
    };
    assert_deterministic(&fx);
    check_obj(
        &fx,
        1,
        DataType::CryptoMessage,
        Some(1),
        Link::None,
        32176,
        4,
        "",
    );
    assert_eq!(
        fx.obj(1).extra,
        Extra::CryptoMessage {
            format: 1,
            message_type: 0x100
        }
    );
    assert_eq!(fx.data(1), [0xfe, 0xfe, 0xf0, 0xf0]);

    let Some(fx) = open(t, "one-object-sbom.sif") else {
        return;
    };
    check_obj(&fx, 1, DataType::Sbom, Some(1), Link::None, 32176, 454, "");
    assert_eq!(fx.obj(1).extra, Extra::Sbom { format: 1 });
    let sbom: serde_json::Value = serde_json::from_slice(&fx.data(1)).unwrap();
    assert_eq!(sbom["bomFormat"], "CycloneDX");

    let Some(fx) = open(t, "one-object-oci-root-index.sif") else {
        return;
    };
    check_obj(
        &fx,
        1,
        DataType::OciRootIndex,
        Some(1),
        Link::None,
        32176,
        706,
        "",
    );
    assert_eq!(
        fx.obj(1).extra,
        Extra::OciDigest(
            "sha256:2dc692f0dcaf7e3cb30db2d5d61004e4319f13db84331b65f066481c0f94cffb".into()
        )
    );
    let index: serde_json::Value = serde_json::from_slice(&fx.data(1)).unwrap();
    assert_eq!(index["schemaVersion"], 2);

    let Some(fx) = open(t, "one-object-oci-blob.sif") else {
        return;
    };
    check_obj(
        &fx,
        1,
        DataType::OciBlob,
        Some(1),
        Link::None,
        32176,
        847,
        "",
    );
    assert_eq!(
        fx.obj(1).extra,
        Extra::OciDigest(
            "sha256:a88b15e95042f7d5a1327c03c57e10bdc1cf5f5efc2968fc73c12b6f5b00c731".into()
        )
    );
    let blob: serde_json::Value = serde_json::from_slice(&fx.data(1)).unwrap();
    assert_eq!(blob["architecture"], "amd64");

    let Some(fx) = open(t, "empty.oci.sif") else {
        return;
    };
    assert_eq!(hex(&fx.img.header.uuid), "5971df2a358a48a3a5df651c93974856");
    assert_eq!(fx.img.header.ctime, 1689330683);
    check_obj(
        &fx,
        1,
        DataType::OciRootIndex,
        Some(1),
        Link::None,
        32176,
        3,
        "",
    );
    assert_eq!(
        fx.obj(1).extra,
        Extra::OciDigest(
            "sha256:ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356".into()
        )
    );
    assert_eq!(fx.data(1), b"{}\n");
    assert!(is_no_primary(fx.img.primary_partition()));
}

/// The two partitions every modern one-group image starts with.
fn check_modern_group1(fx: &Fixture) {
    assert_eq!(fx.img.header.arch, "01");
    assert_eq!(fx.img.header.data_offset, 32176);
    assert_eq!(fx.img.header.launch_script, "");
    assert_deterministic(fx);
    check_obj(
        fx,
        1,
        DataType::Partition,
        Some(1),
        Link::None,
        32768,
        4,
        "",
    );
    assert_eq!(fx.obj(1).extra, part(FsType::Raw, PartType::System, "01"));
    assert_eq!(fx.obj(1).size_with_padding, 596);
    assert_eq!(fx.data(1), [0xfa, 0xce, 0xfe, 0xed]);
    check_obj(
        fx,
        2,
        DataType::Partition,
        Some(1),
        Link::None,
        36864,
        4096,
        "",
    );
    assert_eq!(
        fx.obj(2).extra,
        part(FsType::Squashfs, PartType::PrimSys, "01")
    );
    assert_eq!(fx.img.primary_partition().unwrap().id, 2);
    let mut f = &fx.file;
    assert_eq!(fx.img.check_primary_squashfs(&mut f).unwrap().id, 2);
}

const SIGNER_FP: [u8; 20] =
    *b"\x12\x04\x5c\x8c\x0b\x10\x04\xd0\x58\xde\x4b\xed\xa2\x0c\x27\xee\x7f\xf7\xba\x84";

#[test]
fn one_group_images() {
    let t = "one_group_images";
    let Some(fx) = open(t, "one-group.sif") else {
        return;
    };
    check_modern_group1(&fx);
    assert_eq!(fx.img.descriptors.len(), 2);

    let Some(fx) = open(t, "one-group-signed-pgp.sif") else {
        return;
    };
    check_modern_group1(&fx);
    assert_eq!(fx.img.descriptors.len(), 3);
    check_obj(
        &fx,
        3,
        DataType::Signature,
        None,
        Link::Group(1),
        40960,
        1048,
        "",
    );
    assert_eq!(
        fx.obj(3).extra,
        Extra::Signature {
            hash_type: 1,
            entity: SIGNER_FP
        }
    );
    assert!(fx
        .data(3)
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----"));

    let Some(fx) = open(t, "one-group-signed-dsse.sif") else {
        return;
    };
    check_modern_group1(&fx);
    check_obj(
        &fx,
        3,
        DataType::Signature,
        None,
        Link::Group(1),
        40960,
        1694,
        "",
    );
    assert_eq!(
        fx.obj(3).extra,
        Extra::Signature {
            hash_type: 1,
            entity: [0; 20]
        }
    );
    let env: serde_json::Value = serde_json::from_slice(&fx.data(3)).unwrap();
    assert_eq!(
        env["payloadType"],
        "application/vnd.sylabs.sif-metadata+json"
    );
}

/// Legacy images: launch script, data at 32768, 4-byte stand-in partitions.
fn check_legacy(fx: &Fixture, uuid: &str, parts: &[LegacyPart]) {
    let h = &fx.img.header;
    assert_eq!(h.launch_script, LAUNCH);
    assert_eq!(h.arch, "01");
    assert_eq!(h.data_offset, 32768);
    assert_eq!(hex(&h.uuid), uuid);
    assert_eq!(h.ctime, 1590175859);
    for &(id, group, fs, pt, arch, bytes) in parts {
        let off = 32768 + 4096 * (id as u64 - 1);
        check_obj(
            fx,
            id,
            DataType::Partition,
            Some(group),
            Link::None,
            off,
            4,
            ".",
        );
        assert_eq!(fx.obj(id).extra, part(fs, pt, arch));
        assert_eq!(fx.data(id), bytes);
    }
    // parse() accepts the stand-in, primary_partition() finds it, the magic check fails.
    assert_eq!(fx.img.primary_partition().unwrap().id, 2);
    let mut f = &fx.file;
    match fx.img.check_primary_squashfs(&mut f) {
        Err(SifError::NotSquashfs { id: 2, found }) => assert_eq!(found, "deadbeef"),
        other => panic!("expected NotSquashfs, got {other:?}"),
    }
}

fn check_legacy_sig(fx: &Fixture, id: u32, group: Option<u32>, link: Link, offset: u64) {
    check_obj(
        fx,
        id,
        DataType::Signature,
        group,
        link,
        offset,
        609,
        "part-signature",
    );
    assert_eq!(
        fx.obj(id).extra,
        Extra::Signature {
            hash_type: 2,
            entity: SIGNER_FP
        }
    );
    assert!(fx
        .data(id)
        .starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----"));
}

/// (id, group, fs, part type, arch, 4-byte content) of a legacy stand-in partition.
type LegacyPart = (u32, u32, FsType, PartType, &'static str, [u8; 4]);

const LEGACY1: &[LegacyPart] = &[
    (
        1,
        1,
        FsType::Raw,
        PartType::System,
        "01",
        [0xfa, 0xce, 0xfe, 0xed],
    ),
    (
        2,
        1,
        FsType::Squashfs,
        PartType::PrimSys,
        "01",
        [0xde, 0xad, 0xbe, 0xef],
    ),
];
const LEGACY2: &[LegacyPart] = &[
    (
        1,
        1,
        FsType::Raw,
        PartType::System,
        "01",
        [0xfa, 0xce, 0xfe, 0xed],
    ),
    (
        2,
        1,
        FsType::Squashfs,
        PartType::PrimSys,
        "01",
        [0xde, 0xad, 0xbe, 0xef],
    ),
    (
        3,
        2,
        FsType::Ext3,
        PartType::System,
        "02",
        [0xba, 0xdd, 0xca, 0xfe],
    ),
];
const UUID1: &str = "6ecc76b7a4974f7f9ebd8da2a04c6be1";
const UUID2: &str = "0b19ec2c0b0846c995aefa88cd9e48a1";

#[test]
fn legacy_one_group_images() {
    let t = "legacy_one_group_images";
    let Some(fx) = open(t, "one-group-signed-legacy.sif") else {
        return;
    };
    check_legacy(&fx, UUID1, LEGACY1);
    assert_eq!(fx.img.descriptors.len(), 3);
    check_legacy_sig(&fx, 3, Some(1), Link::Object(2), 40960);

    let Some(fx) = open(t, "one-group-signed-legacy-group.sif") else {
        return;
    };
    check_legacy(&fx, UUID1, LEGACY1);
    check_legacy_sig(&fx, 3, None, Link::Group(1), 40960);

    let Some(fx) = open(t, "one-group-signed-legacy-all.sif") else {
        return;
    };
    check_legacy(&fx, UUID1, LEGACY1);
    assert_eq!(fx.img.descriptors.len(), 4);
    check_legacy_sig(&fx, 3, Some(1), Link::Object(1), 40960);
    check_legacy_sig(&fx, 4, Some(1), Link::Object(2), 45056);
}

#[test]
fn legacy_two_group_images() {
    let t = "legacy_two_group_images";
    let Some(fx) = open(t, "two-groups-signed-legacy.sif") else {
        return;
    };
    check_legacy(&fx, UUID2, LEGACY2);
    assert_eq!(fx.img.descriptors.len(), 4);
    check_legacy_sig(&fx, 4, Some(1), Link::Object(2), 45056);

    let Some(fx) = open(t, "two-groups-signed-legacy-group.sif") else {
        return;
    };
    check_legacy(&fx, UUID2, LEGACY2);
    check_legacy_sig(&fx, 4, None, Link::Group(1), 45056);

    let Some(fx) = open(t, "two-groups-signed-legacy-all.sif") else {
        return;
    };
    check_legacy(&fx, UUID2, LEGACY2);
    assert_eq!(fx.img.descriptors.len(), 5);
    check_legacy_sig(&fx, 4, Some(1), Link::Object(1), 45056);
    check_legacy_sig(&fx, 5, Some(1), Link::Object(2), 49152);
}

#[test]
fn two_group_images() {
    let t = "two_group_images";
    for (name, sigs) in [
        ("two-groups.sif", &[][..]),
        (
            "two-groups-signed-pgp.sif",
            &[(4u32, 303104u64, 1048u64, 1u32), (5, 304152, 849, 2)][..],
        ),
        (
            "two-groups-signed-dsse.sif",
            &[(4, 303104, 1694, 1), (5, 304798, 1426, 2)][..],
        ),
    ] {
        let Some(fx) = open(t, name) else { return };
        check_modern_group1(&fx);
        assert_eq!(fx.img.descriptors.len(), 3 + sigs.len(), "{name}");
        check_obj(
            &fx,
            3,
            DataType::Partition,
            Some(2),
            Link::None,
            40960,
            262144,
            "",
        );
        assert_eq!(fx.obj(3).extra, part(FsType::Ext3, PartType::System, "02"));
        let d = fx.obj(3).clone();
        let mut f = &fx.file;
        let ext = fx.img.read_object(&mut f, &d, 262144).unwrap();
        assert_eq!(
            &ext[1080..1082],
            &[0x53, 0xef],
            "{name}: ext superblock magic"
        );
        for &(id, off, size, group) in sigs {
            check_obj(
                &fx,
                id,
                DataType::Signature,
                None,
                Link::Group(group),
                off,
                size,
                "",
            );
            let fp = if name.contains("pgp") {
                SIGNER_FP
            } else {
                [0; 20]
            };
            assert_eq!(
                fx.obj(id).extra,
                Extra::Signature {
                    hash_type: 1,
                    entity: fp
                }
            );
        }
    }
}

#[test]
fn read_object_refuses_foreign_descriptor() {
    let Some(fx) = open("read_object_refuses_foreign_descriptor", "one-group.sif") else {
        return;
    };
    let mut forged = fx.obj(1).clone();
    forged.size = 1 << 40;
    let mut f = &fx.file;
    assert!(matches!(
        fx.img.read_object(&mut f, &forged, u64::MAX),
        Err(SifError::UnknownObject { id: 1 })
    ));
}
