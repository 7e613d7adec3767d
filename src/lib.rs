//! The sycri server: CRI services over a unix socket, pod, container and image
//! state, and the glue that drives the engine (`sycri-native`) through helper
//! processes.

pub mod cli;
pub mod cni;
pub mod config;
pub mod containers;
pub mod convert;
pub mod cri;
pub mod engine;
pub mod error;
pub mod exec;
pub mod fdio;
pub mod helpers;
pub mod images;
pub mod pods;
pub mod proto;
pub mod pull;
pub mod registry;
pub mod resources;
pub mod runtime;
pub mod seccomp;
pub mod server;
pub mod store;
pub mod streaming;
pub mod userdb;
pub mod util;
