//! End-to-end tests: layers built with the `tar` crate, converted by the
//! in-process writer, checked through `sqfs2tar` and `unsquashfs` (other
//! squashfs implementations), against `tar2sqfs` given the same merged tree
//! (what sycri did before), and, as root, through a kernel loop mount.

use super::sqfs::BLOCK_SIZE;
use super::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use sycri_native::testing::{skip, skip_part};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const PLAIN: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Builds a layer tar.
struct Tb(tar::Builder<Vec<u8>>);

fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(0);
    h
}

impl Tb {
    fn new() -> Self {
        Tb(tar::Builder::new(Vec::new()))
    }

    fn dir(mut self, path: &str, mode: u32, uid: u64, mtime: u64) -> Self {
        let mut h = header(tar::EntryType::Directory, mode, uid, uid, mtime);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("dir");
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_with(path, data, 0o644, 0, 0, 1_000)
    }

    fn file_with(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = header(tar::EntryType::Regular, mode, uid, gid, mtime);
        h.set_size(data.len() as u64);
        self.0.append_data(&mut h, path, data).expect("file");
        self
    }

    fn xattrs(mut self, x: &[(&str, &[u8])]) -> Self {
        let keys: Vec<(String, &[u8])> = x
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.0
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        self
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = header(kind, 0o777, 0, 0, 1_000);
        self.0.append_link(&mut h, path, target).expect("link");
        self
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, path, target)
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, path, target)
    }

    fn fifo(mut self, path: &str) -> Self {
        let mut h = header(tar::EntryType::Fifo, 0o600, 0, 0, 1_000);
        self.0
            .append_data(&mut h, path, std::io::empty())
            .expect("fifo");
        self
    }

    /// An entry with exactly these name/link bytes (the tar crate refuses `..`).
    fn raw(mut self, kind: tar::EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = header(kind, 0o644, 0, 0, 1_000);
        h.set_size(data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.0.append(&h, data).expect("raw");
        self
    }

    fn tar(self) -> Vec<u8> {
        self.0.into_inner().expect("finish")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

struct Fixture {
    _dir: tempfile::TempDir,
    layers_dir: PathBuf,
    out_dir: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let layers_dir = dir.path().join("layers");
        let out_dir = dir.path().join("out");
        std::fs::create_dir(&layers_dir).expect("mkdir");
        std::fs::create_dir(&out_dir).expect("mkdir");
        Fixture {
            _dir: dir,
            layers_dir,
            out_dir,
        }
    }

    fn layers(&self, blobs: &[(&[u8], &str)]) -> Vec<Layer> {
        blobs
            .iter()
            .enumerate()
            .map(|(i, (data, media_type))| {
                let path = self.layers_dir.join(format!("layer{i}"));
                std::fs::write(&path, data).expect("write layer");
                Layer {
                    path,
                    media_type: media_type.to_string(),
                }
            })
            .collect()
    }

    fn out(&self) -> PathBuf {
        self.out_dir.join("rootfs.sqfs")
    }

    fn out_dir_entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.out_dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }
}

/// Whether `tool` runs; reports `test` skipped if not.
fn have(tool: &str, package: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        skip(test, &format!("{tool} ({package}) is not installed"));
    }
    ok
}

fn opts(max_uncompressed: u64, max_entries: u64) -> ConvertOptions {
    ConvertOptions {
        limits: Limits {
            max_uncompressed,
            max_entries,
        },
        jobs: 1,
        ..ConvertOptions::default()
    }
}

/// Converting `blobs` must fail; returns the error after checking that nothing
/// was left in the output directory.
fn must_fail(blobs: &[(&[u8], &str)], o: &ConvertOptions) -> ConvertError {
    let fx = Fixture::new();
    let layers = fx.layers(blobs);
    let err = layers_to_squashfs(&layers, &fx.out(), o).expect_err("conversion must fail");
    assert!(
        fx.out_dir_entries().is_empty(),
        "left behind: {:?} (error {err})",
        fx.out_dir_entries()
    );
    err
}

fn one(tar: Vec<u8>) -> ConvertError {
    must_fail(&[(&tar, PLAIN)], &ConvertOptions::default())
}

// ---------------------------------------------------------------- the image

fn three_layers() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let long_dir = format!("deep/{}", "d".repeat(120));
    let long_target = format!("/{}", "t".repeat(150));
    let l1 = Tb::new()
        .dir("etc", 0o755, 0, 1_000)
        .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .xattrs(&[("user.dir", b"1")])
        .dir("data", 0o750, 1000, 2_000)
        .file_with("data/keep", b"keep", 0o640, 1000, 1000, 2_000)
        .file("data/gone", b"gone")
        .dir("opq", 0o755, 0, 1_000)
        .file("opq/lower1", b"lower")
        .dir("opq/sub", 0o755, 0, 1_000)
        .file("opq/sub/lower2", b"lower")
        .xattrs(&[
            ("user.origin", b"layer1"),
            ("system.posix_acl_access", b"\x02\0\0\0"),
        ])
        .file_with("bin/tool", b"tool-v1", 0o4755, 0, 0, 1_000)
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("bin/sh", "/bin/busybox")
        .file("lib/a", b"shared")
        .hardlink("lib/b", "./lib/a")
        .file_with("over", b"v1", 0o600, 0, 0, 1_000)
        .fifo("tmp/fifo")
        .tar();
    let l2 = Tb::new()
        .file("data/.wh.gone", b"")
        .dir("opq", 0o700, 0, 3_000)
        .file("opq/.wh..wh..opq", b"")
        .file("opq/new", b"new")
        .file("over", b"v2")
        .file("etc/.wh.nonexistent", b"")
        .tar();
    let l3 = Tb::new()
        .file_with("over", b"v3", 0o640, 5, 6, 5_000)
        .file_with("bin/tool", b"tool-v2", 0o755, 0, 0, 1_000)
        .file("usr/share/doc/x", b"x")
        .file(&format!("{long_dir}/file"), b"long")
        .symlink("longlink", &long_target)
        .tar();
    (l1, l2, l3)
}

/// The image as `sqfs2tar` prints it: path → (type, mode, uid, gid, mtime, link, data).
type Listing = HashMap<String, (char, u32, u64, u64, u64, String, Vec<u8>, Vec<String>)>;

fn sqfs2tar(img: &Path) -> Listing {
    let out = Command::new("sqfs2tar")
        .arg(img)
        .stderr(Stdio::inherit())
        .output()
        .expect("sqfs2tar (squashfs-tools-ng) runs");
    assert!(out.status.success(), "sqfs2tar failed");
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let mut map = HashMap::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let xattrs: Vec<String> = match e.pax_extensions().expect("pax") {
            Some(exts) => exts
                .filter_map(|x| x.ok()?.key().ok().map(str::to_string))
                .filter(|k| k.contains("xattr"))
                .collect(),
            None => Vec::new(),
        };
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        let kind = match h.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected entry type {other:?}"),
        };
        map.insert(
            path,
            (
                kind,
                h.mode().expect("mode") & 0o7777,
                h.uid().expect("uid"),
                h.gid().expect("gid"),
                h.mtime().expect("mtime"),
                link,
                data,
                xattrs,
            ),
        );
    }
    map
}

