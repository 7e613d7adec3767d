//! What can go wrong with pod networking, and the gRPC codes it answers.

use std::path::PathBuf;

#[derive(thiserror::Error, Debug)]
pub enum CniError {
    #[error("no network config found in {}", dir.display())]
    NoConfig { dir: PathBuf },
    #[error("network config {}: {reason}", path.display())]
    BadConfig { path: PathBuf, reason: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} {command} failed (exit {exit}, code {code}): {message}")]
    Plugin {
        plugin: String,
        command: String,
        code: u64,
        exit: i32,
        message: String,
    },
    #[error("CNI plugin {plugin} {command} took longer than {secs}s")]
    Timeout {
        plugin: String,
        command: String,
        secs: u64,
    },
    #[error("CNI plugin {plugin} {command}: bad result: {reason}")]
    BadResult {
        plugin: String,
        command: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<CniError> for crate::error::Error {
    fn from(e: CniError) -> Self {
        use crate::error::Error;
        match e {
            CniError::NoConfig { .. }
            | CniError::BadConfig { .. }
            | CniError::PluginNotFound { .. } => Error::FailedPrecondition(e.to_string()),
            CniError::Timeout { .. } => Error::DeadlineExceeded(e.to_string()),
            CniError::Io { context, source } => Error::io(context, source),
            CniError::Plugin { .. } | CniError::BadResult { .. } => Error::Internal(e.to_string()),
        }
    }
}
