//! Small helpers shared by the engine and the server: atomic file writes and
//! RFC 3339 timestamps with nanoseconds (the CRI log format's clock).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `data` to `path` so that readers see either the old or the new content,
/// never a torn file: write a sibling temp file, rename it over `path`. No fsync:
/// this is for state that a crash of sycri must not tear but that a power loss,
/// which ends every container too, may take back (the container start path
/// writes several such files and an fsync costs milliseconds each).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_replacing(path, data, false)
}

/// Like [`write_atomic`], and the data is on disk (fsync) before the rename: for
/// what must survive a power loss, such as the image index.
pub fn write_durable(path: &Path, data: &[u8]) -> io::Result<()> {
    write_replacing(path, data, true)
}

fn write_replacing(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    // One temp file per call: two threads writing the same file must not
    // share one (the second rename would find it gone).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.tmp{}.{seq}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// Converts days since 1970-01-01 into a (year, month, day) civil date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Formats nanoseconds since the epoch as RFC 3339 in UTC with nine fractional
/// digits, e.g. `2026-11-28T13:24:13.123456789Z`, into `out` (no allocation when
/// `out` has capacity).
pub fn format_rfc3339_nano(ns: i64, out: &mut String) {
    use std::fmt::Write as _;
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    );
}

/// RFC 3339 with nanoseconds as a new string.
pub fn rfc3339_nano(ns: i64) -> String {
    let mut s = String::with_capacity(30);
    format_rfc3339_nano(ns, &mut s);
    s
}

/// Points the given descriptor numbers at /dev/null (used by helpers that detach
/// from the server's pipes).
pub fn redirect_to_devnull(fds: &[std::os::fd::RawFd]) {
    use std::os::fd::AsRawFd;
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in fds {
            // SAFETY: dup2 only replaces the descriptor number `fd`, which the caller
            // designates as one to detach; no memory is involved.
            unsafe { libc::dup2(null.as_raw_fd(), *fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_may_replace_one_file_at_once() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("record.json");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..200 {
                        write_atomic(&p, format!("{t} {i}").as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("join");
        }
        let last = std::fs::read_to_string(&p).expect("read");
        assert!(last.ends_with(" 199"), "{last}");
        // No temp file is left.
        assert_eq!(std::fs::read_dir(d.path()).expect("dir").count(), 1);
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (leap day) 12:34:56.000000789
        assert_eq!(
            rfc3339_nano(951_827_696_000_000_789),
            "2000-02-29T12:34:56.000000789Z"
        );
        // 2026-11-28T13:24:13.5Z
        assert_eq!(
            rfc3339_nano(1_795_872_253_500_000_000),
            "2026-11-28T13:24:13.500000000Z"
        );
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"one").expect("write");
        write_atomic(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }
}

/// Bytes (allocated blocks, as du counts them) and inodes under `dir`, for
/// a container's writable layer. Every directory is opened relative to its
/// already-open parent with O_NOFOLLOW, so a container that swaps one of
/// its directories for a symlink while we walk cannot send the walk out of
/// the layer; nor does the walk cross into other file systems. What cannot
/// be read is not counted.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use nix::dir::Dir;
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{fstatat, Mode};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let Ok(top) = Dir::open(dir, flags, Mode::empty()) else {
        return (0, 0);
    };
    let Ok(top_stat) = nix::sys::stat::fstat(&top) else {
        return (0, 0);
    };
    let (mut bytes, mut inodes) = (0u64, 0u64);
    // Depth first, holding open only the chain from the top to where the
    // walk is (a wide layer must not cost a descriptor per directory): each
    // level keeps its directory and the names of the subdirectories still to
    // visit.
    let mut stack: Vec<(Dir, Vec<std::ffi::CString>)> = Vec::new();
    let mut next = Some(top);
    loop {
        if let Some(mut d) = next.take() {
            let names: Vec<std::ffi::CString> = d
                .iter()
                .flatten()
                .map(|e| e.file_name().to_owned())
                .filter(|n| n.to_bytes() != b"." && n.to_bytes() != b"..")
                .collect();
            let mut subdirs = Vec::new();
            for name in names {
                let Ok(st) = fstatat(&d, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else {
                    continue;
                };
                inodes += 1;
                bytes += u64::try_from(st.st_blocks).unwrap_or(0) * 512;
                if (st.st_mode & libc::S_IFMT) == libc::S_IFDIR && st.st_dev == top_stat.st_dev {
                    subdirs.push(name);
                }
            }
            stack.push((d, subdirs));
        }
        let Some((dir, pending)) = stack.last_mut() else {
            break;
        };
        match pending.pop() {
            Some(name) => next = Dir::openat(&*dir, name.as_c_str(), flags, Mode::empty()).ok(),
            None => {
                stack.pop();
            }
        }
    }
    (bytes, inodes)
}

#[cfg(test)]
mod disk_usage_tests {
    use super::disk_usage;

    #[test]
    fn counts_files_and_directories_and_never_follows_links() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("sub/f"), vec![1u8; 10_000]).expect("write");
        std::fs::write(d.path().join("g"), b"x").expect("write");
        // A link to a big directory elsewhere counts as one inode, no more.
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::write(other.path().join("big"), vec![1u8; 100_000]).expect("write");
        std::os::unix::fs::symlink(other.path(), d.path().join("link")).expect("symlink");
        let (bytes, inodes) = disk_usage(d.path());
        assert_eq!(inodes, 4);
        assert!((10_000..100_000).contains(&bytes), "{bytes}");
        assert_eq!(disk_usage(&d.path().join("missing")), (0, 0));
        assert_eq!(
            disk_usage(&d.path().join("link")),
            (0, 0),
            "a symlinked top is refused"
        );
    }
}
