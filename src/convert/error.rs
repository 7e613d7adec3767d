//! Why a conversion failed, and the gRPC codes that answers.

use sycri_native::sif::SifError;

/// Why a conversion failed. Suggested gRPC codes: `UnsupportedMediaType`,
/// `InvalidLayer`, `Unsafe`, `InvalidConfig` → InvalidArgument (the image is bad);
/// `TooLarge` → ResourceExhausted; `Io`, `Sif` → Internal. `From<ConvertError> for
/// crate::error::Error` does this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    #[error("layer {layer} has media type {media_type:?}, which is not a tar layer this runtime can unpack")]
    UnsupportedMediaType { layer: usize, media_type: String },

    #[error("layer {layer} is not a valid image layer: {reason}")]
    InvalidLayer { layer: usize, reason: String },

    #[error("layer {layer} has an unsafe entry {path:?}: {reason}")]
    Unsafe {
        layer: usize,
        path: String,
        reason: String,
    },

    #[error("image is too large: the {what} exceeds the limit of {limit}")]
    TooLarge { what: &'static str, limit: u64 },

    #[error("invalid image config: {0}")]
    InvalidConfig(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write the SIF image: {0}")]
    Sif(#[from] SifError),

    /// A saved first-layer state that cannot be used (see `base`).
    #[error("the saved first layer cannot be used: {0}")]
    Base(String),
}

impl From<ConvertError> for crate::error::Error {
    fn from(e: ConvertError) -> Self {
        use crate::error::Error;
        match e {
            ConvertError::UnsupportedMediaType { .. }
            | ConvertError::InvalidLayer { .. }
            | ConvertError::Unsafe { .. }
            | ConvertError::InvalidConfig(_) => Error::InvalidArgument(e.to_string()),
            ConvertError::TooLarge { .. } => Error::ResourceExhausted(e.to_string()),
            ConvertError::Io { context, source } => Error::Io { context, source },
            ConvertError::Sif(_) | ConvertError::Base(_) => Error::Internal(e.to_string()),
        }
    }
}
