//! Seccomp: OCI seccomp profiles (the JSON that Localhost profiles are
//! written in) compiled to a classic BPF program, and the program installed
//! in the container's first process just before it execs.
//!
//! The program checks the architecture (any other, including x86's 32-bit
//! entry and the x32 ABI, gets EPERM so that a deny-list cannot be dodged),
//! then compares the syscall number against each rule in profile order; a
//! rule's argument conditions are 64-bit comparisons done on the two 32-bit
//! halves. First match wins; no match takes the profile's default action.

mod default;
mod profile;
mod syscalls;

pub use default::runtime_default;
pub use profile::{ArgCondition, Profile, SyscallRule};

use crate::failure::{Failure, FailureKind};
use serde::{Deserialize, Serialize};

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A compiled filter and the flags to install it with.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub program: Vec<Insn>,
    #[serde(default)]
    pub flags: u32,
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JGE_K: u16 = 0x35;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_RET_K: u16 = 0x06;

// Return values (linux/seccomp.h).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0x0000_0000;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
fn off_arg_lo(i: u32) -> u32 {
    16 + 8 * i
}
fn off_arg_hi(i: u32) -> u32 {
    16 + 8 * i + 4
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;
/// The native architecture's names in profiles.
#[cfg(target_arch = "x86_64")]
const ARCH_NAMES: [&str; 2] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_AMD64"];
#[cfg(target_arch = "aarch64")]
const ARCH_NAMES: [&str; 1] = ["SCMP_ARCH_AARCH64"];

/// The kernel's limit on a filter's length.
const MAX_INSNS: usize = 4096;
const EPERM: u32 = 1;

/// The syscall number of `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<u32> {
    syscalls::SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|i| syscalls::SYSCALLS[i].1)
}

fn action(name: &str, errno: Option<u32>, default_errno: u32) -> Result<u32, Failure> {
    Ok(match name {
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_ERRNO" => RET_ERRNO | (errno.unwrap_or(default_errno) & 0xffff),
        "SCMP_ACT_TRACE" => RET_TRACE | (errno.unwrap_or(EPERM) & 0xffff),
        "SCMP_ACT_LOG" => RET_LOG,
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        other => {
            return Err(Failure::invalid(format!(
                "seccomp action {other:?} is not supported (SCMP_ACT_NOTIFY needs a listener sycri does not run)"
            )))
        }
    })
}

/// A jump target while assembling: the next instruction, or a label.
#[derive(Clone, Copy)]
enum To {
    Next,
    Label(usize),
}

enum Op {
    Insn(Insn),
    Jump { code: u16, k: u32, jt: To, jf: To },
    Label(usize),
}

#[derive(Default)]
struct Asm {
    ops: Vec<Op>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> usize {
        self.labels += 1;
        self.labels - 1
    }
    fn place(&mut self, l: usize) {
        self.ops.push(Op::Label(l));
    }
    fn ld(&mut self, off: u32) {
        self.ops.push(Op::Insn(Insn {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: off,
        }));
    }
    fn and(&mut self, k: u32) {
        self.ops.push(Op::Insn(Insn {
            code: BPF_ALU_AND_K,
            jt: 0,
            jf: 0,
            k,
        }));
    }
    fn ret(&mut self, k: u32) {
        self.ops.push(Op::Insn(Insn {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k,
        }));
    }
    fn jump(&mut self, code: u16, k: u32, jt: To, jf: To) {
        self.ops.push(Op::Jump { code, k, jt, jf });
    }

