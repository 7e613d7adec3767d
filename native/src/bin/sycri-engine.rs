//! `sycri-engine`: the helper processes of sycri (container monitors, pod
//! sandboxes, exec and port-forward helpers) in a binary that links only the
//! engine crate. The server execs it instead of itself so that each monitor,
//! one per container for the container's whole life, maps and touches a few
//! hundred kilobytes of code instead of the whole gRPC server.

use std::process::ExitCode;

fn main() -> ExitCode {
    match sycri_native::run_helper_from_args() {
        Some(code) => ExitCode::from(code.clamp(0, 255) as u8),
        None => {
            eprintln!("sycri-engine: run by the sycri server only (e.g. `sycri-engine __monitor <spec.json>`)");
            ExitCode::from(2)
        }
    }
}
