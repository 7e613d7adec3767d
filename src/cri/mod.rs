//! The CRI services: thin handlers that validate, call the runtime and shape
//! the answer. RPCs not built yet answer UNIMPLEMENTED (tonic's default stubs).

mod image;
mod runtime;

pub use image::ImageService;
pub use runtime::RuntimeService;
