//! One cgroup (v2) per container: every process of the container joins it, so
//! that stopping or removing the container ends all of them (`cgroup.kill`),
//! whatever pid namespace they share. Works on a pure v2 host and on a hybrid
//! one (v2 mounted at e.g. /sys/fs/cgroup/unified) without any controller.
//!
//! Resource limits and usage need controllers. On a v2 host they are enabled
//! down to the containers' cgroups; on a hybrid host the controllers that v2
//! lacks (cpu, cpuacct, cpuset, memory, pids) live in v1 hierarchies, and the
//! container gets one more cgroup in each of those ([`Layout`]).

pub mod fork;
mod group;
mod resources;
mod stats;

use crate::pidfd::PidFd;
use group::write_file;
pub use group::Cgroups;
pub use resources::{apply, Resources};
pub use stats::{oom_killed, stats, Stats};

use crate::failure::Failure;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Controllers sycri limits or reads, by their v1 names (cpuacct is part of
/// cpu on v2).
pub const CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "cpuset", "memory", "pids", "hugetlb"];

/// Where the host's cgroup hierarchies are, and which controllers each has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The v2 mount point.
    pub v2: Option<PathBuf>,
    /// Controllers the v2 root offers (`cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// v1 mount points of the [`CONTROLLERS`] that v2 does not offer.
    pub v1: Vec<(String, PathBuf)>,
}

/// Reads the host's layout from /proc/self/mountinfo.
pub fn layout() -> Layout {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    layout_from(&info, |p| std::fs::read_to_string(p).ok())
}

fn layout_from(mountinfo: &str, read: impl Fn(&Path) -> Option<String>) -> Layout {
    let mut l = Layout {
        v2: None,
        v2_controllers: Vec::new(),
        v1: Vec::new(),
    };
    let mut v1_mounts: Vec<(PathBuf, Vec<String>)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let fs_type = r.next().unwrap_or("");
        let _source = r.next();
        let options = r.next().unwrap_or("");
        let mount_point = PathBuf::from(mount_point);
        match fs_type {
            "cgroup2" => {
                let shorter =
                    l.v2.as_ref()
                        .is_none_or(|p| mount_point.components().count() < p.components().count());
                if shorter {
                    l.v2 = Some(mount_point);
                }
            }
            "cgroup" => v1_mounts.push((
                mount_point,
                options.split(',').map(str::to_string).collect(),
            )),
            _ => {}
        }
    }
    if let Some(v2) = &l.v2 {
        l.v2_controllers = read(&v2.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
    }
    for c in CONTROLLERS {
        let in_v2 = if c == "cpuacct" {
            l.v2_controllers.iter().any(|x| x == "cpu")
        } else {
            l.v2_controllers.iter().any(|x| x == c)
        };
        if in_v2 {
            continue;
        }
        // The first (shortest) mount of the hierarchy that has this controller.
        if let Some((mp, _)) = v1_mounts
            .iter()
            .filter(|(_, opts)| opts.iter().any(|o| o == c))
            .min_by_key(|(mp, _)| mp.components().count())
        {
            l.v1.push((c.to_string(), mp.clone()));
        }
    }
    l
}

impl Layout {
    /// The cgroups named `name` under the group `parent` (e.g. "sycri").
    pub fn cgroups(&self, parent: &str, name: &str) -> Cgroups {
        let mut v1: Vec<(String, PathBuf)> = Vec::new();
        for (c, mp) in &self.v1 {
            v1.push((c.clone(), mp.join(parent).join(name)));
        }
        Cgroups {
            v2: self.v2.as_ref().map(|r| r.join(parent).join(name)),
            v1,
        }
    }

    /// Makes the parent group and enables the v2 controllers in it, so that
    /// its children can be limited. Best effort: a controller that cannot be
    /// enabled (held by another hierarchy, or a v2 root with processes) just
    /// limits nothing.
    pub fn prepare(&self, parent: &str) -> Result<(), Failure> {
        if let Some((_, mp)) = self.v1.iter().find(|(c, _)| c == "cpuset") {
            // New v1 cpuset groups start empty; with clone_children set on
            // their parent they start with its CPUs and memory nodes, which
            // saves create_all() the copying on the start path.
            let group = mp.join(parent);
            create(&group)?;
            fill_cpuset(&group)?;
            let _ = write_file(&group.join("cgroup.clone_children"), "1");
        }
        let Some(v2) = &self.v2 else {
            return Ok(());
        };
        let group = v2.join(parent);
        create(&group)?;
        let wanted: Vec<&str> = ["cpu", "cpuset", "memory", "pids", "hugetlb"]
            .into_iter()
            .filter(|c| self.v2_controllers.iter().any(|x| x == c))
            .collect();
        // Every level from the root down to the group passes them on.
        let mut levels: Vec<&Path> = group
            .ancestors()
            .take_while(|a| a.starts_with(v2))
            .collect();
        levels.reverse();
        for dir in levels {
            for c in &wanted {
                let _ = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
            }
        }
        Ok(())
    }
}

