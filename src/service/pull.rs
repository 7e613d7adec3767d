//! PullImage: local SIF files, and registry images converted into one SIF
//! (squashfs root filesystem + `oci-config.json`). Concurrent pulls of one
//! reference wait for each other, so an image is downloaded once; an image
//! already stored (same config digest) is stored once.

use super::Runtime;
use crate::convert::{self, ConvertOptions, Layer, Limits};
use crate::error::{Error, Result};
use crate::images::local_path;
use crate::proto::cri;
use crate::registry::{Client, Credentials, PullLimits, Reference};
use crate::util::blocking;
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::Mutex;

pub struct Puller {
    client: Client,
    /// For plain http(s) downloads and the Sylabs library API.
    http: reqwest::Client,
    library_url: String,
    convert: ConvertOptions,
    inflight: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Puller {
    pub fn new(cfg: &crate::config::Config) -> Result<Puller> {
        cfg.registry.validate()?;
        let client = Client::new(&cfg.registry, &PullLimits::default())?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("sycri/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        Ok(Puller {
            client,
            http,
            library_url: cfg.library_url.trim_end_matches('/').to_string(),
            convert: ConvertOptions {
                limits: Limits {
                    max_uncompressed: cfg.max_image_bytes,
                    ..Limits::default()
                },
                compression: convert::Compression::host_default(),
                ..ConvertOptions::default()
            },
            inflight: StdMutex::new(HashMap::new()),
        })
    }

    /// The lock for one reference; the map entry goes when nobody holds it.
    fn slot(&self, key: &str) -> Arc<Mutex<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, v| Arc::strong_count(v) > 1);
        m.entry(key.to_string()).or_default().clone()
    }
}

/// A pull's working directory, removed when the pull ends in any way, also when
/// the client gives up and the request's future is dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn credentials(auth: Option<cri::AuthConfig>) -> Option<Credentials> {
    auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    })
}

impl Runtime {
    /// Pulls `image` and answers its id.
    pub async fn pull_image(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String> {
        if let Some(path) = local_path(image) {
            let (rt_images, name) = (self.images.clone(), image.to_string());
            let rec = blocking(move || rt_images.pull_local(&name, &path)).await?;
            return Ok(rec.id);
        }
        if image.starts_with("shub://") {
            return Err(Error::Unimplemented(
                "Singularity Hub (shub://) is retired and not supported".into(),
            ));
        }
        if image.starts_with("oras://")
            || image.starts_with("library://")
            || image.starts_with("http://")
            || image.starts_with("https://")
        {
            let slot = self.puller.slot(image);
            let _guard = slot.lock().await;
            let dir = TempDir(self.images.temp_dir()?);
            return self.pull_sif_source(image, credentials(auth), &dir.0).await;
        }
        let reference = Reference::parse(image)?;
        let key = reference.to_string();
        let slot = self.puller.slot(&key);
        let _guard = slot.lock().await;
        // Asked by digest and already here: nothing to fetch.
        if reference.digest.is_some() {
            if let Some(rec) = self.images.get(&key) {
                return Ok(rec.id);
            }
        }
        let dir = self.images.temp_dir()?;
        let result = self
            .pull_registry(&reference, credentials(auth), &dir)
            .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
        result
    }

    async fn pull_registry(
        &self,
        reference: &Reference,
        creds: Option<Credentials>,
        dir: &std::path::Path,
    ) -> Result<String> {
        let started = std::time::Instant::now();
        let pulled = self
            .puller
            .client
            .pull(reference, creds.as_ref(), dir)
            .await?;
        let tag = reference.tag.as_ref().map(|_| {
            let mut r = reference.clone();
            r.digest = None;
            r.to_string()
        });
        let repo_digest = Some(format!("{}@{}", reference.name(), pulled.manifest_digest));
        let id = pulled.config_digest.clone();
        if self.images.get(&id).is_some() {
            // Same image under another name: record the name, keep one copy.
            let (images, id2) = (self.images.clone(), id.clone());
            blocking(move || images.add_names(&id2, tag, repo_digest)).await?;
            return Ok(id);
        }
        let layers: Vec<Layer> = pulled
            .layers
            .iter()
            .map(|(path, media_type, _)| Layer {
                path: path.clone(),
                media_type: media_type.clone(),
            })
            .collect();
        let opts = self.puller.convert.clone();
        let images = self.images.clone();
        let dir = dir.to_path_buf();
        let config = pulled.config.clone();
        let id2 = id.clone();
        let stats = blocking(move || {
            let sqfs = dir.join("rootfs.squashfs");
            let stats = convert::layers_to_squashfs(&layers, &sqfs, &opts)?;
            let runtime_cfg = convert::runtime_config(&config)?;
            let sif = dir.join("image.sif");
            convert::squashfs_to_sif(&sqfs, &runtime_cfg, &sif)?;
            let _ = std::fs::remove_file(&sqfs);
            images.add_converted(&sif, &id2, tag, repo_digest)?;
            Ok(stats)
        })
        .await?;
        tracing::info!(
            image = %reference,
            id = %id,
            layers = pulled.layers.len(),
            entries = stats.entries,
            unpacked_bytes = stats.uncompressed_bytes,
            squashfs_bytes = stats.squashfs_bytes,
            secs = started.elapsed().as_secs_f64(),
            "pulled and converted"
        );
        Ok(id)
    }
}

/// Largest SIF accepted from a plain URL or the library's legacy API.
const MAX_SIF_DOWNLOAD: u64 = 64 << 30;

/// Media type of a SIF stored as an OCI artifact (the only layer).
const SIF_LAYER: &str = "application/vnd.sylabs.sif.layer.v1.sif";

/// `library://[host/]entity/collection/container[:tag]` split into the API base
/// URL, the image path and the tag.
fn parse_library(image: &str, default_base: &str) -> Result<(String, String, String)> {
    let rest = image.trim_start_matches("library://");
    let (path, tag) = match rest.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, t),
        _ => (rest, "latest"),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (base, name) = match parts.len() {
        3 => (default_base.to_string(), parts.join("/")),
        4 => {
            let host = parts[0];
            let scheme = if crate::registry::is_loopback(host) {
                "http"
            } else {
                "https"
            };
            (format!("{scheme}://{host}"), parts[1..].join("/"))
        }
        _ => {
            return Err(Error::InvalidArgument(format!(
                "{image:?} is not library://[host/]entity/collection/container[:tag]"
            )))
        }
    };
    if tag.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c == '?' || c == '#')
    {
        return Err(Error::InvalidArgument(format!(
            "invalid library reference {image:?}"
        )));
    }
    Ok((base, name, tag.to_string()))
}

