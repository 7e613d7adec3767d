//! sycri-vm-driver: the VM suite's test driver. It runs inside the qemu guest
//! that vm-tests/run.sh boots, drives sycri over its CRI socket with sycri's
//! own generated client, writes one line per result to the results port and
//! ends the guest with an exit status qemu passes on.
//!
//! ```text
//! sycri-vm-driver run [--tests LIST] [--server spawn|unit:NAME] [--sycri PATH]
//!                     [--socket PATH] [--fixtures DIR] [--results PATH]
//!                     [--server-cgroup DIR] [--log PATH] [--exit]
//! sycri-vm-driver list
//! sycri-vm-driver exit CODE
//! ```
//!
//! LIST is `all`, `smoke` or names separated by commas; without `--tests` it
//! comes from `vmtests=` on the kernel command line (default `all`).

mod audit;
mod client;
mod debug_exit;
mod fail;
mod report;
mod server;
mod suite;
mod ws;

use report::Report;
use server::{Mode, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use suite::{Ctx, Test, TESTS};

struct Args {
    tests: Option<String>,
    /// The systemd unit that runs the server (`--server unit:NAME`).
    unit: Option<String>,
    sycri: PathBuf,
    socket: PathBuf,
    fixtures: PathBuf,
    results: Option<String>,
    server_cgroup: Option<PathBuf>,
    log: PathBuf,
    exit: bool,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sycri-vm-driver run [--tests all|smoke|a,b] [--server spawn|unit:NAME] [--sycri PATH] \
         [--socket PATH] [--fixtures DIR] [--results PATH] [--server-cgroup DIR] [--log PATH] [--exit]\n       \
         sycri-vm-driver list\n       sycri-vm-driver exit CODE"
    );
    ExitCode::from(2)
}

fn parse(mut it: impl Iterator<Item = String>) -> Option<Args> {
    let mut a = Args {
        tests: None,
        unit: None,
        sycri: PathBuf::from("/usr/local/bin/sycri"),
        socket: PathBuf::from("/var/run/singularity.sock"),
        fixtures: PathBuf::from("/opt/sycri-vm/sif"),
        results: None,
        server_cgroup: None,
        log: PathBuf::from("/var/log/sycri.log"),
        exit: false,
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--exit" => a.exit = true,
            "--tests" => a.tests = Some(it.next()?),
            "--server" => match it.next()?.strip_prefix("unit:") {
                Some(unit) => a.unit = Some(unit.to_string()),
                None => a.unit = None,
            },
            "--sycri" => a.sycri = it.next()?.into(),
            "--socket" => a.socket = it.next()?.into(),
            "--fixtures" => a.fixtures = it.next()?.into(),
            "--results" => a.results = Some(it.next()?),
            "--server-cgroup" => a.server_cgroup = Some(it.next()?.into()),
            "--log" => a.log = it.next()?.into(),
            _ => return None,
        }
    }
    Some(a)
}

/// `vmtests=` of the kernel command line.
fn tests_from_cmdline() -> Option<String> {
    std::fs::read_to_string("/proc/cmdline")
        .ok()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("vmtests=").map(str::to_string))
}

/// The tests LIST names, in suite order, each with whether it was named
/// (not just part of `all` or `smoke`), and the names that are no test's.
fn select(list: &str) -> (Vec<(&'static Test, bool)>, Vec<String>) {
    let names: Vec<&str> = list.split(',').filter(|s| !s.is_empty()).collect();
    let unknown = names
        .iter()
        .filter(|n| !matches!(**n, "all" | "smoke") && !TESTS.iter().any(|t| t.name == **n))
        .map(|n| n.to_string())
        .collect();
    let chosen = TESTS
        .iter()
        .filter_map(|t| {
            let named = names.contains(&t.name);
            let in_set = names.contains(&"all") || (names.contains(&"smoke") && t.smoke);
            (named || in_set).then_some((t, named))
        })
        .collect();
    (chosen, unknown)
}

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    match argv.next().as_deref() {
        Some("list") => {
            for t in TESTS {
                println!(
                    "{:<12} {:<6} {}{}",
                    t.name,
                    if t.smoke { "smoke" } else { "" },
                    t.about,
                    t.known_gap
                        .map(|g| format!(" [known gap, skipped unless named: {g}]"))
                        .unwrap_or_default()
                );
            }
            ExitCode::SUCCESS
        }
        Some("exit") => match argv.next().and_then(|c| c.parse::<u32>().ok()) {
            Some(code) => {
                let e = debug_exit::exit(code);
                eprintln!("sycri-vm-driver exit: {e}");
                ExitCode::FAILURE
            }
            None => usage(),
        },
        Some("run") => match parse(argv) {
            Some(args) => run(args),
            None => usage(),
        },
        _ => usage(),
    }
}