/// Creates every cgroup of the set. A v1 cpuset group starts with no CPUs and
/// no memory nodes, which no task can join: it gets its parent's.
pub fn create_all(cg: &Cgroups) -> Result<(), Failure> {
    for dir in cg.dirs() {
        create(dir)?;
    }
    if let Some((_, d)) = cg.v1.iter().find(|(c, _)| c == "cpuset") {
        // Top-down, every level below the hierarchy's root (a nested parent
        // may have been made just now; sycri's own was filled when prepared).
        let mut chain: Vec<&Path> = d
            .ancestors()
            .take_while(|a| {
                a.join("cpuset.cpus").exists()
                    && a.parent().is_some_and(|p| p.join("cpuset.cpus").exists())
            })
            .collect();
        chain.reverse();
        for dir in chain {
            fill_cpuset(dir)?;
        }
    }
    Ok(())
}

/// Gives a v1 cpuset group without CPUs or memory nodes its parent's.
fn fill_cpuset(dir: &Path) -> Result<(), Failure> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let own = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        if own.trim().is_empty() {
            if let Some(parent) = dir.parent() {
                let from = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                write_file(&dir.join(f), from.trim())?;
            }
        }
    }
    Ok(())
}

/// Kills every process of the set (through v2 when there is one).
pub fn kill_all(cg: &Cgroups) -> Result<(), Failure> {
    match &cg.v2 {
        Some(v2) => kill(v2),
        None => {
            for (_, d) in &cg.v1 {
                kill(d)?;
            }
            Ok(())
        }
    }
}