#[derive(serde::Deserialize)]
struct OciRedirect {
    token: String,
    url: String,
    name: String,
}

impl Runtime {
    /// Pulls a SIF that is stored whole: `oras://`, `library://` or a URL.
    async fn pull_sif_source(
        &self,
        image: &str,
        creds: Option<Credentials>,
        dir: &std::path::Path,
    ) -> Result<String> {
        let (file, digest) = if let Some(rest) = image.strip_prefix("oras://") {
            let reference = Reference::parse(rest)?;
            let (file, _) = self
                .fetch_sif_artifact(&reference, creds.as_ref(), dir)
                .await?;
            let digest = crate::images::file_digest(&file)?;
            (file, Some(format!("{}@{}", reference.name(), digest)))
        } else if image.starts_with("library://") {
            (self.fetch_library(image, creds.as_ref(), dir).await?, None)
        } else {
            (self.download(image, dir, MAX_SIF_DOWNLOAD).await?, None)
        };
        let id = crate::images::file_digest(&file)?;
        let (images, tag, id2) = (self.images.clone(), image.to_string(), id.clone());
        blocking(move || images.add_converted(&file, &id2, Some(tag), digest)).await?;
        Ok(id)
    }

    /// A SIF stored as an OCI artifact: exactly one layer of the SIF media type.
    async fn fetch_sif_artifact(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        dir: &std::path::Path,
    ) -> Result<(std::path::PathBuf, String)> {
        let resolved = self.puller.client.resolve(reference, creds).await?;
        let layers = &resolved.manifest.layers;
        let [layer] = layers.as_slice() else {
            return Err(Error::InvalidArgument(format!(
                "{reference} is not a SIF artifact: it has {} layers, not one",
                layers.len()
            )));
        };
        if layer.media_type != SIF_LAYER {
            return Err(Error::InvalidArgument(format!(
                "{reference} is not a SIF artifact: its layer is {:?}",
                layer.media_type
            )));
        }
        let file = self
            .puller
            .client
            .fetch_blob(reference, creds, layer, dir, MAX_SIF_DOWNLOAD)
            .await?;
        Ok((file, layer.digest.clone()))
    }

