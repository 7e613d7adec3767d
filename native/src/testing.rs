//! How a test that cannot run here says so, in a way the test summary counts.
//!
//! cargo counts a test that returns early as passed and hides its stderr, so a
//! test that cannot run (no root, a missing tool or fixture) calls [`skip`]
//! and returns: it prints `SKIPPED <test>: <reason>` and, when the environment
//! variable [`SKIP_LOG_ENV`] names a file, appends `<test>\t<reason>` to it.
//! `scripts/test.sh` sets that file, counts those tests as skipped rather than
//! passed and lists them with their reasons. A test that runs but must leave
//! one of its checks out calls [`skip_part`]: it still counts as passed, and
//! the summary lists what it left out (`<test>\t<reason>\t<part>`).
//!
//! Also what the test and benchmark harnesses ask of /proc to audit what a
//! server left: which processes live ([`pid_alive`], [`processes`]).
//!
//! Used by the tests of every crate in the workspace (only std, so it costs
//! the engine nothing); product code never calls it.

use std::io::Write;
use std::path::Path;

/// Names the file that skips are appended to (unset: they are only printed).
pub const SKIP_LOG_ENV: &str = "SYCRI_SKIP_LOG";

/// Reports that `test` cannot run here, for `reason`; the caller returns
/// right after (calling it once per test, so that the count is right).
///
/// Panics when the skip log is set but cannot be written: a skip that the
/// summary does not see would be counted as a pass.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    append(&[test, reason]);
}

/// Reports that `test` runs without its `part` (e.g. "the mount checks"),
/// for `reason`; the test goes on and counts as passed, and the summary
/// lists the part that was left out.
pub fn skip_part(test: &str, part: &str, reason: &str) {
    eprintln!("SKIPPED {test} ({part}): {reason}");
    append(&[test, reason, part]);
}

/// Appends the fields to the log that [`SKIP_LOG_ENV`] names, if any.
fn append(fields: &[&str]) {
    let Some(path) = std::env::var_os(SKIP_LOG_ENV).filter(|p| !p.is_empty()) else {
        return;
    };
    if let Err(e) = record(Path::new(&path), fields) {
        panic!(
            "{SKIP_LOG_ENV}={}: cannot record the skip of {}: {e}",
            Path::new(&path).display(),
            fields[0]
        );
    }
}

/// One line of tab-separated fields (tabs and line breaks inside a field
/// become spaces), appended with a single write(2) on a file opened
/// O_APPEND, so that the lines of tests running in parallel (in threads or
/// in other test binaries) never interleave.
fn record(log: &Path, fields: &[&str]) -> std::io::Result<()> {
    let mut line = fields
        .iter()
        .map(|f| f.replace(['\t', '\n', '\r'], " "))
        .collect::<Vec<_>>()
        .join("\t");
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)?;
    let n = f.write(line.as_bytes())?;
    if n != line.len() {
        return Err(std::io::Error::other(format!(
            "short write ({n} of {} bytes)",
            line.len()
        )));
    }
    Ok(())
}

/// Whether `pid` exists and is neither a zombie nor dead.
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // hold anything, so look after the last ')'.
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .is_some_and(|s| s != "Z" && s != "X")
}

/// Every live process with its arguments; kernel threads (no command line)
/// left out.
pub fn processes() -> Vec<(i32, Vec<String>)> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if cmd.is_empty() || !pid_alive(pid) {
            continue;
        }
        let args = cmd
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        v.push((pid, args));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the copy of the test binary that the end-to-end test runs.
    const CHILD_ENV: &str = "SYCRI_TESTING_CHILD";

    /// skip and skip_part as a test calls them, in a child process (this test
    /// binary again, running only this test) with the log set in its
    /// environment: this process's own environment stays untouched, so a
    /// test skipping in parallel here cannot write into the temporary log.
    #[test]
    fn skips_reach_the_log_that_the_environment_names() {
        if std::env::var_os(CHILD_ENV).is_some() {
            skip("a_test", "needs root");
            skip_part("b_test", "the mount checks", "no\tloop\ndevices");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("skips");
        std::fs::write(&log, "earlier\tline\n").expect("seed the log");
        let name = module_path!()
            .split_once("::")
            .map_or("", |(_, m)| m)
            .to_owned()
            + "::skips_reach_the_log_that_the_environment_names";
        let out = Command::new(std::env::current_exe().expect("current_exe"))
            .args(["--exact", &name, "--test-threads=1", "--nocapture"])
            .env(SKIP_LOG_ENV, &log)
            .env(CHILD_ENV, "1")
            .output()
            .expect("run the test binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child: {stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran no test: {out:?}"
        );
        assert!(stderr.contains("SKIPPED a_test: needs root"), "{stderr}");
        assert_eq!(
            std::fs::read_to_string(&log).expect("read the log"),
            "earlier\tline\na_test\tneeds root\nb_test\tno loop devices\tthe mount checks\n"
        );
    }

    #[test]
    fn parallel_skips_do_not_interleave() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("skips");
        let reason = "x".repeat(2000);
        std::thread::scope(|s| {
            for t in 0..8 {
                let (log, reason) = (&log, &reason);
                s.spawn(move || {
                    for i in 0..50 {
                        record(log, &[&format!("t{t}_{i}"), reason]).expect("record");
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&log).expect("read the log");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 400);
        for l in lines {
            let (name, r) = l.split_once('\t').expect("two fields");
            assert!(name.starts_with('t') && r == reason, "torn line: {l:.80}");
        }
    }

    #[test]
    fn a_log_that_cannot_be_written_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("no such dir").join("skips");
        assert!(record(&log, &["a_test", "needs root"]).is_err());
    }

    #[test]
    fn a_zombie_is_not_alive_and_the_process_list_has_us() {
        let me = std::process::id() as i32;
        assert!(super::pid_alive(me));
        let ours = super::processes()
            .into_iter()
            .find(|(p, _)| *p == me)
            .map(|(_, a)| a);
        let exe = std::env::args().next().unwrap_or_default();
        assert_eq!(ours.and_then(|a| a.first().cloned()), Some(exe));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id() as i32;
        // Exited and not yet reaped: a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while super::pid_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!super::pid_alive(pid), "a zombie counts as alive");
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_ok(),
            "reaped before the check"
        );
        let _ = child.wait();
        assert!(!super::pid_alive(pid));
    }
}
