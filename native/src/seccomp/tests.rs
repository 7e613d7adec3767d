//! The compiled programs run on a small classic-BPF interpreter here, against
//! made-up syscalls: the tests check what the kernel would decide.

use super::*;

/// Runs a program on a seccomp_data of (nr, arch, args).
fn run(prog: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc = 0u32;
    let mut pc = 0usize;
    loop {
        let i = prog[pc];
        pc += 1;
        match i.code {
            BPF_LD_W_ABS => {
                let k = i.k as usize;
                acc = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
            }
            BPF_ALU_AND_K => acc &= i.k,
            BPF_RET_K => return i.k,
            BPF_JMP_JEQ_K | BPF_JMP_JGT_K | BPF_JMP_JGE_K => {
                let t = match i.code {
                    BPF_JMP_JEQ_K => acc == i.k,
                    BPF_JMP_JGT_K => acc > i.k,
                    _ => acc >= i.k,
                };
                pc += usize::from(if t { i.jt } else { i.jf });
            }
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

fn nr(name: &str) -> u32 {
    syscall_number(name).expect(name)
}

fn profile(json: &str) -> Filter {
    compile_json(json.as_bytes()).expect("compiles")
}

const EPERM_RET: u32 = RET_ERRNO | 1;

#[test]
fn names_resolve_on_this_architecture() {
    assert!(syscall_number("read").is_some());
    assert!(syscall_number("chmod").is_some() || cfg!(target_arch = "aarch64"));
    assert_eq!(syscall_number("no_such_call"), None);
}

#[test]
fn deny_list_profile_blocks_only_its_syscalls() {
    let f = profile(
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["sethostname","not_a_syscall"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    assert_eq!(
        run(&f.program, nr("sethostname"), AUDIT_ARCH, [0; 6]),
        EPERM_RET
    );
    assert_eq!(run(&f.program, nr("getpid"), AUDIT_ARCH, [0; 6]), RET_ALLOW);
    // Another architecture or the x32 ABI cannot walk around the list.
    assert_eq!(
        run(&f.program, nr("getpid"), 0x4000_0003, [0; 6]),
        EPERM_RET
    );
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            run(
                &f.program,
                nr("sethostname") | 0x4000_0000,
                AUDIT_ARCH,
                [0; 6]
            ),
            EPERM_RET
        );
    }
}

#[test]
fn allow_list_with_errno_default() {
    let f = profile(
        r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
            "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                        {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                        {"names":["chmod","fchmodat"],"action":"SCMP_ACT_ERRNO"}]}"#,
    );
    // A rule's own errno defaults to EPERM, not to defaultErrnoRet.
    assert_eq!(
        run(&f.program, nr("fchmodat"), AUDIT_ARCH, [0; 6]),
        EPERM_RET
    );
    assert_eq!(run(&f.program, nr("read"), AUDIT_ARCH, [0; 6]), RET_ALLOW);
    assert_eq!(run(&f.program, nr("write"), AUDIT_ARCH, [0; 6]), RET_ALLOW);
    assert_eq!(
        run(&f.program, nr("kill"), AUDIT_ARCH, [0; 6]),
        RET_ERRNO | 13
    );
    assert_eq!(
        run(&f.program, nr("getpid"), AUDIT_ARCH, [0; 6]),
        RET_ERRNO | 38
    );
}

/// One rule on argument 1 with `op` and the values, default EPERM.
fn arg_rule(op: &str, value: u64, value_two: u64) -> Filter {
    profile(&format!(
        r#"{{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{{"names":["read"],"action":"SCMP_ACT_ALLOW",
            "args":[{{"index":1,"value":{value},"valueTwo":{value_two},"op":"{op}"}}]}}]}}"#
    ))
}