    /// The Sylabs library: the OCI redirect first, then the legacy image file API.
    async fn fetch_library(
        &self,
        image: &str,
        creds: Option<&Credentials>,
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf> {
        let (base, name, tag) = parse_library(image, &self.puller.library_url)?;
        let bearer = creds
            .map(|c| c.registry_token.clone())
            .filter(|t| !t.is_empty());
        let with_auth = |req: reqwest::RequestBuilder| match &bearer {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let redirect = with_auth(
            self.puller
                .http
                .get(format!("{base}/v1/oci-redirect"))
                .query(&[
                    ("namespace", name.as_str()),
                    ("mapped", "1"),
                    ("accessTypes", "pull"),
                ]),
        )
        .send()
        .await;
        if let Ok(resp) = redirect {
            if resp.status().is_success() {
                let body = read_limited(resp, 1 << 20).await?;
                let r: OciRedirect = serde_json::from_slice(&body).map_err(|e| {
                    Error::InvalidArgument(format!("library {base}: bad oci-redirect answer: {e}"))
                })?;
                let url = reqwest::Url::parse(&r.url).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "library {base}: bad registry url {:?}: {e}",
                        r.url
                    ))
                })?;
                let host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => {
                        return Err(Error::InvalidArgument(format!(
                            "library {base}: registry url {:?} has no host",
                            r.url
                        )))
                    }
                };
                let reference = Reference::parse(&format!("{host}/{}:{tag}", r.name))?;
                let token = Credentials {
                    registry_token: r.token,
                    ..Credentials::default()
                };
                let token = (!token.registry_token.is_empty()).then_some(token);
                let (file, _) = self
                    .fetch_sif_artifact(&reference, token.as_ref().or(creds), dir)
                    .await?;
                return Ok(file);
            }
            tracing::debug!(status = %resp.status(), "library has no OCI redirect; using the image file API");
        }
        let arch = crate::registry::Platform::host().architecture;
        let url = format!("{base}/v1/imagefile/{name}:{tag}?arch={arch}");
        self.download_with(
            with_auth(self.puller.http.get(&url)),
            &url,
            dir,
            MAX_SIF_DOWNLOAD,
        )
        .await
    }

    async fn download(
        &self,
        url: &str,
        dir: &std::path::Path,
        max: u64,
    ) -> Result<std::path::PathBuf> {
        self.download_with(self.puller.http.get(url), url, dir, max)
            .await
    }

    /// Streams a response body into a file in `dir`, bounded by `max` bytes.
    async fn download_with(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        dir: &std::path::Path,
        max: u64,
    ) -> Result<std::path::PathBuf> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = req.send().await.map_err(|e| {
            Error::Registry(crate::registry::RegistryError::Unavailable(format!(
                "{url}: {e}"
            )))
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(Error::NotFound(format!("{url}: 404 not found")));
        }
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(Error::PermissionDenied(format!("{url}: {status}")));
        }
        if !status.is_success() {
            return Err(Error::Registry(
                crate::registry::RegistryError::Unavailable(format!("{url}: {status}")),
            ));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(Error::InvalidArgument(format!(
                "{url}: larger than {max} bytes"
            )));
        }
        let path = dir.join("download.sif");
        let mut out = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        let mut total = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::Registry(crate::registry::RegistryError::Unavailable(format!(
                    "{url}: {e}"
                )))
            })?;
            total += chunk.len() as u64;
            if total > max {
                return Err(Error::InvalidArgument(format!(
                    "{url}: larger than {max} bytes"
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
        }
        out.sync_all()
            .await
            .map_err(|e| Error::io(format!("sync {}", path.display()), e))?;
        Ok(path)
    }
}

async fn read_limited(resp: reqwest::Response, max: usize) -> Result<Vec<u8>> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::Registry(crate::registry::RegistryError::Unavailable(e.to_string()))
        })?;
        if out.len() + chunk.len() > max {
            return Err(Error::InvalidArgument(format!(
                "answer larger than {max} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_references() {
        let base = "https://library.sylabs.io";
        assert_eq!(
            parse_library("library://alpine/default/alpine:3.18", base).ok(),
            Some((base.into(), "alpine/default/alpine".into(), "3.18".into()))
        );
        assert_eq!(
            parse_library("library://e/c/i", base).ok(),
            Some((base.into(), "e/c/i".into(), "latest".into()))
        );
        assert_eq!(
            parse_library("library://127.0.0.1:8080/e/c/i:v1", base).ok(),
            Some(("http://127.0.0.1:8080".into(), "e/c/i".into(), "v1".into()))
        );
        assert!(parse_library("library://just/two", base).is_err());
        assert!(parse_library("library://a/b/c/d/e", base).is_err());
    }
}
