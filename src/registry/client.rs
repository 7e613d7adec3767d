//! The registry client: requests with authentication and retries, manifests
//! and blobs.

use super::auth::{
    basic_header, parse_challenges, pull_scope, AuthCache, CachedAuth, TokenResponse,
};
use super::cache::DocCache;
use super::hosts::Endpoint;
use super::manifest::{self, ImageManifest, Manifest, Platform, DOCKER_CONFIG, OCI_CONFIG};
use super::reference::validate_digest;
use super::{
    Credentials, Descriptor, Feed, Progress, PullLimits, Pulled, Reference, RegistryConfig,
    RegistryError,
};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RANGE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use sha2::{Digest, Sha256, Sha512};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER_AGENT: &str = concat!("sycri/", env!("CARGO_PKG_VERSION"));
/// Nested indexes followed at most.
const MAX_INDEX_DEPTH: usize = 4;
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;
const MAX_ERROR_BODY: u64 = 8 << 10;

/// A registry client: HTTP connection pools, the hosts configuration, the
/// platform to pick from indexes and a cache of tokens.
pub struct Client {
    cfg: RegistryConfig,
    limits: PullLimits,
    platform: Platform,
    http: reqwest::Client,
    http_no_verify: reqwest::Client,
    auth: AuthCache,
    /// Manifests and configs fetched by digest, for the next pull of the
    /// same repository.
    docs: DocCache,
}

/// One manifest document as served.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedManifest {
    /// The digest of `bytes`.
    pub digest: String,
    /// Content type (or, when generic, the declared `mediaType`).
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub manifest: Manifest,
}

/// A reference resolved to the image manifest for the client's platform.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// What the reference points to (an index, or the manifest itself).
    pub digest: String,
    pub image_digest: String,
    pub media_type: String,
    pub manifest: ImageManifest,
    /// The image manifest as served.
    pub bytes: Vec<u8>,
    /// Which of the servers (mirrors first) answered.
    pub server: String,
    endpoint: usize,
}

impl Resolved {
    /// Which server answered (an index into the hosts configuration's list).
    pub fn endpoint(&self) -> usize {
        self.endpoint
    }
}

fn bad(msg: String) -> RegistryError {
    RegistryError::BadResponse(msg)
}

/// A reqwest error with its causes, which its own message leaves out.
fn chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn transient(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// sha256 or sha512, as the digest asks.
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn for_digest(digest: &str) -> Hasher {
        if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

fn digest_of(like: &str, data: &[u8]) -> String {
    let mut h = Hasher::for_digest(like);
    h.update(data);
    h.finish()
}

/// Removes a partial download unless kept.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// What a GET is for: manifests get an `Accept` header and a whole-request
/// timeout, blobs only the read timeout.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GetKind {
    Manifest,
    Blob,
    /// A blob from this byte on.
    BlobFrom(u64),
}

/// How a download attempt failed: the body broke off (worth another try) or not.
enum Attempt {
    Body(String),
    Fatal(RegistryError),
}

impl From<RegistryError> for Attempt {
    fn from(e: RegistryError) -> Attempt {
        Attempt::Fatal(e)
    }
}

/// The registry's own words about an error (`{"errors":[{"code","message"}]}`), if any.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct Es {
        errors: Vec<E>,
    }
    match serde_json::from_slice::<Es>(body) {
        Ok(es) if !es.errors.is_empty() => {
            let parts: Vec<String> = es
                .errors
                .iter()
                .take(3)
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect();
            format!(" ({})", parts.join("; "))
        }
        _ => String::new(),
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// Reads a whole body of at most `max` bytes.
async fn read_limited(mut resp: Response, max: u64, what: &str) -> Result<Vec<u8>, Attempt> {
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(Attempt::Fatal(RegistryError::TooLarge(format!(
            "{what}: {} bytes, over the limit of {max}",
            resp.content_length().unwrap_or_default()
        ))));
    }
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() as u64 + c.len() as u64 > max {
                    return Err(Attempt::Fatal(RegistryError::TooLarge(format!(
                        "{what}: over the limit of {max} bytes"
                    ))));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(Attempt::Body(format!(
                    "{what}: reading the response: {}",
                    chain(&e)
                )))
            }
        }
    }
}

