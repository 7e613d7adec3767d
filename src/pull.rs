//! PullImage: local SIF files, and registry images converted into one SIF
//! (squashfs root filesystem + `oci-config.json`). Concurrent pulls of one
//! reference wait for each other, so an image is downloaded once; an image
//! already stored (same config digest) is stored once.

use crate::convert::{self, ConvertOptions, Layer, Limits};
use crate::error::{Error, Result};
use crate::images::local_path;
use crate::proto::cri;
use crate::registry::{Client, Credentials, PullLimits, Reference};
use crate::runtime::{blocking, Runtime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use tokio::sync::Mutex;

pub struct Puller {
    client: Client,
    convert: ConvertOptions,
    inflight: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Puller {
    pub fn new(cfg: &crate::config::Config) -> Result<Puller> {
        cfg.registry.validate()?;
        let client = Client::new(&cfg.registry, &PullLimits::default())?;
        Ok(Puller {
            client,
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
            let (rt_images, name) = (self.images_handle(), image.to_string());
            let rec = blocking(move || rt_images.pull_local(&name, &path)).await?;
            return Ok(rec.id);
        }
        for scheme in ["library://", "oras://", "http://", "https://", "shub://"] {
            if image.starts_with(scheme) {
                return Err(Error::Unimplemented(format!(
                    "pulling {scheme} images is not supported yet"
                )));
            }
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
            let (images, id2) = (self.images_handle(), id.clone());
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
        let images = self.images_handle();
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
