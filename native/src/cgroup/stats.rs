//! Usage read from a container's cgroups: CPU time and memory, in v2 or v1
//! form, and whether the kernel's OOM killer struck in it.

use super::group::Cgroups;
use std::path::Path;

/// What the CRI's ContainerStats reports; None where the host has no
/// controller to read it from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU time used, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged to the group, page cache included.
    pub memory_usage: Option<u64>,
    /// Usage less inactive file pages: what the kubelet evicts on.
    pub memory_working_set: Option<u64>,
    pub memory_rss: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
    /// The memory limit, when there is one.
    pub memory_limit: Option<u64>,
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` line of a flat-keyed cgroup file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads the usage of a set of cgroups.
pub fn stats(cg: &Cgroups) -> Stats {
    let mut s = Stats::default();
    if let Some((dir, v2)) = cg.dir_for("cpuacct") {
        s.cpu_usage_ns = if v2 {
            std::fs::read_to_string(dir.join("cpu.stat"))
                .ok()
                .and_then(|t| keyed(&t, "usage_usec"))
                .map(|us| us.saturating_mul(1000))
        } else {
            read_u64(&dir.join("cpuacct.usage"))
        };
    }
    if let Some((dir, v2)) = cg.dir_for("memory") {
        let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
        let (usage, limit, inactive, rss, faults, major) = if v2 {
            (
                read_u64(&dir.join("memory.current")),
                read_u64(&dir.join("memory.max")),
                keyed(&stat, "inactive_file"),
                keyed(&stat, "anon"),
                keyed(&stat, "pgfault"),
                keyed(&stat, "pgmajfault"),
            )
        } else {
            (
                read_u64(&dir.join("memory.usage_in_bytes")),
                read_u64(&dir.join("memory.limit_in_bytes")),
                keyed(&stat, "total_inactive_file"),
                keyed(&stat, "total_rss"),
                keyed(&stat, "total_pgfault"),
                keyed(&stat, "total_pgmajfault"),
            )
        };
        s.memory_usage = usage;
        s.memory_working_set = usage.map(|u| u.saturating_sub(inactive.unwrap_or(0)));
        s.memory_rss = rss;
        s.page_faults = faults;
        s.major_page_faults = major;
        // v1 reports "no limit" as a huge page-aligned number; v2 as "max"
        // (which does not parse).
        s.memory_limit = limit.filter(|l| *l < (1 << 62));
    }
    s
}

/// Whether the OOM killer killed a process in any of these cgroup
/// directories (v2 `memory.events` or v1 `memory.oom_control`, whichever the
/// directory has).
pub fn oom_killed<'a>(dirs: impl IntoIterator<Item = &'a Path>) -> bool {
    dirs.into_iter().any(|dir| {
        ["memory.events", "memory.oom_control"].iter().any(|f| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .and_then(|t| keyed(&t, "oom_kill"))
                .is_some_and(|n| n > 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lines_are_found_by_whole_key() {
        let t = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n";
        assert_eq!(keyed(t, "usage_usec"), Some(1500));
        assert_eq!(keyed(t, "usec"), None);
        assert_eq!(keyed("oom 0\noom_kill 2\n", "oom_kill"), Some(2));
        assert_eq!(keyed("oom_kill x\n", "oom_kill"), None);
    }

    #[test]
    fn stats_of_fake_v1_and_v2_groups() {
        let d = tempfile::tempdir().expect("tempdir");
        let v2 = d.path().join("v2");
        let mem = d.path().join("memory");
        let cpu = d.path().join("cpuacct");
        for p in [&v2, &mem, &cpu] {
            std::fs::create_dir_all(p).expect("mkdir");
        }
        std::fs::write(v2.join("cpu.stat"), "usage_usec 7\n").expect("write");
        std::fs::write(v2.join("memory.current"), "1000\n").expect("write");
        std::fs::write(v2.join("memory.max"), "max\n").expect("write");
        std::fs::write(
            v2.join("memory.stat"),
            "anon 300\ninactive_file 400\npgfault 9\npgmajfault 1\n",
        )
        .expect("write");
        std::fs::write(v2.join("memory.events"), "low 0\noom 1\noom_kill 1\n").expect("write");
        let only_v2 = Cgroups {
            v2: Some(v2.clone()),
            v1: vec![],
        };
        let s = stats(&only_v2);
        assert_eq!(s.cpu_usage_ns, Some(7000));
        assert_eq!(s.memory_usage, Some(1000));
        assert_eq!(s.memory_working_set, Some(600));
        assert_eq!(s.memory_rss, Some(300));
        assert_eq!(s.page_faults, Some(9));
        assert_eq!(s.memory_limit, None);
        assert!(oom_killed(only_v2.dirs()));

        std::fs::write(cpu.join("cpuacct.usage"), "123456\n").expect("write");
        std::fs::write(mem.join("memory.usage_in_bytes"), "5000\n").expect("write");
        std::fs::write(mem.join("memory.limit_in_bytes"), "4096000\n").expect("write");
        std::fs::write(
            mem.join("memory.stat"),
            "inactive_file 1\ntotal_inactive_file 2000\ntotal_rss 2500\n",
        )
        .expect("write");
        std::fs::write(
            mem.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .expect("write");
        let hybrid = Cgroups {
            v2: Some(v2),
            v1: vec![("memory".into(), mem), ("cpuacct".into(), cpu)],
        };
        let s = stats(&hybrid);
        assert_eq!(s.cpu_usage_ns, Some(123_456));
        assert_eq!(s.memory_working_set, Some(3000));
        assert_eq!(s.memory_rss, Some(2500));
        assert_eq!(s.memory_limit, Some(4_096_000));
        assert!(oom_killed(hybrid.dirs()), "v2's memory.events counts");
        assert!(!oom_killed(hybrid.dirs().skip(1)), "v1 says no OOM kill");
    }
}
