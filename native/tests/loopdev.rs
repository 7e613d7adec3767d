//! Loop device tests against the real kernel. They need root and /dev/loop-control and
//! report themselves skipped (sycri_native::testing::skip) otherwise.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sycri_native::loopdev::{
    attached_devices, devices_backed_by, LoopDevice, LoopError, LoopOptions,
};
use sycri_native::testing::skip;

const MIB: usize = 1 << 20;
const OFFSET: usize = 64 * 1024;
const LEN: usize = 4096;

/// Whether `test` can run here; reports it skipped if not.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/loop-control").exists();
    if !ok {
        skip(test, "needs root and /dev/loop-control");
    }
    ok
}

fn pattern() -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 % 251) as u8 + 1).collect()
}

/// A 1 MiB file: zeros, the pattern at 64 KiB, 0xAA right after it.
fn backing_file(dir: &Path, name: &str) -> PathBuf {
    let mut data = vec![0u8; MIB];
    data[OFFSET..OFFSET + LEN].copy_from_slice(&pattern());
    data[OFFSET + LEN..OFFSET + 2 * LEN].fill(0xAA);
    let path = dir.join(name);
    fs::write(&path, &data).expect("write backing file");
    path
}

/// Detaches the device if the test did not get to it (e.g. an assertion failed), also
/// when the handle was already given up but the device stayed attached.
struct Guard {
    dev: Option<LoopDevice>,
    number: u32,
    backing: PathBuf,
}

impl Guard {
    fn attach(backing: &Path, opts: &LoopOptions) -> Guard {
        let dev = LoopDevice::attach(backing, opts).expect("attach");
        Guard {
            number: dev.number(),
            dev: Some(dev),
            backing: backing.to_path_buf(),
        }
    }

    fn dev(&self) -> &LoopDevice {
        self.dev.as_ref().expect("device present")
    }

    fn take(&mut self) -> LoopDevice {
        self.dev.take().expect("device present")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            let _ = dev.detach();
        } else if devices_backed_by(&self.backing)
            .map(|found| found.iter().any(|(n, _)| *n == self.number))
            .unwrap_or(false)
        {
            if let Ok(dev) = LoopDevice::open_existing(self.number) {
                let _ = dev.detach();
            }
        }
    }
}

fn sysfs(number: u32, attr: &str) -> String {
    fs::read_to_string(format!("/sys/block/loop{number}/{attr}"))
        .unwrap_or_else(|e| panic!("reading {attr} of loop{number}: {e}"))
        .trim()
        .to_string()
}

fn attached_to(number: u32, backing: &Path) -> bool {
    devices_backed_by(backing)
        .expect("devices_backed_by")
        .iter()
        .any(|(n, _)| *n == number)
}

fn wait_detached(number: u32, backing: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while attached_to(number, backing) {
        assert!(
            Instant::now() < deadline,
            "loop{number} still backed by {}",
            backing.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn read_only_autoclear_window() {
    if !can_run("read_only_autoclear_window") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "image.bin");
    let opts = LoopOptions {
        offset: OFFSET as u64,
        size_limit: LEN as u64,
        read_only: true,
        autoclear: true,
        direct_io: false,
    };
    let mut guard = Guard::attach(&backing, &opts);
    let n = guard.dev().number();
    assert_eq!(guard.dev().path(), Path::new(&format!("/dev/loop{n}")));

    let (offset, size_limit, flags) = guard.dev().status().expect("status");
    assert_eq!((offset, size_limit), (OFFSET as u64, LEN as u64));
    assert_eq!(flags & (1 | 4), 1 | 4, "read-only and autoclear flags");

    let mut content = Vec::new();
    File::open(guard.dev().path())
        .expect("open device")
        .read_to_end(&mut content)
        .expect("read device");
    assert_eq!(content.len(), LEN);
    assert!(content == pattern(), "device shows the pattern window");

    assert_eq!(sysfs(n, "loop/offset"), OFFSET.to_string());
    assert_eq!(sysfs(n, "loop/sizelimit"), LEN.to_string());
    assert_eq!(sysfs(n, "loop/autoclear"), "1");
    assert_eq!(sysfs(n, "ro"), "1");

    let write = OpenOptions::new()
        .write(true)
        .open(guard.dev().path())
        .and_then(|mut f| f.write_all(&[0u8; 512]).and_then(|()| f.sync_all()));
    assert!(
        write.is_err(),
        "writing to a read-only loop device succeeded"
    );

    let canonical = fs::canonicalize(&backing).expect("canonicalize");
    let found = devices_backed_by(&backing).expect("devices_backed_by");
    assert_eq!(found, vec![(n, canonical.clone())]);
    assert!(attached_devices()
        .expect("attached_devices")
        .contains(&(n, canonical)));

    // Nothing mounted and no other opener: dropping the last fd detaches.
    drop(guard.take());
    wait_detached(n, &backing);
}

#[test]
fn detach_without_autoclear() {
    if !can_run("detach_without_autoclear") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "rw.bin");
    let opts = LoopOptions {
        offset: OFFSET as u64,
        ..LoopOptions::default()
    };
    let mut guard = Guard::attach(&backing, &opts);
    let n = guard.dev().number();
    assert_eq!(sysfs(n, "ro"), "0");
    assert_eq!(sysfs(n, "loop/autoclear"), "0");

    // Writable: a write through the device lands at the offset in the file.
    {
        let mut dev = OpenOptions::new()
            .write(true)
            .open(guard.dev().path())
            .expect("open device for writing");
        dev.write_all(&[0x5Au8; 512]).expect("write device");
        dev.sync_all().expect("sync device");
    }
    let data = fs::read(&backing).expect("read backing");
    assert!(data[OFFSET..OFFSET + 512].iter().all(|&b| b == 0x5A));
    assert_eq!(data[OFFSET - 1], 0);

    // Without autoclear, closing the fd leaves the device attached...
    drop(guard.take().into_fd());
    std::thread::sleep(Duration::from_millis(100));
    assert!(attached_to(n, &backing), "non-autoclear device went away");

    // ...until detached explicitly, here through a fresh handle.
    LoopDevice::open_existing(n)
        .expect("open_existing")
        .detach()
        .expect("detach");
    wait_detached(n, &backing);
}

#[test]
fn detach_method_detaches() {
    if !can_run("detach_method_detaches") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "detach.bin");
    let mut guard = Guard::attach(&backing, &LoopOptions::default());
    let n = guard.dev().number();
    assert!(attached_to(n, &backing));
    guard.take().detach().expect("detach");
    wait_detached(n, &backing);
}

