//! Loop devices, driven directly through the kernel's loop ioctls.
//!
//! [`LoopDevice::attach`] picks a free device and binds a backing file to it with a single
//! `LOOP_CONFIGURE` call, so the device never becomes visible bound-but-unconfigured
//! (wrong offset, writable, no autoclear). Kernels older than 5.8 lack that ioctl; there
//! we fall back to `LOOP_SET_FD` followed by `LOOP_SET_STATUS64`.
//!
//! Autoclear gotcha: with [`LoopOptions::autoclear`] the kernel detaches the device when
//! its last opener goes away. If the [`LoopDevice`] is dropped before anything else (a
//! mount) holds the device, it is detached at once. Mount first, then drop.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

const LOOP_CONTROL: &str = "/dev/loop-control";
const LOOP_MAJOR: u64 = 7;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// How many times `attach` starts over with a new device number when another attacher
/// took the number `LOOP_CTL_GET_FREE` handed us.
const BUSY_ATTEMPTS: u32 = 64;
/// How many times `LOOP_SET_STATUS64` is retried on `EAGAIN`, and the pause in between.
const EAGAIN_ATTEMPTS: u32 = 50;
const EAGAIN_PAUSE: Duration = Duration::from_millis(10);

/// Set once `LOOP_CONFIGURE` answered `ENOTTY`: the kernel does not know it, so later
/// attaches go straight to the two-step fallback.
static NO_LOOP_CONFIGURE: AtomicBool = AtomicBool::new(false);

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel ABI sizes; a layout mistake here would make the ioctls read garbage.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn zeroed() -> Self {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

mod ioctls {
    use super::{LoopConfig, LoopInfo64};

    nix::ioctl_write_int_bad!(loop_set_fd, 0x4C00);
    nix::ioctl_none_bad!(loop_clr_fd, 0x4C01);
    nix::ioctl_write_ptr_bad!(loop_set_status64, 0x4C04, LoopInfo64);
    nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);
    nix::ioctl_write_int_bad!(loop_set_direct_io, 0x4C08);
    nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
    nix::ioctl_none_bad!(loop_ctl_get_free, 0x4C82);
}

