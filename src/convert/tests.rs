//! End-to-end tests: layers built with the `tar` crate, converted with tar2sqfs,
//! checked through `sqfs2tar` and, as root, a loop mount.

use super::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

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

fn have_tar2sqfs() -> bool {
    let ok = Command::new("tar2sqfs")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: tar2sqfs (squashfs-tools-ng) is not installed");
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
    if !have_tar2sqfs() {
        return;
    }
    let (l1, l2, l3) = three_layers();
    let fx = Fixture::new();
    let layers = fx.layers(&[(&gzip(&l1), GZIP), (&zstd(&l2), ZSTD), (&l3, PLAIN)]);
    let out = fx.out();
    let stats = layers_to_squashfs(&layers, &out, &opts(1 << 30, 1000)).expect("convert");
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

    mounted_checks(&out);

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

/// As root: the image loop-mounted read-only (None, with a note, elsewhere).
fn mount(img: &Path) -> Option<Mounted> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping the mount checks");
        return None;
    }
    let dir = tempfile::tempdir().expect("mountpoint");
    let st = Command::new("mount")
        .args(["-t", "squashfs", "-o", "loop,ro"])
        .arg(img)
        .arg(dir.path())
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("cannot loop-mount here: skipping the mount checks");
        return None;
    }
    Some(Mounted { dir })
}

/// Looks at inodes, permissions and xattrs the way a container will.
fn mounted_checks(img: &Path) {
    let Some(mounted) = mount(img) else {
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
    if !have_tar2sqfs() {
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
    if let Some(m) = mount(&fx.out()) {
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

#[test]
fn missing_tool_leaves_nothing() {
    let o = ConvertOptions {
        tar2sqfs: PathBuf::from("/nonexistent/tar2sqfs"),
        ..ConvertOptions::default()
    };
    let err = must_fail(&[(&Tb::new().file("a", b"a").tar(), PLAIN)], &o);
    assert!(matches!(err, ConvertError::ToolMissing { .. }), "{err}");
}

#[test]
fn failing_tool_is_reported() {
    // `false` reads nothing and exits 1: a broken pipe or a failed exit.
    let o = ConvertOptions {
        tar2sqfs: PathBuf::from("false"),
        ..ConvertOptions::default()
    };
    let big = vec![7u8; 1 << 20];
    let err = must_fail(&[(&Tb::new().file("a", &big).tar(), PLAIN)], &o);
    assert!(matches!(err, ConvertError::Tool { .. }), "{err}");
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
    squashfs_to_sif(&sqfs, &config, &sif).expect("sif");
    let (img, mut f) = sycri_native::sif::SifImage::open(&sif).expect("parse");
    let part = img.check_primary_squashfs(&mut f).expect("primary").clone();
    let bytes = img.read_object(&mut f, &part, 1 << 20).expect("read part");
    assert_eq!(bytes, data);
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
    let zstd_in_kernel = kernel_config().is_some_and(|k| k.contains("CONFIG_SQUASHFS_ZSTD=y"));
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
