//! Rootfs assembly against a recording kernel: which calls, in which order,
//! with which flags, and what happens when one of them fails. No root needed:
//! the rootfs is a temporary directory and no mount is made.

use super::*;
use crate::container::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use crate::kernel::recording::{Call, Recording};
use nix::errno::Errno;

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;
const RDONLY: MsFlags = MsFlags::MS_RDONLY;
const BIND: MsFlags = MsFlags::MS_BIND;
const REC: MsFlags = MsFlags::MS_REC;
const REMOUNT: MsFlags = MsFlags::MS_REMOUNT;
const SLAVE: MsFlags = MsFlags::MS_SLAVE;

/// A container in a temporary directory: image, layer, rootfs, two volumes
/// (a directory, read-write, and a file, read-only), and an empty stand-in
/// for the host's /dev unless a test says otherwise.
struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    spec: ContainerSpec,
    host_dev: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        // Recorded paths are what /proc/self/fd names: canonical.
        let base = fs::canonicalize(dir.path()).expect("canonicalize");
        for d in [
            "image",
            "layer",
            "root/proc/acpi",
            "root/proc/sys",
            "root/sys/firmware",
            "vol",
            "hostdev",
        ] {
            fs::create_dir_all(base.join(d)).expect("mkdir");
        }
        // What an image or /proc would show: a file to mask.
        fs::write(base.join("root/proc/kcore"), b"").expect("write");
        fs::write(base.join("app.conf"), b"x=1").expect("write");
        let spec = ContainerSpec {
            id: "c1".into(),
            image_rootfs: base.join("image"),
            layer_dir: base.join("layer"),
            rootfs_mountpoint: base.join("root"),
            shm_size: Some(1 << 20),
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            mounts: vec![
                BindMount {
                    source: base.join("vol"),
                    destination: "/data".into(),
                    readonly: false,
                    propagation: Propagation::Private,
                },
                BindMount {
                    source: base.join("app.conf"),
                    destination: "/etc/app.conf".into(),
                    readonly: true,
                    propagation: Propagation::Private,
                },
            ],
            ..Default::default()
        };
        Fixture {
            host_dev: base.join("hostdev"),
            _dir: dir,
            base,
            spec,
        }
    }

    fn root(&self) -> PathBuf {
        self.base.join("root")
    }

    fn r(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn build(&self, k: &Recording) -> Result<()> {
        assemble(k, &self.spec, &self.host_dev)
    }
}

fn fs_mount(fstype: &str, target: &Path, flags: MsFlags, data: Option<&str>) -> Call {
    Call::mount(Some(Path::new(fstype)), target, Some(fstype), flags, data)
}

fn change(target: &Path, flags: MsFlags) -> Call {
    Call::mount(None, target, None, flags, None)
}

fn bind(source: &Path, target: &Path, flags: MsFlags) -> Call {
    Call::mount(Some(source), target, None, flags, None)
}

fn position(calls: &[Call], pick: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(pick)
        .unwrap_or_else(|| panic!("no such call in {calls:#?}"))
}

fn is_fs(c: &Call, ty: &str) -> bool {
    matches!(c, Call::Mount { fstype: Some(t), .. } if t == ty)
}

fn target_of(c: &Call) -> Option<&Path> {
    match c {
        Call::Mount { target, .. } => Some(target),
        _ => None,
    }
}

