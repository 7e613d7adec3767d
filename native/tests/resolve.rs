//! Path resolution inside a root: symlinks re-rooted, escapes refused.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use sycri_native::resolve::{open_in_root, resolve_in_root, Create, ResolveError};

struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = fs::canonicalize(dir.path()).expect("canonicalize");
        Root { _dir: dir, path }
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.path.join(rel)).expect("mkdir");
    }

    fn file(&self, rel: &str) {
        fs::write(self.path.join(rel), b"x").expect("write file");
    }

    fn link(&self, rel: &str, target: &str) {
        symlink(target, self.path.join(rel)).expect("symlink");
    }

    fn resolve(&self, p: &str) -> Result<PathBuf, ResolveError> {
        resolve_in_root(&self.path, Path::new(p))
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("readlink fd")
}

#[test]
fn plain_nested_path() {
    let r = Root::new();
    r.mkdir("a/b/c");
    assert_eq!(r.resolve("/a/b/c").unwrap(), r.at("a/b/c"));
    assert_eq!(r.resolve("a/b/c").unwrap(), r.at("a/b/c"));
    assert_eq!(r.resolve("/a/./b/../b//c/").unwrap(), r.at("a/b/c"));
    assert_eq!(r.resolve("/").unwrap(), r.path);
    assert_eq!(r.resolve("").unwrap(), r.path);
}

#[test]
fn absolute_symlink_is_rerooted() {
    let r = Root::new();
    r.mkdir("etc");
    r.link("etc/link", "/data");
    // Missing target: still inside root, never host /data.
    assert_eq!(r.resolve("/etc/link").unwrap(), r.at("data"));
    assert_eq!(r.resolve("/etc/link/sub").unwrap(), r.at("data/sub"));
    r.mkdir("data");
    assert_eq!(r.resolve("/etc/link/sub").unwrap(), r.at("data/sub"));
    r.link("rootlink", "/");
    assert_eq!(r.resolve("/rootlink/etc").unwrap(), r.at("etc"));
}

#[test]
fn relative_symlink_chain() {
    let r = Root::new();
    r.mkdir("a");
    r.mkdir("b/c");
    r.link("a/l1", "../b/l2");
    r.link("b/l2", "./l3");
    r.link("b/l3", "c");
    assert_eq!(r.resolve("/a/l1/file").unwrap(), r.at("b/c/file"));
    assert_eq!(r.resolve("a/l1/../c").unwrap(), r.at("b/c"));
}

#[test]
fn dotdot_above_root_is_an_escape() {
    let r = Root::new();
    r.mkdir("a/b");
    match r.resolve("a/b/../../../x") {
        Err(ResolveError::Escape { link: None, .. }) => {}
        other => panic!("expected Escape, got {other:?}"),
    }
    assert!(matches!(r.resolve("/.."), Err(ResolveError::Escape { .. })));
    // Climbing back in after a missing component is still checked.
    assert!(matches!(
        r.resolve("missing/../../x"),
        Err(ResolveError::Escape { .. })
    ));
}

#[test]
fn symlink_dotdot_escape_names_the_link() {
    let r = Root::new();
    r.mkdir("sub");
    r.link("sub/esc", "../../../../etc");
    match r.resolve("/sub/esc/passwd") {
        Err(ResolveError::Escape { path, link }) => {
            assert_eq!(path, Path::new("/sub/esc/passwd"));
            assert_eq!(link.as_deref(), Some(Path::new("/sub/esc")));
        }
        other => panic!("expected Escape, got {other:?}"),
    }
    // An absolute target is re-rooted first, so its `..` escapes too.
    r.link("abs", "/../etc");
    assert!(matches!(r.resolve("abs"), Err(ResolveError::Escape { .. })));
    assert!(matches!(
        open_in_root(&r.path, Path::new("/sub/esc/x"), Create::Dir),
        Err(ResolveError::Escape { .. })
    ));
}

#[test]
fn symlink_loop_is_too_many_links() {
    let r = Root::new();
    r.link("l1", "l2");
    r.link("l2", "/l1");
    assert!(matches!(
        r.resolve("l1/x"),
        Err(ResolveError::TooManyLinks(_))
    ));
    r.link("self", "self");
    assert!(matches!(
        r.resolve("self"),
        Err(ResolveError::TooManyLinks(_))
    ));
}

