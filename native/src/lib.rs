//! sycri's Linux engine.
//!
//! Everything here is synchronous and free of gRPC and tokio. This crate is the only
//! place in sycri that calls mount(2), unshare(2), setns(2) or pivot_root(2).

pub mod cgroup;
pub mod container;
pub mod crilog;
pub mod exec;
pub mod exposure;
pub mod failure;
pub mod kernel;
pub mod loopdev;
pub mod monitor;
pub mod mounts;
pub mod pidfd;
pub mod resolve;
pub mod sandbox;
pub mod seccomp;
pub mod sif;
pub mod spec;
pub mod testing;
pub mod util;

/// Arguments that select one of the engine's helper modes (`sycri __monitor
/// <spec.json>` and so on); the server passes them, nobody types them.
pub const MONITOR_ARG: &str = "__monitor";
pub const SANDBOX_ARG: &str = "__sandbox";
pub const EXEC_ARG: &str = "__exec";
pub const PORTFORWARD_ARG: &str = "__portforward";
/// Asks a helper binary for [`ENGINE_BUILD`]; it prints it and exits 0.
pub const ENGINE_BUILD_ARG: &str = "__engine-build";

/// Fingerprint of this crate's sources (see build.rs). The server uses a
/// separate `sycri-engine` binary only when its fingerprint equals the
/// server's own copy of this constant.
pub const ENGINE_BUILD: &str = env!("SYCRI_ENGINE_BUILD");

/// Runs the helper that the process's arguments name and returns its exit code,
/// or None when the arguments name no helper. Called first thing in `main`, so
/// that a helper sets nothing else up.
pub fn run_helper_from_args() -> Option<i32> {
    let mut args = std::env::args_os();
    let _ = args.next();
    let first = args.next()?;
    if first == ENGINE_BUILD_ARG {
        println!("{ENGINE_BUILD}");
        return Some(0);
    }
    let run: fn(&std::path::Path) -> i32 = match first.to_str()? {
        MONITOR_ARG => monitor::main,
        SANDBOX_ARG => sandbox::main,
        EXEC_ARG => exec::main,
        PORTFORWARD_ARG => exec::portforward_main,
        _ => return None,
    };
    match args.next() {
        Some(spec) => Some(run(std::path::Path::new(&spec))),
        None => {
            eprintln!("sycri: {} needs a spec path", first.to_string_lossy());
            Some(2)
        }
    }
}