/// Errors from attaching or detaching a loop device.
#[derive(thiserror::Error, Debug)]
pub enum LoopError {
    #[error("opening {LOOP_CONTROL}: {0}")]
    OpenControl(#[source] io::Error),
    #[error("LOOP_CTL_GET_FREE: {0}")]
    GetFree(#[source] io::Error),
    #[error("opening backing file {path}: {source}")]
    OpenBacking {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating device node {path}: {source}")]
    CreateNode {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening loop device {path}: {source}")]
    OpenDevice {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("binding {backing} to {device}: {source}")]
    Configure {
        device: PathBuf,
        backing: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("setting status of {device}: {source}")]
    SetStatus {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free loop device after {attempts} attempts (every one was taken concurrently)")]
    Exhausted { attempts: u32 },
    #[error("detaching {device}: {source}")]
    Detach {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How the backing file is presented by the loop device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopOptions {
    /// Byte offset into the backing file where the device starts.
    pub offset: u64,
    /// Maximum device size in bytes; 0 means up to the end of the backing file.
    pub size_limit: u64,
    /// Read-only device (the backing file is also opened read-only).
    pub read_only: bool,
    /// Detach automatically when the last opener (fd or mount) goes away.
    pub autoclear: bool,
    /// Ask for direct I/O on the backing file. Best effort: the kernel silently keeps
    /// buffered I/O when the backing file system or alignment does not allow it.
    pub direct_io: bool,
}

/// An attached loop device. Owns an open, close-on-exec fd on `/dev/loopN`.
///
/// Dropping it only closes the fd: an autoclear device is then detached by the kernel
/// once nothing else holds it, a non-autoclear device stays attached (use
/// [`LoopDevice::detach`]).
#[derive(Debug)]
pub struct LoopDevice {
    fd: OwnedFd,
    number: u32,
    path: PathBuf,
}

impl LoopDevice {
    /// Picks a free loop device and attaches `backing` to it as described by `opts`.
    pub fn attach(backing: &Path, opts: &LoopOptions) -> Result<LoopDevice, LoopError> {
        Self::attach_with(backing, opts, Method::Configure)
    }

    fn attach_with(
        backing: &Path,
        opts: &LoopOptions,
        method: Method,
    ) -> Result<LoopDevice, LoopError> {
        let backing_flags = if opts.read_only {
            OFlag::O_RDONLY
        } else {
            OFlag::O_RDWR
        } | OFlag::O_CLOEXEC;
        let backing_fd =
            open(backing, backing_flags, Mode::empty()).map_err(|e| LoopError::OpenBacking {
                path: backing.to_path_buf(),
                source: e.into(),
            })?;
        let control = open(
            LOOP_CONTROL,
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LoopError::OpenControl(e.into()))?;

        let info = status_for(backing, opts);
        for _ in 0..BUSY_ATTEMPTS {
            // SAFETY: `control` is an open fd on /dev/loop-control; LOOP_CTL_GET_FREE takes
            // no argument and returns a device number.
            let number = unsafe { ioctls::loop_ctl_get_free(control.as_raw_fd()) }
                .map_err(|e| LoopError::GetFree(e.into()))?;
            let number = u32::try_from(number)
                .map_err(|_| LoopError::GetFree(io::Error::from(Errno::EINVAL)))?;
            let path = device_path(number);
            ensure_node(number, &path)?;

            let dev_flags = if opts.read_only {
                OFlag::O_RDONLY
            } else {
                OFlag::O_RDWR
            } | OFlag::O_CLOEXEC;
            let fd = match open(&path, dev_flags, Mode::empty()) {
                Ok(fd) => fd,
                // The device was removed between GET_FREE and open: take another number.
                Err(Errno::ENXIO) | Err(Errno::ENOENT) => continue,
                Err(e) => {
                    return Err(LoopError::OpenDevice {
                        path,
                        source: e.into(),
                    })
                }
            };
            let device = LoopDevice { fd, number, path };
            match device.bind(backing_fd.as_fd(), backing, &info, opts, method) {
                Ok(()) => return Ok(device),
                // Someone else bound this number after GET_FREE gave it to us.
                Err(Bind::Busy) => continue,
                Err(Bind::Failed(e)) => return Err(e),
            }
        }
        Err(LoopError::Exhausted {
            attempts: BUSY_ATTEMPTS,
        })
    }

    /// Binds the backing fd with LOOP_CONFIGURE, or with the two-step fallback.
    fn bind(
        &self,
        backing_fd: BorrowedFd<'_>,
        backing: &Path,
        info: &LoopInfo64,
        opts: &LoopOptions,
        method: Method,
    ) -> Result<(), Bind> {
        let configure_err = |source: Errno| {
            Bind::Failed(LoopError::Configure {
                device: self.path.clone(),
                backing: backing.to_path_buf(),
                source: source.into(),
            })
        };
        if method == Method::Configure && !NO_LOOP_CONFIGURE.load(Ordering::Relaxed) {
            let config = LoopConfig {
                fd: backing_fd.as_raw_fd() as u32,
                block_size: 0,
                info: *info,
                reserved: [0; 8],
            };
            // SAFETY: `self.fd` is an open loop device; `config` is a live, correctly laid
            // out `struct loop_config` that the kernel only reads during the call.
            match unsafe { ioctls::loop_configure(self.fd.as_raw_fd(), &config) } {
                Ok(_) => return Ok(()),
                Err(Errno::EBUSY) => return Err(Bind::Busy),
                Err(Errno::ENOTTY) => NO_LOOP_CONFIGURE.store(true, Ordering::Relaxed),
                // Pre-5.8 kernels answer unknown loop ioctls with EINVAL; try the old way,
                // which reports a genuine EINVAL itself.
                Err(Errno::EINVAL) => {}
                Err(e) => return Err(configure_err(e)),
            }
        }

        // SAFETY: both fds are open; LOOP_SET_FD takes the backing fd as its argument.
        match unsafe { ioctls::loop_set_fd(self.fd.as_raw_fd(), backing_fd.as_raw_fd()) } {
            Ok(_) => {}
            Err(Errno::EBUSY) => return Err(Bind::Busy),
            Err(e) => return Err(configure_err(e)),
        }
        let mut status = *info;
        // Read-only follows from how the backing file was opened; the kernel refuses to
        // have it set through SET_STATUS, and direct I/O has its own ioctl there.
        status.lo_flags &= !(LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO);
        let mut result = Err(Errno::EAGAIN);
        for attempt in 0..EAGAIN_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(EAGAIN_PAUSE);
            }
            // SAFETY: `self.fd` is an open loop device; `status` is a live, correctly laid
            // out `struct loop_info64` that the kernel only reads during the call.
            result = unsafe { ioctls::loop_set_status64(self.fd.as_raw_fd(), &status) };
            if result != Err(Errno::EAGAIN) {
                break;
            }
        }
        if let Err(e) = result {
            // SAFETY: `self.fd` is an open loop device we just bound; LOOP_CLR_FD takes no
            // argument. Failure leaves nothing more we could undo.
            let _ = unsafe { ioctls::loop_clr_fd(self.fd.as_raw_fd()) };
            return Err(Bind::Failed(LoopError::SetStatus {
                device: self.path.clone(),
                source: e.into(),
            }));
        }
        if opts.direct_io {
            // SAFETY: `self.fd` is an open, bound loop device; the argument is a plain int.
            // Best effort, like LOOP_CONFIGURE which silently stays buffered.
            let _ = unsafe { ioctls::loop_set_direct_io(self.fd.as_raw_fd(), 1) };
        }
        Ok(())
    }

    /// Opens the already attached `/dev/loopN` (say, one reported by [`attached_devices`]
    /// as leaked) read-only, so that it can be [`detach`](LoopDevice::detach)ed.
    pub fn open_existing(number: u32) -> Result<LoopDevice, LoopError> {
        let path = device_path(number);
        let fd = open(&path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| {
            LoopError::OpenDevice {
                path: path.clone(),
                source: e.into(),
            }
        })?;
        Ok(LoopDevice { fd, number, path })
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device number N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Detaches the backing file (`LOOP_CLR_FD`) and closes the device. If someone else
    /// still has the device open (or mounted), the kernel completes the detach when they
    /// let go.
    pub fn detach(self) -> Result<(), LoopError> {
        // SAFETY: `self.fd` is an open loop device; LOOP_CLR_FD takes no argument.
        unsafe { ioctls::loop_clr_fd(self.fd.as_raw_fd()) }
            .map(drop)
            .map_err(|e| LoopError::Detach {
                device: self.path.clone(),
                source: e.into(),
            })
    }

    /// Reads back the kernel's view of offset, size limit and flags (LOOP_GET_STATUS64):
    /// `(offset, size_limit, lo_flags)`.
    pub fn status(&self) -> io::Result<(u64, u64, u32)> {
        let mut info = LoopInfo64::zeroed();
        // SAFETY: `self.fd` is an open loop device; `info` is a writable, correctly laid
        // out `struct loop_info64` that outlives the call.
        unsafe { ioctls::loop_get_status64(self.fd.as_raw_fd(), &mut info) }?;
        Ok((info.lo_offset, info.lo_sizelimit, info.lo_flags))
    }

    /// Gives up ownership of the device fd (for example to keep it open past a mount).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for LoopDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for LoopDevice {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for LoopDevice {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

/// How `bind` attaches: LOOP_CONFIGURE when the kernel has it, or (tests) the old way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Configure,
    #[cfg_attr(not(test), allow(dead_code))]
    SetFd,
}

enum Bind {
    Busy,
    Failed(LoopError),
}

fn device_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/loop{number}"))
}

fn status_for(backing: &Path, opts: &LoopOptions) -> LoopInfo64 {
    let mut info = LoopInfo64::zeroed();
    info.lo_offset = opts.offset;
    info.lo_sizelimit = opts.size_limit;
    if opts.read_only {
        info.lo_flags |= LO_FLAGS_READ_ONLY;
    }
    if opts.autoclear {
        info.lo_flags |= LO_FLAGS_AUTOCLEAR;
    }
    if opts.direct_io {
        info.lo_flags |= LO_FLAGS_DIRECT_IO;
    }
    // Informational only (the kernel keeps it for LOOP_GET_STATUS); NUL-terminated.
    let name = backing.as_os_str().as_bytes();
    let len = name.len().min(LO_NAME_SIZE - 1);
    info.lo_file_name[..len].copy_from_slice(&name[..len]);
    info
}

/// Makes sure `/dev/loopN` exists, creating the block node when /dev is not a devtmpfs
/// that did it for us.
fn ensure_node(number: u32, path: &Path) -> Result<(), LoopError> {
    if fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    // loop's minor depends on the max_part parameter, so ask sysfs for the real numbers.
    let dev = fs::read_to_string(format!("/sys/block/loop{number}/dev"))
        .ok()
        .and_then(|s| {
            let (major, minor) = s.trim().split_once(':')?;
            Some(makedev(major.parse().ok()?, minor.parse().ok()?))
        })
        .unwrap_or_else(|| makedev(LOOP_MAJOR, u64::from(number)));
    match mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o660), dev) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(LoopError::CreateNode {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Every attached loop device whose backing file is `path`, as `(N, backing file)` where
/// the backing file is the kernel's name for it with any " (deleted)" suffix removed.
/// Sorted by N.
pub fn devices_backed_by(path: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut wanted = vec![path.to_path_buf()];
    if let Ok(canonical) = fs::canonicalize(path) {
        wanted.push(canonical);
    } else if let Some(parent) = path.parent() {
        // The file may be gone; its directory still tells us the kernel's spelling.
        if let (Ok(dir), Some(name)) = (fs::canonicalize(parent), path.file_name()) {
            wanted.push(dir.join(name));
        }
    }
    Ok(attached_devices()?
        .into_iter()
        .filter(|(_, backing)| wanted.iter().any(|w| w == backing))
        .collect())
}

/// All attached loop devices as `(N, backing file)`, the backing file with any
/// " (deleted)" suffix removed. Sorted by N.
pub fn attached_devices() -> io::Result<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = loop_number(&name) else {
            continue;
        };
        match fs::read(entry.path().join("loop/backing_file")) {
            Ok(raw) => {
                if let Some(backing) = parse_backing_file(&raw) {
                    found.push((number, backing));
                }
            }
            // Unbound devices have no loop/ attributes; devices can also vanish while we look.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    found.sort();
    Ok(found)
}

fn loop_number(name: &OsStr) -> Option<u32> {
    let digits = name.as_bytes().strip_prefix(b"loop")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn parse_backing_file(raw: &[u8]) -> Option<PathBuf> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b" (deleted)").unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    Some(PathBuf::from(OsStr::from_bytes(raw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_number_parses_only_loop_devices() {
        assert_eq!(loop_number(OsStr::new("loop0")), Some(0));
        assert_eq!(loop_number(OsStr::new("loop123")), Some(123));
        assert_eq!(loop_number(OsStr::new("loop")), None);
        assert_eq!(loop_number(OsStr::new("loop-control")), None);
        assert_eq!(loop_number(OsStr::new("loop1p1")), None);
        assert_eq!(loop_number(OsStr::new("vda")), None);
    }

    #[test]
    fn backing_file_suffixes_are_stripped() {
        assert_eq!(
            parse_backing_file(b"/var/a.sif\n"),
            Some(PathBuf::from("/var/a.sif"))
        );
        assert_eq!(
            parse_backing_file(b"/var/a.sif (deleted)\n"),
            Some(PathBuf::from("/var/a.sif"))
        );
        assert_eq!(parse_backing_file(b"\n"), None);
    }

    #[test]
    fn status_encodes_options() {
        let opts = LoopOptions {
            offset: 4096,
            size_limit: 8192,
            read_only: true,
            autoclear: true,
            direct_io: false,
        };
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        let info = status_for(&long, &opts);
        assert_eq!(info.lo_offset, 4096);
        assert_eq!(info.lo_sizelimit, 8192);
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR);
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(info.lo_file_name[0], b'/');
    }

    /// The pre-5.8 path (LOOP_SET_FD + LOOP_SET_STATUS64), which this kernel would not
    /// otherwise take. Needs root.
    #[test]
    fn set_fd_fallback_configures_the_device() {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 || !Path::new(LOOP_CONTROL).exists() {
            crate::testing::skip(
                "set_fd_fallback_configures_the_device",
                &format!("needs root and {LOOP_CONTROL}"),
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let backing = dir.path().join("fallback.bin");
        let mut data = vec![0u8; 1 << 20];
        data[8192..12288].fill(0x42);
        fs::write(&backing, &data).expect("write backing");
        let opts = LoopOptions {
            offset: 8192,
            size_limit: 4096,
            read_only: true,
            autoclear: true,
            direct_io: false,
        };
        let dev = LoopDevice::attach_with(&backing, &opts, Method::SetFd).expect("attach");
        let status = dev.status();
        let content = fs::read(dev.path());
        let n = dev.number();
        let ro = fs::read_to_string(format!("/sys/block/loop{n}/ro"));
        dev.detach().expect("detach");

        let (offset, size_limit, flags) = status.expect("status");
        assert_eq!((offset, size_limit), (8192, 4096));
        assert_eq!(
            flags & (LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR),
            LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
        );
        let content = content.expect("read device");
        assert_eq!(content.len(), 4096);
        assert!(content.iter().all(|&b| b == 0x42));
        assert_eq!(ro.expect("sysfs ro").trim(), "1");
    }
}