#[test]
fn three_layers_merge_into_one_squashfs() {
    if !have(
        "sqfs2tar",
        "squashfs-tools-ng",
        "three_layers_merge_into_one_squashfs",
    ) {
        return;
    }
    for jobs in [1, 3] {
        three_layers_with("three_layers_merge_into_one_squashfs", jobs);
    }
}

fn three_layers_with(test: &str, jobs: usize) {
    let (l1, l2, l3) = three_layers();
    let fx = Fixture::new();
    let layers = fx.layers(&[(&gzip(&l1), GZIP), (&zstd(&l2), ZSTD), (&l3, PLAIN)]);
    let out = fx.out();
    let mut o = opts(1 << 30, 1000);
    o.jobs = jobs;
    let stats = layers_to_squashfs(&layers, &out, &o).expect("convert");
    assert_eq!(fx.out_dir_entries(), vec!["rootfs.sqfs".to_string()]);
    assert_eq!(
        stats.squashfs_bytes,
        std::fs::metadata(&out).expect("stat").len()
    );
    assert_eq!(
        stats.uncompressed_bytes,
        (l1.len() + l2.len() + l3.len()) as u64
    );
    let magic = std::fs::read(&out).expect("read")[..4].to_vec();
    assert_eq!(&magic, b"hsqs");

    let l = sqfs2tar(&out);
    let long_dir = format!("deep/{}", "d".repeat(120));
    let mut names: Vec<&str> = l.keys().map(String::as_str).collect();
    names.sort();
    let mut want = vec![
        "bin",
        "bin/sh",
        "bin/tool",
        "bin/tool-link",
        "data",
        "data/keep",
        "deep",
        "etc",
        "etc/passwd",
        "lib",
        "lib/a",
        "lib/b",
        "longlink",
        "opq",
        "opq/new",
        "over",
        "tmp",
        "tmp/fifo",
        "usr",
        "usr/share",
        "usr/share/doc",
        "usr/share/doc/x",
    ];
    let long_file = format!("{long_dir}/file");
    want.push(&long_dir);
    want.push(&long_file);
    want.sort();
    assert_eq!(names, want);
    assert_eq!(stats.entries, want.len() as u64 + 1);

    let get = |p: &str| l.get(p).unwrap_or_else(|| panic!("{p} missing"));
    assert_eq!(get("over").6, b"v3");
    assert_eq!(get("over").1, 0o640);
    assert_eq!((get("over").2, get("over").3, get("over").4), (5, 6, 5_000));
    assert_eq!(get("data").0, 'd');
    assert_eq!(
        (get("data").1, get("data").2, get("data").4),
        (0o750, 1000, 2_000)
    );
    assert_eq!(get("opq").1, 0o700);
    assert_eq!(get("opq/new").6, b"new");
    assert_eq!(get("usr/share").1, 0o755);
    assert_eq!(get("usr/share").2, 0);
    assert_eq!(get("bin/sh").0, 'l');
    assert_eq!(get("bin/sh").5, "/bin/busybox");
    assert_eq!(get("longlink").5, format!("/{}", "t".repeat(150)));
    assert_eq!(get("tmp/fifo").0, 'p');
    assert_eq!(get(&long_file).6, b"long");
    // The hard link kept the content the target had when it was linked.
    assert_eq!(get("bin/tool").6, b"tool-v2");
    let tool_link = get("bin/tool-link");
    assert_eq!((tool_link.0, tool_link.1), ('f', 0o4755));
    assert_eq!(tool_link.6, b"tool-v1");
    assert!(
        tool_link.7.iter().any(|k| k.ends_with("user.origin")),
        "{tool_link:?}"
    );
    assert!(!tool_link.7.iter().any(|k| k.contains("system.")));
    assert!(
        get("data").7.iter().any(|k| k.ends_with("user.dir")),
        "{:?}",
        get("data")
    );
    // lib/a and lib/b are one inode: sqfs2tar writes the second as a hard link.
    let (a, b) = (get("lib/a"), get("lib/b"));
    assert!(
        (a.0 == 'f' && b.0 == 'h' && b.5 == "lib/a")
            || (b.0 == 'f' && a.0 == 'h' && a.5 == "lib/b"),
        "lib/a {a:?} lib/b {b:?}"
    );

    mounted_checks(test, &out);

    // And the SIF around it.
    let sif = fx.out_dir.join("image.sif");
    let config =
        runtime_config(br#"{"architecture":"amd64","config":{"Cmd":["sh"],"Env":["A=1"]}}"#)
            .expect("config");
    squashfs_to_sif(&out, &config, &sif).expect("sif");
    let (img, mut f) = sycri_native::sif::SifImage::open(&sif).expect("parse sif");
    let part = img
        .check_primary_squashfs(&mut f)
        .expect("squashfs")
        .clone();
    assert_eq!(part.size, stats.squashfs_bytes);
}

/// Unmounts (and removes) a test mount when dropped.
struct Mounted {
    dir: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// As root: the image loop-mounted read-only (None elsewhere, after
/// reporting that `test` runs without its mount checks).
fn mount(test: &str, img: &Path) -> Option<Mounted> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_part(test, "the mount checks", "needs root");
        return None;
    }
    if !std::path::Path::new("/dev/loop-control").exists() {
        skip_part(test, "the mount checks", "no /dev/loop-control here");
        return None;
    }
    let dir = tempfile::tempdir().expect("mountpoint");
    let st = Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(img)
        .arg(dir.path())
        .status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "the kernel refused to mount {} (see dmesg)",
        img.display()
    );
    Some(Mounted { dir })
}