/// The /dev calls when the host's /dev has none of the standard nodes.
fn dev_calls(f: &Fixture) -> Vec<Call> {
    let mut v = vec![fs_mount(
        "tmpfs",
        &f.r("dev"),
        NOSUID | NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )];
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let holder = f.r(&format!("dev/.{name}"));
        let node = holder.join(name);
        v.push(fs_mount("tmpfs", &holder, NOSUID, Some("mode=755,size=4k")));
        v.push(Call::Mknod {
            path: node.clone(),
            kind: SFlag::S_IFCHR,
            perm: Mode::from_bits_truncate(0o666),
            dev: makedev(major, minor),
        });
        v.push(bind(&node, &f.r(&format!("dev/{name}")), BIND));
        v.push(Call::Umount2 {
            target: holder,
            flags: MntFlags::MNT_DETACH,
        });
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        v.push(Call::Symlink {
            target: target.into(),
            link: f.r(&format!("dev/{link}")),
        });
    }
    v.push(fs_mount(
        "devpts",
        &f.r("dev/pts"),
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ));
    v.push(Call::mount(
        Some(Path::new("shm")),
        &f.r("dev/shm"),
        Some("tmpfs"),
        NOSUID | NODEV | NOEXEC,
        Some("mode=1777,size=1048576"),
    ));
    v.push(fs_mount(
        "mqueue",
        &f.r("dev/mqueue"),
        NOSUID | NODEV | NOEXEC,
        None,
    ));
    v.push(change(&f.r("dev"), SLAVE | REC));
    v
}

#[test]
fn assembles_the_whole_root_in_order_with_its_flags() {
    let f = Fixture::new();
    let k = Recording::new();
    f.build(&k).expect("build");
    let b = &f.base;
    let mut want = vec![
        // Nothing of ours may reach the host: rslave before anything.
        change(Path::new("/"), SLAVE | REC),
        Call::mount(
            Some(Path::new("overlay")),
            &f.root(),
            Some("overlay"),
            NODEV,
            Some(&format!(
                "lowerdir={},upperdir={},workdir={}",
                b.join("image").display(),
                b.join("layer/upper").display(),
                b.join("layer/work").display()
            )),
        ),
        fs_mount("proc", &f.r("proc"), NOSUID | NODEV | NOEXEC, None),
        fs_mount("sysfs", &f.r("sys"), NOSUID | NODEV | NOEXEC | RDONLY, None),
    ];
    want.extend(dev_calls(&f));
    want.extend([
        // The read-write volume: recursive bind, then its propagation.
        bind(&b.join("vol"), &f.r("data"), BIND | REC),
        change(&f.r("data"), MsFlags::MS_PRIVATE | REC),
        // The read-only one: a bind is read-only only once remounted so.
        bind(&b.join("app.conf"), &f.r("etc/app.conf"), BIND | REC),
        change(&f.r("etc/app.conf"), REMOUNT | BIND | RDONLY),
        change(&f.r("etc/app.conf"), MsFlags::MS_PRIVATE | REC),
        // Masked paths that exist: a directory gets an empty read-only
        // tmpfs, a file the container's /dev/null.
        fs_mount("tmpfs", &f.r("proc/acpi"), RDONLY, None),
        bind(&f.r("dev/null"), &f.r("proc/kcore"), BIND),
        fs_mount("tmpfs", &f.r("sys/firmware"), RDONLY, None),
        // Read-only paths that exist.
        bind(&f.r("proc/sys"), &f.r("proc/sys"), BIND | REC),
        change(
            &f.r("proc/sys"),
            REMOUNT | BIND | RDONLY | NOSUID | NODEV | NOEXEC,
        ),
    ]);
    assert_eq!(k.calls(), want);
    // The overlay's own directories were made in the layer.
    assert!(b.join("layer/upper").is_dir() && b.join("layer/work").is_dir());
}

#[test]
fn every_mount_but_the_first_lands_under_the_new_root() {
    let f = Fixture::new();
    let k = Recording::new();
    f.build(&k).expect("build");
    let calls = k.calls();
    let root = f.root();
    for c in &calls[1..] {
        let t = match c {
            Call::Mount { target, .. } => target,
            Call::Umount2 { target, .. } => target,
            Call::Mknod { path, .. } => path,
            Call::Symlink { link, .. } => link,
            other => panic!("unexpected call during build: {other:?}"),
        };
        assert!(t.starts_with(&root), "{c:?} is outside {}", root.display());
    }
}

