//! The squashfs superblock check against real file systems: the SIF fixtures'
//! and ones that mksquashfs and tar2sqfs (the converter's tool) make with
//! each compressor and table layout must pass; the same cut short in their
//! partition must not.

use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sycri_native::sif::squashfs::{Compression, SquashfsError};
use sycri_native::sif::{check_squashfs, SifBuilder, SifError, SifImage, DESCRIPTOR_SIZE};
use sycri_native::testing::{skip, skip_part};

fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SYCRI_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/sif")
        });
    dir.join("busybox_amd64.sif").is_file().then_some(dir)
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A small tree with a file big enough for full blocks and a fragment, a
/// symlink, a directory and an extended attribute when the file system
/// takes one (true then).
fn tree(dir: &Path) -> bool {
    fs::create_dir_all(dir.join("etc/sub")).expect("mkdir");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.join("big"), big).expect("write");
    fs::write(dir.join("etc/small"), b"hello\n").expect("write");
    std::os::unix::fs::symlink("etc/small", dir.join("link")).expect("symlink");
    let name = c"user.sycri";
    let path =
        std::ffi::CString::new(dir.join("etc/small").to_string_lossy().as_bytes()).expect("path");
    // SAFETY: setxattr reads the two NUL-terminated strings and the value,
    // all alive for the call. A file system without user xattrs says no.
    unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0) == 0 }
}

/// Wraps a squashfs file as the primary partition of a SIF at `out`.
fn wrap(squashfs: &Path, out: &Path) -> SifImage {
    let f = File::open(squashfs).expect("open squashfs");
    SifBuilder::new()
        .primary_squashfs(f, None)
        .write_to_path(out)
        .expect("write sif")
}

/// Checks the SIF at `path`; with `size`, after setting its primary
/// partition's size to it (the descriptor's size field, as a tampered or
/// badly written image would have it).
fn check(
    path: &Path,
    size: Option<u64>,
) -> Result<sycri_native::sif::squashfs::Superblock, SifError> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open sif");
    let img = SifImage::parse(&mut f).expect("parse");
    let d = img
        .check_primary_squashfs(&mut f)
        .expect("squashfs")
        .clone();
    if let Some(size) = size {
        let slot = (0..img.header.total_descriptors)
            .find(|s| {
                let mut rec = vec![0u8; DESCRIPTOR_SIZE];
                let at = img.header.descriptor_offset + s * DESCRIPTOR_SIZE as u64;
                f.seek(SeekFrom::Start(at + 5)).expect("seek");
                std::io::Read::read_exact(&mut f, &mut rec[..4]).expect("read");
                u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) == d.id
            })
            .expect("descriptor slot");
        // The data size is the i64 at byte 25 of a descriptor.
        let at = img.header.descriptor_offset + slot * DESCRIPTOR_SIZE as u64 + 25;
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&(size as i64).to_le_bytes()).expect("write");
        f.flush().expect("flush");
        let img = SifImage::parse(&mut f).expect("a shrunk partition still parses");
        let d = img.check_primary_squashfs(&mut f).expect("magic").clone();
        return check_squashfs(&mut f, &d);
    }
    check_squashfs(&mut f, &d)
}

/// Checks the SIF at `path`, then again with its partition cut to exactly
/// the bytes its file system uses (still good: only padding went), then to
/// one byte less (refused).
fn check_and_cut(path: &Path, what: &str) -> sycri_native::sif::squashfs::Superblock {
    let sb = check(path, None).unwrap_or_else(|e| panic!("{what}: {e}"));
    check(path, Some(sb.bytes_used)).unwrap_or_else(|e| panic!("{what}, no padding: {e}"));
    let short = sb.bytes_used - 1;
    match check(path, Some(short)) {
        Err(SifError::BadSquashfs {
            source:
                SquashfsError::LargerThanPartition {
                    bytes_used,
                    partition,
                },
            ..
        }) if bytes_used == sb.bytes_used && partition == short => {}
        other => panic!("{what}, cut short: {other:?}"),
    }
    sb
}