    /// Resolves labels to relative offsets.
    fn finish(self) -> Result<Vec<Insn>, Failure> {
        let mut at = vec![usize::MAX; self.labels];
        let mut n = 0;
        for op in &self.ops {
            match op {
                Op::Label(l) => at[*l] = n,
                _ => n += 1,
            }
        }
        let mut out = Vec::with_capacity(n);
        for op in self.ops {
            match op {
                Op::Label(_) => {}
                Op::Insn(i) => out.push(i),
                Op::Jump { code, k, jt, jf } => {
                    let here = out.len();
                    let rel = |t: To| -> Result<u8, Failure> {
                        match t {
                            To::Next => Ok(0),
                            To::Label(l) => {
                                // Labels are placed after their jumps: forward only.
                                at[l]
                                    .checked_sub(here + 1)
                                    .and_then(|d| u8::try_from(d).ok())
                                    .ok_or_else(|| {
                                        Failure::invalid(
                                            "seccomp profile: a rule is too long to compile",
                                        )
                                    })
                            }
                        }
                    };
                    out.push(Insn {
                        code,
                        jt: rel(jt)?,
                        jf: rel(jf)?,
                        k,
                    });
                }
            }
        }
        if out.len() > MAX_INSNS {
            return Err(Failure::invalid(format!(
                "seccomp profile compiles to {} instructions, more than the kernel's {MAX_INSNS}",
                out.len()
            )));
        }
        Ok(out)
    }
}

/// Emits a check of one argument condition: falls through when it holds,
/// jumps to `fail` when not.
fn condition(a: &mut Asm, c: &ArgCondition, fail: usize) -> Result<(), Failure> {
    if c.index > 5 {
        return Err(Failure::invalid(format!(
            "seccomp argument index {} is beyond the six a syscall has",
            c.index
        )));
    }
    let (lo, hi) = (off_arg_lo(c.index), off_arg_hi(c.index));
    let (vlo, vhi) = (c.value as u32, (c.value >> 32) as u32);
    let fail = To::Label(fail);
    let next = To::Next;
    match c.op.as_str() {
        "SCMP_CMP_EQ" => {
            a.ld(hi);
            a.jump(BPF_JMP_JEQ_K, vhi, next, fail);
            a.ld(lo);
            a.jump(BPF_JMP_JEQ_K, vlo, next, fail);
        }
        "SCMP_CMP_NE" => {
            let pass = a.label();
            a.ld(hi);
            a.jump(BPF_JMP_JEQ_K, vhi, next, To::Label(pass));
            a.ld(lo);
            a.jump(BPF_JMP_JEQ_K, vlo, fail, next);
            a.place(pass);
        }
        "SCMP_CMP_MASKED_EQ" => {
            let (wlo, whi) = (c.value_two as u32, (c.value_two >> 32) as u32);
            a.ld(hi);
            a.and(vhi);
            a.jump(BPF_JMP_JEQ_K, whi, next, fail);
            a.ld(lo);
            a.and(vlo);
            a.jump(BPF_JMP_JEQ_K, wlo, next, fail);
        }
        // Unsigned 64-bit orderings: the high halves decide unless equal.
        "SCMP_CMP_GT" | "SCMP_CMP_GE" => {
            let pass = a.label();
            a.ld(hi);
            a.jump(BPF_JMP_JGT_K, vhi, To::Label(pass), next);
            a.jump(BPF_JMP_JEQ_K, vhi, next, fail);
            a.ld(lo);
            let code = if c.op == "SCMP_CMP_GT" {
                BPF_JMP_JGT_K
            } else {
                BPF_JMP_JGE_K
            };
            a.jump(code, vlo, next, fail);
            a.place(pass);
        }
        "SCMP_CMP_LT" | "SCMP_CMP_LE" => {
            let pass = a.label();
            a.ld(hi);
            a.jump(BPF_JMP_JGE_K, vhi, next, To::Label(pass));
            a.jump(BPF_JMP_JEQ_K, vhi, next, fail);
            a.ld(lo);
            // lo < v  <=>  !(lo >= v);  lo <= v  <=>  !(lo > v)
            let code = if c.op == "SCMP_CMP_LT" {
                BPF_JMP_JGE_K
            } else {
                BPF_JMP_JGT_K
            };
            a.jump(code, vlo, fail, next);
            a.place(pass);
        }
        other => {
            return Err(Failure::invalid(format!(
            "seccomp comparison {other:?} is not one of SCMP_CMP_EQ, NE, LT, LE, GT, GE, MASKED_EQ"
        )))
        }
    }
    Ok(())
}

