//! Resolving paths inside a container root file system without letting symlinks escape it.
//!
//! CRI mount targets are paths inside the container, and the image (or an earlier mount)
//! decides what symlinks lie along them. Resolution here happens in userspace, one
//! component at a time: absolute symlinks are re-rooted at the container root, and any
//! `..` that would climb above the root is refused outright rather than clamped.
//!
//! [`resolve_in_root`] only computes a path, which a concurrent rename or symlink swap can
//! invalidate before it is used. [`open_in_root`] closes that gap: it walks the resolved,
//! symlink-free components with `openat(O_NOFOLLOW)` from a directory fd on the root,
//! then checks via `/proc/self/fd` that what it opened is still under the root. Mount
//! onto `/proc/self/fd/N` of the returned fd, never onto the path.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{openat, readlink, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};

/// Symlinks followed per resolution before giving up, as the kernel's MAXSYMLINKS.
pub const MAX_SYMLINKS: usize = 40;

/// Errors from resolving a path inside a root.
#[derive(thiserror::Error, Debug)]
pub enum ResolveError {
    /// A `..` would climb above the root. `link` is the in-root path of the symlink whose
    /// target held the `..`, or `None` when it came from the path itself (or the opened
    /// object turned out to be outside the root).
    #[error("{path} escapes the container root{}", link.as_ref().map(|l| format!(" through symlink {}", l.display())).unwrap_or_default())]
    Escape {
        path: PathBuf,
        link: Option<PathBuf>,
    },
    /// More than [`MAX_SYMLINKS`] symlinks while resolving this path.
    #[error("too many levels of symbolic links resolving {0}")]
    TooManyLinks(PathBuf),
    /// A component that must be a directory (something follows it) is not one. Host path.
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    /// The tree changed while being opened (a component became a symlink).
    #[error("{0} changed while it was being opened")]
    Changed(PathBuf),
    /// A file system call failed. `path` is the host path involved.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What [`open_in_root`] creates when components are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing; a missing component is an `Io` error with `NotFound`.
    No,
    /// Missing components, the last one included, become directories.
    Dir,
    /// Missing intermediate components become directories, the last one an empty file.
    File,
}

/// A resolved path: the canonical root and the symlink-free components below it.
struct Resolved {
    root: PathBuf,
    components: Vec<OsString>,
}

impl Resolved {
    fn host_path(&self) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(&self.components);
        path
    }
}

/// Resolves `unsafe_path` (absolute or relative, interpreted inside `root`) and returns
/// the host path: the canonicalized `root` joined with the resolved in-root path.
///
/// Absolute symlinks are re-rooted at `root`; a `..` that would climb above `root`, from
/// the path itself or from a symlink target, is [`ResolveError::Escape`]. At most
/// [`MAX_SYMLINKS`] symlinks are followed. Missing trailing components are kept literally
/// so the caller can create them. The result is only a snapshot; see [`open_in_root`].
pub fn resolve_in_root(root: &Path, unsafe_path: &Path) -> Result<PathBuf, ResolveError> {
    Ok(resolve(root, unsafe_path)?.host_path())
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ResolveError {
    let path = path.into();
    move |source| ResolveError::Io { path, source }
}

fn errno_err(path: impl Into<PathBuf>) -> impl FnOnce(Errno) -> ResolveError {
    let path = path.into();
    move |errno| ResolveError::Io {
        path,
        source: errno.into(),
    }
}

/// Components still to walk: name, whether it is `..`, and the in-root path of the
/// symlink whose target it came from.
type Pending = VecDeque<(OsString, bool, Option<Rc<PathBuf>>)>;

fn resolve(root: &Path, unsafe_path: &Path) -> Result<Resolved, ResolveError> {
    let root = fs::canonicalize(root).map_err(io_err(root))?;
    let mut pending = Pending::new();
    push_front(&mut pending, unsafe_path, None);
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0usize;

    while let Some((name, is_parent, via)) = pending.pop_front() {
        if is_parent {
            if resolved.pop().is_none() {
                return Err(ResolveError::Escape {
                    path: unsafe_path.to_path_buf(),
                    link: via.map(|l| (*l).clone()),
                });
            }
            continue;
        }
        let mut host = root.clone();
        host.extend(&resolved);
        host.push(&name);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Missing: keep it literally. Nothing below it exists either, so the rest
                // only has to be walked for `..` (which may climb back into real dirs).
                resolved.push(name);
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                return Err(ResolveError::NotADirectory(host));
            }
            Err(e) => return Err(io_err(host)(e)),
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ResolveError::TooManyLinks(unsafe_path.to_path_buf()));
            }
            let target = fs::read_link(&host).map_err(io_err(&host))?;
            let mut link = PathBuf::from("/");
            link.extend(&resolved);
            link.push(&name);
            if target.is_absolute() {
                resolved.clear();
            }
            push_front(&mut pending, &target, Some(Rc::new(link)));
            continue;
        }
        if !file_type.is_dir() && !pending.is_empty() {
            return Err(ResolveError::NotADirectory(host));
        }
        resolved.push(name);
    }
    Ok(Resolved {
        root,
        components: resolved,
    })
}

