//! sycri: a Kubernetes CRI runtime for Singularity (SIF) images.
//!
//! The same binary is re-executed for the single-threaded helpers that must not
//! run inside the multi-threaded server: `__monitor` (one per container) and
//! `__sandbox` (makes a pod's namespaces). They are dispatched before anything
//! else is set up, so they stay small.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let _ = args.next();
    if let Some(first) = args.next() {
        let helper = match first.to_str() {
            Some(sycri::helpers::MONITOR_ARG) => {
                Some(sycri_native::monitor::main as fn(&Path) -> i32)
            }
            Some(sycri::helpers::SANDBOX_ARG) => {
                Some(sycri_native::sandbox::main as fn(&Path) -> i32)
            }
            Some(sycri::helpers::EXEC_ARG) => Some(sycri_native::exec::main as fn(&Path) -> i32),
            Some(sycri::helpers::PORTFORWARD_ARG) => {
                Some(sycri_native::exec::portforward_main as fn(&Path) -> i32)
            }
            _ => None,
        };
        if let Some(run) = helper {
            let Some(spec) = args.next() else {
                eprintln!("sycri: {} needs a spec path", first.to_string_lossy());
                return ExitCode::from(2);
            };
            return ExitCode::from(run(Path::new(&spec)).clamp(0, 255) as u8);
        }
    }
    sycri::cli::main()
}
