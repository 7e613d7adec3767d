//! Resource limits (the CRI's LinuxContainerResources) written to a
//! container's cgroups, in v2 or v1 form as the controller's hierarchy needs.

use super::group::{write_file, Cgroups};
use crate::failure::Failure;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Limits as the CRI gives them; zero (or empty) leaves a limit as it is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Resources {
    /// CFS period in microseconds.
    pub cpu_period: i64,
    /// CFS quota in microseconds per period; -1 or 0: none.
    pub cpu_quota: i64,
    /// Relative CPU weight (v1 shares, 2..262144).
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    /// Memory plus swap; -1: unlimited swap.
    pub memory_swap_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// Page size (e.g. "2MB") to limit in bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// Raw cgroup v2 files to write (name -> value).
    pub unified: BTreeMap<String, String>,
    /// Written to the container's first process by the server; kept here so
    /// that ContainerStatus can report it.
    pub oom_score_adj: i64,
}

/// Converts v1 CPU shares to a v2 weight (the two ranges mapped linearly:
/// 2..262144 onto 1..10000).
pub fn shares_to_weight(shares: i64) -> i64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

/// Checks what the kernel would refuse or what would write outside the
/// cgroup, before anything is written.
pub fn validate(r: &Resources) -> Result<(), Failure> {
    if r.cpu_period < 0 || r.cpu_shares < 0 || r.memory_limit_in_bytes < 0 {
        return Err(Failure::invalid(
            "cpu_period, cpu_shares and memory_limit_in_bytes must not be negative",
        ));
    }
    if r.cpu_period != 0 && !(1000..=1_000_000).contains(&r.cpu_period) {
        return Err(Failure::invalid(format!(
            "cpu_period {} is outside 1000..1000000 microseconds",
            r.cpu_period
        )));
    }
    if r.cpu_quota > 0 && r.cpu_quota < 1000 {
        return Err(Failure::invalid(format!(
            "cpu_quota {} is below 1000 microseconds",
            r.cpu_quota
        )));
    }
    if r.memory_swap_limit_in_bytes > 0
        && r.memory_limit_in_bytes > 0
        && r.memory_swap_limit_in_bytes < r.memory_limit_in_bytes
    {
        return Err(Failure::invalid(format!(
            "memory_swap_limit_in_bytes {} is below memory_limit_in_bytes {}",
            r.memory_swap_limit_in_bytes, r.memory_limit_in_bytes
        )));
    }
    let list_ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
    };
    if !list_ok(&r.cpuset_cpus) || !list_ok(&r.cpuset_mems) {
        return Err(Failure::invalid(format!(
            "cpuset {:?}/{:?} is not a list of numbers and ranges",
            r.cpuset_cpus, r.cpuset_mems
        )));
    }
    for (size, _) in &r.hugepage_limits {
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Failure::invalid(format!(
                "hugepage size {size:?} is not a size"
            )));
        }
    }
    for (k, v) in &r.unified {
        // A plain file name inside the cgroup, one of the controllers' own.
        let ok = !k.is_empty()
            && k.contains('.')
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
            && !k.starts_with("cgroup.");
        if !ok {
            return Err(Failure::invalid(format!(
                "unified key {k:?} is not a cgroup v2 file"
            )));
        }
        if v.contains('\n') {
            return Err(Failure::invalid(format!(
                "unified value for {k:?} has a newline"
            )));
        }
    }
    Ok(())
}