#[test]
fn order_holds_whatever_the_spec_lists() {
    // Masked and read-only paths come after /proc and /sys exist, binds
    // after the overlay and /dev, whatever order the spec lists them in.
    let mut f = Fixture::new();
    f.spec.masked_paths.reverse();
    f.spec.mounts.reverse();
    let k = Recording::new();
    f.build(&k).expect("build");
    let calls = k.calls();
    assert_eq!(calls[0], change(Path::new("/"), SLAVE | REC));
    let overlay = position(&calls, |c| is_fs(c, "overlay"));
    let proc = position(&calls, |c| is_fs(c, "proc"));
    let sys = position(&calls, |c| is_fs(c, "sysfs"));
    let dev_done = position(&calls, |c| *c == change(&f.r("dev"), SLAVE | REC));
    let first_bind = position(
        &calls,
        |c| matches!(c, Call::Mount { source: Some(s), .. } if s.starts_with(&f.base) && !s.starts_with(f.root())),
    );
    let first_mask = position(&calls, |c| target_of(c) == Some(&f.r("sys/firmware")));
    let first_ro = position(&calls, |c| target_of(c) == Some(&f.r("proc/sys")));
    assert_eq!(overlay, 1);
    assert!(overlay < proc && proc < sys && sys < dev_done);
    assert!(dev_done < first_bind);
    assert!(first_bind < first_mask && first_mask < first_ro);
    // The new order of the volumes is kept.
    assert_eq!(
        calls[first_bind],
        bind(&f.base.join("app.conf"), &f.r("etc/app.conf"), BIND | REC)
    );
}

#[test]
fn standard_devices_bind_the_hosts_nodes() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let present: Vec<&str> = DEVICES
        .iter()
        .filter(|(n, ma, mi)| {
            fs::metadata(Path::new("/dev").join(n))
                .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == makedev(*ma, *mi))
        })
        .map(|(n, _, _)| *n)
        .collect();
    if present.is_empty() {
        crate::testing::skip(
            "standard_devices_bind_the_hosts_nodes",
            "this host's /dev has none of them",
        );
        return;
    }
    let f = Fixture::new();
    let k = Recording::new();
    build(&k, &f.spec).expect("build");
    let calls = k.calls();
    for name in &present {
        let host = Path::new("/dev").join(name);
        let target = f.r(&format!("dev/{name}"));
        assert!(
            calls.contains(&bind(&host, &target, BIND)),
            "/dev/{name}: {calls:#?}"
        );
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Mknod { path, .. } if path.ends_with(name))),
            "no node is made for /dev/{name}"
        );
    }
}

#[test]
fn privileged_keeps_sys_writable_and_masks_nothing() {
    let mut f = Fixture::new();
    f.spec.privileged = true;
    let k = Recording::new();
    f.build(&k).expect("build");
    let calls = k.calls();
    assert!(calls.contains(&fs_mount(
        "sysfs",
        &f.r("sys"),
        NOSUID | NODEV | NOEXEC,
        None
    )));
    for p in ["proc/acpi", "proc/kcore", "sys/firmware", "proc/sys"] {
        assert!(
            !calls.iter().any(|c| target_of(c) == Some(&f.r(p))),
            "{p} is left alone"
        );
    }
}

#[test]
fn bidirectional_volume_makes_only_the_rootfs_holder_a_slave() {
    let mut f = Fixture::new();
    f.spec.mounts[0].propagation = Propagation::Shared;
    f.spec.mounts[1].propagation = Propagation::Slave;
    let k = Recording::new();
    f.build(&k).expect("build");
    let calls = k.calls();
    // Not recursive, and not "/" unless the rootfs sits on it: the host's
    // other mounts stay shared, so that the volume joins its peer group.
    let Call::Mount {
        source: None,
        target: holder,
        fstype: None,
        flags,
        data: None,
    } = &calls[0]
    else {
        panic!("first call {:?}", calls[0]);
    };
    assert_eq!(*flags, SLAVE);
    assert!(f.root().starts_with(holder), "{}", holder.display());
    let mountinfo = crate::mounts::mountinfo().expect("mountinfo");
    assert!(
        mountinfo.iter().any(|m| &m.mount_point == holder),
        "{} is a mount point",
        holder.display()
    );
    assert!(!calls.contains(&change(Path::new("/"), SLAVE | REC)));
    assert!(calls.contains(&change(&f.r("data"), MsFlags::MS_SHARED | REC)));
    assert!(calls.contains(&change(&f.r("etc/app.conf"), SLAVE | REC)));
}