/// Looks at inodes, permissions and xattrs the way a container will.
fn mounted_checks(test: &str, img: &Path) {
    let Some(mounted) = mount(test, img) else {
        return;
    };
    let mnt = &mounted.dir;
    let m = |p: &str| {
        std::fs::symlink_metadata(mnt.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let root = m(".");
    assert_eq!(root.permissions().mode() & 0o7777, 0o755);
    assert_eq!(root.uid(), 0);
    let a = m("lib/a");
    let b = m("lib/b");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_ne!(m("bin/tool").ino(), m("bin/tool-link").ino());
    assert_eq!(m("bin/tool-link").permissions().mode() & 0o7777, 0o4755);
    let data = m("data");
    assert_eq!(
        (data.permissions().mode() & 0o7777, data.uid(), data.gid()),
        (0o750, 1000, 1000)
    );
    assert_eq!(data.mtime(), 2_000);
    let over = m("over");
    assert_eq!((over.uid(), over.gid(), over.mtime()), (5, 6, 5_000));
    assert!(m("tmp/fifo").file_type().is_fifo());
    assert_eq!(
        std::fs::read_link(mnt.path().join("bin/sh")).expect("readlink"),
        PathBuf::from("/bin/busybox")
    );
    assert_eq!(std::fs::read(mnt.path().join("over")).expect("read"), b"v3");
    assert!(!mnt.path().join("data/gone").exists());
    assert!(!mnt.path().join("opq/lower1").exists());
    assert!(!mnt.path().join("opq/sub").exists());
    // No whiteout file anywhere.
    let mut stack = vec![mnt.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("readdir") {
            let e = e.expect("entry");
            assert!(
                !e.file_name().as_bytes().starts_with(b".wh."),
                "{:?}",
                e.path()
            );
            if e.file_type().expect("type").is_dir() {
                stack.push(e.path());
            }
        }
    }
    // The xattr, through the kernel.
    let path =
        CString::new(mnt.path().join("bin/tool-link").as_os_str().as_bytes()).expect("c path");
    let name = CString::new("user.origin").expect("c name");
    let mut buf = [0u8; 64];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, 6, "getxattr: {}", std::io::Error::last_os_error());
    assert_eq!(&buf[..6], b"layer1");
}

#[test]
fn docker_gzip_and_empty_media_type_and_root_entry() {
    if !have(
        "sqfs2tar",
        "squashfs-tools-ng",
        "docker_gzip_and_empty_media_type_and_root_entry",
    ) {
        return;
    }
    let l1 = Tb::new()
        .dir(".", 0o700, 0, 7)
        .file("./a", b"a")
        .symlink("s", "a")
        .hardlink("s2", "s")
        .fifo("p")
        .hardlink("p2", "p")
        .tar();
    let fx = Fixture::new();
    let layers = fx.layers(&[(&gzip(&l1), DOCKER), (&zstd(&Tb::new().tar()), "")]);
    let mut o = opts(1 << 20, 10);
    o.compression = Compression::Zstd;
    let stats = layers_to_squashfs(&layers, &fx.out(), &o).expect("convert");
    assert_eq!(stats.entries, 6);
    let l = sqfs2tar(&fx.out());
    assert_eq!(l["a"].6, b"a");
    assert_eq!(l["s"].5, "a");
    if let Some(m) = mount("docker_gzip_and_empty_media_type_and_root_entry", &fx.out()) {
        let root = std::fs::metadata(m.dir.path()).expect("stat root");
        assert_eq!(
            (root.permissions().mode() & 0o7777, root.mtime()),
            (0o700, 7)
        );
        let s = std::fs::symlink_metadata(m.dir.path().join("s")).expect("s");
        let s2 = std::fs::symlink_metadata(m.dir.path().join("s2")).expect("s2");
        assert_eq!((s.ino(), s.nlink()), (s2.ino(), 2));
        let p2 = std::fs::symlink_metadata(m.dir.path().join("p2")).expect("p2");
        assert!(p2.file_type().is_fifo());
        assert_eq!(p2.nlink(), 2);
    }
}

// ---------------------------------------------------------------- hostile input

fn is_unsafe(e: &ConvertError) -> bool {
    matches!(e, ConvertError::Unsafe { .. })
}

fn is_invalid(e: &ConvertError) -> bool {
    matches!(e, ConvertError::InvalidLayer { .. })
}

#[test]
fn escaping_paths_are_refused() {
    use tar::EntryType::{Link, Regular};
    for name in [
        &b"../etc/passwd"[..],
        b"/abs",
        b"a/../../x",
        b"./../x",
        b"../.wh.x",
    ] {
        let e = one(Tb::new().raw(Regular, name, b"", b"x").tar());
        assert!(is_unsafe(&e), "{}: {e}", String::from_utf8_lossy(name));
    }
    let e = one(Tb::new()
        .file("a", b"a")
        .raw(Link, b"b", b"../../etc/shadow", b"")
        .tar());
    assert!(is_unsafe(&e), "{e}");
    let e = one(Tb::new().raw(Link, b"b", b"/etc/shadow", b"").tar());
    assert!(is_unsafe(&e), "{e}");
    let e = one(Tb::new().raw(Regular, b"d/.wh...", b"", b"").tar());
    assert!(is_unsafe(&e), "{e}");
}

#[test]
fn dangling_hard_link_is_refused() {
    let e = one(Tb::new()
        .raw(tar::EntryType::Link, b"b", b"missing", b"")
        .tar());
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn device_nodes_are_refused() {
    for kind in [tar::EntryType::Char, tar::EntryType::Block] {
        let e = one(Tb::new().raw(kind, b"dev/sda", b"", b"").tar());
        assert!(is_unsafe(&e), "{e}");
    }
}

#[test]
fn symlinked_parent_is_not_followed() {
    let e = one(Tb::new()
        .symlink("etc", "/etc")
        .file("etc/passwd", b"x")
        .tar());
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn overlong_names_are_refused() {
    use tar::EntryType::Regular;
    let long_name = "n".repeat(256);
    let mut t = Tb::new();
    t.0.append_data(
        &mut header(Regular, 0o644, 0, 0, 0),
        &long_name,
        std::io::empty(),
    )
    .expect("append");
    let e = one(t.tar());
    assert!(is_invalid(&e), "{e}");
    let long_path = vec!["p".repeat(250); 17].join("/");
    let mut t = Tb::new();
    t.0.append_data(
        &mut header(Regular, 0o644, 0, 0, 0),
        &long_path,
        std::io::empty(),
    )
    .expect("append");
    let e = one(t.tar());
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn decompression_bomb_hits_the_limit() {
    let big = vec![0u8; 4 << 20];
    let bomb = gzip(&Tb::new().file("zeros", &big).tar());
    assert!(bomb.len() < 64 << 10);
    let e = must_fail(&[(&bomb, GZIP)], &opts(1 << 20, 100));
    assert!(matches!(e, ConvertError::TooLarge { .. }), "{e}");
    // The limit is over all layers together.
    let half = gzip(&Tb::new().file("z", &vec![0u8; 600 << 10]).tar());
    let e = must_fail(&[(&half, GZIP), (&half, GZIP)], &opts(1 << 20, 100));
    assert!(matches!(e, ConvertError::TooLarge { .. }), "{e}");
}

#[test]
fn huge_pax_header_is_refused() {
    let mut t = Tb::new();
    let v = vec![b'v'; 2 << 20];
    t.0.append_pax_extensions([("comment", &v[..])])
        .expect("pax");
    let e = one(t.file("a", b"a").tar());
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn too_many_entries() {
    let mut t = Tb::new();
    for i in 0..20 {
        t = t.file(&format!("f{i}"), b"");
    }
    let e = must_fail(&[(&t.tar(), PLAIN)], &opts(1 << 30, 10));
    assert!(matches!(e, ConvertError::TooLarge { .. }), "{e}");
}

#[test]
fn corrupt_streams_are_refused() {
    let tar = Tb::new()
        .file("a", &vec![1u8; 100_000])
        .file("b", b"b")
        .tar();
    let gz = gzip(&tar);
    // Truncated gzip.
    let e = must_fail(&[(&gz[..gz.len() / 2], GZIP)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // Only the gzip trailer (CRC) is wrong.
    let mut bad_crc = gz.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let e = must_fail(&[(&bad_crc, GZIP)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // Truncated zstd.
    let zs = zstd(&tar);
    let e = must_fail(&[(&zs[..zs.len() - 10], ZSTD)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // zstd magic followed by garbage.
    let mut garbage_zstd = vec![0x28, 0xb5, 0x2f, 0xfd];
    garbage_zstd.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let e = must_fail(&[(&garbage_zstd, ZSTD)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // Plain garbage.
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let e = must_fail(&[(&garbage, PLAIN)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // A tar cut inside a file.
    let e = must_fail(&[(&tar[..20_000], PLAIN)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // A header with a broken checksum.
    let mut bad_sum = tar.clone();
    bad_sum[10] ^= 1;
    let e = must_fail(&[(&bad_sum, PLAIN)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
    // xz is not supported.
    let e = must_fail(&[(b"\xfd7zXZ\0garbage", PLAIN)], &ConvertOptions::default());
    assert!(is_invalid(&e), "{e}");
}

#[test]
fn unsupported_media_type_and_missing_blob() {
    let tar = Tb::new().file("a", b"a").tar();
    let e = must_fail(
        &[(
            &tar,
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        )],
        &ConvertOptions::default(),
    );
    assert!(
        matches!(e, ConvertError::UnsupportedMediaType { .. }),
        "{e}"
    );
    let fx = Fixture::new();
    let layers = vec![Layer {
        path: fx.layers_dir.join("nope"),
        media_type: PLAIN.into(),
    }];
    let e = layers_to_squashfs(&layers, &fx.out(), &ConvertOptions::default())
        .expect_err("missing blob");
    assert!(matches!(e, ConvertError::Io { .. }), "{e}");
    assert!(fx.out_dir_entries().is_empty());
}

// ---------------------------------------------------------------- SIF

#[test]
fn squashfs_to_sif_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqfs = dir.path().join("rootfs.sqfs");
    let mut data = b"hsqs".to_vec();
    data.extend((0..10_000u32).map(|i| i as u8));
    std::fs::write(&sqfs, &data).expect("write");
    let config = runtime_config(
        br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--x"],"Env":["PATH=/bin"],"WorkingDir":"/w","User":"1000:1000","ExposedPorts":{"80/tcp":{}},"Labels":{"a":"b"},"StopSignal":"SIGTERM"},"rootfs":{}}"#,
    )
    .expect("config");
    let sif = dir.path().join("image.sif");
    let crc = squashfs_to_sif(&sqfs, &config, &sif).expect("sif");
    let (img, mut f) = sycri_native::sif::SifImage::open(&sif).expect("parse");
    let part = img.check_primary_squashfs(&mut f).expect("primary").clone();
    let bytes = img.read_object(&mut f, &part, 1 << 20).expect("read part");
    assert_eq!(bytes, data);
    assert_eq!(crc, crc32fast::hash(&data), "the CRC is the partition's");
    let d = img
        .find_generic_json("oci-config.json")
        .expect("config object")
        .clone();
    let json = img.read_object(&mut f, &d, 1 << 20).expect("read config");
    let c: crate::images::ImageConfig = serde_json::from_slice(&json).expect("ImageConfig");
    assert_eq!(c.entrypoint, Some(vec!["/bin/app".to_string()]));
    assert_eq!(c.working_dir, "/w");
    assert_eq!(c.user, "1000:1000");
    assert_eq!(c.stop_signal, "SIGTERM");

    // Bad inputs leave nothing.
    let bad = dir.path().join("bad.sif");
    let e = squashfs_to_sif(&sqfs, br#"{"Env":"notalist"}"#, &bad).expect_err("bad config");
    assert!(matches!(e, ConvertError::InvalidConfig(_)), "{e}");
    let not_sqfs = dir.path().join("x");
    std::fs::write(&not_sqfs, b"nope").expect("write");
    let e = squashfs_to_sif(&not_sqfs, b"{}", &bad).expect_err("not squashfs");
    assert!(matches!(e, ConvertError::Sif(_)), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "rootfs.sqfs" && n != "image.sif" && n != "x")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn host_compression_matches_the_kernel() {
    let c = Compression::host_default();
    let zstd_in_kernel =
        super::options::kernel_config().is_some_and(|k| k.contains("CONFIG_SQUASHFS_ZSTD=y"));
    assert_eq!(c == Compression::Zstd, zstd_in_kernel);
}

#[test]
fn runtime_config_extraction() {
    assert_eq!(
        runtime_config(br#"{"architecture":"arm64"}"#).expect("ok"),
        b"{}"
    );
    assert_eq!(runtime_config(br#"{"config":null}"#).expect("ok"), b"{}");
    assert!(runtime_config(b"[1]").is_err());
    assert!(runtime_config(br#"{"config":3}"#).is_err());
    assert!(runtime_config(b"garbage").is_err());
}

// ---------------------------------------------------------------- the writer against other implementations

/// mode, uid, gid, mtime, xattrs.
type Meta<'a> = (u32, u64, u64, i64, &'a [(Vec<u8>, Vec<u8>)]);

/// The merged tree of plain `layers` as one tar (root, directories, then each
/// inode under its first name, its other names as hard links): what sycri
/// used to hand to tar2sqfs.
fn merged_tar(layers: &[&[u8]]) -> Vec<u8> {
    let mut m: Merger<Option<Vec<u8>>> = Merger::new(1 << 20);
    for (i, l) in layers.iter().enumerate() {
        let mut r = TarReader::new(*l, i, 0, u64::MAX);
        while let Some(e) = r.next_entry().expect("entry") {
            let data = if e.kind == Kind::Regular {
                let mut v = vec![0u8; e.size as usize];
                r.read_data(&mut v).expect("data");
                Some(v)
            } else {
                None
            };
            m.add(i, e, data).expect("merge");
        }
    }
    let plan = m.plan();
    let mut b = tar::Builder::new(Vec::new());
    let put = |b: &mut tar::Builder<Vec<u8>>,
               path: &[u8],
               kind: tar::EntryType,
               meta: Meta<'_>,
               link: &[u8],
               data: &[u8]| {
        let x: Vec<(String, &[u8])> = meta
            .4
            .iter()
            .filter(|(n, _)| xattr_supported(n))
            .map(|(n, v)| {
                (
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(n)),
                    &v[..],
                )
            })
            .collect();
        if !x.is_empty() {
            b.append_pax_extensions(x.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let mut h = header(
            kind,
            meta.0,
            meta.1,
            meta.2,
            meta.3.clamp(0, u32::MAX as i64) as u64,
        );
        h.set_size(data.len() as u64);
        let name = if path.is_empty() { &b"./"[..] } else { path };
        let name = String::from_utf8_lossy(name).into_owned();
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            b.append_link(&mut h, &name, String::from_utf8_lossy(link).as_ref())
                .expect("link");
        } else {
            b.append_data(&mut h, &name, data).expect("append");
        }
    };
    let dm = |d: &merge::DirMeta| (d.mode, d.uid, d.gid, d.mtime, d.xattrs.clone());
    let (mode, uid, gid, mtime, x) = dm(&plan.root);
    put(
        &mut b,
        b"",
        tar::EntryType::Directory,
        (mode, uid, gid, mtime, &x),
        b"",
        b"",
    );
    for (p, d) in &plan.dirs {
        let (mode, uid, gid, mtime, x) = dm(d);
        put(
            &mut b,
            p,
            tar::EntryType::Directory,
            (mode, uid, gid, mtime, &x),
            b"",
            b"",
        );
    }
    for (names, info) in &plan.inodes {
        let e = &info.entry;
        let meta = (e.mode, e.uid, e.gid, e.mtime, &e.xattrs[..]);
        let (kind, data): (tar::EntryType, &[u8]) = match e.kind {
            Kind::Symlink => (tar::EntryType::Symlink, b""),
            Kind::Fifo => (tar::EntryType::Fifo, b""),
            _ => (
                tar::EntryType::Regular,
                info.data.as_deref().unwrap_or_default(),
            ),
        };
        put(&mut b, &names[0], kind, meta, &e.link, data);
        for n in &names[1..] {
            put(&mut b, n, tar::EntryType::Link, meta, &names[0], b"");
        }
    }
    b.into_inner().expect("tar")
}

/// Every path of an image as `sqfs2tar` shows it, as one comparable line:
/// type, mode, owner, time, link target, content digest, xattrs, and the
/// names it shares its inode with.
fn normalized(img: &Path) -> std::collections::BTreeMap<String, String> {
    let out = Command::new("sqfs2tar")
        .arg(img)
        .stderr(Stdio::inherit())
        .output()
        .expect("sqfs2tar runs");
    assert!(out.status.success(), "sqfs2tar failed on {}", img.display());
    let mut ar = tar::Archive::new(&out.stdout[..]);
    let mut lines = std::collections::BTreeMap::new();
    let mut groups: HashMap<String, Vec<String>> = HashMap::new();
    let mut hard: Vec<(String, String)> = Vec::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = String::from_utf8_lossy(&e.path_bytes())
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let mut xattrs: Vec<String> = match e.pax_extensions().expect("pax") {
            Some(exts) => exts
                .filter_map(|x| {
                    let x = x.ok()?;
                    let k = x.key().ok()?.to_string();
                    k.contains("xattr")
                        .then(|| format!("{k}={}", hex::encode(x.value_bytes())))
                })
                .collect(),
            None => Vec::new(),
        };
        xattrs.sort();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        if h.entry_type() == tar::EntryType::Link {
            hard.push((path, link.trim_start_matches("./").to_string()));
            continue;
        }
        let line = format!(
            "{:?} {:o} {}:{} t={} l={link} d={} x={xattrs:?}",
            h.entry_type(),
            h.mode().expect("mode") & 0o7777,
            h.uid().expect("uid"),
            h.gid().expect("gid"),
            h.mtime().expect("mtime"),
            hex::encode(sha2::Sha256::digest(&data))
        );
        groups.insert(path.clone(), vec![path.clone()]);
        lines.insert(path, line);
    }
    for (p, target) in hard {
        let line = lines.get(&target).cloned().unwrap_or_default();
        groups.entry(target.clone()).or_default().push(p.clone());
        lines.insert(p, line);
    }
    let mut member: HashMap<String, String> = HashMap::new();
    for g in groups.values() {
        let mut g = g.clone();
        g.sort();
        for p in &g {
            member.insert(p.clone(), g.join(","));
        }
    }
    for (p, line) in lines.iter_mut() {
        let g = member.get(p).cloned().unwrap_or_default();
        line.push_str(&format!(" names={g}"));
    }
    lines
}

use sha2::Digest as _;

#[test]
fn writer_matches_tar2sqfs_on_the_same_merged_tree() {
    let test = "writer_matches_tar2sqfs_on_the_same_merged_tree";
    if !have("tar2sqfs", "squashfs-tools-ng", test) || !have("sqfs2tar", "squashfs-tools-ng", test)
    {
        return;
    }
    let (l1, l2, l3) = three_layers();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let big = random_layer(&mut rng, 150);
    for compression in [Compression::Gzip, Compression::Zstd] {
        for set in [vec![&l1[..], &l2[..], &l3[..]], vec![&big.tar[..]]] {
            let fx = Fixture::new();
            let blobs: Vec<(&[u8], &str)> = set.iter().map(|l| (*l, PLAIN)).collect();
            let layers = fx.layers(&blobs);
            let ours = fx.out();
            let mut o = opts(1 << 30, 100_000);
            o.compression = compression;
            o.jobs = 2;
            layers_to_squashfs(&layers, &ours, &o).expect("convert");
            let theirs = fx.out_dir.join("tar2sqfs.sqfs");
            let mut child = Command::new("tar2sqfs")
                .args(["--quiet", "--no-skip", "--force", "--compressor"])
                .arg(compression.name())
                .args(["--defaults", "uid=0,gid=0,mode=0755,mtime=0"])
                .arg(&theirs)
                .stdin(Stdio::piped())
                .spawn()
                .expect("tar2sqfs");
            let tar = merged_tar(&set);
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(&tar)
                .expect("feed tar2sqfs");
            assert!(child.wait().expect("wait").success(), "tar2sqfs failed");
            let (a, b) = (normalized(&ours), normalized(&theirs));
            assert!(a.len() > 10, "{a:?}");
            for (k, v) in &b {
                assert_eq!(a.get(k), Some(v), "{k} ({compression:?})");
            }
            assert_eq!(a.len(), b.len(), "{compression:?}");
            let (sa, sb) = (
                std::fs::metadata(&ours).expect("stat").len(),
                std::fs::metadata(&theirs).expect("stat").len(),
            );
            eprintln!("{compression:?}: sycri {sa} bytes, tar2sqfs {sb} bytes");
        }
    }
}

/// xorshift64*: reproducible test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        // Compressible: runs of a few symbols, with noise.
        (0..n)
            .map(|i| {
                if self.below(8) == 0 {
                    self.next() as u8
                } else {
                    b"abcdefgh"[(i / 7) % 8]
                }
            })
            .collect()
    }
}

/// What a random layer holds, to check an image against.
#[derive(Clone, Debug)]
enum Want {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Fifo,
    /// A hard link to this path.
    Link(String),
}

/// What, mode, uid, gid, mtime, xattrs.
type Wanted = (Want, u32, u64, u64, u64, Vec<(String, Vec<u8>)>);

struct RandomLayer {
    tar: Vec<u8>,
    /// path → (what, mode, uid, gid, mtime, xattrs)
    want: std::collections::BTreeMap<String, Wanted>,
}

/// A layer with `n` random entries besides a directory of 700 (more than one
/// directory header and more than one metadata block of listing).
fn random_layer(rng: &mut Rng, n: usize) -> RandomLayer {
    let mut want = std::collections::BTreeMap::new();
    let mut dirs: Vec<String> = vec![String::new()];
    let mut files: Vec<String> = Vec::new();
    let mut b = tar::Builder::new(Vec::new());
    let ids = [0u64, 1, 1000, 65534, 4_000_000_000];
    let name = |rng: &mut Rng, i: usize| -> String {
        let len = match rng.below(10) {
            0 => 200 + rng.below(50) as usize,
            _ => 1 + rng.below(12) as usize,
        };
        let mut s: String = (0..len)
            .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789._-"[rng.below(39) as usize]))
            .collect();
        if rng.below(5) == 0 {
            s.push('é');
        }
        format!("{s}{i}")
    };
    let caps = {
        // A valid VFS_CAP_REVISION_2 value (effective; cap_net_raw permitted).
        let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
        v.extend_from_slice(&(1u32 << 13).to_le_bytes());
        v.extend_from_slice(&[0u8; 12]);
        v
    };
    let add = |b: &mut tar::Builder<Vec<u8>>,
               rng: &mut Rng,
               path: String,
               what: Want,
               want: &mut std::collections::BTreeMap<_, _>| {
        let mode = match what {
            Want::Dir => [0o755, 0o700, 0o1777, 0o2750][rng.below(4) as usize],
            _ => [0o644, 0o600, 0o4755, 0o755, 0o444][rng.below(5) as usize],
        };
        let (uid, gid) = (ids[rng.below(5) as usize], ids[rng.below(5) as usize]);
        let mtime = rng.below(u64::from(u32::MAX));
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        // user.* only where Linux allows it (files and directories); values
        // small enough for ext4 (where unsquashfs extracts them).
        if matches!(what, Want::File(_) | Want::Dir) && rng.below(4) == 0 {
            let (k, n) = (rng.below(3), rng.below(40) as usize + 1);
            xattrs.push((format!("user.k{k}"), rng.bytes(n)));
            if rng.below(3) == 0 {
                let n = 500 + rng.below(1000) as usize;
                xattrs.push(("trusted.big".into(), rng.bytes(n)));
            }
            if matches!(what, Want::File(_)) && rng.below(3) == 0 {
                xattrs.push(("security.capability".into(), caps.clone()));
            }
        }
        if !xattrs.is_empty() {
            let x: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), &v[..]))
                .collect();
            b.append_pax_extensions(x.iter().map(|(k, v)| (k.as_str(), *v)))
                .expect("pax");
        }
        let kind = match what {
            Want::Dir => tar::EntryType::Directory,
            Want::File(_) => tar::EntryType::Regular,
            Want::Symlink(_) => tar::EntryType::Symlink,
            Want::Fifo => tar::EntryType::Fifo,
            Want::Link(_) => tar::EntryType::Link,
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(0);
        match &what {
            Want::File(d) => {
                h.set_size(d.len() as u64);
                b.append_data(&mut h, &path, &d[..]).expect("file");
            }
            Want::Symlink(t) | Want::Link(t) => {
                b.append_link(&mut h, &path, t).expect("link");
            }
            _ => b
                .append_data(&mut h, &path, std::io::empty())
                .expect("entry"),
        }
        let w = match &what {
            // A hard link shares everything with its target.
            Want::Link(t) => want
                .get(t)
                .cloned()
                .map(|(_, m, u, g, t2, x)| (Want::Link(t.clone()), m, u, g, t2, x)),
            _ => Some((what.clone(), mode, uid, gid, mtime, xattrs)),
        };
        if let Some(w) = w {
            want.insert(path, w);
        }
    };
    let sizes = [
        0usize,
        1,
        100,
        4095,
        65536,
        BLOCK_SIZE - 1,
        BLOCK_SIZE,
        BLOCK_SIZE + 1,
        3 * BLOCK_SIZE + 17,
    ];
    for i in 0..n {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let mut path = name(rng, i);
        if !parent.is_empty() {
            path = format!("{parent}/{path}");
        }
        if path.len() > 3000 {
            continue;
        }
        let what = match rng.below(10) {
            0 | 1 => {
                dirs.push(path.clone());
                Want::Dir
            }
            2 => Want::Symlink(format!("../t/{}", rng.below(1000))),
            3 => Want::Fifo,
            4 if !files.is_empty() => {
                Want::Link(files[rng.below(files.len() as u64) as usize].clone())
            }
            5 => {
                // Sparse: zero blocks around data.
                let mut d = vec![0u8; 2 * BLOCK_SIZE + 10];
                d[BLOCK_SIZE..BLOCK_SIZE + 5].copy_from_slice(b"hello");
                Want::File(d)
            }
            _ => {
                let n = sizes[rng.below(sizes.len() as u64) as usize];
                Want::File(rng.bytes(n))
            }
        };
        if matches!(what, Want::File(_)) {
            files.push(path.clone());
        }
        add(&mut b, rng, path, what, &mut want);
    }
    add(&mut b, rng, "many".into(), Want::Dir, &mut want);
    for i in 0..700 {
        let what = if i % 3 == 0 {
            Want::Dir
        } else {
            let n = rng.below(50) as usize;
            Want::File(rng.bytes(n))
        };
        add(
            &mut b,
            rng,
            format!("many/entry-{i:04}-{}", "x".repeat(i % 40)),
            what,
            &mut want,
        );
    }
    RandomLayer {
        tar: b.into_inner().expect("tar"),
        want,
    }
}

/// The xattrs of a path (not following symlinks), sorted.
fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("c path");
    let mut names = vec![0u8; 64 << 10];
    // SAFETY: a valid NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "llistxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).expect("c name");
        let mut v = vec![0u8; 64 << 10];
        // SAFETY: valid NUL-terminated strings and a buffer of the given length.
        let k = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(
            k >= 0,
            "lgetxattr {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        v.truncate(k as usize);
        out.push((String::from_utf8_lossy(name).into_owned(), v));
    }
    out.sort();
    out
}

/// Checks a tree on disk (a kernel mount, or what unsquashfs extracted)
/// against what the layer holds; `kernel`: also the link counts of directories.
fn check_tree(root: &Path, l: &RandomLayer, kernel: bool) {
    let mut inode_of: HashMap<String, u64> = HashMap::new();
    let mut found = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut subdirs = 0;
        for e in std::fs::read_dir(&d).expect("readdir") {
            let e = e.expect("entry");
            let rel = e
                .path()
                .strip_prefix(root)
                .expect("rel")
                .to_string_lossy()
                .into_owned();
            let (what, mode, uid, gid, mtime, xattrs) = l
                .want
                .get(&rel)
                .unwrap_or_else(|| panic!("unexpected {rel}"))
                .clone();
            found += 1;
            let m = std::fs::symlink_metadata(e.path()).expect("lstat");
            let (what, target) = match what {
                Want::Link(t) => (l.want[&t].0.clone(), Some(t)),
                w => (w, None),
            };
            if !m.file_type().is_symlink() {
                assert_eq!(m.permissions().mode() & 0o7777, mode, "{rel}");
            }
            assert_eq!(
                (u64::from(m.uid()), u64::from(m.gid())),
                (uid, gid),
                "{rel}"
            );
            if kernel || !m.is_dir() {
                assert_eq!(m.mtime() as u64, mtime, "{rel}");
            }
            let mut x = xattrs.clone();
            x.sort();
            assert_eq!(xattrs_of(&e.path()), x, "{rel}");
            match what {
                Want::Dir => {
                    assert!(m.is_dir(), "{rel}");
                    subdirs += 1;
                    stack.push(e.path());
                }
                Want::File(data) => {
                    assert!(m.is_file(), "{rel}");
                    let got = std::fs::read(e.path()).expect("read");
                    assert!(
                        got == data,
                        "{rel}: content differs ({} vs {} bytes)",
                        got.len(),
                        data.len()
                    );
                    let key = target.unwrap_or(rel.clone());
                    match inode_of.get(&key) {
                        Some(ino) => assert_eq!(*ino, m.ino(), "{rel} is not a hard link of {key}"),
                        None => {
                            inode_of.insert(key, m.ino());
                        }
                    }
                }
                Want::Symlink(t) => {
                    assert!(m.file_type().is_symlink(), "{rel}");
                    assert_eq!(
                        std::fs::read_link(e.path()).expect("readlink"),
                        PathBuf::from(t)
                    );
                }
                Want::Fifo => assert!(m.file_type().is_fifo(), "{rel}"),
                Want::Link(_) => unreachable!("resolved above"),
            }
        }
        if kernel {
            let md = std::fs::metadata(&d).expect("stat dir");
            assert_eq!(md.nlink(), 2 + subdirs, "{}", d.display());
        }
    }
    assert_eq!(found, l.want.len(), "entries");
    // Every name also resolves by lookup (through the directory index).
    for p in l.want.keys() {
        std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("lookup {p}: {e}"));
    }
}

#[test]
fn uncompressed_images_keep_every_block_as_it_is() {
    let test = "uncompressed_images_keep_every_block_as_it_is";
    let (l1, l2, l3) = three_layers();
    let mut rng = Rng(0x5eed_0000_0000_0003);
    let big = random_layer(&mut rng, 60);
    let fx = Fixture::new();
    let layers = fx.layers(&[(&l1, PLAIN), (&l2, PLAIN), (&l3, PLAIN), (&big.tar, PLAIN)]);
    let mut o = opts(1 << 30, 100_000);
    o.compression = Compression::None;
    layers_to_squashfs(&layers, &fx.out(), &o).expect("convert");
    let img = std::fs::read(fx.out()).expect("read");
    // Superblock: compressor id at 20 (gzip, which every kernel has), flags at 24.
    assert_eq!(u16::from_le_bytes([img[20], img[21]]), 1);
    let flags = u16::from_le_bytes([img[24], img[25]]);
    assert_eq!(
        flags & 0b1_0000_1011,
        0b1_0000_1011,
        "NOI NOD NOF NOX: {flags:#x}"
    );
    // File data lands in the image verbatim: a stretch from the middle of
    // each of a few files is found as it is.
    let mut checked = 0;
    for w in big.want.values() {
        let Want::File(data) = &w.0 else { continue };
        let mid = &data[data.len() / 2..];
        let Some(needle) = mid.get(..32).filter(|n| n.iter().any(|&b| b != 0)) else {
            continue;
        };
        assert!(
            img.windows(needle.len()).any(|x| x == needle),
            "a file's bytes are not stored as they are"
        );
        checked += 1;
        if checked == 5 {
            break;
        }
    }
    assert_eq!(checked, 5, "the random layer has five files with data");
    if !have("sqfs2tar", "squashfs-tools-ng", test) {
        return;
    }
    let mut z = opts(1 << 30, 100_000);
    z.compression = Compression::Zstd;
    let zout = fx.out_dir.join("zstd.sqfs");
    layers_to_squashfs(&layers, &zout, &z).expect("convert zstd");
    assert_eq!(normalized(&fx.out()), normalized(&zout));
}

#[test]
fn random_trees_round_trip_through_unsquashfs_and_the_kernel() {
    let test = "random_trees_round_trip_through_unsquashfs_and_the_kernel";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root (owners, xattrs, loop mounts)");
        return;
    }
    if !have("unsquashfs", "squashfs-tools", test) {
        return;
    }
    let rounds: u64 = std::env::var("SYCRI_SQFS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (round + 1).wrapping_mul(0x1000_0001));
        let l = random_layer(&mut rng, 120 + 40 * round as usize);
        let fx = Fixture::new();
        let layers = fx.layers(&[(&gzip(&l.tar), GZIP)]);
        let mut o = opts(1 << 30, 100_000);
        o.compression =
            [Compression::Zstd, Compression::Gzip, Compression::None][round as usize % 3];
        o.jobs = 1 + (round as usize % 3);
        layers_to_squashfs(&layers, &fx.out(), &o).expect("convert");
        let x = fx.out_dir.join("x");
        let st = Command::new("unsquashfs")
            .args(["-n", "-d"])
            .arg(&x)
            .arg(fx.out())
            .stdout(Stdio::null())
            .status()
            .expect("unsquashfs");
        assert!(st.success(), "unsquashfs failed (round {round})");
        check_tree(&x, &l, false);
        if let Some(m) = mount(test, &fx.out()) {
            check_tree(m.dir.path(), &l, true);
        }
    }
}

/// Converts `layers` in full; the image's bytes and its first layer's state.
fn convert_keeping_base(layers: &[Layer], out: &Path, o: &ConvertOptions) -> (Vec<u8>, BaseLayer) {
    let mut c = Converter::new(out, layers.len(), o).expect("start");
    c.keep_first_layer();
    for l in layers {
        c.add_layer(&l.media_type, std::fs::File::open(&l.path).expect("open"))
            .expect("layer");
    }
    let (_, base) = c.finish_with_base().expect("finish");
    (
        std::fs::read(out).expect("read"),
        base.expect("a first-layer state"),
    )
}

/// Goes on from `base` (saved from the image at `src`) with `layers[1..]`.
fn convert_from_base(
    layers: &[Layer],
    base: &BaseLayer,
    src: &Path,
    out: &Path,
    o: &ConvertOptions,
) -> Result<(Vec<u8>, Option<BaseLayer>), ConvertError> {
    let f = std::fs::File::open(src).expect("open source");
    let len = f.metadata().expect("stat").len();
    let checked = base.clone().check(o, layers.len(), len)?;
    let mut c = Converter::resume_checked(out, o, checked, &f, 0)?;
    for l in &layers[1..] {
        c.add_layer(&l.media_type, std::fs::File::open(&l.path).expect("open"))?;
    }
    let (_, b) = c.finish_with_base()?;
    Ok((std::fs::read(out).expect("read"), b))
}

#[test]
fn going_on_from_a_saved_first_layer_makes_the_same_image() {
    let (l1, l2, l3) = three_layers();
    let mut rng = Rng(0x5eed_0000_0000_0b5e);
    let big = random_layer(&mut rng, 150);
    let sets: Vec<Vec<&[u8]>> = vec![
        vec![&l1, &l2, &l3],
        vec![&big.tar, &l1, &l2, &l3],
        vec![&big.tar, &l3],
        vec![&l1],
    ];
    for compression in [Compression::Zstd, Compression::None] {
        for jobs in [1, 3] {
            for (n, set) in sets.iter().enumerate() {
                let fx = Fixture::new();
                let blobs: Vec<(&[u8], &str)> = set.iter().map(|l| (*l, PLAIN)).collect();
                let layers = fx.layers(&blobs);
                let mut o = opts(1 << 30, 100_000);
                o.compression = compression;
                o.jobs = jobs;
                let (full, base) = convert_keeping_base(&layers, &fx.out(), &o);
                // Through its file form, as the store keeps it.
                let base = BaseLayer::from_bytes(&base.to_bytes()).expect("read back");
                let again = fx.out_dir.join("again.sqfs");
                let (resumed, base2) =
                    convert_from_base(&layers, &base, &fx.out(), &again, &o).expect("resume");
                assert!(
                    full == resumed,
                    "set {n}, {compression:?}, {jobs} jobs: the images differ"
                );
                assert_eq!(
                    base2.map(|b| b.to_bytes()),
                    Some(base.to_bytes()),
                    "the new image keeps the same first-layer state"
                );
            }
        }
    }
}

#[test]
fn a_saved_first_layer_that_does_not_fit_is_refused() {
    let (_, l2, _) = three_layers();
    let mut rng = Rng(0x5eed_0000_0000_0bad);
    let big = random_layer(&mut rng, 100);
    let fx = Fixture::new();
    let layers = fx.layers(&[(&big.tar, PLAIN), (&l2, PLAIN)]);
    let o = opts(1 << 30, 100_000);
    let (_, base) = convert_keeping_base(&layers, &fx.out(), &o);
    let text = String::from_utf8(base.to_bytes()).expect("utf-8");
    let (head, tree) = text.split_once('\n').expect("two parts");
    let again = fx.out_dir.join("again.sqfs");
    let refused = |bytes: &[u8], o: &ConvertOptions| {
        let b = match BaseLayer::from_bytes(bytes) {
            Ok(b) => b,
            Err(e) => return matches!(e, ConvertError::Base(_)),
        };
        matches!(
            convert_from_base(&layers, &b, &fx.out(), &again, o),
            Err(ConvertError::Base(_))
        )
    };
    let v: serde_json::Value = serde_json::from_str(head).expect("header");
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut h = v.clone();
        f(&mut h);
        format!("{h}\n{tree}").into_bytes()
    };
    // Data beyond the stored image, a block outside the layer's data, a
    // fragment block that was never written, another format.
    assert!(refused(&with(&|h| h["data_end"] = (1u64 << 40).into()), &o));
    assert!(refused(
        &with(&|h| h["placed"][0] = serde_json::json!([1u64 << 30, 100])),
        &o
    ));
    assert!(refused(
        &with(&|h| h["boundary"]["frag_seqs"] = serde_json::json!([1u64 << 20])),
        &o
    ));
    assert!(refused(&with(&|h| h["format"] = 99.into()), &o));
    // An inode number the tree does not have; a file whose blocks are not there.
    assert!(refused(
        format!(
            "{head}\n{}",
            tree.replacen("\"Inode\":", "\"Inode\":9999999", 1)
        )
        .as_bytes(),
        &o
    ));
    let no_blocks = tree.replacen("\"blocks\":[", "\"blocks\":[4000000,", 1);
    assert_ne!(no_blocks, tree, "the tree has a file with blocks");
    assert!(refused(format!("{head}\n{no_blocks}").as_bytes(), &o));
    // A file whose size disagrees with its blocks; a node of another layer.
    let resized = tree.replacen("\"data\":{\"size\":", "\"data\":{\"size\":9", 1);
    assert_ne!(resized, tree, "the tree has a file");
    assert!(refused(format!("{head}\n{resized}").as_bytes(), &o));
    let relayered = tree.replacen("\"layer\":0", "\"layer\":1", 1);
    assert_ne!(relayered, tree, "the tree has nodes");
    assert!(refused(format!("{head}\n{relayered}").as_bytes(), &o));
    // A path with an empty component.
    let at = tree.find("\"tree\":[[[").expect("tree") + "\"tree\":[[[".len();
    let end = at + tree[at..].find(']').expect("key end");
    let bad_path = format!("{}97,47,47,98{}", &tree[..at], &tree[end..]);
    assert!(refused(format!("{head}\n{bad_path}").as_bytes(), &o));
    assert!(refused(b"{}", &o));
    assert!(refused(&base.to_bytes()[..head.len() + 10], &o));
    // Saved with another compression.
    let mut other = opts(1 << 30, 100_000);
    other.compression = Compression::Zstd;
    assert!(refused(&base.to_bytes(), &other));
    // And the untouched state is taken.
    assert!(!refused(&base.to_bytes(), &o));
}