#[test]
fn fixture_root_file_systems_pass_and_fail_when_cut() {
    let Some(dir) = fixtures_dir() else {
        skip(
            "fixture_root_file_systems_pass_and_fail_when_cut",
            "SIF fixtures not found (set SYCRI_FIXTURES or provide ../shared)",
        );
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    for name in ["busybox_amd64.sif", "busybox_arm64.sif", "one-group.sif"] {
        let copy = work.path().join(name);
        fs::copy(dir.join(name), &copy).expect("copy");
        let sb = check_and_cut(&copy, name);
        assert_eq!(sb.compression, Compression::Gzip, "{name}");
    }
}

#[test]
fn mksquashfs_images_pass_with_every_layout() {
    if !have("mksquashfs") {
        skip(
            "mksquashfs_images_pass_with_every_layout",
            "mksquashfs not found (apt-get install -y squashfs-tools)",
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    let xattrs = tree(&src);
    let variants: &[(&str, &[&str], Compression)] = &[
        ("default", &[], Compression::Gzip),
        ("xz", &["-comp", "xz"], Compression::Xz),
        ("zstd", &["-comp", "zstd"], Compression::Zstd),
        ("lz4", &["-comp", "lz4"], Compression::Lz4),
        ("lzo", &["-comp", "lzo"], Compression::Lzo),
        ("nofrag", &["-no-fragments"], Compression::Gzip),
        ("noexp", &["-no-exports", "-no-xattrs"], Compression::Gzip),
        (
            "alwaysfrag",
            &["-always-use-fragments", "-b", "4096"],
            Compression::Gzip,
        ),
        ("1m", &["-b", "1M"], Compression::Gzip),
    ];
    for (name, args, comp) in variants {
        let sq = work.path().join(format!("{name}.sqfs"));
        let st = Command::new("mksquashfs")
            .arg(&src)
            .arg(&sq)
            .args(["-noappend", "-quiet", "-no-progress"])
            .args(*args)
            .stdout(Stdio::null())
            .status()
            .expect("mksquashfs");
        if !st.success() {
            // A compressor this build of mksquashfs lacks.
            skip_part(
                "mksquashfs_images_pass_with_every_layout",
                &format!("the {name} layout"),
                &format!("this mksquashfs cannot make it ({st})"),
            );
            continue;
        }
        let sif = work.path().join(format!("{name}.sif"));
        wrap(&sq, &sif);
        let sb = check_and_cut(&sif, &format!("mksquashfs {name}"));
        assert_eq!(sb.compression, *comp, "{name}");
        // The layouts the options ask for, so that each table's check ran.
        let absent = u64::MAX;
        match *name {
            "nofrag" => assert_eq!(sb.fragments, 0),
            "noexp" => {
                assert_eq!(sb.lookup_table_start, absent);
                assert_eq!(sb.xattr_id_table_start, absent);
            }
            _ => {
                assert!(sb.fragments > 0, "{name}: {sb:?}");
                assert_ne!(sb.lookup_table_start, absent, "{name}");
                assert_eq!(sb.xattr_id_table_start != absent, xattrs, "{name}");
            }
        }
    }
}

#[test]
fn tar2sqfs_images_pass() {
    if !have("tar2sqfs") || !have("tar") {
        skip(
            "tar2sqfs_images_pass",
            "tar2sqfs or tar not found (apt-get install -y squashfs-tools-ng tar)",
        );
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    tree(&src);
    for (name, args) in [
        ("default", &[][..]),
        ("zstd", &["-c", "zstd"][..]),
        ("nofrag", &["-c", "xz", "--no-tail-packing"][..]),
        ("small", &["-b", "4096", "--exportable"][..]),
    ] {
        let sq = work.path().join(format!("{name}.sqfs"));
        let mut tar = Command::new("tar")
            .args(["-C"])
            .arg(&src)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let st = Command::new("tar2sqfs")
            .args(["--quiet", "--force"])
            .args(args)
            .arg(&sq)
            .stdin(tar.stdout.take().expect("tar stdout"))
            .stdout(Stdio::null())
            .status()
            .expect("tar2sqfs");
        assert!(tar.wait().expect("wait tar").success(), "tar");
        if !st.success() {
            skip_part(
                "tar2sqfs_images_pass",
                &format!("the {name} layout"),
                &format!("this tar2sqfs cannot make it ({st})"),
            );
            continue;
        }
        let sif = work.path().join(format!("{name}.sif"));
        wrap(&sq, &sif);
        check_and_cut(&sif, &format!("tar2sqfs {name}"));
    }
}