/// Puts the components of `path` in front of `pending`, in order, dropping `/` and `.`.
fn push_front(pending: &mut Pending, path: &Path, via: Option<Rc<PathBuf>>) {
    let items: Vec<_> = path
        .components()
        .filter_map(|c| match c {
            Component::ParentDir => Some((OsString::new(), true, via.clone())),
            Component::Normal(name) => Some((name.to_os_string(), false, via.clone())),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    for item in items.into_iter().rev() {
        pending.push_front(item);
    }
}

/// Like [`resolve_in_root`], then creates what is missing as `create` says (with
/// `mkdirat`/`openat` relative to already opened parents, never following symlinks),
/// opens the final component with `O_PATH|O_NOFOLLOW|O_CLOEXEC` and checks through
/// `/proc/self/fd/N` that the opened object is still under `root`.
///
/// The caller mounts onto `/proc/self/fd/N`. Created directories get mode 0755 and files
/// 0644 (before umask). An existing final component is opened whatever its type (a
/// directory where `Create::File` was asked for is not an error here).
pub fn open_in_root(
    root: &Path,
    unsafe_path: &Path,
    create: Create,
) -> Result<OwnedFd, ResolveError> {
    let resolved = resolve(root, unsafe_path)?;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let path_flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;

    let mut current = nix::fcntl::open(&resolved.root, dir_flags, Mode::empty())
        .map_err(errno_err(&resolved.root))?;
    let mut host = resolved.root.clone();
    let count = resolved.components.len();
    for (i, name) in resolved.components.iter().enumerate() {
        host.push(name);
        let last = i + 1 == count;
        let flags = if last {
            path_flags
        } else {
            path_flags | OFlag::O_DIRECTORY
        };
        let next = match openat(current.as_fd(), name.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create != Create::No => {
                make(current.as_fd(), name, last && create == Create::File, &host)?;
                openat(current.as_fd(), name.as_os_str(), flags, Mode::empty())
                    .map_err(|e| open_error(e, &host))?
            }
            Err(e) => return Err(open_error(e, &host)),
        };
        // O_PATH|O_NOFOLLOW opens a symlink itself; the resolved components contain
        // none, so one appearing now means the tree was changed under us.
        let stat = fstat(next.as_fd()).map_err(errno_err(&host))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK {
            return Err(ResolveError::Changed(host));
        }
        current = next;
    }

    let proc_path = format!("/proc/self/fd/{}", current.as_raw_fd());
    let actual = PathBuf::from(readlink(proc_path.as_str()).map_err(errno_err(&host))?);
    if !actual.starts_with(&resolved.root) {
        return Err(ResolveError::Escape {
            path: unsafe_path.to_path_buf(),
            link: None,
        });
    }
    Ok(current)
}

fn open_error(errno: Errno, host: &Path) -> ResolveError {
    match errno {
        // O_DIRECTORY on a non-directory, or on a symlink that replaced a directory.
        Errno::ENOTDIR => match fs::symlink_metadata(host) {
            Ok(meta) if meta.file_type().is_symlink() => ResolveError::Changed(host.into()),
            _ => ResolveError::NotADirectory(host.into()),
        },
        Errno::ELOOP => ResolveError::Changed(host.into()),
        e => errno_err(host)(e),
    }
}

/// Creates `name` in `dir`, tolerating a concurrent creator.
fn make(dir: impl AsFd, name: &OsStr, file: bool, host: &Path) -> Result<(), ResolveError> {
    let result = if file {
        openat(
            dir,
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop)
    } else {
        mkdirat(dir, name, Mode::from_bits_truncate(0o755))
    };
    match result {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(errno_err(host)(e)),
    }
}
