//! Builds SIF images with `SifBuilder`, reads them back, and feeds the parser hostile
//! variants of a valid image.

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use sycri_native::sif::{
    host_arch, DataType, Descriptor, Extra, FsType, Link, PartType, SifBuilder, SifError, SifImage,
    DATA_OFFSET, LAUNCH_SCRIPT,
};

const UUID: [u8; 16] = *b"0123456789abcdef";
const TIME: i64 = 1_700_000_000;
const CONFIG: &[u8] = br#"{"Cmd":["sh"],"Env":["PATH=/bin"]}"#;
const INSPECT: &[u8] = br#"{"data":{"attributes":{}}}"#;
const DESC_OFF: usize = 4096;
const DESC_LEN: usize = 585;

fn squashfs_payload(len: usize) -> Vec<u8> {
    let mut p = b"hsqs".to_vec();
    p.extend((0..len.saturating_sub(4)).map(|i| (i * 7 % 251) as u8));
    p
}

/// JSON "oci-config.json" (id 1), JSON "inspect.json" (id 2), squashfs PrimSys (id 3).
fn build_small(payload: &[u8]) -> (Vec<u8>, SifImage) {
    let mut out = Cursor::new(Vec::new());
    let img = SifBuilder::new()
        .uuid(UUID)
        .time(TIME)
        .generic_json("oci-config.json", CONFIG)
        .generic_json("inspect.json", INSPECT)
        .primary_squashfs(Cursor::new(payload.to_vec()), None)
        .write_to(&mut out)
        .expect("build");
    (out.into_inner(), img)
}

fn parse(bytes: &[u8]) -> Result<SifImage, SifError> {
    SifImage::parse(&mut Cursor::new(bytes))
}

/// Byte offset of field `field` of descriptor slot `slot`.
fn at(slot: usize, field: usize) -> usize {
    DESC_OFF + slot * DESC_LEN + field
}

fn put_i64(b: &mut [u8], off: usize, v: i64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn roundtrip_every_field() {
    let payload = squashfs_payload(10_000);
    let (bytes, written) = build_small(&payload);
    let img = parse(&bytes).expect("parse back");
    assert_eq!(
        img, written,
        "parsed metadata equals what the writer reported"
    );

    let h = &img.header;
    assert_eq!(h.launch_script, LAUNCH_SCRIPT);
    assert_eq!(&bytes[..31], b"#!/usr/bin/env run-singularity\n");
    assert_eq!(h.version, "01");
    assert_eq!(h.arch, host_arch());
    assert_eq!(h.uuid, UUID);
    assert_eq!((h.ctime, h.mtime), (TIME, TIME));
    assert_eq!((h.total_descriptors, h.free_descriptors), (48, 45));
    assert_eq!((h.descriptor_offset, h.descriptor_size), (4096, 48 * 585));
    assert_eq!(h.data_offset, 32176);
    assert_eq!(h.data_offset, DATA_OFFSET);
    assert_eq!(h.data_offset + h.data_size, bytes.len() as u64);

    assert_eq!(img.descriptors.len(), 3);
    let ids: Vec<u32> = img.descriptors.iter().map(|d| d.id).collect();
    assert_eq!(ids, [1, 2, 3]);
    for d in &img.descriptors {
        assert_eq!(d.group_id, Some(1));
        assert_eq!(d.link, Link::None);
        assert_eq!((d.ctime, d.mtime), (TIME, TIME));
    }
    let c = &img.descriptors[0];
    assert_eq!(
        (c.data_type, c.name.as_str(), c.offset, c.size),
        (
            DataType::GenericJson,
            "oci-config.json",
            32176,
            CONFIG.len() as u64
        )
    );
    assert_eq!(c.extra, Extra::None);
    let i = &img.descriptors[1];
    assert_eq!(
        (i.data_type, i.name.as_str(), i.offset),
        (
            DataType::GenericJson,
            "inspect.json",
            32176 + CONFIG.len() as u64
        )
    );

    let p = img.primary_partition().expect("primary");
    assert_eq!(p.id, 3);
    assert_eq!(p.data_type, DataType::Partition);
    assert_eq!(
        p.extra,
        Extra::Partition {
            fs: FsType::Squashfs,
            part: PartType::PrimSys,
            arch: host_arch().to_string()
        }
    );
    assert_eq!(p.offset % 4096, 0, "partition aligned");
    assert_eq!(p.offset, 32768);
    assert_eq!(p.size, payload.len() as u64);
    assert_eq!(
        p.size_with_padding,
        p.size + (p.offset - (i.offset + i.size))
    );
    assert!(bytes[(i.offset + i.size) as usize..p.offset as usize]
        .iter()
        .all(|&b| b == 0));

    let mut r = Cursor::new(&bytes);
    assert_eq!(img.check_primary_squashfs(&mut r).unwrap().id, 3);
    let cfg = img.find_generic_json("oci-config.json").unwrap().clone();
    assert_eq!(img.read_object(&mut r, &cfg, 1024).unwrap(), CONFIG);
    let insp = img.find_generic_json("inspect.json").unwrap().clone();
    assert_eq!(img.read_object(&mut r, &insp, 1024).unwrap(), INSPECT);
    let p = p.clone();
    assert_eq!(img.read_object(&mut r, &p, 1 << 20).unwrap(), payload);
    assert!(matches!(
        img.read_object(&mut r, &p, 100),
        Err(SifError::ObjectTooLarge { id: 3, .. })
    ));
    let mut streamed = Vec::new();
    img.object_reader(&mut r, &p)
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, payload);
}

