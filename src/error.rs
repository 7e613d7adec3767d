//! Errors of the server, typed so that each maps to the right gRPC status code.

use sycri_native::failure::{Failure, FailureKind};
use tonic::{Code, Status};

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Code::NotFound
            }
            Error::Io { .. } | Error::Internal(_) => Code::Internal,
            Error::Registry(e) => e.code(),
        }
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f.kind {
            FailureKind::NotFound => Error::NotFound(f.message),
            FailureKind::InvalidArgument => Error::InvalidArgument(f.message),
            FailureKind::PermissionDenied => Error::PermissionDenied(f.message),
            FailureKind::FailedPrecondition => Error::FailedPrecondition(f.message),
            FailureKind::Internal => Error::Internal(f.message),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = e.code();
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed");
        } else {
            tracing::debug!(error = %e, ?code, "request refused");
        }
        Status::new(code, e.to_string())
    }
}