/// The start of an error response's body, for its message.
async fn error_body(resp: Response) -> Vec<u8> {
    read_limited(resp, MAX_ERROR_BODY, "")
        .await
        .unwrap_or_default()
}

impl Client {
    pub fn new(cfg: &RegistryConfig, limits: &PullLimits) -> Result<Client, RegistryError> {
        cfg.validate()?;
        let build = |no_verify: bool| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(limits.connect_timeout)
                .read_timeout(limits.read_timeout)
                .redirect(reqwest::redirect::Policy::limited(8))
                .danger_accept_invalid_certs(no_verify)
                .build()
                .map_err(|e| RegistryError::Config(format!("HTTP client: {}", chain(&e))))
        };
        Ok(Client {
            cfg: cfg.clone(),
            limits: limits.clone(),
            platform: Platform::host(),
            http: build(false)?,
            http_no_verify: build(true)?,
            auth: AuthCache::default(),
            docs: DocCache::default(),
        })
    }

    /// Picks `platform` from indexes instead of this host's.
    pub fn with_platform(mut self, platform: Platform) -> Client {
        self.platform = platform;
        self
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    fn http(&self, ep: &Endpoint) -> &reqwest::Client {
        if ep.skip_verify {
            &self.http_no_verify
        } else {
            &self.http
        }
    }

    async fn backoff(&self, attempt: u32, hint: Option<Duration>, what: &str, why: &str) {
        let exp = self
            .limits
            .retry_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF);
        let wait = hint.map_or(exp, |h| h.max(exp));
        tracing::warn!(
            what,
            why,
            attempt = attempt + 1,
            wait_ms = wait.as_millis() as u64,
            "registry request failed, retrying"
        );
        tokio::time::sleep(wait).await;
    }

    /// Sends a request, again after transient failures (connect errors,
    /// timeouts, 429, 5xx); returns any other response.
    async fn send_retrying(
        &self,
        make: &(dyn Fn() -> RequestBuilder + Sync),
        what: &str,
    ) -> Result<Response, RegistryError> {
        let mut attempt = 0;
        loop {
            match make().send().await {
                Err(e) if e.is_builder() => {
                    return Err(bad(format!("{what}: bad request: {}", chain(&e))))
                }
                Err(e) => {
                    let why = chain(&e);
                    if transient(&e) && attempt < self.limits.retries {
                        self.backoff(attempt, None, what, &why).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Unavailable(format!("{what}: {why}")));
                }
                Ok(resp) => {
                    let s = resp.status();
                    let again = s == StatusCode::TOO_MANY_REQUESTS
                        || s == StatusCode::REQUEST_TIMEOUT
                        || s.is_server_error();
                    if !again {
                        return Ok(resp);
                    }
                    let hint = retry_after(resp.headers());
                    let detail = error_detail(&error_body(resp).await);
                    if attempt < self.limits.retries {
                        self.backoff(attempt, hint, what, &format!("HTTP {s}{detail}"))
                            .await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Unavailable(format!(
                        "{what}: HTTP {s}{detail} (after {} tries)",
                        attempt + 1
                    )));
                }
            }
        }
    }

    /// A GET of the registry API, authenticating when challenged; returns
    /// a 2xx response.
    async fn get(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        path: &str,
        kind: GetKind,
        creds: Option<&Credentials>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let creds = creds.filter(|c| c.applies_to(&ep.host));
        let repo = reference.repository.as_str();
        let url = ep.url(path, reference);
        let http = self.http(ep);
        let mut challenged = false;
        loop {
            let authz = self.auth.get(ep, repo, creds);
            let make = || {
                let mut rb = http.get(&url);
                match kind {
                    GetKind::Manifest => {
                        rb = rb
                            .header(ACCEPT, manifest::MANIFEST_ACCEPT)
                            .timeout(self.limits.request_timeout);
                    }
                    GetKind::BlobFrom(n) => rb = rb.header(RANGE, format!("bytes={n}-")),
                    GetKind::Blob => {}
                }
                if let Some(h) = &authz {
                    rb = rb.header(AUTHORIZATION, h);
                }
                rb
            };
            tracing::debug!(url = %url, authenticated = authz.is_some(), "registry GET");
            let resp = self.send_retrying(&make, what).await?;
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            match status {
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    let challenges: Vec<String> = resp
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok().map(str::to_string))
                        .collect();
                    let _ = error_body(resp).await;
                    let a = self.authorize(ep, repo, creds, &challenges, what).await?;
                    self.auth.put(ep, repo, creds, a);
                }
                StatusCode::UNAUTHORIZED => {
                    self.auth.forget(ep, repo, creds);
                    let detail = error_detail(&error_body(resp).await);
                    return Err(RegistryError::Unauthenticated(format!(
                        "{what}: the registry refused the credentials{detail}"
                    )));
                }
                StatusCode::FORBIDDEN => {
                    let detail = error_detail(&error_body(resp).await);
                    return Err(RegistryError::PermissionDenied(format!(
                        "{what}: access denied{detail}"
                    )));
                }
                StatusCode::NOT_FOUND => {
                    let detail = error_detail(&error_body(resp).await);
                    return Err(RegistryError::NotFound(format!(
                        "{what}: not found{detail}"
                    )));
                }
                s => {
                    let detail = error_detail(&error_body(resp).await);
                    return Err(bad(format!("{what}: unexpected HTTP status {s}{detail}")));
                }
            }
        }
    }

    /// Answers a 401's challenges: Bearer (a token) before Basic.
    async fn authorize(
        &self,
        ep: &Endpoint,
        repo: &str,
        creds: Option<&Credentials>,
        headers: &[String],
        what: &str,
    ) -> Result<CachedAuth, RegistryError> {
        let challenges: Vec<_> = headers.iter().flat_map(|h| parse_challenges(h)).collect();
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(tok) = creds
                .map(|c| c.registry_token.as_str())
                .filter(|t| !t.is_empty())
            {
                return Ok(CachedAuth {
                    header: format!("Bearer {tok}"),
                    expires: None,
                });
            }
            let realm = c
                .params
                .get("realm")
                .ok_or_else(|| bad(format!("{what}: bearer challenge without a realm")))?;
            let service = c.params.get("service").map(String::as_str);
            let scope = c
                .params
                .get("scope")
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| pull_scope(repo));
            let scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
            return self
                .fetch_token(ep, realm, service, &scopes, creds, what)
                .await;
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return match creds.map(Credentials::basic).transpose()?.flatten() {
                Some((u, p)) => Ok(CachedAuth {
                    header: basic_header(&u, &p),
                    expires: None,
                }),
                None => Err(RegistryError::Unauthenticated(format!(
                    "{what}: the registry wants a username and password"
                ))),
            };
        }
        Err(RegistryError::Unauthenticated(format!(
            "{what}: authentication required, and no usable challenge was given ({headers:?})"
        )))
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
        creds: Option<&Credentials>,
        what: &str,
    ) -> Result<CachedAuth, RegistryError> {
        let realm_url = reqwest::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                bad(format!(
                    "{what}: token realm {realm:?} is not an http(s) URL"
                ))
            })?;
        let http = self.http(ep);
        let what_tok = format!("{what}: token from {}", realm_url.host_str().unwrap_or(""));
        let basic = creds.map(Credentials::basic).transpose()?.flatten();

        let refresh = creds
            .map(|c| c.identity_token.as_str())
            .filter(|t| !t.is_empty());
        if let Some(rt) = refresh {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", rt),
                ("client_id", "sycri"),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            let scope = scopes.join(" ");
            if !scope.is_empty() {
                form.push(("scope", &scope));
            }
            let make = || {
                http.post(realm_url.clone())
                    .form(&form)
                    .timeout(self.limits.request_timeout)
            };
            tracing::debug!(realm, "refresh-token exchange");
            let resp = self.send_retrying(&make, &what_tok).await?;
            let s = resp.status();
            // Token services without OAuth2 answer 404 or 405: use GET then.
            if s != StatusCode::NOT_FOUND && s != StatusCode::METHOD_NOT_ALLOWED {
                return self.token_response(resp, &what_tok).await;
            }
        }

        let mut url = realm_url.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scopes {
                q.append_pair("scope", s);
            }
        }
        let make = || {
            let rb = http.get(url.clone()).timeout(self.limits.request_timeout);
            match &basic {
                Some((u, p)) => rb.header(AUTHORIZATION, basic_header(u, p)),
                None => rb,
            }
        };
        tracing::debug!(
            realm,
            ?scopes,
            with_credentials = basic.is_some(),
            "token request"
        );
        let resp = self.send_retrying(&make, &what_tok).await?;
        self.token_response(resp, &what_tok).await
    }

    async fn token_response(
        &self,
        resp: Response,
        what: &str,
    ) -> Result<CachedAuth, RegistryError> {
        let s = resp.status();
        if !s.is_success() {
            let detail = error_detail(&error_body(resp).await);
            return Err(match s {
                StatusCode::UNAUTHORIZED => RegistryError::Unauthenticated(format!(
                    "{what}: the token service refused the credentials{detail}"
                )),
                StatusCode::FORBIDDEN => {
                    RegistryError::PermissionDenied(format!("{what}: access denied{detail}"))
                }
                _ => bad(format!("{what}: HTTP {s}{detail}")),
            });
        }
        let body = match read_limited(resp, MAX_TOKEN_RESPONSE, what).await {
            Ok(b) => b,
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Body(m)) => return Err(RegistryError::Unavailable(m)),
        };
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("{what}: token response is not JSON: {e}")))?;
        t.into_auth()
            .ok_or_else(|| bad(format!("{what}: token response without a usable token")))
    }

    /// One manifest (`object`: tag or digest) from one server, checked
    /// against its digest.
    async fn manifest_from(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        object: &str,
        creds: Option<&Credentials>,
    ) -> Result<FetchedManifest, RegistryError> {
        let what = format!("manifest {}:{object} from {}", reference.name(), ep.host);
        let (registry, repo) = (&reference.registry, &reference.repository);
        if validate_digest(object).is_ok() {
            if let Some(doc) = self.docs.get(registry, repo, object) {
                let (manifest, media_type) = manifest::parse(&doc.content_type, &doc.bytes, &what)?;
                tracing::debug!(reference = %reference, digest = %object, "manifest known: not asked for again");
                return Ok(FetchedManifest {
                    digest: object.to_string(),
                    media_type,
                    bytes: doc.bytes.to_vec(),
                    manifest,
                });
            }
        }
        let path = format!("/{}/manifests/{object}", reference.repository);
        let mut failures = 0;
        let (ct, header_digest, bytes) = loop {
            let resp = self
                .get(ep, reference, &path, GetKind::Manifest, creds, &what)
                .await?;
            let hdr = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let ct = hdr(CONTENT_TYPE.as_str());
            let dig = hdr("docker-content-digest");
            match read_limited(resp, self.limits.max_manifest_size, &what).await {
                Ok(b) => break (ct, dig, b),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Body(m)) if failures < self.limits.retries => {
                    self.backoff(failures, None, &what, &m).await;
                    failures += 1;
                }
                Err(Attempt::Body(m)) => return Err(RegistryError::Unavailable(m)),
            }
        };
        let expected = if validate_digest(object).is_ok() {
            Some(object.to_string())
        } else if validate_digest(&header_digest).is_ok() {
            Some(header_digest)
        } else {
            None
        };
        let digest = match expected {
            Some(want) => {
                let got = digest_of(&want, &bytes);
                if got != want {
                    return Err(bad(format!(
                        "{what}: digest mismatch: got {got}, want {want}"
                    )));
                }
                want
            }
            None => digest_of("sha256:", &bytes),
        };
        let (manifest, media_type) = manifest::parse(&ct, &bytes, &what)?;
        self.docs.put(registry, repo, &digest, &ct, &bytes);
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
            manifest,
        })
    }

    /// Tries each server in turn (mirrors first), returning the first
    /// success or the last error.
    async fn each_server<T, F, Fut>(
        &self,
        reference: &Reference,
        mut f: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut(usize, Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let eps = self.cfg.endpoints(reference)?;
        let n = eps.len();
        let mut last = None;
        for (i, ep) in eps.into_iter().enumerate() {
            let host = ep.host.clone();
            match f(i, ep).await {
                Ok(v) => return Ok(v),
                Err(e) if e.try_next_server() && i + 1 < n => {
                    tracing::warn!(server = %host, error = %e, "registry server failed, trying the next one");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::Config(format!("no server for {reference}"))))
    }

    /// The manifest or index a reference points to, as served.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<FetchedManifest, RegistryError> {
        self.each_server(reference, |_, ep| async move {
            self.manifest_from(&ep, reference, reference.object(), creds)
                .await
        })
        .await
    }

    async fn resolve_on(
        &self,
        ep: &Endpoint,
        i: usize,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        let top = self
            .manifest_from(ep, reference, reference.object(), creds)
            .await?;
        let digest = top.digest.clone();
        let mut cur = top;
        for _ in 0..MAX_INDEX_DEPTH {
            match cur.manifest {
                Manifest::Image(m) => {
                    return Ok(Resolved {
                        digest,
                        image_digest: cur.digest,
                        media_type: cur.media_type,
                        manifest: m,
                        bytes: cur.bytes,
                        server: ep.host.clone(),
                        endpoint: i,
                    })
                }
                Manifest::Index(idx) => {
                    let d = manifest::select(&idx, &self.platform).ok_or_else(|| {
                        let have: Vec<String> = idx
                            .manifests
                            .iter()
                            .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                            .collect();
                        RegistryError::NotFound(format!(
                            "{reference}: no image for platform {} (there are: {})",
                            self.platform,
                            have.join(", ")
                        ))
                    })?;
                    tracing::debug!(reference = %reference, platform = %self.platform, digest = %d.digest, "picked from index");
                    let want = d.digest.clone();
                    cur = self.manifest_from(ep, reference, &want, creds).await?;
                }
            }
        }
        Err(bad(format!(
            "{reference}: indexes nested deeper than {MAX_INDEX_DEPTH}"
        )))
    }

    /// The image manifest for this client's platform (following indexes).
    pub async fn resolve(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
    ) -> Result<Resolved, RegistryError> {
        self.each_server(reference, |i, ep| async move {
            self.resolve_on(&ep, i, reference, creds).await
        })
        .await
    }

    /// Downloads a blob of `reference`'s repository to `dir/<alg>-<hex>`,
    /// checking its size and digest; trying each server in turn.
    pub async fn fetch_blob(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        dir: &Path,
        max: u64,
    ) -> Result<PathBuf, RegistryError> {
        self.download(0, reference, creds, desc, dir, max, None)
            .await
    }

    /// Downloads a blob to `dir/<alg>-<hex>`, from the server `first` first
    /// (then the others). A body cut short is resumed where it stopped (a
    /// Range request; from the same or the next server). With `watch`, the
    /// feed sees the bytes as they land and the progress counts them.
    #[allow(clippy::too_many_arguments)]
    pub async fn download(
        &self,
        first: usize,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        dir: &Path,
        max: u64,
        watch: Option<(&Feed, &Progress, usize)>,
    ) -> Result<PathBuf, RegistryError> {
        let r = self
            .download_inner(first, reference, creds, desc, dir, max, watch)
            .await;
        if let Some((feed, progress, i)) = watch {
            match &r {
                Ok(_) => {
                    progress.blob_done(i);
                    feed.finish(Ok(()));
                }
                Err(e) => feed.finish(Err(e.to_string())),
            }
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_inner(
        &self,
        first: usize,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        dir: &Path,
        max: u64,
        watch: Option<(&Feed, &Progress, usize)>,
    ) -> Result<PathBuf, RegistryError> {
        let (alg, hex) = validate_digest(&desc.digest)
            .map_err(|why| bad(format!("blob {}: {why}", desc.digest)))?;
        if desc.size > max {
            return Err(RegistryError::TooLarge(format!(
                "blob {} of {}: {} bytes, over the limit of {max}",
                desc.digest,
                reference.name(),
                desc.size
            )));
        }
        let dest = dir.join(format!("{alg}-{hex}"));
        if watch.is_none() && self.already_have(&dest, desc).await {
            tracing::debug!(path = %dest.display(), "blob already downloaded");
            return Ok(dest);
        }
        let tmp = dir.join(format!(
            ".{alg}-{hex}.{}-{}.part",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut guard = TempFile(Some(tmp.clone()));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| RegistryError::io(format!("create {}", tmp.display()), e))?;
        if let Some((feed, _, _)) = watch {
            let reader = std::fs::File::open(&tmp)
                .map_err(|e| RegistryError::io(format!("open {}", tmp.display()), e))?;
            feed.set_file(reader);
        }
        let mut dl = Download {
            tmp: &tmp,
            file,
            written: 0,
            buf: Vec::with_capacity(WRITE_BUF),
            hasher: Hasher::for_digest(&desc.digest),
            watch,
        };
        let eps = self.cfg.endpoints(reference)?;
        let mut order: Vec<&Endpoint> = eps.get(first).into_iter().collect();
        order.extend(
            eps.iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, e)| e),
        );
        let mut last = None;
        let n = order.len();
        for (k, ep) in order.into_iter().enumerate() {
            match self
                .blob_from(ep, reference, creds, desc, max, &mut dl)
                .await
            {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) if e.try_next_server() && k + 1 < n => {
                    tracing::warn!(server = %ep.host, error = %e, "blob download failed, trying the next server");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| {
            RegistryError::io(format!("rename {} to {}", tmp.display(), dest.display()), e)
        })?;
        guard.keep();
        tracing::debug!(digest = %desc.digest, size = desc.size, path = %dest.display(), "blob downloaded");
        Ok(dest)
    }

    async fn blob_from(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        max: u64,
        dl: &mut Download<'_>,
    ) -> Result<(), RegistryError> {
        let what = format!(
            "blob {} of {} from {}",
            desc.digest,
            reference.name(),
            ep.host
        );
        let path = format!("/{}/blobs/{}", reference.repository, desc.digest);
        let mut failures = 0;
        loop {
            let from = dl.written;
            let resp = self
                .get_range(ep, reference, &path, from, creds, &what)
                .await?;
            if let Some((_, p, _)) = dl.watch {
                p.touch();
            }
            match self.stream_to(resp, desc, max, &what, dl).await {
                Ok(()) => break,
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Body(m)) if failures < self.limits.retries => {
                    dl.flush().await?;
                    self.backoff(failures, None, &what, &m).await;
                    failures += 1;
                }
                Err(Attempt::Body(m)) => {
                    dl.flush().await?;
                    return Err(RegistryError::Unavailable(m));
                }
            }
        }
        let got = std::mem::replace(&mut dl.hasher, Hasher::for_digest(&desc.digest)).finish();
        if got != desc.digest {
            return Err(bad(format!("{what}: digest mismatch: got {got}")));
        }
        Ok(())
    }

    /// A blob GET from byte `from` on (a Range request when not 0).
    async fn get_range(
        &self,
        ep: &Endpoint,
        reference: &Reference,
        path: &str,
        from: u64,
        creds: Option<&Credentials>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let kind = if from == 0 {
            GetKind::Blob
        } else {
            GetKind::BlobFrom(from)
        };
        self.get(ep, reference, path, kind, creds, what).await
    }

    async fn stream_to(
        &self,
        mut resp: Response,
        desc: &Descriptor,
        max: u64,
        what: &str,
        dl: &mut Download<'_>,
    ) -> Result<(), Attempt> {
        // A server that ignores the Range header sends everything again: skip
        // what we have (the digest, over the file, still decides).
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        let mut skip = if partial { 0 } else { dl.written };
        let expect = if partial {
            desc.size.saturating_sub(dl.written)
        } else {
            desc.size
        };
        if let Some(n) = resp.content_length() {
            if n > max {
                return Err(RegistryError::TooLarge(format!(
                    "{what}: {n} bytes, over the limit of {max}"
                ))
                .into());
            }
            if n != expect {
                return Err(bad(format!(
                    "{what}: {n} bytes served, the manifest says {}",
                    desc.size
                ))
                .into());
            }
        }
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(Attempt::Body(format!("{what}: {}", chain(&e)))),
            };
            if let Some((_, p, i)) = dl.watch {
                p.got(i, chunk.len() as u64);
            }
            let mut c = &chunk[..];
            if skip > 0 {
                let k = skip.min(c.len() as u64) as usize;
                skip -= k as u64;
                c = &c[k..];
            }
            let total = dl.written + dl.buf.len() as u64 + c.len() as u64;
            if total > max {
                return Err(RegistryError::TooLarge(format!(
                    "{what}: over the limit of {max} bytes"
                ))
                .into());
            }
            if total > desc.size {
                return Err(bad(format!(
                    "{what}: longer than the {} bytes the manifest says",
                    desc.size
                ))
                .into());
            }
            dl.hasher.update(c);
            dl.buf.extend_from_slice(c);
            if dl.buf.len() >= WRITE_BUF {
                dl.flush().await?;
            }
        }
        dl.flush().await?;
        if dl.written != desc.size {
            return Err(Attempt::Body(format!(
                "{what}: {} bytes, the manifest says {}",
                dl.written, desc.size
            )));
        }
        Ok(())
    }

    /// Whether `path` already holds the blob (from an earlier try).
    async fn already_have(&self, path: &Path, desc: &Descriptor) -> bool {
        let Ok(mut f) = tokio::fs::File::open(path).await else {
            return false;
        };
        if !f
            .metadata()
            .await
            .is_ok_and(|m| m.is_file() && m.len() == desc.size)
        {
            return false;
        }
        let mut h = Hasher::for_digest(&desc.digest);
        let mut buf = vec![0u8; 1 << 18];
        loop {
            match f.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(_) => return false,
            }
        }
        if h.finish() == desc.digest {
            true
        } else {
            let _ = tokio::fs::remove_file(path).await;
            false
        }
    }

    /// Checks what [`Self::resolve`] found before anything is downloaded: a
    /// container image whose config and layers are within the limits.
    pub fn check_image(&self, reference: &Reference, r: &Resolved) -> Result<u64, RegistryError> {
        let m = &r.manifest;
        let what = format!("{reference} ({})", r.image_digest);
        if m.config.media_type != OCI_CONFIG && m.config.media_type != DOCKER_CONFIG {
            return Err(bad(format!(
                "{what} is not a container image (config of type {:?})",
                m.config.media_type
            )));
        }
        if m.config.size > self.limits.max_config_size {
            return Err(RegistryError::TooLarge(format!(
                "{what}: config of {} bytes, over the limit of {}",
                m.config.size, self.limits.max_config_size
            )));
        }
        let mut total = m.config.size;
        for l in &m.layers {
            if l.size > self.limits.max_layer_size {
                return Err(RegistryError::TooLarge(format!(
                    "{what}: layer {} of {} bytes, over the limit of {}",
                    l.digest, l.size, self.limits.max_layer_size
                )));
            }
            total = total.saturating_add(l.size);
        }
        if total > self.limits.max_total_size {
            return Err(RegistryError::TooLarge(format!(
                "{what}: {total} bytes in all, over the limit of {}",
                self.limits.max_total_size
            )));
        }
        Ok(total)
    }

    pub fn limits(&self) -> &PullLimits {
        &self.limits
    }

    /// The image config `desc` of `reference`, checked (a JSON object):
    /// known from an earlier pull of the same repository, else downloaded
    /// (into `dir`, from server `first` first; with `watch` as
    /// [`Self::download`]).
    pub async fn config(
        &self,
        first: usize,
        reference: &Reference,
        creds: Option<&Credentials>,
        desc: &Descriptor,
        dir: &Path,
        watch: Option<(&Feed, &Progress, usize)>,
    ) -> Result<Vec<u8>, RegistryError> {
        let what = format!("{reference} (config {})", desc.digest);
        let (registry, repo) = (&reference.registry, &reference.repository);
        if let Some(doc) = self.docs.get(registry, repo, &desc.digest) {
            if let Some((feed, progress, i)) = watch {
                progress.blob_done(i);
                feed.finish(Ok(()));
            }
            tracing::debug!(reference = %reference, digest = %desc.digest, "config known: not fetched again");
            return Ok(doc.bytes.to_vec());
        }
        let max = self.limits.max_config_size;
        let p = self
            .download(first, reference, creds, desc, dir, max, watch)
            .await?;
        let bytes = tokio::fs::read(&p)
            .await
            .map_err(|e| RegistryError::io(format!("read {}", p.display()), e))?;
        check_config(&what, &bytes)?;
        // Its digest was checked as it came in.
        self.docs.put(registry, repo, &desc.digest, "", &bytes);
        Ok(bytes)
    }

    /// Pulls an image: its manifest for this platform, config and layers,
    /// into `dir` (created if missing).
    pub async fn pull(
        &self,
        reference: &Reference,
        creds: Option<&Credentials>,
        dir: &Path,
    ) -> Result<Pulled, RegistryError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| RegistryError::io(format!("create {}", dir.display()), e))?;
        let r = self.resolve(reference, creds).await?;
        let total = self.check_image(reference, &r)?;
        let m = &r.manifest;
        let what = format!("{reference} ({})", r.image_digest);
        tracing::info!(reference = %reference, digest = %r.digest, server = %r.server, layers = m.layers.len(), bytes = total, "pulling image");
        let config = self
            .config(r.endpoint, reference, creds, &m.config, dir, None)
            .await?;

        // Owned descriptors: a closure over borrowed ones makes the future not Send.
        let mut unique: Vec<Descriptor> = Vec::new();
        for l in &m.layers {
            if !unique.iter().any(|u| u.digest == l.digest) {
                unique.push(l.clone());
            }
        }
        let first = r.endpoint;
        let max = self.limits.max_layer_size;
        let files: HashMap<String, PathBuf> = futures_util::stream::iter(unique)
            .map(|d: Descriptor| async move {
                self.download(first, reference, creds, &d, dir, max, None)
                    .await
                    .map(|p| (d.digest, p))
            })
            .buffered(self.limits.concurrency.max(1))
            .try_collect()
            .await?;
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let p = files
                .get(&l.digest)
                .cloned()
                .ok_or_else(|| bad(format!("{what}: layer {} missing", l.digest)))?;
            layers.push((p, l.media_type.clone(), l.digest.clone()));
        }
        tracing::info!(reference = %reference, digest = %r.digest, "image pulled");
        Ok(Pulled {
            reference: reference.clone(),
            manifest_digest: r.digest.clone(),
            image_manifest_digest: r.image_digest.clone(),
            config_digest: m.config.digest.clone(),
            config,
            layers,
        })
    }
}

