//! PullImage: local SIF files, and registry images converted into one SIF
//! (squashfs root filesystem + `oci-config.json`).
//!
//! A registry pull is one task shared by every PullImage of the same
//! reference (and credentials): the layers download in parallel into a
//! temporary directory while a blocking thread converts them in manifest
//! order, each as it arrives (see `registry::Feed`). The task logs its
//! progress, ends when it receives nothing for `image_pull_progress_timeout`,
//! and is stopped (its downloads dropped, its files removed) when every
//! PullImage waiting for it has gone. An image already stored (same config
//! digest) is not downloaded again.

use crate::convert::{self, ConvertOptions, Converter, Limits};
use crate::error::{Error, Result};
use crate::images::{local_path, ImageStore};
use crate::proto::cri;
use crate::registry::{
    Client, Credentials, Descriptor, Feed, FeedGuard, Progress, PullLimits, Reference,
};
use crate::util::blocking;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, Weak};
use std::time::Duration;
use tokio::sync::Mutex;

/// How often a pull logs its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

pub struct Puller {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// For plain http(s) downloads and the Sylabs library API.
    http: reqwest::Client,
    library_url: String,
    convert: ConvertOptions,
    progress_interval: Duration,
    progress_timeout: Duration,
    /// Registry pulls in flight, by reference and credentials.
    pulls: StdMutex<HashMap<String, Weak<InflightPull>>>,
    /// Serializes pulls of one plain SIF source.
    inflight: StdMutex<HashMap<String, Arc<Mutex<()>>>>,
}

type SharedResult = std::result::Result<String, Arc<Error>>;

/// A registry pull task; aborted when the last caller waiting for it goes.
struct InflightPull {
    result: Shared<BoxFuture<'static, SharedResult>>,
    abort: tokio::task::AbortHandle,
}

impl Drop for InflightPull {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

impl Puller {
    pub fn new(cfg: &crate::config::Config) -> Result<Puller> {
        cfg.registry.validate()?;
        let limits = PullLimits {
            concurrency: cfg.max_concurrent_downloads.max(1),
            ..PullLimits::default()
        };
        let client = Client::new(&cfg.registry, &limits)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("sycri/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        let compression = cfg
            .image_compression
            .resolve()
            .unwrap_or_else(convert::Compression::host_default);
        Ok(Puller {
            inner: Arc::new(Inner {
                client,
                http,
                library_url: cfg.library_url.trim_end_matches('/').to_string(),
                convert: ConvertOptions {
                    limits: Limits {
                        max_uncompressed: cfg.max_image_bytes,
                        ..Limits::default()
                    },
                    compression,
                    level: cfg.image_compression_level,
                    ..ConvertOptions::default()
                },
                progress_interval: PROGRESS_INTERVAL,
                progress_timeout: cfg.image_pull_progress_timeout.0,
                pulls: StdMutex::new(HashMap::new()),
                inflight: StdMutex::new(HashMap::new()),
            }),
        })
    }

    /// The lock for one reference; the map entry goes when nobody holds it.
    fn slot(&self, key: &str) -> Arc<Mutex<()>> {
        let mut m = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        m.retain(|_, v| Arc::strong_count(v) > 1);
        m.entry(key.to_string()).or_default().clone()
    }

    /// Joins the pull of `key`, starting it with `start` if none runs.
    async fn shared(
        &self,
        key: String,
        start: impl FnOnce() -> BoxFuture<'static, Result<String>>,
    ) -> Result<String> {
        let pull = {
            let mut m = self.inner.pulls.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|_, w| w.strong_count() > 0);
            match m.get(&key).and_then(Weak::upgrade) {
                Some(p) => p,
                None => {
                    let task = tokio::spawn(start());
                    let abort = task.abort_handle();
                    let result = async move {
                        match task.await {
                            Ok(r) => r.map_err(Arc::new),
                            Err(e) => {
                                Err(Arc::new(Error::Internal(format!("pull task ended: {e}"))))
                            }
                        }
                    }
                    .boxed()
                    .shared();
                    let p = Arc::new(InflightPull { result, abort });
                    m.insert(key, Arc::downgrade(&p));
                    p
                }
            }
        };
        let r = pull.result.clone().await;
        drop(pull);
        r.map_err(|e| duplicate(&e))
    }
}

/// A copy of an error for each caller of a shared pull.
fn duplicate(e: &Error) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(m.clone()),
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::AlreadyExists(m) => Error::AlreadyExists(m.clone()),
        Error::FailedPrecondition(m) => Error::FailedPrecondition(m.clone()),
        Error::PermissionDenied(m) => Error::PermissionDenied(m.clone()),
        Error::Unimplemented(m) => Error::Unimplemented(m.clone()),
        Error::DeadlineExceeded(m) => Error::DeadlineExceeded(m.clone()),
        Error::ResourceExhausted(m) => Error::ResourceExhausted(m.clone()),
        Error::Io { context, source } => Error::Io {
            context: context.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Internal(m) => Error::Internal(m.clone()),
        Error::Registry(r) => Error::Registry(r.duplicate()),
    }
}