/// Kills what is left in the set and removes every cgroup of it.
pub fn remove_all(cg: &Cgroups) -> Result<(), Failure> {
    let mut first = None;
    for dir in cg.dirs() {
        if let Err(e) = remove(dir) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Creates the cgroup directory (and its parents).
pub fn create(path: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(path)
        .map_err(|e| Failure::internal(format!("create cgroup {}", path.display()), e))
}

/// Pids in the cgroup.
pub fn pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in the cgroup (`cgroup.kill`, or SIGKILL to each pid on
/// kernels before 5.14). A missing cgroup is fine.
pub fn kill(path: &Path) -> Result<(), Failure> {
    if !path.exists() {
        return Ok(());
    }
    let via_file = std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if via_file.is_err() {
        // No cgroup.kill (v1, or v2 before 5.14): each member by a pidfd, taken first and then
        // checked against the members listed again, so that a number that
        // was freed and given to a process outside the cgroup between the
        // reading and the signal is never signalled.
        if !PidFd::supported() {
            // Before Linux 5.3 there are no pidfds: signal the members by
            // number, the only way left, with the reuse race it cannot close.
            for pid in pids(path) {
                // SAFETY: kill(2) with integer arguments only.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            return Ok(());
        }
        let handles: Vec<PidFd> = pids(path).into_iter().filter_map(PidFd::open).collect();
        let members = pids(path);
        for p in handles.iter().filter(|p| members.contains(&p.pid())) {
            p.signal(libc::SIGKILL);
        }
    }
    Ok(())
}

/// Kills what is left, waits for the cgroup to empty and removes it.
pub fn remove(path: &Path) -> Result<(), Failure> {
    if !path.exists() {
        return Ok(());
    }
    kill(path)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(Failure::internal(
                        format!("remove cgroup {}", path.display()),
                        e,
                    ));
                }
                // Busy until the killed processes are gone.
                std::thread::sleep(Duration::from_millis(5));
                kill(path)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureKind;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
33 30 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 30 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
37 30 0:33 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
";

    #[test]
    fn hybrid_layout_puts_missing_controllers_in_v1() {
        let l = layout_from(HYBRID, |p| {
            (p == Path::new("/sys/fs/cgroup/unified/cgroup.controllers"))
                .then(|| "hugetlb\n".to_string())
        });
        assert_eq!(l.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(l.v2_controllers, vec!["hugetlb".to_string()]);
        let v1: Vec<&str> = l.v1.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(v1, ["cpu", "cpuacct", "memory", "pids"]);
        let cg = l.cgroups("sycri", "abc");
        assert_eq!(
            cg.dir_for("memory"),
            Some((Path::new("/sys/fs/cgroup/memory/sycri/abc"), false))
        );
        // hugetlb is v2's here; cpuset is nowhere.
        assert_eq!(
            cg.dir_for("hugetlb"),
            Some((Path::new("/sys/fs/cgroup/unified/sycri/abc"), true))
        );
        assert_eq!(cg.dirs().count(), 5);
    }

    #[test]
    fn pure_v2_layout_needs_no_v1() {
        let info = "31 1 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let l = layout_from(info, |_| Some("cpuset cpu io memory hugetlb pids".into()));
        assert!(l.v1.is_empty(), "{l:?}");
        let cg = l.cgroups("kubepods/pod1", "c1");
        assert_eq!(
            cg.dir_for("cpuacct"),
            Some((Path::new("/sys/fs/cgroup/kubepods/pod1/c1"), true))
        );
    }

    /// A fake v1 memory and cpu cgroup: the files a kernel would offer.
    fn fake_v1(root: &Path) -> Cgroups {
        let mem = root.join("memory");
        let cpu = root.join("cpu");
        for d in [&mem, &cpu] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
            std::fs::write(mem.join(f), "9223372036854771712\n").expect("write");
        }
        for f in ["cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.shares"] {
            std::fs::write(cpu.join(f), "0\n").expect("write");
        }
        Cgroups {
            v2: None,
            v1: vec![("memory".into(), mem), ("cpu".into(), cpu)],
        }
    }

    #[test]
    fn limits_are_written_in_v1_form() {
        let d = tempfile::tempdir().expect("tempdir");
        let cg = fake_v1(d.path());
        let r = Resources {
            cpu_period: 100_000,
            cpu_quota: 25_000,
            cpu_shares: 256,
            memory_limit_in_bytes: 32 << 20,
            memory_swap_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        apply(&cg, &r).expect("apply");
        let read = |c: &str, f: &str| {
            std::fs::read_to_string(cg.dir_for(c).expect("dir").0.join(f)).expect("read")
        };
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "256");
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            read("memory", "memory.memsw.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
    }

    #[test]
    fn bad_limits_are_refused_before_anything_is_written() {
        let d = tempfile::tempdir().expect("tempdir");
        let cg = fake_v1(d.path());
        let bad = [
            Resources {
                cpu_period: 10,
                ..Default::default()
            },
            Resources {
                memory_limit_in_bytes: 64 << 20,
                memory_swap_limit_in_bytes: 32 << 20,
                ..Default::default()
            },
            Resources {
                cpuset_cpus: "0\n1".into(),
                ..Default::default()
            },
            Resources {
                unified: [("../cgroup.procs".to_string(), "1".to_string())].into(),
                ..Default::default()
            },
        ];
        for r in bad {
            let e = apply(&cg, &r).expect_err("refused");
            assert_eq!(e.kind, FailureKind::InvalidArgument, "{r:?}");
        }
        // No cpuset controller here at all: a cpuset limit says so.
        let e = apply(
            &cg,
            &Resources {
                cpuset_cpus: "0".into(),
                ..Default::default()
            },
        )
        .expect_err("no cpuset");
        assert_eq!(e.kind, FailureKind::FailedPrecondition);
        // Without a cpu controller CPU shares (a relative weight) are let go,
        // a quota is not.
        let no_cpu = Cgroups {
            v2: None,
            v1: cg
                .v1
                .iter()
                .filter(|(c, _)| c == "memory")
                .cloned()
                .collect(),
        };
        let shares = Resources {
            cpu_shares: 512,
            ..Default::default()
        };
        apply(&no_cpu, &shares).expect("shares alone are soft");
        let quota = Resources {
            cpu_quota: 50_000,
            ..Default::default()
        };
        let e = apply(&no_cpu, &quota).expect_err("a quota needs the controller");
        assert_eq!(e.kind, FailureKind::FailedPrecondition);
        assert_eq!(
            std::fs::read_to_string(d.path().join("memory/memory.limit_in_bytes"))
                .expect("read")
                .trim(),
            "9223372036854771712"
        );
    }
}