#[test]
fn direct_io_attach_reads_back() {
    if !can_run("direct_io_attach_reads_back") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "dio.bin");
    let opts = LoopOptions {
        offset: OFFSET as u64,
        size_limit: LEN as u64,
        read_only: true,
        autoclear: false,
        direct_io: true,
    };
    let guard = Guard::attach(&backing, &opts);
    let mut content = Vec::new();
    File::open(guard.dev().path())
        .expect("open device")
        .read_to_end(&mut content)
        .expect("read device");
    assert!(content == pattern());
}

#[test]
fn concurrent_attaches_get_distinct_devices() {
    if !can_run("concurrent_attaches_get_distinct_devices") {
        return;
    }
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "shared.bin");
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let backing = backing.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let opts = LoopOptions {
                    read_only: true,
                    autoclear: true,
                    ..LoopOptions::default()
                };
                LoopDevice::attach(&backing, &opts)
            })
        })
        .collect();
    let results: Vec<Result<LoopDevice, LoopError>> = handles
        .into_iter()
        .map(|h| h.join().expect("thread panicked"))
        .collect();
    // Guard every device we got before asserting anything.
    let mut guards = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(dev) => guards.push(Guard {
                number: dev.number(),
                dev: Some(dev),
                backing: backing.clone(),
            }),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert!(errors.is_empty(), "attach failures: {errors:?}");
    let mut numbers: Vec<u32> = guards.iter().map(|g| g.dev().number()).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), THREADS, "duplicate device numbers");
    let found: Vec<u32> = devices_backed_by(&backing)
        .expect("devices_backed_by")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(found, numbers);
    drop(guards);
    for n in numbers {
        wait_detached(n, &backing);
    }
}

#[test]
fn deleted_backing_file_is_still_found() {
    if !can_run("deleted_backing_file_is_still_found") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = backing_file(dir.path(), "gone.bin");
    let guard = Guard::attach(&backing, &LoopOptions::default());
    let n = guard.dev().number();
    fs::remove_file(&backing).expect("remove backing");
    assert!(sysfs(n, "loop/backing_file").ends_with(" (deleted)"));
    assert!(attached_to(n, &backing), "deleted backing file not matched");
}

#[test]
fn missing_backing_file_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = LoopDevice::attach(&dir.path().join("nope"), &LoopOptions::default())
        .expect_err("attach of a missing file");
    assert!(matches!(err, LoopError::OpenBacking { .. }), "{err:?}");
}

/// The documented pattern: attach with autoclear, mount, drop the fd. The mount keeps the
/// device; unmounting detaches it. Needs mkfs.ext4 (skipped without it).
#[test]
fn autoclear_device_lives_while_mounted() {
    if !can_run("autoclear_device_lives_while_mounted") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("fs.img");
    File::create(&image)
        .and_then(|f| f.set_len(4 * MIB as u64))
        .expect("create image");
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .output();
    let why = match &mkfs {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "mkfs.ext4 failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!(
            "mkfs.ext4 cannot run ({e}): apt-get install -y e2fsprogs"
        )),
    };
    if let Some(why) = why {
        skip("autoclear_device_lives_while_mounted", &why);
        return;
    }
    let target = dir.path().join("mnt");
    fs::create_dir(&target).expect("mkdir mnt");
    let opts = LoopOptions {
        read_only: true,
        autoclear: true,
        ..LoopOptions::default()
    };
    let mut guard = Guard::attach(&image, &opts);
    let n = guard.dev().number();
    nix::mount::mount(
        Some(guard.dev().path()),
        &target,
        Some("ext4"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("mount");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let mounted = Unmount(target.clone());

    drop(guard.take());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        attached_to(n, &image),
        "mounted autoclear device was detached"
    );
    assert!(target.join("lost+found").is_dir());

    nix::mount::umount(&target).expect("umount");
    drop(mounted);
    wait_detached(n, &image);
}