#[test]
fn all_object_kinds_and_defaults() {
    let mut out = Cursor::new(Vec::new());
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let written = SifBuilder::new()
        .deffile(b"Bootstrap: docker\nFrom: busybox\n".to_vec())
        .labels(br#"{"a":"b"}"#.to_vec())
        .generic("blob", vec![9u8; 3])
        .primary_squashfs(Cursor::new(squashfs_payload(5)), Some(5))
        .generic_json("after.json", b"[]".to_vec())
        .arch("04")
        .launch_script("")
        .write_to(&mut out)
        .unwrap();
    let bytes = out.into_inner();
    let img = parse(&bytes).unwrap();
    assert_eq!(img, written);
    let kinds: Vec<DataType> = img.descriptors.iter().map(|d| d.data_type).collect();
    assert_eq!(
        kinds,
        [
            DataType::Deffile,
            DataType::Labels,
            DataType::Generic,
            DataType::Partition,
            DataType::GenericJson
        ]
    );
    assert_eq!(img.header.arch, "04");
    assert_eq!(
        img.primary_partition().unwrap().partition(),
        Some((FsType::Squashfs, PartType::PrimSys, "04"))
    );
    assert_eq!(img.header.launch_script, "");
    assert!(img.header.ctime >= before && img.header.ctime <= before + 60);
    let u = img.header.uuid;
    assert_ne!(u, [0; 16]);
    assert_eq!(u[6] >> 4, 4, "UUID version 4");
    assert_eq!(u[8] >> 6, 0b10, "UUID variant");
    // Object after the partition is packed right behind it.
    let p = img.primary_partition().unwrap();
    assert_eq!(img.descriptors[4].offset, p.offset + p.size);
    // A second build gets a different UUID.
    let mut out2 = Cursor::new(Vec::new());
    let other = SifBuilder::new().write_to(&mut out2).unwrap();
    assert_ne!(other.header.uuid, u);
    assert!(matches!(
        other.primary_partition(),
        Err(SifError::NoPrimaryPartition)
    ));
}

/// A reader that generates `len` bytes of squashfs-like data on the fly, in small pieces.
struct Generated {
    pos: u64,
    len: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(1000).min((self.len - self.pos) as usize);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = gen_byte(self.pos + i as u64);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn gen_byte(i: u64) -> u8 {
    if i < 4 {
        b"hsqs"[i as usize]
    } else {
        (i % 253) as u8
    }
}

#[test]
fn streamed_partition_known_and_unknown_size() {
    let len = 3 * 1024 * 1024 + 17;
    for size in [Some(len), None] {
        let mut out = Cursor::new(Vec::new());
        let img = SifBuilder::new()
            .generic_json("x.json", b"{}".to_vec())
            .primary_squashfs(Generated { pos: 0, len }, size)
            .write_to(&mut out)
            .unwrap();
        let p = img.primary_partition().unwrap().clone();
        assert_eq!(p.size, len);
        assert_eq!(p.offset % 4096, 0);
        let bytes = out.into_inner();
        assert_eq!(parse(&bytes).unwrap(), img);
        let data = &bytes[p.offset as usize..(p.offset + p.size) as usize];
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, &b)| b == gen_byte(i as u64)));
    }
    // Announced size shorter than the source: exactly that many bytes are taken.
    let mut out = Cursor::new(Vec::new());
    let img = SifBuilder::new()
        .primary_squashfs(
            Generated {
                pos: 0,
                len: 10_000,
            },
            Some(8192),
        )
        .write_to(&mut out)
        .unwrap();
    assert_eq!(img.primary_partition().unwrap().size, 8192);
    assert_eq!(
        out.get_ref().len() as u64,
        img.header.data_offset + img.header.data_size
    );
    // Source shorter than announced: refused.
    let r = SifBuilder::new()
        .primary_squashfs(Generated { pos: 0, len: 100 }, Some(200))
        .write_to(&mut Cursor::new(Vec::new()));
    assert!(
        matches!(
            r,
            Err(SifError::SourceSizeMismatch {
                expected: 200,
                actual: 100
            })
        ),
        "{r:?}"
    );
}