/// A pull's working directory, removed when the last holder (the pull, its
/// converter thread) lets go, also when the pull is dropped half way.
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

/// Distinguishes pulls with different credentials (not reversible).
fn creds_key(c: &Option<Credentials>) -> String {
    use sha2::{Digest, Sha256};
    let Some(c) = c else {
        return String::new();
    };
    let mut h = Sha256::new();
    for f in [
        &c.username,
        &c.password,
        &c.auth,
        &c.server_address,
        &c.identity_token,
        &c.registry_token,
    ] {
        h.update(f.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

impl Puller {
    /// Pulls `image` into `images` and answers its id.
    pub async fn pull(
        &self,
        images: &Arc<ImageStore>,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String> {
        if let Some(path) = local_path(image) {
            let (rt_images, name) = (images.clone(), image.to_string());
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
            let slot = self.slot(image);
            let _guard = slot.lock().await;
            let dir = TempDir(images.temp_dir()?);
            return self
                .pull_sif_source(images, image, credentials(auth), &dir.0)
                .await;
        }
        let reference = Reference::parse(image)?;
        let creds = credentials(auth);
        let key = format!("{reference} {}", creds_key(&creds));
        let (inner, images) = (self.inner.clone(), images.clone());
        self.shared(key, move || {
            async move { pull_registry(inner, images, reference, creds).await }.boxed()
        })
        .await
    }
}

/// The registry pull task: the work, under the stall watchdog.
async fn pull_registry(
    inner: Arc<Inner>,
    images: Arc<ImageStore>,
    reference: Reference,
    creds: Option<Credentials>,
) -> Result<String> {
    let progress = Progress::new(&reference.to_string());
    let pull = async {
        match pull_and_convert(&inner, &images, &reference, creds.as_ref(), &progress, true).await {
            // The stored first layer failed half way (its SIF could not be
            // read, say); its state is gone: once more, in full.
            Err(Retry::Full) => {
                pull_and_convert(
                    &inner,
                    &images,
                    &reference,
                    creds.as_ref(),
                    &progress,
                    false,
                )
                .await
            }
            r => r,
        }
    };
    tokio::select! {
        r = pull => r.map_err(Retry::into_error),
        e = progress.watch(inner.progress_interval, inner.progress_timeout) => Err(e.into()),
    }
}

/// How [`pull_and_convert`] failed.
#[derive(Debug)]
enum Retry {
    /// Going on from a stored first layer failed after the downloads were
    /// planned without it: pull again without it.
    Full,
    Error(Error),
}

impl Retry {
    fn into_error(self) -> Error {
        match self {
            Retry::Full => Error::Internal("the pull was to be retried".into()),
            Retry::Error(e) => e,
        }
    }
}

impl<E: Into<Error>> From<E> for Retry {
    fn from(e: E) -> Self {
        Retry::Error(e.into())
    }
}

async fn pull_and_convert(
    inner: &Inner,
    images: &Arc<ImageStore>,
    reference: &Reference,
    creds: Option<&Credentials>,
    progress: &Progress,
    reuse: bool,
) -> std::result::Result<String, Retry> {
    let started = std::time::Instant::now();
    let key = reference.to_string();
    // Asked by digest and already here: nothing to fetch.
    if reference.digest.is_some() {
        if let Some(rec) = images.get(&key) {
            return Ok(rec.id);
        }
    }
    let client = &inner.client;
    let resolved = client.resolve(reference, creds).await?;
    let resolved_at = started.elapsed();
    progress.touch();
    let total = client.check_image(reference, &resolved)?;
    let m = &resolved.manifest;
    let tag = reference.tag.as_ref().map(|_| {
        let mut r = reference.clone();
        r.digest = None;
        r.to_string()
    });
    let repo_digest = Some(format!("{}@{}", reference.name(), resolved.digest));
    let id = m.config.digest.clone();
    if images.get(&id).is_some() {
        // Same image under another name: record the name, keep one copy.
        let (images, id2) = (images.clone(), id.clone());
        blocking(move || images.add_names(&id2, tag, repo_digest)).await?;
        return Ok(id);
    }
    tracing::info!(image = %reference, digest = %resolved.digest, server = %resolved.server, layers = m.layers.len(), bytes = total, "pulling image");
    let dir = Arc::new(TempDir(images.temp_dir()?));
    let sqfs_path = dir.0.join("rootfs.squashfs");

    // A stored image that starts with the same layer: go on from there,
    // without downloading or converting that layer again. (A first layer
    // that is not a tar layer is left to the full conversion to refuse.)
    // The converter's thread looks for one while the config and the other
    // layers download; the first layer's download waits for its word.
    let first_layer = m.layers.first().cloned();
    let try_reuse = reuse
        && first_layer
            .as_ref()
            .is_some_and(|f| convert::check_media_type(0, &f.media_type).is_ok());
    // A first layer that comes again later is downloaded in any case.
    let first_again = first_layer
        .as_ref()
        .is_some_and(|f| m.layers[1..].iter().any(|l| l.digest == f.digest));
    let base_layer = first_layer.as_ref().map(|l| l.digest.clone());

    // One feed per distinct layer; the converter reads them in manifest order.
    let mut unique: Vec<(Descriptor, Arc<Feed>)> = Vec::new();
    for l in &m.layers {
        if !unique.iter().any(|(d, _)| d.digest == l.digest) {
            unique.push((l.clone(), Feed::new()));
        }
    }
    let cfg_blob = progress.add_blob(&m.config.digest, m.config.size);
    let readers: Vec<(String, crate::registry::FeedReader)> = m
        .layers
        .iter()
        .filter_map(|l| {
            let (_, f) = unique.iter().find(|(d, _)| d.digest == l.digest)?;
            Some((l.media_type.clone(), f.reader()))
        })
        .collect();
    let guards: Vec<FeedGuard> = unique.iter().map(|(_, f)| FeedGuard(f.clone())).collect();
    // The converter's word on the first layer: the saved state it goes on
    // from (so that a failure can drop it), or None when it converts it.
    let (decided, decision) = tokio::sync::oneshot::channel::<Option<PathBuf>>();
    let (opts, conv_dir, layers) = (inner.convert.clone(), dir.clone(), m.layers.len());
    let (images2, first2) = (images.clone(), base_layer.clone());
    let convert = tokio::task::spawn_blocking(move || {
        let resumed = match first2.filter(|_| try_reuse) {
            Some(first) => stored_first_layer(&images2, &first, layers, &opts),
            None => None,
        };
        let state = resumed.as_ref().map(|r| r.3.clone());
        let _ = decided.send(state.clone());
        let mut readers = readers.into_iter();
        let made = (|| {
            // The stored blocks are copied while the other layers download.
            let mut c = match resumed {
                Some((checked, src, offset, _)) => {
                    readers.next();
                    Converter::resume_checked(&sqfs_path, &opts, checked, &src, offset)
                        .map_err(|e| convert::ConvertError::Base(e.to_string()))?
                }
                None => {
                    let mut c = Converter::new(&sqfs_path, layers, &opts)?;
                    c.keep_first_layer();
                    c
                }
            };
            for (media_type, r) in readers {
                c.add_layer(&media_type, r)?;
            }
            c.finish_with_base()
        })();
        (
            state,
            made.map(|(stats, base)| (sqfs_path, stats, base, conv_dir)),
        )
    });

    let first = resolved.endpoint();
    let max = client.limits().max_layer_size;
    let dir_path: &std::path::Path = &dir.0;
    let downloads = async {
        let config = async {
            let feed = Feed::new();
            let watch = Some((&*feed, progress, cfg_blob));
            client
                .config(first, reference, creds, &m.config, dir_path, watch)
                .await
        };
        // Owned items: a closure over borrowed ones makes the future not general enough.
        let dir = dir_path;
        let mut decision = Some(decision);
        let layers = futures_util::stream::iter(unique.to_vec())
            .map(|(d, feed)| {
                let wait = match &first_layer {
                    Some(f) if f.digest == d.digest && !first_again => decision.take(),
                    _ => None,
                };
                async move {
                    if let Some(w) = wait {
                        // Not needed when the converter goes on from a
                        // stored copy (an answer lost with a failed
                        // converter: download; its error says more).
                        if matches!(w.await, Ok(Some(_))) {
                            return Ok(None);
                        }
                    }
                    let i = progress.add_blob(&d.digest, d.size);
                    client
                        .download(
                            first,
                            reference,
                            creds,
                            &d,
                            dir,
                            max,
                            Some((&feed, progress, i)),
                        )
                        .await
                        .map(Some)
                }
            })
            .buffer_unordered(client.limits().concurrency.max(1))
            .try_collect::<Vec<Option<PathBuf>>>();
        let (config, _) = tokio::try_join!(config, layers)?;
        progress.downloads_done();
        Ok::<_, crate::registry::RegistryError>(config)
    };
    tokio::pin!(downloads);
    let mut convert = convert.fuse();
    let mut config = None;
    let mut converted = None;
    let (mut fetched_at, mut converted_at) = (Default::default(), Default::default());
    let mut reused = false;
    while config.is_none() || converted.is_none() {
        tokio::select! {
            r = &mut downloads, if config.is_none() => match r {
                Ok(c) => {
                    config = Some(c);
                    fetched_at = started.elapsed();
                }
                Err(e) => {
                    // Stop the converter (its feeds end with an error) and wait
                    // for it, so that the directory goes with it; unless it is
                    // done already (a fused future that ended never ends
                    // again: awaiting it would hang the pull), its result
                    // dropped with the directory.
                    drop(guards);
                    if converted.is_none() {
                        let _ = convert.await;
                    }
                    return Err(e.into());
                }
            },
            r = &mut convert, if converted.is_none() => match r {
                Ok((state, Ok(v))) => {
                    converted = Some(v);
                    converted_at = started.elapsed();
                    reused = state.is_some();
                }
                Ok((Some(state), Err(convert::ConvertError::Base(why)))) => {
                    tracing::warn!(image = %reference, error = %why, "going on from the stored first layer failed; pulling it in full");
                    images.drop_base(&state);
                    drop(guards);
                    return Err(Retry::Full);
                }
                Ok((_, Err(e))) => {
                    // A layer that cannot be read because its download failed:
                    // the download's error says more.
                    if matches!(&e, convert::ConvertError::Io { context, .. } if context.starts_with("read layer")) && config.is_none() {
                        if let Err(d) = (&mut downloads).await {
                            return Err(d.into());
                        }
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(Error::Internal(format!("conversion task failed: {e}")).into()),
            },
        }
    }
    drop(guards);
    let (Some(config), Some((sqfs, stats, base, conv_dir))) = (config, converted) else {
        return Err(Error::Internal("pull ended without its results".into()).into());
    };
    drop(conv_dir);
    let runtime_cfg = convert::runtime_config(&config)?;
    let (images2, id2, dir2) = (images.clone(), id.clone(), dir.clone());
    blocking(move || {
        let sif = dir2.0.join("image.sif");
        let crc = convert::squashfs_to_sif(&sqfs, &runtime_cfg, &sif)?;
        let _ = std::fs::remove_file(&sqfs);
        let base = base_layer.zip(base.map(|b| b.to_bytes()));
        images2.add_converted(&sif, &id2, tag, repo_digest, base, Some(crc))?;
        Ok(())
    })
    .await?;
    // The fsync is not the client's to wait for: until it is done, the
    // record's CRC lets the next start tell a file a power loss cut short.
    let (images2, id2) = (images.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::sleep(SYNC_DELAY).await;
        let _ = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            match images2.sync(&id2) {
                Ok(()) => tracing::debug!(id = %id2, ms = ms(t.elapsed()), "image synced"),
                Err(e) => {
                    tracing::warn!(id = %id2, error = %e, "syncing the image failed (it is checked again at the next start)")
                }
            }
        })
        .await;
    });
    tracing::info!(
        image = %reference,
        id = %id,
        layers = m.layers.len(),
        entries = stats.entries,
        unpacked_bytes = stats.uncompressed_bytes,
        squashfs_bytes = stats.squashfs_bytes,
        unreferenced_bytes = stats.unreferenced_bytes,
        first_layer_reused = reused,
        resolved_ms = ms(resolved_at),
        fetched_ms = ms(fetched_at),
        converted_ms = ms(converted_at),
        secs = started.elapsed().as_secs_f64(),
        "pulled and converted"
    );
    Ok(id)
}

/// A stored image that starts with `first` (the image's first layer) and
/// whose saved state after it fits `opts` and checks out against its SIF:
/// the checked state and the SIF, open, with where its squashfs starts, and
/// the state's file.
/// None (after saying why, if there was one that does not do) otherwise.
fn stored_first_layer(
    images: &ImageStore,
    first: &str,
    layers: usize,
    opts: &ConvertOptions,
) -> Option<(convert::Checked, std::fs::File, u64, PathBuf)> {
    // Images converted with other settings (the config changed) do not do;
    // the first that does is taken.
    for (rec, state) in images.bases_for(first) {
        let tried = (|| {
            let base = convert::load_base(&state)?;
            if !base.fits(opts) {
                return Ok(None);
            }
            let checked = base.check(opts, layers, rec.rootfs_size)?;
            let sif = images.blob_path(&rec);
            let f = std::fs::File::open(&sif).map_err(|e| convert::ConvertError::Io {
                context: format!("open {}", sif.display()),
                source: e,
            })?;
            Ok::<_, convert::ConvertError>(Some((checked, f, rec.rootfs_offset, state.clone())))
        })();
        match tried {
            Ok(Some(found)) => {
                tracing::debug!(layer = %first, from = %rec.id, "going on from a stored image's first layer");
                return Some(found);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(layer = %first, from = %rec.id, error = %e, "dropping a stored first layer's state that cannot be used");
                images.drop_base(&state);
            }
        }
    }
    None
}

/// How long after a pull its SIF is synced: not while the requests that
/// follow a pull are served (the fsync competes with them for the disk),
/// and not at all for an image removed by then.
const SYNC_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Milliseconds, for the phase times in the log.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
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

impl Puller {
    /// Pulls a SIF that is stored whole: `oras://`, `library://` or a URL.
    async fn pull_sif_source(
        &self,
        images: &Arc<ImageStore>,
        image: &str,
        creds: Option<Credentials>,
        dir: &std::path::Path,
    ) -> Result<String> {
        let (file, digest) = if let Some(rest) = image.strip_prefix("oras://") {
            let reference = Reference::parse(rest)?;
            let (file, _) = self
                .fetch_sif_artifact(&reference, creds.as_ref(), dir)
                .await?;
            // Stored as it is: synced as the http:// and library:// downloads are.
            tokio::fs::File::open(&file)
                .await
                .map_err(|e| Error::io(format!("open {}", file.display()), e))?
                .sync_all()
                .await
                .map_err(|e| Error::io(format!("sync {}", file.display()), e))?;
            let digest = crate::images::file_digest(&file)?;
            (file, Some(format!("{}@{}", reference.name(), digest)))
        } else if image.starts_with("library://") {
            (self.fetch_library(image, creds.as_ref(), dir).await?, None)
        } else {
            (self.download(image, dir, MAX_SIF_DOWNLOAD).await?, None)
        };
        let id = crate::images::file_digest(&file)?;
        let (images, tag, id2) = (images.clone(), image.to_string(), id.clone());
        blocking(move || images.add_converted(&file, &id2, Some(tag), digest, None, None)).await?;
        Ok(id)
    }

    /// A SIF stored as an OCI artifact: exactly one layer of the SIF media type.
    async fn fetch_sif_artifact(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        dir: &std::path::Path,
    ) -> Result<(std::path::PathBuf, String)> {
        let resolved = self.inner.client.resolve(reference, creds).await?;
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
            .inner
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
        let (base, name, tag) = parse_library(image, &self.inner.library_url)?;
        let bearer = creds
            .map(|c| c.registry_token.clone())
            .filter(|t| !t.is_empty());
        let with_auth = |req: reqwest::RequestBuilder| match &bearer {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let redirect = with_auth(
            self.inner
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
            with_auth(self.inner.http.get(&url)),
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
        self.download_with(self.inner.http.get(url), url, dir, max)
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