fn run(args: Args) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sycri-vm-driver: tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = Arc::new(Report::open(args.results.as_deref()));
    let failed = rt.block_on(run_suite(&args, &report));
    let code = u32::from(failed);
    if args.exit {
        // Stop the runtime's threads before the machine goes.
        drop(rt);
        let e = debug_exit::exit(code);
        eprintln!("sycri-vm-driver: {e}");
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs the chosen tests; true when any failed.
async fn run_suite(args: &Args, report: &Arc<Report>) -> bool {
    let list = args
        .tests
        .clone()
        .or_else(tests_from_cmdline)
        .unwrap_or_else(|| "all".into());
    let (tests, unknown) = select(&list);
    let release = audit::read(std::path::Path::new("/proc/sys/kernel/osrelease"));
    report.line(&format!(
        "VMTEST BEGIN kernel={release} tests={}",
        tests
            .iter()
            .map(|(t, _)| t.name)
            .collect::<Vec<_>>()
            .join(",")
    ));
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    for name in &unknown {
        report.line(&format!("VMTEST FAIL {name} 0.0s: no such test"));
        failed += 1;
    }
    let mode = if let Some(unit) = &args.unit {
        Mode::External { unit: unit.clone() }
    } else {
        Mode::Spawn {
            binary: args.sycri.clone(),
            log: args.log.clone(),
            cgroup: args.server_cgroup.clone(),
        }
    };
    let mut server = Server::new(mode, args.socket.clone());
    let cri = match server.start().await {
        Ok(c) => c,
        Err(e) => {
            for (t, _) in &tests {
                report.line(&format!(
                    "VMTEST FAIL {} 0.0s: the server did not start: {e}",
                    t.name
                ));
            }
            log_tail(report, "server", &args.log);
            report.line(&format!(
                "VMTEST END passed=0 failed={} skipped=0",
                tests.len() + unknown.len()
            ));
            return true;
        }
    };
    let mut ctx = Ctx {
        cri,
        server,
        fixtures: args.fixtures.clone(),
        report: report.clone(),
        test: "",
    };
    for (t, named) in tests {
        if let (Some(gap), false) = (t.known_gap, named) {
            skipped += 1;
            report.line(&format!(
                "VMTEST SKIP {}: known gap: {gap} (name the test to run it)",
                t.name
            ));
            continue;
        }
        ctx.test = t.name;
        report.line(&format!("VMTEST START {}", t.name));
        let start = Instant::now();
        let outcome = match tokio::time::timeout(t.limit, (t.run)(&mut ctx)).await {
            Ok(r) => r,
            Err(_) => Err(fail::Fail(format!("timed out after {:?}", t.limit))),
        };
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                report.line(&format!("VMTEST PASS {} {secs:.1}s", t.name));
            }
            Err(e) => {
                failed += 1;
                report.line(&format!("VMTEST FAIL {} {secs:.1}s: {e}", t.name));
                log_tail(report, t.name, &args.log);
                // What the test left must not fail the next one. A dead
                // server (a crash, or a failed restart) is started again.
                if ctx.server.owned() && ctx.cri.containers().await.is_err() {
                    let _ = ctx.server.kill9().await;
                    match ctx.server.start().await {
                        Ok(c) => ctx.cri = c,
                        Err(e) => report.line(&format!(
                            "VMTEST NOTE {}: the server cannot be started again: {e}",
                            t.name
                        )),
                    }
                }
                ctx.cri.remove_everything().await;
            }
        }
    }
    report.line(&format!(
        "VMTEST END passed={passed} failed={failed} skipped={skipped}"
    ));
    failed > 0
}

/// The last lines of the server's log, as notes under `test`.
fn log_tail(report: &Report, test: &str, log: &std::path::Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    for l in &lines[lines.len().saturating_sub(12)..] {
        report.line(&format!("VMTEST NOTE {test}: server log: {l}"));
    }
}
