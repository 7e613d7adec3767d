//! The CRI API (package runtime.v1), generated at build time from
//! `proto/runtime/v1/api.proto`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod runtime {
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1 as cri;