/// Compiles a profile for this architecture. Syscall names this
/// architecture does not have are skipped (a profile names every
/// architecture's), as libseccomp does.
pub fn compile(p: &Profile) -> Result<Filter, Failure> {
    let default = action(&p.default_action, p.default_errno_ret, EPERM)?;
    if !p.architectures.is_empty()
        && !p
            .architectures
            .iter()
            .any(|a| ARCH_NAMES.contains(&a.as_str()))
    {
        return Err(Failure::invalid(format!(
            "seccomp profile is for {:?}, not this machine ({})",
            p.architectures, ARCH_NAMES[0]
        )));
    }
    let mut flags = 0u32;
    for f in &p.flags {
        flags |= match f.as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => 2,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => 4,
            "SECCOMP_FILTER_FLAG_TSYNC" => 0,
            other => {
                return Err(Failure::invalid(format!(
                    "seccomp flag {other:?} is not supported"
                )))
            }
        };
    }

    // Rules per syscall number, in profile order.
    let mut by_nr: Vec<(u32, Vec<(&SyscallRule, u32)>)> = Vec::new();
    for rule in &p.syscalls {
        // A rule without errnoRet answers EPERM (defaultErrnoRet is only
        // the default action's).
        let ret = action(&rule.action, rule.errno_ret, EPERM)?;
        for name in rule.names.iter().chain(rule.name.iter()) {
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            match by_nr.iter_mut().find(|(n, _)| *n == nr) {
                Some((_, rules)) => rules.push((rule, ret)),
                None => by_nr.push((nr, vec![(rule, ret)])),
            }
        }
    }

    let mut a = Asm::default();
    let native = a.label();
    a.ld(OFF_ARCH);
    a.jump(BPF_JMP_JEQ_K, AUDIT_ARCH, To::Label(native), To::Next);
    a.ret(RET_ERRNO | EPERM);
    a.place(native);
    a.ld(OFF_NR);
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 ABI: the same entry with bit 30 set.
        let not_x32 = a.label();
        a.jump(BPF_JMP_JGE_K, 0x4000_0000, To::Next, To::Label(not_x32));
        a.ret(RET_ERRNO | EPERM);
        a.place(not_x32);
    }
    for (nr, rules) in &by_nr {
        let other = a.label();
        a.jump(BPF_JMP_JEQ_K, *nr, To::Next, To::Label(other));
        for (rule, ret) in rules {
            let next_rule = a.label();
            for c in &rule.args {
                condition(&mut a, c, next_rule)?;
            }
            a.ret(*ret);
            a.place(next_rule);
        }
        a.ret(default);
        a.place(other);
    }
    a.ret(default);
    Ok(Filter {
        program: a.finish()?,
        flags,
    })
}

/// Parses and compiles a profile file's contents.
pub fn compile_json(json: &[u8]) -> Result<Filter, Failure> {
    let p: Profile = serde_json::from_slice(json)
        .map_err(|e| Failure::invalid(format!("seccomp profile is not valid JSON: {e}")))?;
    compile(&p)
}

/// Installs the filter on the calling thread (the container's first process,
/// single-threaded). Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(f: &Filter) -> Result<(), Failure> {
    let len =
        u16::try_from(f.program.len()).map_err(|_| Failure::invalid("seccomp program too long"))?;
    let filters: Vec<libc::sock_filter> = f
        .program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        len,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `len` instructions from
    // `prog.filter`, which points into `filters`, alive until after the call;
    // the kernel copies the program and keeps no pointer to our memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            1u32, // SECCOMP_SET_MODE_FILTER
            f.flags,
            &prog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        return Err(Failure::new(
            FailureKind::Internal,
            format!(
                "install seccomp filter: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