/// Checks that an image config is a JSON object.
pub fn check_config(what: &str, config: &[u8]) -> Result<(), RegistryError> {
    match serde_json::from_slice::<serde_json::Value>(config) {
        Ok(v) if v.is_object() => Ok(()),
        Ok(_) => Err(bad(format!(
            "{what}: the image config is not a JSON object"
        ))),
        Err(e) => Err(bad(format!("{what}: the image config is not JSON: {e}"))),
    }
}

/// A blob download in progress: survives retries and server changes.
struct Download<'a> {
    tmp: &'a Path,
    file: tokio::fs::File,
    /// Bytes in the file.
    written: u64,
    /// Accepted (hashed) bytes not in the file yet.
    buf: Vec<u8>,
    hasher: Hasher,
    watch: Option<(&'a Feed, &'a Progress, usize)>,
}

/// Bytes collected before each write (and before the feed hears of them).
const WRITE_BUF: usize = 256 << 10;

impl Download<'_> {
    async fn flush(&mut self) -> Result<(), RegistryError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let io = |e| RegistryError::io(format!("write {}", self.tmp.display()), e);
        self.file.write_all(&self.buf).await.map_err(io)?;
        self.file.flush().await.map_err(io)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        if let Some((feed, _, _)) = self.watch {
            feed.grew(self.written);
        }
        Ok(())
    }
}