#[test]
fn forty_links_are_fine_forty_one_are_not() {
    let r = Root::new();
    r.mkdir("end");
    // c0 -> c1 -> ... -> c39 -> end: 40 links.
    for i in 0..40 {
        let target = if i == 39 {
            "end".to_string()
        } else {
            format!("c{}", i + 1)
        };
        r.link(&format!("c{i}"), &target);
    }
    assert_eq!(r.resolve("c0").unwrap(), r.at("end"));
    r.link("extra", "c0");
    assert!(matches!(
        r.resolve("extra"),
        Err(ResolveError::TooManyLinks(_))
    ));
}

#[test]
fn missing_components_are_kept() {
    let r = Root::new();
    r.mkdir("a");
    assert_eq!(
        r.resolve("/a/missing/deeper").unwrap(),
        r.at("a/missing/deeper")
    );
    assert_eq!(r.resolve("/a/missing/../x").unwrap(), r.at("a/x"));
}

#[test]
fn file_in_the_middle_is_not_a_directory() {
    let r = Root::new();
    r.mkdir("a");
    r.file("a/f");
    match r.resolve("/a/f/b") {
        Err(ResolveError::NotADirectory(p)) => assert_eq!(p, r.at("a/f")),
        other => panic!("expected NotADirectory, got {other:?}"),
    }
    assert!(matches!(
        r.resolve("/a/f/.."),
        Err(ResolveError::NotADirectory(_))
    ));
    // A file at the end is fine.
    assert_eq!(r.resolve("/a/f").unwrap(), r.at("a/f"));
    assert!(matches!(
        open_in_root(&r.path, Path::new("/a/f/b"), Create::Dir),
        Err(ResolveError::NotADirectory(_))
    ));
}

#[test]
fn open_creates_dirs() {
    let r = Root::new();
    let fd = open_in_root(&r.path, Path::new("/x/y/z"), Create::Dir).expect("open");
    assert!(r.at("x/y/z").is_dir());
    assert_eq!(fd_path(&fd), r.at("x/y/z"));
    // Opening again finds the existing directory.
    let again = open_in_root(&r.path, Path::new("x/y/z"), Create::No).expect("reopen");
    assert_eq!(fd_path(&again), r.at("x/y/z"));
}

#[test]
fn open_creates_file_through_absolute_symlink() {
    let r = Root::new();
    r.mkdir("etc");
    r.link("etc/resolv.conf", "/run/host/resolv.conf");
    let fd = open_in_root(&r.path, Path::new("/etc/resolv.conf"), Create::File).expect("open");
    let created = r.at("run/host/resolv.conf");
    assert!(created.is_file());
    assert_eq!(fd_path(&fd), created);
    assert!(fd_path(&fd).starts_with(&r.path));
}

#[test]
fn open_without_create_reports_missing() {
    let r = Root::new();
    match open_in_root(&r.path, Path::new("/nope/x"), Create::No) {
        Err(ResolveError::Io { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("expected Io NotFound, got {other:?}"),
    }
    assert!(!r.at("nope").exists());
}

#[test]
fn open_root_itself() {
    let r = Root::new();
    let fd = open_in_root(&r.path, Path::new("/"), Create::No).expect("open root");
    assert_eq!(fd_path(&fd), r.path);
}

#[test]
fn root_given_through_a_symlink() {
    let r = Root::new();
    let outer = tempfile::tempdir().expect("tempdir");
    let alias = outer.path().join("alias");
    symlink(&r.path, &alias).expect("symlink");
    r.mkdir("a");
    assert_eq!(resolve_in_root(&alias, Path::new("a")).unwrap(), r.at("a"));
    let fd = open_in_root(&alias, Path::new("a/new"), Create::File).expect("open");
    assert_eq!(fd_path(&fd), r.at("a/new"));
}

#[test]
fn missing_root_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        resolve_in_root(&dir.path().join("absent"), Path::new("a")),
        Err(ResolveError::Io { .. })
    ));
}