#[test]
fn pod_shm_is_bound_and_made_a_slave() {
    let mut f = Fixture::new();
    let shm = f.base.join("podshm");
    fs::create_dir(&shm).expect("mkdir");
    f.spec.shm = Some(shm.clone());
    let k = Recording::new();
    f.build(&k).expect("build");
    let calls = k.calls();
    let i = position(&calls, |c| *c == bind(&shm, &f.r("dev/shm"), BIND | REC));
    assert_eq!(calls[i + 1], change(&f.r("dev/shm"), SLAVE | REC));
    assert!(!calls.iter().any(|c| matches!(c,
        Call::Mount { source: Some(s), .. } if s == Path::new("shm"))));
}

#[test]
fn sysfs_refused_falls_back_to_a_readonly_slave_bind_of_the_hosts() {
    let f = Fixture::new();
    let k = Recording::new();
    k.fail(|c| is_fs(c, "sysfs"), Errno::EPERM);
    f.build(&k).expect("build goes on");
    let calls = k.calls();
    let i = position(&calls, |c| is_fs(c, "sysfs"));
    let sys = f.r("sys");
    assert_eq!(
        calls[i + 1..i + 4],
        [
            bind(Path::new("/sys"), &sys, BIND | REC),
            change(&sys, REMOUNT | BIND | NOSUID | NODEV | NOEXEC | RDONLY),
            change(&sys, SLAVE | REC),
        ]
    );
    assert!(
        is_fs(&calls[i + 4], "tmpfs"),
        "then /dev: {:?}",
        calls[i + 4]
    );
}

#[test]
fn sysfs_failing_otherwise_fails_the_build() {
    let f = Fixture::new();
    let k = Recording::new();
    k.fail(|c| is_fs(c, "sysfs"), Errno::EACCES);
    let e = f.build(&k).expect_err("build fails");
    assert_eq!(e.kind, FailureKind::Internal);
    assert_eq!(e.message, format!("mount sysfs: {}", Errno::EACCES));
    assert!(is_fs(k.calls().last().expect("calls"), "sysfs"));
}

#[test]
fn a_failing_mount_stops_assembly_and_is_named() {
    let f = Fixture::new();
    let k = Recording::new();
    k.fail(|c| is_fs(c, "overlay"), Errno::EINVAL);
    let e = f.build(&k).expect_err("build fails");
    assert_eq!(e.kind, FailureKind::Internal);
    assert_eq!(
        e.message,
        format!(
            "mount overlay on {} (overlay): {}",
            f.root().display(),
            Errno::EINVAL
        )
    );
    assert_eq!(k.calls().len(), 2, "nothing after the overlay");
}

#[test]
fn a_failing_readonly_remount_stops_before_the_masks() {
    let f = Fixture::new();
    let k = Recording::new();
    let target = f.r("etc/app.conf");
    let t = target.clone();
    k.fail(
        move |c| *c == change(&t, REMOUNT | BIND | RDONLY),
        Errno::EPERM,
    );
    let e = f.build(&k).expect_err("build fails");
    assert!(
        e.message
            .starts_with(&format!("mount  on {} (bind)", target.display())),
        "{}",
        e.message
    );
    let calls = k.calls();
    assert_eq!(
        calls.last(),
        Some(&change(&target, REMOUNT | BIND | RDONLY))
    );
    assert!(!calls
        .iter()
        .any(|c| target_of(c) == Some(&f.r("proc/acpi"))));
}

#[test]
fn a_failing_device_node_is_reported_before_its_bind() {
    let f = Fixture::new();
    let k = Recording::new();
    k.fail(|c| matches!(c, Call::Mknod { .. }), Errno::EPERM);
    let e = f.build(&k).expect_err("build fails");
    let node = f.r("dev/.null/null");
    assert_eq!(
        e.message,
        format!("mknod {}: {}", node.display(), Errno::EPERM)
    );
    assert!(matches!(k.calls().last(), Some(Call::Mknod { path, .. }) if *path == node));
}

