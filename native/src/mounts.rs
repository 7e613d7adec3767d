//! Host-side mounts: the shared read-only squashfs of an image (over a loop
//! device), and reading /proc/self/mountinfo to find and release mounts.

use crate::loopdev::{LoopDevice, LoopOptions};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

#[derive(thiserror::Error, Debug)]
pub enum MountError {
    #[error("attach loop device for {path}: {source}")]
    Loop {
        path: PathBuf,
        #[source]
        source: crate::loopdev::LoopError,
    },
    #[error("mount {what} on {target}: {errno}")]
    Mount {
        what: String,
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("unmount {target}: {errno}")]
    Unmount {
        target: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("read mountinfo: {0}")]
    MountInfo(#[from] std::io::Error),
}

/// Mounts the squashfs stored at `offset..offset+size` of `image` read-only on
/// `target`, through an autoclear loop device: the device goes away by itself when
/// the mount does.
pub fn mount_squashfs(
    image: &Path,
    offset: u64,
    size: u64,
    target: &Path,
) -> Result<(), MountError> {
    let dev = LoopDevice::attach(
        image,
        &LoopOptions {
            offset,
            size_limit: size,
            read_only: true,
            autoclear: true,
            direct_io: false,
        },
    )
    .map_err(|source| MountError::Loop {
        path: image.to_path_buf(),
        source,
    })?;
    let result = mount(
        Some(dev.path()),
        target,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|errno| MountError::Mount {
        what: format!("squashfs {}", dev.path().display()),
        target: target.to_path_buf(),
        errno,
    });
    // The mount (if any) now holds the device; closing our fd lets autoclear act
    // when it is unmounted, or detaches the device at once if the mount failed.
    drop(dev);
    result
}

/// Mounts a tmpfs (for a pod's shared /dev/shm) with the given size in bytes.
pub fn mount_tmpfs(target: &Path, size: u64) -> Result<(), MountError> {
    mount(
        Some("shm"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|errno| MountError::Mount {
        what: "tmpfs".into(),
        target: target.to_path_buf(),
        errno,
    })
}

/// Unmounts `target`; a target that is not mounted is fine. Busy mounts are
/// detached lazily so that nothing is left attached once their users are gone.
pub fn unmount(target: &Path) -> Result<(), MountError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) => Ok(()),
            Err(errno) => Err(MountError::Unmount {
                target: target.to_path_buf(),
                errno,
            }),
        },
        Err(errno) => Err(MountError::Unmount {
            target: target.to_path_buf(),
            errno,
        }),
    }
}

/// One line of /proc/self/mountinfo (the fields sycri needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo octal.
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fs_type = r.next()?;
            let source = r.next().unwrap_or("");
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: fs_type.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// How the mount that holds `path` propagates: (shared, slave). `path` must
/// be canonical (no symlinks); None when no mount holds it.
pub fn propagation_of(mountinfo: &str, path: &Path) -> Option<(bool, bool)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, _) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mount_point = PathBuf::from(unescape(fields.get(4)?));
            if !path.starts_with(&mount_point) {
                return None;
            }
            // Optional fields follow the mount options (index 5).
            let optional = fields.get(6..).unwrap_or(&[]);
            let shared = optional.iter().any(|f| f.starts_with("shared:"));
            let slave = optional.iter().any(|f| f.starts_with("master:"));
            Some((mount_point.components().count(), (shared, slave)))
        })
        // The deepest mount point wins; among mounts stacked on the same
        // point, the last (topmost) one.
        .fold(None, |best: Option<(usize, (bool, bool))>, m| match best {
            Some(b) if b.0 > m.0 => Some(b),
            _ => Some(m),
        })
        .map(|(_, p)| p)
}

/// The mounts of the calling process's mount namespace.
pub fn mountinfo() -> Result<Vec<MountEntry>, MountError> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// Whether something is mounted exactly on `path`. mountinfo names mount
/// points by their real path, so `path` is resolved first (a run directory
/// under /var/run is mounted on as /run).
pub fn is_mounted(path: &Path) -> Result<bool, MountError> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(mountinfo()?
        .iter()
        .any(|m| m.mount_point == real || m.mount_point == path))
}

/// Every mount point at or below `prefix`, deepest first (the order to unmount in).
pub fn mounts_under(prefix: &Path) -> Result<Vec<PathBuf>, MountError> {
    let mut v: Vec<PathBuf> = mountinfo()?
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(prefix))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    40 27 7:0 / /var/lib/with\\040space ro shared:5 - squashfs /dev/loop0 ro\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/proc"));
        assert_eq!(m[1].mount_point, PathBuf::from("/var/lib/with space"));
        assert_eq!(m[1].fs_type, "squashfs");
        assert_eq!(m[1].source, "/dev/loop0");
    }
}

#[cfg(test)]
mod propagation_tests {
    use super::propagation_of;
    use std::path::Path;

    const INFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 254:0 /v /tmp/vol rw,relatime shared:7 - ext4 /dev/vda rw
41 40 0:50 / /tmp/vol/sub rw,relatime master:7 - tmpfs t rw
42 27 254:0 /w /tmp/vol\\040two rw,relatime shared:9 master:3 - ext4 /dev/vda rw
";

    #[test]
    fn the_deepest_mount_decides() {
        assert_eq!(
            propagation_of(INFO, Path::new("/etc")),
            Some((false, false))
        );
        assert_eq!(
            propagation_of(INFO, Path::new("/tmp/vol/a")),
            Some((true, false))
        );
        assert_eq!(
            propagation_of(INFO, Path::new("/tmp/vol/sub/b")),
            Some((false, true))
        );
        assert_eq!(
            propagation_of(INFO, Path::new("/tmp/vol two/x")),
            Some((true, true))
        );
        assert_eq!(
            propagation_of(INFO, Path::new("/tmp/volume")),
            Some((false, false))
        );
        assert_eq!(propagation_of("", Path::new("/x")), None);
    }
}
