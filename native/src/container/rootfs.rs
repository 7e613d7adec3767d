//! Assembles a container's root filesystem inside its own mount namespace:
//! overlay over the image, /proc, /sys, /dev, CRI bind mounts, masked and
//! read-only paths, then pivot_root. Runs in the container's first process,
//! single-threaded, before exec.

use crate::failure::{Failure, FailureKind};
use crate::kernel::Kernel;
use crate::resolve::{self, Create};
use crate::spec::{BindMount, ContainerSpec, Propagation};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{makedev, Mode, SFlag};
use std::fs;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, Failure>;

fn do_mount(
    k: &impl Kernel,
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    k.mount(src, target, fstype, flags, data).map_err(|e| {
        Failure::internal(
            format!(
                "mount {} on {} ({})",
                src.map(|p| p.display().to_string()).unwrap_or_default(),
                target.display(),
                fstype.unwrap_or("bind")
            ),
            e,
        )
    })
}

/// A path inside the rootfs (`rel` is absolute inside the container).
fn inside(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// Where the host's device nodes are, which the container's /dev binds.
const HOST_DEV: &str = "/dev";

/// Mounts the overlay root at `spec.rootfs_mountpoint` and everything under it.
/// The calling process must already be alone in a new mount namespace.
pub fn build(k: &impl Kernel, spec: &ContainerSpec) -> Result<()> {
    assemble(k, spec, Path::new(HOST_DEV))
}

/// [`build`], with the host's device nodes looked for in `host_dev`.
fn assemble(k: &impl Kernel, spec: &ContainerSpec, host_dev: &Path) -> Result<()> {
    let root = spec.rootfs_mountpoint.as_path();
    if spec
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Shared)
    {
        // A BIDIRECTIONAL mount must join its (shared) source's peer group,
        // so the host's mounts stay shared. Only the mount that holds the
        // rootfs becomes a slave: whatever we mount under it (the rootfs and
        // all inside) stays ours. pivot() keeps our unmounts from the host.
        let real = fs::canonicalize(root)
            .map_err(|e| Failure::internal(format!("resolve {}", root.display()), e))?;
        let holder = crate::mounts::mountinfo()
            .map_err(|e| Failure::internal("read mountinfo", e))?
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|mp| real.starts_with(mp))
            .max_by_key(|mp| mp.components().count())
            .ok_or_else(|| Failure::internal("find the mount of the rootfs", real.display()))?;
        do_mount(k, None, &holder, None, MsFlags::MS_SLAVE, None)?;
    } else {
        // Nothing we mount may leak back to the host, but host mounts may still
        // reach us for HOST_TO_CONTAINER mounts: rslave.
        do_mount(
            k,
            None,
            Path::new("/"),
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )?;
    }

    let upper = spec.layer_dir.join("upper");
    let work = spec.layer_dir.join("work");
    for d in [&upper, &work] {
        fs::create_dir_all(d)
            .map_err(|e| Failure::internal(format!("create {}", d.display()), e))?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.image_rootfs.display(),
        upper.display(),
        work.display()
    );
    do_mount(
        k,
        Some(Path::new("overlay")),
        root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(&opts),
    )?;

    mount_proc_sys(k, spec, root)?;
    mount_dev(k, spec, root, host_dev)?;
    for m in &spec.mounts {
        bind_mount(k, root, m)?;
    }
    if !spec.privileged {
        for p in &spec.masked_paths {
            mask_path(k, root, p)?;
        }
        for p in &spec.readonly_paths {
            readonly_path(k, root, p)?;
        }
    }
    Ok(())
}

fn mkdir_in(root: &Path, rel: &str) -> Result<PathBuf> {
    let fd = resolve::open_in_root(root, Path::new(rel), Create::Dir)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    let p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    // Keep the fd alive for as long as the path is used: leak it into the returned
    // path's lifetime by converting to a real path instead.
    let real = fs::read_link(&p).map_err(|e| Failure::internal("readlink", e))?;
    drop(fd);
    Ok(real)
}