#[test]
fn many_objects_grow_the_descriptor_table() {
    let mut b = SifBuilder::new();
    for i in 0..60 {
        b = b.generic_json(&format!("o{i}.json"), format!("{{\"i\":{i}}}").into_bytes());
    }
    let mut out = Cursor::new(Vec::new());
    let img = b
        .primary_squashfs(Cursor::new(squashfs_payload(64)), None)
        .write_to(&mut out)
        .unwrap();
    let h = &img.header;
    assert_eq!((h.total_descriptors, h.free_descriptors), (61, 0));
    assert_eq!(h.data_offset, 4096 + 61 * 585);
    let back = parse(out.get_ref()).unwrap();
    assert_eq!(back, img);
    assert_eq!(back.find_generic_json("o59.json").unwrap().id, 60);
    assert_eq!(back.primary_partition().unwrap().offset % 4096, 0);
}

#[test]
fn writer_refuses_bad_input() {
    let w = |b: SifBuilder| b.write_to(&mut Cursor::new(Vec::new()));
    let not_sq = w(SifBuilder::new().primary_squashfs(Cursor::new(b"ext4data".to_vec()), None));
    assert!(
        matches!(&not_sq, Err(SifError::NotSquashfs { id: 1, found }) if found == "65787434"),
        "{not_sq:?}"
    );
    let short = w(SifBuilder::new().primary_squashfs(Cursor::new(b"hs".to_vec()), None));
    assert!(matches!(short, Err(SifError::NotSquashfs { .. })));
    let two = w(SifBuilder::new()
        .primary_squashfs(Cursor::new(squashfs_payload(8)), None)
        .primary_squashfs(Cursor::new(squashfs_payload(8)), None));
    assert!(matches!(two, Err(SifError::MultiplePrimaryPartitions)));
    let long = w(SifBuilder::new().launch_script(&"x".repeat(33)));
    assert!(matches!(long, Err(SifError::InvalidInput(_))));
    assert!(matches!(
        w(SifBuilder::new().arch("amd64")),
        Err(SifError::InvalidInput(_))
    ));
    let name = w(SifBuilder::new().generic_json(&"n".repeat(129), b"{}".to_vec()));
    assert!(matches!(name, Err(SifError::InvalidInput(_))));
}

