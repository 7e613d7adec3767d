//! Pulling images from OCI distribution (Docker v2) registries: references,
//! hosts configuration (mirrors, plain http, TLS without verification),
//! authentication (anonymous, Basic, bearer tokens), manifests and indexes
//! (choosing this host's platform), and blobs downloaded to files with their
//! digests checked as they stream in.
//!
//! The entry point is [`pull`] (or [`Client::pull`], whose client keeps its
//! connections and tokens across pulls); [`Client::resolve`],
//! [`Client::fetch_manifest`] and [`Client::fetch_blob`] are the lower-level
//! steps for artifacts that are not container images.

mod auth;
mod cache;
mod client;
mod feed;
mod hosts;
mod manifest;
mod progress;
mod reference;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testserver;

pub use auth::{parse_challenges, Challenge, Credentials};
pub use client::{check_config, Client, FetchedManifest, Resolved};
pub use feed::{Feed, FeedGuard, FeedReader};
pub use hosts::{is_loopback, Endpoint, HostConfig, RegistryConfig};
pub use manifest::{
    Descriptor, ImageManifest, Index, Manifest, Platform, DOCKER_CONFIG, DOCKER_LIST,
    DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
};
pub use progress::Progress;
pub use reference::{validate_digest, Reference, DOCKER_HUB, DOCKER_HUB_API};

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of registry operations; [`RegistryError::code`] gives the gRPC code.
#[derive(thiserror::Error, Debug)]
pub enum RegistryError {
    /// The image reference does not parse.
    #[error("{0}")]
    InvalidReference(String),
    /// The credentials are malformed (`auth` not base64 `user:pass`).
    #[error("{0}")]
    InvalidCredentials(String),
    /// The hosts configuration is wrong (a mirror that is not a URL).
    #[error("{0}")]
    Config(String),
    /// Manifest or blob unknown (404), or no manifest for this platform.
    #[error("{0}")]
    NotFound(String),
    /// 401 even after authenticating, or no credentials for a registry that wants them.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403.
    #[error("{0}")]
    PermissionDenied(String),
    /// Garbage: bad JSON, unknown or unsupported manifest type (schema 1),
    /// digest or size mismatch, an unexpected HTTP status.
    #[error("{0}")]
    BadResponse(String),
    /// A manifest, config or layer over its limit.
    #[error("{0}")]
    TooLarge(String),
    /// Cannot connect, timeouts, 5xx and 429 after the retries.
    #[error("{0}")]
    Unavailable(String),
    /// Nothing received for `image_pull_progress_timeout`.
    #[error("{0}")]
    Stalled(String),
    /// Local file errors.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RegistryError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RegistryError::InvalidReference(_) | RegistryError::InvalidCredentials(_) => {
                Code::InvalidArgument
            }
            RegistryError::Config(_) => Code::FailedPrecondition,
            RegistryError::NotFound(_) => Code::NotFound,
            RegistryError::Unauthenticated(_) => Code::Unauthenticated,
            RegistryError::PermissionDenied(_) => Code::PermissionDenied,
            RegistryError::BadResponse(_) => Code::Unknown,
            RegistryError::TooLarge(_) => Code::ResourceExhausted,
            RegistryError::Unavailable(_) => Code::Unavailable,
            RegistryError::Stalled(_) => Code::DeadlineExceeded,
            RegistryError::Io { .. } => Code::Internal,
        }
    }

    /// A copy for each of the callers that share one pull (I/O errors keep
    /// their kind and message).
    pub fn duplicate(&self) -> RegistryError {
        use RegistryError as E;
        match self {
            E::InvalidReference(m) => E::InvalidReference(m.clone()),
            E::InvalidCredentials(m) => E::InvalidCredentials(m.clone()),
            E::Config(m) => E::Config(m.clone()),
            E::NotFound(m) => E::NotFound(m.clone()),
            E::Unauthenticated(m) => E::Unauthenticated(m.clone()),
            E::PermissionDenied(m) => E::PermissionDenied(m.clone()),
            E::BadResponse(m) => E::BadResponse(m.clone()),
            E::TooLarge(m) => E::TooLarge(m.clone()),
            E::Unavailable(m) => E::Unavailable(m.clone()),
            E::Stalled(m) => E::Stalled(m.clone()),
            E::Io { context, source } => E::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
        }
    }

    /// Whether the next server (a mirror's fallback) may do better.
    fn try_next_server(&self) -> bool {
        !matches!(
            self,
            RegistryError::InvalidReference(_)
                | RegistryError::InvalidCredentials(_)
                | RegistryError::Config(_)
                | RegistryError::Io { .. }
        )
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> tonic::Status {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Sizes, retries and timeouts of pulls.
#[derive(Clone, Debug, PartialEq)]
pub struct PullLimits {
    pub max_manifest_size: u64,
    pub max_config_size: u64,
    pub max_layer_size: u64,
    /// Config and layers together.
    pub max_total_size: u64,
    /// Further tries of a request after a transient failure (connect
    /// error, timeout, 429, 5xx, a body cut short).
    pub retries: u32,
    /// The first wait between tries; it doubles each time, up to 10 s.
    pub retry_backoff: Duration,
    pub connect_timeout: Duration,
    /// Longest wait for any read of a response.
    pub read_timeout: Duration,
    /// Whole-request limit of manifest and token requests (not blobs).
    pub request_timeout: Duration,
    /// Layers downloaded at once.
    pub concurrency: usize,
}

pub const MIB: u64 = 1 << 20;

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_manifest_size: 4 * MIB,
            max_config_size: 4 * MIB,
            max_layer_size: 16 << 30,
            max_total_size: 64 << 30,
            retries: 4,
            retry_backoff: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            concurrency: 3,
        }
    }
}

/// A pulled image: its config and its layers as files.
#[derive(Clone, Debug, PartialEq)]
pub struct Pulled {
    /// As asked for (normalized).
    pub reference: Reference,
    /// The digest the reference resolves to: the index for a multi-platform
    /// image, else the image manifest. This is the image's repo digest
    /// (`name@digest` pulls the same image).
    pub manifest_digest: String,
    /// The image manifest chosen for this platform (equal to
    /// `manifest_digest` when there is no index).
    pub image_manifest_digest: String,
    pub config_digest: String,
    /// The config blob (JSON object), as served.
    pub config: Vec<u8>,
    /// In manifest order: (file, media type, digest). Files are named
    /// `<algorithm>-<hex>` in the pull's directory; a layer that appears
    /// twice has one file.
    pub layers: Vec<(PathBuf, String, String)>,
}

/// Pulls an image's config and layers into `dir` (created if missing).
pub async fn pull(
    reference: &Reference,
    creds: Option<&Credentials>,
    cfg: &RegistryConfig,
    dir: &Path,
    limits: &PullLimits,
) -> Result<Pulled, RegistryError> {
    Client::new(cfg, limits)?.pull(reference, creds, dir).await
}
