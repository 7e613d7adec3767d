//! The sycri server. Layers, each using only those below it:
//!
//! - `cri`: the gRPC faces (one file per RPC family), CRI conversions and filters;
//! - `service`: the operations (`Runtime`);
//! - `store` (pods and containers), `engine` (helpers, monitors, kernel
//!   state), `streaming`, `images`, `pull`, `cni`, `registry`, `convert`;
//! - `sycri_native`, the engine crate.
//!
//! `server` wires them together (`transport`: its socket's connections);
//! `config`, `error`, `proto`, `util`, `fdio`, `seccomp` and `userdb` are
//! leaves used across the layers.

pub mod cli;
pub mod cni;
pub mod config;
pub mod convert;
pub mod cri;
pub mod deadline;
pub mod engine;
pub mod error;
pub mod fdio;
pub mod images;
pub mod proto;
pub mod pull;
pub mod registry;
pub mod seccomp;
pub mod server;
pub mod service;
pub mod store;
pub mod streaming;
pub mod transport;
pub mod userdb;
pub mod util;
