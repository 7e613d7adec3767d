//! The guest is what the suite claims to test on: a stock kernel with pure
//! cgroup v2 (no v1 hierarchy, none can be mounted), the controllers sycri
//! limits with enabled down to the kubelet's pod parents, and the modules
//! sycri needs loaded.

use super::Ctx;
use crate::audit::{cgroup_root, read};
use crate::fail::Result;
use crate::{check, check_eq};
use std::ffi::CString;
use std::path::Path;

pub async fn guest(ctx: &mut Ctx) -> Result<()> {
    let release = read(Path::new("/proc/sys/kernel/osrelease"));
    let cmdline = read(Path::new("/proc/cmdline"));
    check!(
        cmdline.split_whitespace().any(|w| w == "cgroup_no_v1=all"),
        "the kernel was booted without cgroup_no_v1=all: {cmdline}"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounts = sycri_native::mounts::parse_mountinfo(&info);
    let v1: Vec<String> = mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup")
        .map(|m| m.mount_point.display().to_string())
        .collect();
    check!(v1.is_empty(), "cgroup v1 hierarchies are mounted: {v1:?}");
    let root = cgroup_root();
    check_eq!(
        root.as_path(),
        Path::new("/sys/fs/cgroup"),
        "the cgroup2 mount"
    );
    check!(
        mounts
            .iter()
            .any(|m| m.fs_type == "cgroup2" && m.mount_point == root),
        "no cgroup2 at {}",
        root.display()
    );
    // A v1 hierarchy cannot even be mounted: the controllers are v2's.
    let probe = Path::new("/run/sycri-vm-v1-probe");
    std::fs::create_dir_all(probe)?;
    if mount_v1_memory(probe) {
        let target = CString::new(probe.to_string_lossy().into_owned()).unwrap_or_default();
        // SAFETY: umount2 of the probe mount just made, path NUL-terminated.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        check!(false, "a cgroup v1 memory hierarchy could be mounted");
    }
    let controllers = read(&root.join("cgroup.controllers"));
    for c in ["cpuset", "cpu", "io", "memory", "pids"] {
        check!(
            controllers.split_whitespace().any(|x| x == c),
            "the v2 root lacks {c}: {controllers}"
        );
    }
    // Delegated as systemd and the kubelet leave it: the root and the QoS
    // levels pass the controllers on.
    for level in ["", "kubepods", "kubepods/burstable"] {
        let enabled = read(&root.join(level).join("cgroup.subtree_control"));
        for c in ["cpu", "memory", "pids"] {
            check!(
                enabled.split_whitespace().any(|x| x == c),
                "{c} not enabled in /{level}'s subtree_control: {enabled:?}"
            );
        }
    }
    for m in ["loop", "squashfs", "overlay", "veth", "bridge"] {
        check!(
            Path::new("/sys/module").join(m).exists(),
            "module {m} is not loaded"
        );
    }
    ctx.note(format!(
        "kernel {release}, cgroup2 controllers: {controllers}, pid 1: {}",
        read(Path::new("/proc/1/comm"))
    ));
    Ok(())
}

/// Whether mount(2) of a v1 memory hierarchy at `dir` succeeds.
fn mount_v1_memory(dir: &Path) -> bool {
    let (Ok(src), Ok(target), Ok(fs), Ok(opts)) = (
        CString::new("cgroup"),
        CString::new(dir.to_string_lossy().into_owned()),
        CString::new("cgroup"),
        CString::new("memory"),
    ) else {
        return false;
    };
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            0,
            opts.as_ptr().cast(),
        ) == 0
    }
}