#[test]
fn argument_comparisons_are_64_bit_and_unsigned() {
    let big = 0x1_0000_0005u64;
    /// (op, value, value_two, [(argument, allowed)])
    type Case<'a> = (&'a str, u64, u64, &'a [(u64, bool)]);
    let cases: &[Case] = &[
        (
            "SCMP_CMP_EQ",
            big,
            0,
            &[(big, true), (5, false), (big + 1, false)],
        ),
        (
            "SCMP_CMP_NE",
            big,
            0,
            &[(big, false), (5, true), (0x2_0000_0005, true)],
        ),
        (
            "SCMP_CMP_GT",
            big,
            0,
            &[
                (big + 1, true),
                (big, false),
                (0x2_0000_0000, true),
                (0xffff_ffff, false),
            ],
        ),
        (
            "SCMP_CMP_GE",
            big,
            0,
            &[(big, true), (big - 1, false), (u64::MAX, true)],
        ),
        (
            "SCMP_CMP_LT",
            big,
            0,
            &[
                (big - 1, true),
                (big, false),
                (0xffff_ffff, true),
                (0x2_0000_0000, false),
            ],
        ),
        (
            "SCMP_CMP_LE",
            big,
            0,
            &[(big, true), (big + 1, false), (0, true)],
        ),
        (
            "SCMP_CMP_MASKED_EQ",
            0xff00_0000_00f0,
            0x0100_0000_0010,
            &[
                (0x0100_0000_0010, true),
                (0x01ff_0000_001f, true),
                (0x0200_0000_0010, false),
            ],
        ),
    ];
    for (op, v, v2, checks) in cases {
        let f = arg_rule(op, *v, *v2);
        for (arg, allowed) in *checks {
            let got = run(&f.program, nr("read"), AUDIT_ARCH, [0, *arg, 0, 0, 0, 0]);
            let want = if *allowed { RET_ALLOW } else { EPERM_RET };
            assert_eq!(got, want, "{op} {v:#x} on {arg:#x}");
        }
    }
}

#[test]
fn bad_profiles_are_refused() {
    for bad in [
        r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":0,"value":1,"op":"SCMP_CMP_SOMETIMES"}]}]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_PPC64LE"]}"#,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}"#,
        r#"not json"#,
    ] {
        let e = compile_json(bad.as_bytes()).expect_err(bad);
        assert_eq!(e.kind, FailureKind::InvalidArgument, "{bad}");
    }
}

#[test]
fn runtime_default_guards_namespaces_and_follows_capabilities() {
    let f = compile(&runtime_default(&[])).expect("default compiles");
    let call = |name: &str, args: [u64; 6]| run(&f.program, nr(name), AUDIT_ARCH, args);
    assert_eq!(call("getpid", [0; 6]), RET_ALLOW);
    assert_eq!(call("mount", [0; 6]), EPERM_RET);
    assert_eq!(call("keyctl", [0; 6]), EPERM_RET);
    assert_eq!(call("ptrace", [0; 6]), EPERM_RET);
    // clone: threads and forks yes, new namespaces no.
    assert_eq!(call("clone", [0x0001_1f00, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call("clone", [0x2000_0011, 0, 0, 0, 0, 0]), EPERM_RET);
    assert_eq!(call("clone3", [0; 6]), RET_ERRNO | 38);
    assert_eq!(call("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call("personality", [0x0040_0000, 0, 0, 0, 0, 0]), EPERM_RET);
    assert_eq!(call("socket", [40, 1, 0, 0, 0, 0]), EPERM_RET);
    // The kernel reads the domain as an int: high bits do not help.
    assert_eq!(call("socket", [(1 << 32) | 40, 1, 0, 0, 0, 0]), EPERM_RET);
    assert_eq!(call("io_uring_setup", [8, 0, 0, 0, 0, 0]), EPERM_RET);
    assert_eq!(call("socket", [2, 1, 0, 0, 0, 0]), RET_ALLOW);

    let admin = compile(&runtime_default(&[
        "CAP_SYS_ADMIN".to_string(),
        "CAP_SYS_PTRACE".to_string(),
    ]))
    .expect("compiles");
    let call = |name: &str, args: [u64; 6]| run(&admin.program, nr(name), AUDIT_ARCH, args);
    assert_eq!(call("mount", [0; 6]), RET_ALLOW);
    assert_eq!(call("ptrace", [0; 6]), RET_ALLOW);
    assert_eq!(call("clone", [0x2000_0011, 0, 0, 0, 0, 0]), RET_ALLOW);
    assert_eq!(call("keyctl", [0; 6]), EPERM_RET, "never allowed");
}
