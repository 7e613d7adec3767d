//! sycri: a Kubernetes CRI runtime for Singularity (SIF) images.
//!
//! The single-threaded helpers that must not run inside the multi-threaded
//! server (`__monitor`, one per container; `__sandbox`, a pod's namespaces;
//! `__exec`; `__portforward`) are normally run from the small `sycri-engine`
//! binary beside this one; this binary dispatches them too, first thing, as a
//! fallback when `sycri-engine` is not installed.

use std::process::ExitCode;

fn main() -> ExitCode {
    if let Some(code) = sycri_native::run_helper_from_args() {
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    sycri::cli::main()
}
