//! sycri's RuntimeDefault profile.
//!
//! A deny-list: every syscall is allowed except those that reach outside the
//! container or into the kernel's global state (modules, clocks, reboot,
//! mounts and namespaces, keyrings, tracing other processes, NUMA policy,
//! BPF, perf, io_uring), which answer EPERM. A container granted the capability that
//! governs such a syscall gets it back, so that adding CAP_SYS_ADMIN or
//! CAP_SYS_PTRACE works as it does without seccomp. clone() may not make
//! namespaces without CAP_SYS_ADMIN; clone3() answers ENOSYS (its flags are
//! in memory a filter cannot read), which makes libc fall back to clone().

use super::profile::{ArgCondition, Profile, SyscallRule};

/// Syscalls denied unless the container holds the capability.
const GUARDED: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "mount",
            "umount",
            "umount2",
            "unshare",
            "setns",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "quotactl",
            "quotactl_fd",
            "fanotify_init",
            "name_to_handle_at",
            "lookup_dcookie",
            "swapon",
            "swapoff",
        ],
    ),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "pidfd_getfd",
        ],
    ),
    (
        "CAP_SYS_MODULE",
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "query_module",
            "get_kernel_syms",
        ],
    ),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "clock_settime", "clock_adjtime", "stime"],
    ),
    ("CAP_SYS_BOOT", &["reboot", "kexec_load", "kexec_file_load"]),
    ("CAP_SYS_PACCT", &["acct"]),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_NICE",
        &["mbind", "set_mempolicy", "get_mempolicy", "move_pages"],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Denied whatever the capabilities: obsolete or global, with no use in a
/// container.
const ALWAYS: &[&str] = &[
    // io_uring: a large kernel surface that also makes sockets and opens
    // files without the syscalls this profile judges.
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "add_key",
    "keyctl",
    "request_key",
    "nfsservctl",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// The namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET.
const CLONE_NS_FLAGS: u64 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

const ENOSYS: u32 = 38;

fn deny(names: &[&str]) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action: "SCMP_ACT_ERRNO".into(),
        ..Default::default()
    }
}

/// The RuntimeDefault profile for a container holding `capabilities`
/// (names like "CAP_SYS_ADMIN").
pub fn runtime_default(capabilities: &[String]) -> Profile {
    let has = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut rules = vec![deny(ALWAYS)];
    for (cap, names) in GUARDED {
        if !has(cap) {
            rules.push(deny(names));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags is fine; with any, EPERM.
        rules.push(SyscallRule {
            names: vec!["clone".into()],
            action: "SCMP_ACT_ALLOW".into(),
            args: vec![ArgCondition {
                index: 0,
                value: CLONE_NS_FLAGS,
                value_two: 0,
                op: "SCMP_CMP_MASKED_EQ".into(),
            }],
            ..Default::default()
        });
        rules.push(deny(&["clone"]));
        rules.push(SyscallRule {
            names: vec!["clone3".into()],
            action: "SCMP_ACT_ERRNO".into(),
            errno_ret: Some(ENOSYS),
            ..Default::default()
        });
    }
    // personality(2): only PER_LINUX, PER_LINUX32, UNAME26, the last two
    // together, and the 0xffffffff query.
    let mut personality = Vec::new();
    for p in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        personality.push(SyscallRule {
            names: vec!["personality".into()],
            action: "SCMP_ACT_ALLOW".into(),
            args: vec![ArgCondition {
                index: 0,
                value: p,
                value_two: 0,
                op: "SCMP_CMP_EQ".into(),
            }],
            ..Default::default()
        });
    }
    rules.extend(personality);
    rules.push(deny(&["personality"]));
    // No vsock sockets (AF_VSOCK = 40): they reach the hypervisor's host.
    // The domain is an int: the kernel ignores the upper 32 bits, so only
    // the lower ones are compared.
    rules.push(SyscallRule {
        names: vec!["socket".into()],
        action: "SCMP_ACT_ERRNO".into(),
        args: vec![ArgCondition {
            index: 0,
            value: 0xffff_ffff,
            value_two: 40,
            op: "SCMP_CMP_MASKED_EQ".into(),
        }],
        ..Default::default()
    });
    Profile {
        default_action: "SCMP_ACT_ALLOW".into(),
        syscalls: rules,
        ..Default::default()
    }
}