#[test]
fn a_missing_volume_source_is_not_found_and_mounts_nothing_of_it() {
    let mut f = Fixture::new();
    let gone = f.base.join("gone");
    f.spec.mounts[0].source = gone.clone();
    let k = Recording::new();
    let e = f.build(&k).expect_err("build fails");
    assert_eq!(e.kind, FailureKind::NotFound);
    assert!(e.message.contains(&gone.display().to_string()));
    let calls = k.calls();
    assert_eq!(calls.last(), Some(&change(&f.r("dev"), SLAVE | REC)));
}

#[test]
fn a_volume_cannot_be_mounted_outside_the_root() {
    let mut f = Fixture::new();
    // The image holds a symlink that climbs out of the root.
    std::os::unix::fs::symlink("../../vol", f.r("escape")).expect("symlink");
    f.spec.mounts[0].destination = "/escape/x".into();
    let k = Recording::new();
    let e = f.build(&k).expect_err("build fails");
    assert_eq!(e.kind, FailureKind::InvalidArgument, "{}", e.message);
    assert!(!k
        .calls()
        .iter()
        .any(|c| target_of(c).is_some_and(|t| !t.starts_with(f.root()) && t != Path::new("/"))));
}

#[test]
fn pivot_detaches_the_old_root_as_a_slave_then_remounts_read_only() {
    let mut f = Fixture::new();
    f.spec.readonly_rootfs = true;
    let k = Recording::new();
    pivot(&k, &f.spec).expect("pivot");
    let here = Path::new(".");
    assert_eq!(
        k.calls(),
        vec![
            Call::Chdir(f.root()),
            Call::PivotRoot {
                new_root: here.into(),
                put_old: here.into(),
            },
            Call::Fchdir("/".into()),
            change(here, SLAVE | REC),
            Call::Umount2 {
                target: here.into(),
                flags: MntFlags::MNT_DETACH,
            },
            Call::Chdir("/".into()),
            change(Path::new("/"), REMOUNT | BIND | RDONLY),
        ]
    );
    // A writable root stops after chdir("/").
    f.spec.readonly_rootfs = false;
    let k = Recording::new();
    pivot(&k, &f.spec).expect("pivot");
    assert_eq!(k.calls().last(), Some(&Call::Chdir("/".into())));
    assert_eq!(k.calls().len(), 6);
}

#[test]
fn a_failed_pivot_root_detaches_nothing() {
    let f = Fixture::new();
    let k = Recording::new();
    k.fail(|c| matches!(c, Call::PivotRoot { .. }), Errno::EINVAL);
    let e = pivot(&k, &f.spec).expect_err("pivot fails");
    assert_eq!(e.message, format!("pivot_root: {}", Errno::EINVAL));
    assert_eq!(k.calls().len(), 2);
    assert!(!k.calls().iter().any(|c| matches!(c, Call::Umount2 { .. })));
}

#[test]
fn set_up_unshares_first_and_pivots_after_every_mount() {
    let f = Fixture::new();
    let k = Recording::new();
    crate::container::set_up(&k, &f.spec).expect("set up");
    let calls = k.calls();
    assert_eq!(
        calls[0],
        Call::Unshare(
            nix::sched::CloneFlags::CLONE_NEWNS
                | nix::sched::CloneFlags::CLONE_NEWIPC
                | nix::sched::CloneFlags::CLONE_NEWUTS
                | nix::sched::CloneFlags::CLONE_NEWNET
        )
    );
    assert_eq!(calls[1], change(Path::new("/"), SLAVE | REC));
    let pivot = position(&calls, |c| matches!(c, Call::PivotRoot { .. }));
    let last_root_mount = calls
        .iter()
        .rposition(|c| target_of(c).is_some_and(|t| t.starts_with(f.root())))
        .expect("mounts");
    assert!(last_root_mount < pivot);
    assert_eq!(calls[pivot - 1], Call::Chdir(f.root()));
}
