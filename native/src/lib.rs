//! sycri's Linux engine.
//!
//! Everything here is synchronous and free of gRPC and tokio. This crate is the only
//! place in sycri that calls mount(2), unshare(2), setns(2) or pivot_root(2).

pub mod cgroup;
pub mod container;
pub mod crilog;
pub mod exec;
pub mod loopdev;
pub mod monitor;
pub mod mounts;
pub mod resolve;
pub mod sandbox;
pub mod sif;
pub mod spec;
pub mod util;