/// Writes the limits into the container's cgroups. Limits for a controller
/// the host has in no hierarchy are refused rather than silently dropped,
/// except CPU shares: a relative weight that the kubelet sends with every
/// container, which without a cpu controller has nothing to weigh against.
pub fn apply(cg: &Cgroups, r: &Resources) -> Result<(), Failure> {
    validate(r)?;
    let need = |controller: &str| -> Result<(&Path, bool), Failure> {
        cg.dir_for(controller)
            .filter(|(d, v2)| !*v2 || has(d, controller))
            .ok_or_else(|| {
                Failure::precondition(format!(
                    "the host has no {controller} cgroup controller for this limit"
                ))
            })
    };

    let hard_cpu = r.cpu_quota != 0 || r.cpu_period != 0;
    let cpu = if hard_cpu {
        Some(need("cpu")?)
    } else if r.cpu_shares != 0 {
        need("cpu").ok()
    } else {
        None
    };
    if let Some((dir, v2)) = cpu {
        if v2 {
            if r.cpu_quota != 0 || r.cpu_period != 0 {
                // cpu.max holds both; a zero keeps the one in force, as on v1.
                let current = std::fs::read_to_string(dir.join("cpu.max")).unwrap_or_default();
                let mut now = current.split_whitespace();
                let (now_quota, now_period) = (
                    now.next().unwrap_or("max").to_string(),
                    now.next().unwrap_or("100000").to_string(),
                );
                let period = if r.cpu_period > 0 {
                    r.cpu_period.to_string()
                } else {
                    now_period
                };
                let quota = match r.cpu_quota {
                    q if q > 0 => q.to_string(),
                    0 => now_quota,
                    _ => "max".to_string(),
                };
                write_file(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if r.cpu_shares > 0 {
                write_file(
                    &dir.join("cpu.weight"),
                    &shares_to_weight(r.cpu_shares).to_string(),
                )?;
            }
        } else {
            if r.cpu_period > 0 {
                write_file(&dir.join("cpu.cfs_period_us"), &r.cpu_period.to_string())?;
            }
            if r.cpu_quota != 0 {
                let q = if r.cpu_quota > 0 { r.cpu_quota } else { -1 };
                write_file(&dir.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
            if r.cpu_shares > 0 {
                write_file(&dir.join("cpu.shares"), &r.cpu_shares.to_string())?;
            }
        }
    }

    if r.memory_limit_in_bytes > 0 || r.memory_swap_limit_in_bytes != 0 {
        let (dir, v2) = need("memory")?;
        let limit = r.memory_limit_in_bytes;
        let swap = r.memory_swap_limit_in_bytes;
        if v2 {
            if limit > 0 {
                write_file(&dir.join("memory.max"), &limit.to_string())?;
            }
            let swap_file = dir.join("memory.swap.max");
            if swap_file.exists() {
                if swap == -1 {
                    write_file(&swap_file, "max")?;
                } else if swap > 0 && limit > 0 {
                    write_file(&swap_file, &(swap - limit).to_string())?;
                }
            }
        } else {
            let mem = dir.join("memory.limit_in_bytes");
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            let memsw_value = if swap == -1 {
                Some("-1".to_string())
            } else if swap > 0 {
                Some(swap.to_string())
            } else {
                None
            };
            // memsw must stay >= the memory limit: raising, memsw goes first;
            // lowering, the memory limit goes first. Try one order, then the other.
            let write_mem = || {
                if limit > 0 {
                    write_file(&mem, &limit.to_string())
                } else {
                    Ok(())
                }
            };
            let write_memsw = || match (&memsw_value, memsw.exists()) {
                (Some(v), true) => write_file(&memsw, v),
                _ => Ok(()),
            };
            if write_mem().and_then(|_| write_memsw()).is_err() {
                write_memsw()?;
                write_mem()?;
            }
        }
    }

    if !r.cpuset_cpus.is_empty() || !r.cpuset_mems.is_empty() {
        let (dir, _) = need("cpuset")?;
        if !r.cpuset_cpus.is_empty() {
            write_file(&dir.join("cpuset.cpus"), &r.cpuset_cpus)?;
        }
        if !r.cpuset_mems.is_empty() {
            write_file(&dir.join("cpuset.mems"), &r.cpuset_mems)?;
        }
    }

    for (size, bytes) in &r.hugepage_limits {
        let (dir, v2) = need("hugetlb")?;
        let file = if v2 {
            format!("hugetlb.{size}.max")
        } else {
            format!("hugetlb.{size}.limit_in_bytes")
        };
        let path = dir.join(&file);
        if !path.exists() {
            return Err(Failure::invalid(format!(
                "hugepage size {size:?} is not offered here"
            )));
        }
        write_file(&path, &bytes.to_string())?;
    }

    if !r.unified.is_empty() {
        let dir = cg.v2.as_deref().ok_or_else(|| {
            Failure::precondition("unified cgroup settings need cgroup v2".to_string())
        })?;
        for (k, v) in &r.unified {
            let path = dir.join(k);
            if !path.exists() {
                return Err(Failure::invalid(format!(
                    "unified key {k:?}: no such file in the container's cgroup"
                )));
            }
            write_file(&path, v)?;
        }
    }
    Ok(())
}

/// Whether the v2 cgroup `dir` has `controller` enabled (its parent's
/// `cgroup.subtree_control` lists it).
fn has(dir: &Path, controller: &str) -> bool {
    let name = if controller == "cpuacct" {
        "cpu"
    } else {
        controller
    };
    dir.parent()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.subtree_control")).ok())
        .map(|s| s.split_whitespace().any(|c| c == name))
        .unwrap_or(false)
}