fn mount_proc_sys(k: &impl Kernel, spec: &ContainerSpec, root: &Path) -> Result<()> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = mkdir_in(root, "/proc")?;
    do_mount(
        k,
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        common,
        None,
    )?;
    let sys_dir = mkdir_in(root, "/sys")?;
    let ro = if spec.privileged {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    // sysfs shows the network devices of the mounting process's network namespace;
    // when that is the host's and we are not privileged, a read-only bind is safer
    // and equivalent.
    if let Err(e) = k.mount(
        Some(Path::new("sysfs")),
        &sys_dir,
        Some("sysfs"),
        common | ro,
        None,
    ) {
        if e != nix::errno::Errno::EPERM {
            return Err(Failure::internal("mount sysfs", e));
        }
        do_mount(
            k,
            Some(Path::new("/sys")),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        do_mount(
            k,
            None,
            &sys_dir,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | common | ro,
            None,
        )?;
        // A copy of the host's mounts: it may receive from the host, never
        // send to it (the host's mounts are still shared here when the
        // container has a BIDIRECTIONAL mount).
        do_mount(
            k,
            None,
            &sys_dir,
            None,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}

const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn mount_dev(k: &impl Kernel, spec: &ContainerSpec, root: &Path, host_dev: &Path) -> Result<()> {
    let dev = mkdir_in(root, "/dev")?;
    // nodev: a device node the container makes here (it holds CAP_MKNOD by
    // default) cannot be opened, so it cannot reach the host's disks; the
    // standard devices are bind mounts of the host's nodes, each a mount of
    // its own that keeps working.
    do_mount(
        k,
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in DEVICES {
        let p = dev.join(name);
        fs::File::create(&p)
            .map_err(|e| Failure::internal(format!("create {}", p.display()), e))?;
        let host = host_dev.join(name);
        let is_device = fs::metadata(&host).is_ok_and(|m| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            m.file_type().is_char_device() && m.rdev() == makedev(*major, *minor)
        });
        if is_device {
            do_mount(k, Some(&host), &p, None, MsFlags::MS_BIND, None)?;
        } else {
            // The host's /dev lacks it: a node on a tmpfs of its own, which
            // (unlike /dev) is not nodev, so that the node, bound from it,
            // can be opened.
            let holder = dev.join(format!(".{name}"));
            fs::create_dir(&holder).map_err(|e| Failure::internal("mkdir device holder", e))?;
            do_mount(
                k,
                Some(Path::new("tmpfs")),
                &holder,
                Some("tmpfs"),
                MsFlags::MS_NOSUID,
                Some("mode=755,size=4k"),
            )?;
            let node = holder.join(name);
            k.mknod(
                &node,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(*major, *minor),
            )
            .map_err(|e| Failure::internal(format!("mknod {}", node.display()), e))?;
            fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666))
                .map_err(|e| Failure::internal("chmod device", e))?;
            do_mount(k, Some(&node), &p, None, MsFlags::MS_BIND, None)?;
            k.umount2(&holder, MntFlags::MNT_DETACH)
                .map_err(|e| Failure::internal("detach device holder", e))?;
            let _ = fs::remove_dir(&holder);
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        k.symlink(Path::new(target), &dev.join(link))
            .map_err(|e| Failure::internal("symlink in /dev", e))?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| Failure::internal("mkdir /dev/pts", e))?;
    do_mount(
        k,
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| Failure::internal("mkdir /dev/shm", e))?;
    match &spec.shm {
        Some(src) => {
            do_mount(
                k,
                Some(src),
                &shm,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            // The pod's shm, shared with its other containers, but nothing
            // mounted on it here reaches them or the host.
            do_mount(
                k,
                None,
                &shm,
                None,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None,
            )?
        }
        None => {
            let size = spec.shm_size.unwrap_or(64 << 20);
            do_mount(
                k,
                Some(Path::new("shm")),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some(&format!("mode=1777,size={size}")),
            )?
        }
    }
    let mq = dev.join("mqueue");
    fs::create_dir(&mq).map_err(|e| Failure::internal("mkdir /dev/mqueue", e))?;
    do_mount(
        k,
        Some(Path::new("mqueue")),
        &mq,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    // The device binds are copies of the host's /dev mount: with the host's
    // mounts still shared (a BIDIRECTIONAL volume), a mount over one of
    // them must not land on the host's /dev.
    do_mount(
        k,
        None,
        &dev,
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    Ok(())
}

fn bind_mount(k: &impl Kernel, root: &Path, m: &BindMount) -> Result<()> {
    let meta = fs::metadata(&m.source).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            FailureKind::NotFound
        } else {
            FailureKind::InvalidArgument
        };
        Failure::new(kind, format!("mount source {} : {e}", m.source.display()))
    })?;
    let create = if meta.is_dir() {
        Create::Dir
    } else {
        Create::File
    };
    let target = resolve::open_in_root(root, &m.destination, create).map_err(|e| {
        Failure::invalid(format!(
            "mount destination {}: {e}",
            m.destination.display()
        ))
    })?;
    let target_path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
    do_mount(
        k,
        Some(&m.source),
        &target_path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    // The fd still names the directory underneath; reopen the new mount through
    // its resolved path to change its flags.
    let real = fs::read_link(&target_path).map_err(|e| Failure::internal("readlink", e))?;
    drop(target);
    if m.readonly {
        do_mount(
            k,
            None,
            &real,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    let prop = match m.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::Slave => MsFlags::MS_SLAVE,
        Propagation::Shared => MsFlags::MS_SHARED,
    };
    do_mount(k, None, &real, None, prop | MsFlags::MS_REC, None)
}

fn mask_path(k: &impl Kernel, root: &Path, p: &str) -> Result<()> {
    let target = inside(root, p);
    let meta = match fs::symlink_metadata(&target) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if meta.is_dir() {
        do_mount(
            k,
            Some(Path::new("tmpfs")),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
    } else {
        do_mount(
            k,
            Some(&inside(root, "/dev/null")),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )
    }
}

fn readonly_path(k: &impl Kernel, root: &Path, p: &str) -> Result<()> {
    let target = inside(root, p);
    if fs::symlink_metadata(&target).is_err() {
        return Ok(());
    }
    do_mount(
        k,
        Some(&target),
        &target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    do_mount(
        k,
        None,
        &target,
        None,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None,
    )
}

/// Makes the assembled rootfs the process's root and drops every host mount.
pub fn pivot(k: &impl Kernel, spec: &ContainerSpec) -> Result<()> {
    let root = spec.rootfs_mountpoint.as_path();
    // A handle on the old root: "." after pivot_root names the new root's
    // mount, not the old one stacked on it.
    let old_root = fs::File::open("/").map_err(|e| Failure::internal("open old root", e))?;
    k.chdir(root)
        .map_err(|e| Failure::internal("chdir rootfs", e))?;
    k.pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| Failure::internal("pivot_root", e))?;
    // The old root is now stacked on top of the new one at "/". Made a slave
    // first (recursively: only the host's mounts are under it), so that
    // detaching it cannot reach the host's mounts, which are still shared
    // when the container has a BIDIRECTIONAL mount.
    k.fchdir(old_root.as_fd())
        .map_err(|e| Failure::internal("fchdir old root", e))?;
    do_mount(
        k,
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    k.umount2(Path::new("."), MntFlags::MNT_DETACH)
        .map_err(|e| Failure::internal("detach old root", e))?;
    drop(old_root);
    k.chdir(Path::new("/"))
        .map_err(|e| Failure::internal("chdir /", e))?;
    if spec.readonly_rootfs {
        do_mount(
            k,
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