#[test]
fn write_to_path_is_atomic() {
    type Write = fn(SifBuilder<'static>, &std::path::Path) -> Result<SifImage, SifError>;
    let ways: [(&str, Write); 2] = [
        ("synced", |b, p| b.write_to_path(p)),
        ("unsynced", |b, p| b.write_to_path_unsynced(p)),
    ];
    for (way, write) in ways {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.sif");
        let img = write(
            SifBuilder::new()
                .generic_json("oci-config.json", CONFIG)
                .primary_squashfs(Cursor::new(squashfs_payload(5000)), None),
            &path,
        )
        .unwrap();
        let (back, mut f) = SifImage::open(&path).unwrap();
        assert_eq!(back, img, "{way}");
        assert_eq!(back.check_primary_squashfs(&mut f).unwrap().id, 2, "{way}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["image.sif"], "{way}: no temporary file left behind");

        // A failing build leaves the old file untouched and no temporary file.
        let before = std::fs::read(&path).unwrap();
        let r = write(
            SifBuilder::new().primary_squashfs(Cursor::new(b"notsquash".to_vec()), None),
            &path,
        );
        assert!(matches!(r, Err(SifError::NotSquashfs { .. })), "{way}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "{way}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{way}");

        let r = write(SifBuilder::new(), &dir.path().join("missing-dir/x.sif"));
        assert!(matches!(r, Err(SifError::Io(_))), "{way}");
    }
}

// ---- hostile input ----

fn small() -> Vec<u8> {
    build_small(&squashfs_payload(100)).0
}

fn expect_err(bytes: &[u8], what: &str, ok: impl Fn(&SifError) -> bool) {
    match parse(bytes) {
        Err(e) => assert!(ok(&e), "{what}: unexpected error {e:?}"),
        Ok(_) => panic!("{what}: parsed"),
    }
}

#[test]
fn bad_magic_and_version() {
    let mut b = small();
    b[32] = b'X';
    expect_err(&b, "magic", |e| matches!(e, SifError::BadMagic));
    expect_err(&[b'x'; 200], "text file", |e| {
        matches!(e, SifError::BadMagic)
    });
    expect_err(b"hello", "tiny file", |e| {
        matches!(e, SifError::Truncated { .. })
    });
    expect_err(&[], "empty file", |e| {
        matches!(e, SifError::Truncated { .. })
    });
    let mut b = small();
    b[42..44].copy_from_slice(b"02");
    expect_err(
        &b,
        "version",
        |e| matches!(e, SifError::UnsupportedVersion(v) if v == "02"),
    );
}

#[test]
fn every_prefix_is_an_error_never_a_panic() {
    let b = small();
    assert!(parse(&b).is_ok());
    for len in 0..b.len() {
        let r = std::panic::catch_unwind(|| parse(&b[..len]));
        match r {
            Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("prefix of {len} bytes parsed"),
            Err(_) => panic!("prefix of {len} bytes panicked"),
        }
    }
}

#[test]
fn header_layout_attacks() {
    let good = small();
    let len = good.len() as i64;
    let patched = |off: usize, v: i64| {
        let mut b = good.clone();
        put_i64(&mut b, off, v);
        b
    };
    // total descriptors @88, descriptor offset @96, size @104, data offset @112, size @120.
    expect_err(
        &patched(88, 1 << 40),
        "absurd count",
        |e| matches!(e, SifError::TooManyDescriptors(n) if *n == 1 << 40),
    );
    expect_err(&patched(88, 65537), "count over limit", |e| {
        matches!(e, SifError::TooManyDescriptors(65537))
    });
    expect_err(&patched(88, -1), "negative count", |e| {
        matches!(e, SifError::BadHeader(_))
    });
    expect_err(&patched(88, 47), "count vs area size", |e| {
        matches!(e, SifError::DescriptorArea(_))
    });
    expect_err(&patched(80, 49), "free > total", |e| {
        matches!(e, SifError::BadHeader(_))
    });
    expect_err(&patched(104, 585 * 47), "area size vs count", |e| {
        matches!(e, SifError::DescriptorArea(_))
    });
    expect_err(&patched(96, len + 4096), "area outside file", |e| {
        matches!(e, SifError::DescriptorArea(_))
    });
    expect_err(&patched(96, i64::MAX - 100), "area end overflow", |e| {
        matches!(e, SifError::DescriptorArea(_))
    });
    expect_err(&patched(96, 64), "area over header", |e| {
        matches!(e, SifError::DescriptorArea(_))
    });
    expect_err(&patched(96, len - 1000), "area past EOF", |e| {
        matches!(
            e,
            SifError::Truncated {
                what: "descriptor area",
                ..
            }
        )
    });
    expect_err(&patched(120, len), "data past EOF", |e| {
        matches!(
            e,
            SifError::Truncated {
                what: "data area",
                ..
            }
        )
    });
    expect_err(&patched(112, i64::MAX), "huge data offset", |e| {
        matches!(
            e,
            SifError::Truncated {
                what: "data area",
                ..
            }
        )
    });
    expect_err(&patched(112, -5), "negative data offset", |e| {
        matches!(e, SifError::BadHeader(_))
    });

    // A large but consistent count against a small file: refused before reading.
    let mut b = patched(88, 60000);
    put_i64(&mut b, 104, 60000 * 585);
    expect_err(&b, "large table", |e| {
        matches!(
            e,
            SifError::Truncated {
                what: "descriptor area",
                ..
            }
        )
    });
}

#[test]
fn descriptor_attacks() {
    let good = small();
    let len = good.len() as u64;
    // Slot 2 is the partition (id 3); slot 1 is inspect.json (id 2).
    let mut b = good.clone();
    put_i64(&mut b, at(2, 25), len as i64); // size
    expect_err(
        &b,
        "past EOF",
        |e| matches!(e, SifError::ObjectOutOfBounds { id: 3, size, file_len, .. } if *size == len && *file_len == len),
    );
    let mut b = good.clone();
    put_i64(&mut b, at(2, 17), i64::MAX); // offset + size overflows
    expect_err(&b, "overflow", |e| {
        matches!(e, SifError::ObjectOutOfBounds { id: 3, .. })
    });
    let mut b = good.clone();
    put_i64(&mut b, at(2, 17), -4096);
    expect_err(&b, "negative offset", |e| {
        matches!(e, SifError::BadDescriptor { slot: 2, .. })
    });
    let mut b = good.clone();
    put_i64(&mut b, at(0, 25), -1);
    expect_err(&b, "negative size", |e| {
        matches!(e, SifError::BadDescriptor { slot: 0, .. })
    });

    let img = parse(&good).unwrap();
    let inspect = &img.descriptors[1];
    let mut b = good.clone();
    put_i64(&mut b, at(2, 17), (inspect.offset + 1) as i64);
    expect_err(&b, "overlap", |e| {
        matches!(e, SifError::OverlappingObjects { a: 2, b: 3 })
    });
    let mut b = good.clone();
    put_i64(&mut b, at(0, 17), inspect.offset as i64); // id 1 starts where id 2 starts
    expect_err(&b, "same start", |e| {
        matches!(e, SifError::OverlappingObjects { .. })
    });
    let mut b = good.clone();
    put_i64(&mut b, at(1, 17), 5000);
    expect_err(&b, "over descriptors", |e| {
        matches!(e, SifError::ObjectOverlapsMetadata { id: 2 })
    });
    let mut b = good.clone();
    put_i64(&mut b, at(1, 17), 0);
    expect_err(&b, "over header", |e| {
        matches!(e, SifError::ObjectOverlapsMetadata { id: 2 })
    });
    // An empty object may sit anywhere inside the file.
    let mut b = good.clone();
    put_i64(&mut b, at(1, 17), 0);
    put_i64(&mut b, at(1, 25), 0);
    assert!(parse(&b).is_ok());

    let mut b = good.clone();
    put_u32(&mut b, at(1, 5), 1);
    expect_err(&b, "duplicate id", |e| {
        matches!(e, SifError::DuplicateId(1))
    });
    let mut b = good.clone();
    put_u32(&mut b, at(1, 5), 0);
    expect_err(&b, "id 0", |e| {
        matches!(e, SifError::BadDescriptor { slot: 1, .. })
    });

    // Unused slots are ignored even when full of garbage.
    let mut b = good.clone();
    for x in &mut b[at(10, 0)..at(11, 0)] {
        *x = 0xff;
    }
    b[at(10, 4)] = 0;
    assert_eq!(parse(&b).unwrap(), img);
    // ...but marking one used makes it count (and its garbage is refused).
    b[at(10, 4)] = 1;
    assert!(parse(&b).is_err());
}

#[test]
fn primary_partition_rules() {
    let good = small();
    // Partition type (extra @201+4) System: no root file system.
    let mut b = good.clone();
    put_u32(&mut b, at(2, 205), 1);
    let img = parse(&b).unwrap();
    assert!(matches!(
        img.primary_partition(),
        Err(SifError::NoPrimaryPartition)
    ));
    assert_eq!(
        img.descriptors[2].partition(),
        Some((FsType::Squashfs, PartType::System, host_arch()))
    );

    // Turn inspect.json (slot 1) into a second PrimSys partition.
    let mut b = good.clone();
    put_u32(&mut b, at(1, 0), 0x4004);
    put_u32(&mut b, at(1, 201), 1);
    put_u32(&mut b, at(1, 205), 2);
    let img = parse(&b).unwrap();
    assert!(matches!(
        img.primary_partition(),
        Err(SifError::MultiplePrimaryPartitions)
    ));

    // Ext3 root file system: reported as unsupported, not as a bad squashfs.
    let mut b = good.clone();
    put_u32(&mut b, at(2, 201), 2);
    let img = parse(&b).unwrap();
    assert_eq!(img.primary_partition().unwrap().id, 3);
    let r = img.check_primary_squashfs(&mut Cursor::new(&b));
    assert!(
        matches!(
            r,
            Err(SifError::UnsupportedFilesystem {
                id: 3,
                fs: FsType::Ext3
            })
        ),
        "{r:?}"
    );

    // Squashfs type but wrong magic.
    let mut b = good.clone();
    let off = parse(&b).unwrap().primary_partition().unwrap().offset as usize;
    b[off..off + 4].copy_from_slice(b"\xde\xad\xbe\xef");
    let img = parse(&b).unwrap();
    let r = img.check_primary_squashfs(&mut Cursor::new(&b));
    assert!(
        matches!(&r, Err(SifError::NotSquashfs { id: 3, found }) if found == "deadbeef"),
        "{r:?}"
    );
}

#[test]
fn reads_from_a_shorter_stream_fail_cleanly() {
    let good = small();
    let img = parse(&good).unwrap();
    let p = img.primary_partition().unwrap().clone();
    let mut short = Cursor::new(&good[..p.offset as usize + 10]);
    let r = img.read_object(&mut short, &p, 1 << 20);
    assert!(matches!(r, Err(SifError::Truncated { .. })), "{r:?}");
}

/// Small deterministic mutation fuzzer: random byte changes in the metadata region
/// must never panic, and whatever parses must satisfy the documented invariants.
#[test]
fn random_mutations_never_panic() {
    let good = small();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let meta_end = DESC_OFF + 3 * DESC_LEN;
    let mut parsed = 0;
    for _ in 0..3000 {
        let mut b = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let pos = if next() % 4 == 0 {
                (next() % 128) as usize
            } else {
                DESC_OFF + (next() as usize % (meta_end - DESC_OFF))
            };
            b[pos] = next() as u8;
        }
        if next() % 8 == 0 {
            let cut = (next() as usize) % b.len();
            b.truncate(cut);
        }
        let Ok(img) = parse(&b) else { continue };
        parsed += 1;
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for d in &img.descriptors {
            assert!(ids.insert(d.id));
            assert!(d.offset + d.size <= b.len() as u64);
            if d.size > 0 {
                let h = &img.header;
                let end = d.offset + d.size;
                assert!(d.offset >= 128, "object over the header");
                assert!(
                    end <= h.descriptor_offset
                        || d.offset >= h.descriptor_offset + h.descriptor_size,
                    "object over the descriptor table"
                );
                spans.push((d.offset, d.offset + d.size));
            }
        }
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
        let mut r = Cursor::new(&b);
        let _ = img.primary_partition();
        let _ = img.check_primary_squashfs(&mut r);
        let all: Vec<Descriptor> = img.descriptors.clone();
        for d in &all {
            if let Ok(v) = img.read_object(&mut r, d, 64) {
                assert_eq!(v.len() as u64, d.size);
            }
        }
    }
    assert!(
        parsed > 100,
        "mutations too destructive to be useful ({parsed} parsed)"
    );
}

#[test]
fn write_to_seeks_back_and_ends_at_eof() {
    // Writing into a non-empty cursor positioned elsewhere still lays out from 0.
    let mut out = Cursor::new(vec![0xAAu8; 10]);
    out.seek(SeekFrom::Start(5)).unwrap();
    let img = SifBuilder::new()
        .uuid(UUID)
        .time(TIME)
        .write_to(&mut out)
        .unwrap();
    assert_eq!(out.position(), img.header.data_offset);
    out.write_all(b"").unwrap();
    assert_eq!(parse(out.get_ref()).unwrap(), img);
}
