//! Pulls against an in-test registry (and, where installed, Debian's
//! `docker-registry`).

use super::testserver::{form, Req, Resp, TestServer};
use super::*;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn fast() -> PullLimits {
    PullLimits {
        retries: 2,
        retry_backoff: Duration::from_millis(1),
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..PullLimits::default()
    }
}

#[derive(Clone)]
struct Image {
    manifest: Vec<u8>,
    digest: String,
    config: Vec<u8>,
    config_digest: String,
    layers: Vec<Vec<u8>>,
}

fn image(tag: &str, layers: &[&[u8]]) -> Image {
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/{tag}"]}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )
    .into_bytes();
    let ls: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                r#"{{"mediaType":"{LAYER}","digest":"{}","size":{}}}"#,
                sha(l),
                l.len()
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{}]}}"#,
        sha(&config),
        config.len(),
        ls.join(",")
    )
    .into_bytes();
    Image {
        digest: sha(&manifest),
        config_digest: sha(&config),
        manifest,
        config,
        layers: layers.iter().map(|l| l.to_vec()).collect(),
    }
}

/// Path → (content type, body).
type Content = HashMap<String, (String, Vec<u8>)>;

fn add_image(c: &mut Content, repo: &str, tag: Option<&str>, img: &Image) {
    let m = (OCI_MANIFEST.to_string(), img.manifest.clone());
    if let Some(t) = tag {
        c.insert(format!("/v2/{repo}/manifests/{t}"), m.clone());
    }
    c.insert(format!("/v2/{repo}/manifests/{}", img.digest), m);
    c.insert(
        format!("/v2/{repo}/blobs/{}", img.config_digest),
        ("application/octet-stream".into(), img.config.clone()),
    );
    for l in &img.layers {
        c.insert(
            format!("/v2/{repo}/blobs/{}", sha(l)),
            ("application/octet-stream".into(), l.clone()),
        );
    }
}

fn serve_content(c: &Content, req: &Req) -> Resp {
    match c.get(req.path()) {
        Some((ct, body)) => Resp::new(200)
            .body(ct, body.clone())
            .header("Docker-Content-Digest", &sha(body)),
        None => Resp::new(404).body(
            "application/json",
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        ),
    }
}

async fn registry(c: Content) -> TestServer {
    TestServer::start(move |r| serve_content(&c, r)).await
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("reference")
}

fn no_partial_files(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".part"))
        })
        .unwrap_or(true)
}

#[tokio::test]
async fn anonymous_pull_over_plain_http() {
    let img = image("a", &[b"layer one", b"layer two", b"layer one"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let srv = registry(c).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let p = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast())
        .await
        .expect("pull");
    assert_eq!(p.reference, r);
    assert_eq!(p.manifest_digest, img.digest);
    assert_eq!(p.image_manifest_digest, img.digest);
    assert_eq!(p.config_digest, img.config_digest);
    assert_eq!(p.config, img.config);
    assert_eq!(p.layers.len(), 3);
    for ((path, mt, d), want) in p.layers.iter().zip(&img.layers) {
        assert_eq!(mt, LAYER);
        assert_eq!(d, &sha(want));
        assert_eq!(std::fs::read(path).ok().as_ref(), Some(want));
        assert_eq!(
            path.file_name().map(|n| n.to_string_lossy().into_owned()),
            Some(d.replace(':', "-"))
        );
    }
    assert_eq!(p.layers[0].0, p.layers[2].0);
    assert!(no_partial_files(dir.path()));

    let reqs = srv.requests();
    let m = reqs
        .iter()
        .find(|q| q.path() == "/v2/team/app/manifests/v1")
        .expect("manifest request");
    let accept = m.header("accept").unwrap_or("");
    for t in [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST] {
        assert!(accept.contains(t), "{accept}");
    }
    assert!(reqs.iter().all(|q| q.header("authorization").is_none()));
    // The duplicate layer is fetched once.
    let blob_gets = reqs.iter().filter(|q| q.path().contains("/blobs/")).count();
    assert_eq!(blob_gets, 3, "config + 2 distinct layers");

    // A second pull into the same directory reuses the files.
    let before = srv.requests().len();
    let again = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast())
        .await
        .expect("pull again");
    assert_eq!(again, p);
    assert_eq!(srv.requests().len(), before + 1, "only the manifest again");

    // `localhost` is plain http too; by digest works as well.
    let port = srv.addr.port();
    let r = reference(&format!("localhost:{port}/team/app@{}", img.digest));
    let dir2 = tempfile::tempdir().expect("tempdir");
    let p = pull(&r, None, &RegistryConfig::default(), dir2.path(), &fast())
        .await
        .expect("pull via localhost");
    assert_eq!(p.manifest_digest, img.digest);
}

/// A registry whose content needs `Bearer tok-1`, from a token service at
/// `/token` that wants `alice:secret` when `need_login`.
async fn token_registry(img: &Image, need_login: bool) -> TestServer {
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), img);
    let realm: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let realm2 = realm.clone();
    let srv = TestServer::start(move |r| {
        let realm = realm2.get().cloned().unwrap_or_default();
        if r.path() == "/token" {
            let (q, basic) = if r.method == "POST" {
                let f = form(&r.body);
                let ok = f.contains(&("grant_type".into(), "refresh_token".into()))
                    && f.contains(&("refresh_token".into(), "rt-1".into()))
                    && f.iter().any(|(k, _)| k == "client_id");
                (f, ok)
            } else {
                let want = format!("Basic {}", b64("alice:secret"));
                (r.query(), r.header("authorization") == Some(want.as_str()))
            };
            if !q.contains(&("service".into(), "test-svc".into()))
                || !q.contains(&("scope".into(), "repository:team/app:pull".into()))
            {
                return Resp::new(400);
            }
            if (need_login || r.method == "POST") && !basic {
                return Resp::new(401).body("application/json", r#"{"details":"bad login"}"#);
            }
            let key = if r.method == "POST" {
                "access_token"
            } else {
                "token"
            };
            return Resp::new(200).body(
                "application/json",
                format!(r#"{{"{key}":"tok-1","expires_in":300}}"#),
            );
        }
        if r.header("authorization") != Some("Bearer tok-1") {
            return Resp::new(401).header(
                "WWW-Authenticate",
                &format!(
                    r#"Bearer realm="{realm}",service="test-svc",scope="repository:team/app:pull""#
                ),
            );
        }
        serve_content(&c, r)
    })
    .await;
    let _ = realm.set(format!("http://{}/token", srv.host()));
    srv
}

fn token_requests(srv: &TestServer) -> Vec<Req> {
    srv.requests()
        .into_iter()
        .filter(|r| r.path() == "/token")
        .collect()
}

#[tokio::test]
async fn bearer_token_flow() {
    let img = image("b", &[b"l1", b"l2"]);
    let srv = token_registry(&img, false).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = Client::new(&RegistryConfig::default(), &fast()).expect("client");
    let p = client
        .pull(&r, None, dir.path())
        .await
        .expect("anonymous token pull");
    assert_eq!(p.config, img.config);
    // One token for the manifest, config and both layers.
    let toks = token_requests(&srv);
    assert_eq!(toks.len(), 1);
    assert!(toks[0].header("authorization").is_none());
    // The cache serves the next pull too.
    let dir2 = tempfile::tempdir().expect("tempdir");
    client
        .pull(&r, None, dir2.path())
        .await
        .expect("second pull");
    assert_eq!(token_requests(&srv).len(), 1);

    // A token service that wants a login.
    let srv = token_registry(&img, true).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let good = Credentials {
        auth: b64("alice:secret"),
        ..Credentials::default()
    };
    let p = pull(
        &r,
        Some(&good),
        &RegistryConfig::default(),
        dir.path(),
        &fast(),
    )
    .await
    .expect("pull with login");
    assert_eq!(p.manifest_digest, img.digest);
    let bad_pw = Credentials {
        username: "alice".into(),
        password: "wrong".into(),
        ..Credentials::default()
    };
    for creds in [None, Some(&bad_pw)] {
        let d = tempfile::tempdir().expect("tempdir");
        match pull(&r, creds, &RegistryConfig::default(), d.path(), &fast()).await {
            Err(RegistryError::Unauthenticated(m)) => assert!(m.contains("token"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    // Credentials for another server are not sent.
    let elsewhere = Credentials {
        server_address: "other.example.com".into(),
        ..good.clone()
    };
    assert!(matches!(
        pull(
            &r,
            Some(&elsewhere),
            &RegistryConfig::default(),
            dir.path(),
            &fast()
        )
        .await,
        Err(RegistryError::Unauthenticated(_))
    ));
}

#[tokio::test]
async fn identity_and_registry_tokens() {
    let img = image("c", &[b"x"]);
    let srv = token_registry(&img, true).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let dir = tempfile::tempdir().expect("tempdir");
    let refresh = Credentials {
        identity_token: "rt-1".into(),
        ..Credentials::default()
    };
    pull(
        &r,
        Some(&refresh),
        &RegistryConfig::default(),
        dir.path(),
        &fast(),
    )
    .await
    .expect("refresh-token pull");
    let toks = token_requests(&srv);
    assert_eq!(toks.len(), 1);
    assert_eq!(toks[0].method, "POST");

    let srv = token_registry(&img, true).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let direct = Credentials {
        registry_token: "tok-1".into(),
        ..Credentials::default()
    };
    let d = tempfile::tempdir().expect("tempdir");
    pull(
        &r,
        Some(&direct),
        &RegistryConfig::default(),
        d.path(),
        &fast(),
    )
    .await
    .expect("registry-token pull");
    assert!(token_requests(&srv).is_empty());
}

#[tokio::test]
async fn basic_auth_and_denials() {
    let img = image("d", &[b"basic layer"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let want = format!("Basic {}", b64("alice:secret"));
    let srv = TestServer::start(move |r| {
        if r.path().starts_with("/v2/team/forbidden/") {
            return Resp::new(403).body(
                "application/json",
                r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#,
            );
        }
        if r.header("authorization") != Some(want.as_str()) {
            return Resp::new(401).header("WWW-Authenticate", r#"Basic realm="test registry""#);
        }
        serve_content(&c, r)
    })
    .await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let cfg = RegistryConfig::default();
    let dir = tempfile::tempdir().expect("tempdir");
    for creds in [
        Credentials {
            username: "alice".into(),
            password: "secret".into(),
            ..Credentials::default()
        },
        Credentials {
            auth: b64("alice:secret"),
            server_address: format!("http://{}", srv.host()),
            ..Credentials::default()
        },
    ] {
        let p = pull(&r, Some(&creds), &cfg, dir.path(), &fast())
            .await
            .expect("basic pull");
        assert_eq!(p.layers.len(), 1);
    }
    let wrong = Credentials {
        auth: b64("alice:nope"),
        ..Credentials::default()
    };
    for creds in [None, Some(&wrong)] {
        let e = pull(&r, creds, &cfg, dir.path(), &fast()).await;
        assert!(matches!(e, Err(RegistryError::Unauthenticated(_))), "{e:?}");
    }
    let garbled = Credentials {
        auth: "***".into(),
        ..Credentials::default()
    };
    let e = pull(&r, Some(&garbled), &cfg, dir.path(), &fast()).await;
    assert!(
        matches!(e, Err(RegistryError::InvalidCredentials(_))),
        "{e:?}"
    );

    let f = reference(&format!("{}/team/forbidden:v1", srv.host()));
    match pull(&f, None, &cfg, dir.path(), &fast()).await {
        Err(e @ RegistryError::PermissionDenied(_)) => {
            assert!(e.to_string().contains("DENIED"), "{e}");
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn retries_transient_failures() {
    let img = image("e", &[b"retry layer"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let hits = Arc::new(AtomicUsize::new(0));
    let h2 = hits.clone();
    let srv = TestServer::start(move |r| {
        if r.path().contains("/manifests/") {
            let n = h2.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                return Resp::new(503);
            }
            if n == 1 {
                return Resp::new(429).header("Retry-After", "0");
            }
        }
        serve_content(&c, r)
    })
    .await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast())
        .await
        .expect("pull after 503 and 429");
    assert_eq!(p.manifest_digest, img.digest);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    // Always failing: bounded tries, then Unavailable.
    let down = TestServer::start(|_| Resp::new(503)).await;
    let r = reference(&format!("{}/team/app:v1", down.host()));
    match pull(&r, None, &RegistryConfig::default(), dir.path(), &fast()).await {
        Err(e @ RegistryError::Unavailable(_)) => assert_eq!(e.code(), tonic::Code::Unavailable),
        other => panic!("{other:?}"),
    }
    assert_eq!(down.requests().len(), 3, "1 try + 2 retries");

    // Nobody listening.
    let port = dead_port().await;
    let r = reference(&format!("127.0.0.1:{port}/team/app:v1"));
    let e = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::Unavailable(_))), "{e:?}");
}

async fn dead_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn digest_mismatch_leaves_no_file() {
    let img = image("f", &[b"good layer", b"real bytes"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let bad = sha(b"real bytes");
    c.insert(
        format!("/v2/team/app/blobs/{bad}"),
        ("application/octet-stream".into(), b"fake bytes".to_vec()),
    );
    let srv = registry(c).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let dir = tempfile::tempdir().expect("tempdir");
    match pull(&r, None, &RegistryConfig::default(), dir.path(), &fast()).await {
        Err(RegistryError::BadResponse(m)) => assert!(m.contains("digest mismatch"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!dir.path().join(bad.replace(':', "-")).exists());
    assert!(no_partial_files(dir.path()));

    // A blob longer than the manifest says.
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    c.insert(
        format!("/v2/team/app/blobs/{bad}"),
        (
            "application/octet-stream".into(),
            b"real bytes and more".to_vec(),
        ),
    );
    let srv = registry(c).await;
    let r = reference(&format!("{}/team/app:v1", srv.host()));
    let e = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::BadResponse(_))), "{e:?}");
    assert!(no_partial_files(dir.path()));
}

#[tokio::test]
async fn bad_manifests_and_configs() {
    let img = image("g", &[b"l"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", None, &img);
    c.insert(
        "/v2/team/app/manifests/garbage".into(),
        (OCI_MANIFEST.into(), b"this is not json {".to_vec()),
    );
    c.insert(
        "/v2/team/app/manifests/schema1".into(),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws".into(),
            br#"{"schemaVersion":1,"name":"team/app","fsLayers":[]}"#.to_vec(),
        ),
    );
    c.insert(
        "/v2/team/app/manifests/html".into(),
        ("text/html".into(), img.manifest.clone()),
    );
    // An image whose config is not JSON.
    let cfg_bytes = b"not json".to_vec();
    let m = String::from_utf8_lossy(&img.manifest)
        .replace(&img.config_digest, &sha(&cfg_bytes))
        .replace(
            &format!("\"size\":{}", img.config.len()),
            &format!("\"size\":{}", cfg_bytes.len()),
        );
    c.insert(
        "/v2/team/app/manifests/badconfig".into(),
        (OCI_MANIFEST.into(), m.into_bytes()),
    );
    c.insert(
        format!("/v2/team/app/blobs/{}", sha(&cfg_bytes)),
        ("application/octet-stream".into(), cfg_bytes),
    );
    c.insert(
        format!("/v2/team/app/manifests/{}", sha(b"other")),
        (OCI_MANIFEST.into(), img.manifest.clone()),
    );
    // Too big a manifest.
    c.insert(
        "/v2/team/app/manifests/huge".into(),
        (OCI_MANIFEST.into(), vec![b' '; (4 * MIB + 1) as usize]),
    );
    let srv = registry(c).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = RegistryConfig::default();
    for tag in ["garbage", "schema1", "html", "badconfig"] {
        let r = reference(&format!("{}/team/app:{tag}", srv.host()));
        let e = pull(&r, None, &cfg, dir.path(), &fast()).await;
        assert!(
            matches!(e, Err(RegistryError::BadResponse(_))),
            "{tag}: {e:?}"
        );
    }
    let r = reference(&format!("{}/team/app:huge", srv.host()));
    let e = pull(&r, None, &cfg, dir.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::TooLarge(_))), "{e:?}");
    let r = reference(&format!("{}/team/app:missing", srv.host()));
    match pull(&r, None, &cfg, dir.path(), &fast()).await {
        Err(e @ RegistryError::NotFound(_)) => {
            assert!(e.to_string().contains("MANIFEST_UNKNOWN"), "{e}");
            assert_eq!(tonic::Status::from(e).code(), tonic::Code::NotFound);
        }
        other => panic!("{other:?}"),
    }
    // A digest reference whose content does not match.
    let r = reference(&format!("{}/team/app@{}", srv.host(), sha(b"other")));
    match pull(&r, None, &cfg, dir.path(), &fast()).await {
        Err(RegistryError::BadResponse(m)) => assert!(m.contains("digest mismatch"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Layers over the caller's limit are refused before downloading.
    let r = reference(&format!("{}/team/app@{}", srv.host(), img.digest));
    let small = PullLimits {
        max_layer_size: 0,
        ..fast()
    };
    let before = srv.requests().len();
    let e = pull(&r, None, &cfg, dir.path(), &small).await;
    assert!(matches!(e, Err(RegistryError::TooLarge(_))), "{e:?}");
    assert_eq!(srv.requests().len(), before + 1, "only the manifest");
}

#[tokio::test]
async fn manifest_list_picks_this_platform() {
    let amd = image("amd64", &[b"amd64 layer"]);
    let arm = image("arm64", &[b"arm64 layer"]);
    let att = format!("sha256:{}", "0".repeat(64));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
{{"mediaType":"{OCI_MANIFEST}","digest":"{att}","size":10,"platform":{{"architecture":"unknown","os":"unknown"}},"annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}},
{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},
{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}}]}}"#,
        amd.digest,
        amd.manifest.len(),
        arm.digest,
        arm.manifest.len()
    )
    .into_bytes();
    let mut c = Content::new();
    add_image(&mut c, "multi/app", None, &amd);
    add_image(&mut c, "multi/app", None, &arm);
    c.insert(
        "/v2/multi/app/manifests/1.0".into(),
        (DOCKER_LIST.into(), index.clone()),
    );
    let srv = registry(c).await;
    let r = reference(&format!("{}/multi/app:1.0", srv.host()));
    let cfg = RegistryConfig::default();

    let host = Platform::host();
    let expect = match host.architecture.as_str() {
        "amd64" => Some(&amd),
        "arm64" => Some(&arm),
        _ => None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let got = pull(&r, None, &cfg, dir.path(), &fast()).await;
    match (expect, got) {
        (Some(img), Ok(p)) => {
            assert_eq!(p.manifest_digest, sha(&index));
            assert_eq!(p.image_manifest_digest, img.digest);
            assert_eq!(
                std::fs::read(&p.layers[0].0).ok(),
                Some(img.layers[0].clone())
            );
        }
        (None, Err(RegistryError::NotFound(_))) => {}
        (e, g) => panic!(
            "host {host}: expected {:?}, got {g:?}",
            e.map(|i| &i.digest)
        ),
    }

    for (plat, img) in [
        (Platform::new("linux", "arm64", None), &arm),
        (Platform::new("linux", "amd64", None), &amd),
    ] {
        let client = Client::new(&cfg, &fast())
            .expect("client")
            .with_platform(plat);
        let d = tempfile::tempdir().expect("tempdir");
        let p = client.pull(&r, None, d.path()).await.expect("pull");
        assert_eq!(p.image_manifest_digest, img.digest);
        assert_eq!(p.config, img.config);
    }
    let client = Client::new(&cfg, &fast())
        .expect("client")
        .with_platform(Platform::new("linux", "s390x", None));
    match client.pull(&r, None, dir.path()).await {
        Err(RegistryError::NotFound(m)) => assert!(m.contains("linux/s390x"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The unresolved document is there too.
    let f = client.fetch_manifest(&r, None).await.expect("index");
    assert!(matches!(f.manifest, Manifest::Index(ref i) if i.manifests.len() == 3));
    assert_eq!(f.media_type, DOCKER_LIST);
}

fn mirrored(upstream: &str, mirrors: Vec<String>) -> RegistryConfig {
    RegistryConfig {
        hosts: [(
            upstream.to_string(),
            HostConfig {
                mirrors,
                ..HostConfig::default()
            },
        )]
        .into(),
    }
}

#[tokio::test]
async fn mirrors_first_then_upstream() {
    let img = image("m", &[b"mirrored layer"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let upstream = registry(c.clone()).await;
    let mirror = registry(c.clone()).await;
    let r = reference(&format!("{}/team/app:v1", upstream.host()));
    let dir = tempfile::tempdir().expect("tempdir");

    let cfg = mirrored(&upstream.host(), vec![format!("http://{}", mirror.host())]);
    pull(&r, None, &cfg, dir.path(), &fast())
        .await
        .expect("via mirror");
    assert!(upstream.requests().is_empty());
    let mreqs = mirror.requests();
    assert!(!mreqs.is_empty());
    let ns = upstream.host();
    assert!(mreqs
        .iter()
        .all(|q| q.query().contains(&("ns".to_string(), ns.clone()))));

    // A dead mirror and one without the image: the upstream serves.
    let empty = registry(Content::new()).await;
    let port = dead_port().await;
    let cfg = mirrored(
        &upstream.host(),
        vec![
            format!("127.0.0.1:{port}"),
            format!("http://{}/", empty.host()),
        ],
    );
    let d = tempfile::tempdir().expect("tempdir");
    let p = pull(&r, None, &cfg, d.path(), &fast())
        .await
        .expect("fallback");
    assert_eq!(p.manifest_digest, img.digest);
    assert!(!empty.requests().is_empty());
    assert!(!upstream.requests().is_empty());

    // A mirror with the manifest but not the blobs: blobs from upstream.
    let mut partial = Content::new();
    partial.insert(
        "/v2/team/app/manifests/v1".into(),
        (OCI_MANIFEST.into(), img.manifest.clone()),
    );
    let partial = registry(partial).await;
    let cfg = mirrored(&upstream.host(), vec![format!("http://{}", partial.host())]);
    let before = upstream.requests().len();
    let d = tempfile::tempdir().expect("tempdir");
    pull(&r, None, &cfg, d.path(), &fast())
        .await
        .expect("blobs from upstream");
    let ups: Vec<Req> = upstream.requests().into_iter().skip(before).collect();
    assert!(
        ups.iter().all(|q| q.path().contains("/blobs/")),
        "{:?}",
        ups.iter().map(|q| &q.target).collect::<Vec<_>>()
    );
    assert_eq!(ups.len(), 2);

    // All fail: the upstream's error.
    let cfg = mirrored(&empty.host(), vec![format!("http://{}", mirror.host())]);
    let r2 = reference(&format!("{}/team/other:v1", empty.host()));
    let e = pull(&r2, None, &cfg, d.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::NotFound(_))), "{e:?}");
}

/// `mirrors_only`: a reference the mirror lacks fails at once with the
/// mirror's NotFound, and the registry itself is never asked (without it, the
/// same pull does ask the registry: the check can fail).
#[tokio::test]
async fn mirrors_only_never_contacts_the_registry() {
    let img = image("mo", &[b"only on upstream"]);
    let mut c = Content::new();
    add_image(&mut c, "team/app", Some("v1"), &img);
    let upstream = registry(c).await;
    let mirror = registry(Content::new()).await;
    let r = reference(&format!("{}/team/app:v1", upstream.host()));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = mirrored(&upstream.host(), vec![format!("http://{}", mirror.host())]);
    if let Some(h) = cfg.hosts.get_mut(&upstream.host()) {
        h.mirrors_only = true;
    }
    let t = std::time::Instant::now();
    let e = pull(&r, None, &cfg, dir.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::NotFound(_))), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!mirror.requests().is_empty());
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    assert_eq!(cfg.endpoints(&r).expect("endpoints").len(), 1);

    // Without it the registry serves what the mirror lacks.
    let cfg = mirrored(&upstream.host(), vec![format!("http://{}", mirror.host())]);
    pull(&r, None, &cfg, dir.path(), &fast())
        .await
        .expect("from upstream");
    assert!(!upstream.requests().is_empty());

    // mirrors_only needs mirrors.
    let bad = RegistryConfig {
        hosts: [(
            "docker.io".to_string(),
            HostConfig {
                mirrors_only: true,
                ..HostConfig::default()
            },
        )]
        .into(),
    };
    assert!(matches!(bad.validate(), Err(RegistryError::Config(_))));
}

/// A blob whose body is cut short is resumed with a Range request from where
/// it stopped, and the feed's reader sees the whole blob once it is verified.
#[tokio::test]
async fn cut_blob_resumes_with_a_range_request() {
    let layer: Vec<u8> = (0..600_000u32).map(|i| (i * 7 / 3) as u8).collect();
    let img = image("cut", &[&layer]);
    let mut c = Content::new();
    add_image(&mut c, "team/cut", Some("v1"), &img);
    let blob_path = format!("/v2/team/cut/blobs/{}", sha(&layer));
    let cuts = Arc::new(AtomicUsize::new(0));
    let (c2, cuts2, bp) = (c.clone(), cuts.clone(), blob_path.clone());
    let srv = TestServer::start(move |req| {
        if req.path() == bp {
            let from = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            let body = &c2[&bp].1;
            if from == 0 {
                // Announce everything, send a third: the client sees a short body.
                cuts2.fetch_add(1, Ordering::SeqCst);
                return Resp::new(200)
                    .body("application/octet-stream", body[..200_000].to_vec())
                    .header("Content-Length", &body.len().to_string());
            }
            return Resp::new(206).body("application/octet-stream", body[from..].to_vec());
        }
        serve_content(&c2, req)
    })
    .await;
    let r = reference(&format!("{}/team/cut:v1", srv.host()));
    let cfg = RegistryConfig::default();
    let client = Client::new(&cfg, &fast()).expect("client");
    let resolved = client.resolve(&r, None).await.expect("resolve");
    let desc = resolved.manifest.layers[0].clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = Feed::new();
    let progress = Progress::new("cut");
    let i = progress.add_blob(&desc.digest, desc.size);
    let mut reader = feed.reader();
    let read = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut v).map(|_| v)
    });
    let path = client
        .download(
            0,
            &r,
            None,
            &desc,
            dir.path(),
            1 << 30,
            Some((&feed, &progress, i)),
        )
        .await
        .expect("download");
    assert_eq!(std::fs::read(&path).expect("file"), layer);
    assert_eq!(read.join().expect("join").expect("read"), layer);
    assert_eq!(cuts.load(Ordering::SeqCst), 1);
    let ranges: Vec<String> = srv
        .requests()
        .iter()
        .filter(|q| q.path() == blob_path)
        .filter_map(|q| q.header("range").map(str::to_string))
        .collect();
    assert_eq!(ranges, vec!["bytes=200000-".to_string()]);
}

/// Pushes a tiny image to Debian's `docker-registry` and pulls it back.
#[tokio::test]
async fn docker_registry_round_trip() {
    let bin = Path::new("/usr/bin/docker-registry");
    if !bin.exists() {
        eprintln!(
            "skipped: {} is not installed (apt-get install docker-registry)",
            bin.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = dead_port().await;
    let conf = tmp.path().join("config.yml");
    std::fs::write(
        &conf,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            tmp.path().join("data").display()
        ),
    )
    .expect("write config");
    let child = std::process::Command::new(bin)
        .arg("serve")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start docker-registry");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);

    let base = format!("http://127.0.0.1:{port}/v2");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "docker-registry did not come up on port {port}");

    let img = image("tiny", &[b"tiny layer one", b"tiny layer two"]);
    let repo = "sycri/tiny";
    let mut blobs = vec![img.config.clone()];
    blobs.extend(img.layers.iter().cloned());
    for b in &blobs {
        push_blob(&http, &base, repo, b).await;
    }
    let resp = http
        .put(format!("{base}/{repo}/manifests/1.0"))
        .header("Content-Type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .expect("put manifest");
    assert_eq!(resp.status().as_u16(), 201, "manifest push");

    let r = reference(&format!("127.0.0.1:{port}/{repo}:1.0"));
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pull(&r, None, &RegistryConfig::default(), dir.path(), &fast())
        .await
        .expect("pull from docker-registry");
    assert_eq!(p.manifest_digest, img.digest);
    assert_eq!(p.config, img.config);
    for ((path, _, _), want) in p.layers.iter().zip(&img.layers) {
        assert_eq!(std::fs::read(path).ok().as_ref(), Some(want));
    }
    let r = reference(&format!("127.0.0.1:{port}/{repo}@{}", img.digest));
    let d = tempfile::tempdir().expect("tempdir");
    pull(&r, None, &RegistryConfig::default(), d.path(), &fast())
        .await
        .expect("pull by digest");
    let r = reference(&format!("127.0.0.1:{port}/{repo}:2.0"));
    let e = pull(&r, None, &RegistryConfig::default(), d.path(), &fast()).await;
    assert!(matches!(e, Err(RegistryError::NotFound(_))), "{e:?}");
}

/// A monolithic upload: POST for a session, PUT the bytes with the digest.
async fn push_blob(http: &reqwest::Client, base: &str, repo: &str, blob: &[u8]) {
    let resp = http
        .post(format!("{base}/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(resp.status().as_u16(), 202, "upload start");
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("upload location")
        .to_string();
    let url = if loc.starts_with("http") {
        loc
    } else {
        let origin = base.trim_end_matches("/v2");
        format!("{origin}{loc}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = http
        .put(format!("{url}{sep}digest={}", sha(blob)))
        .header("Content-Type", "application/octet-stream")
        .body(blob.to_vec())
        .send()
        .await
        .expect("put blob");
    assert_eq!(resp.status().as_u16(), 201, "blob upload");
}

#[test]
fn pull_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let Ok(client) = Client::new(&RegistryConfig::default(), &PullLimits::default()) else {
        panic!("client");
    };
    let r = reference("busybox");
    let dir = PathBuf::from("/nonexistent");
    let f = client.pull(&r, None, &dir);
    send(&f);
    let (cfg, limits) = (RegistryConfig::default(), PullLimits::default());
    let f = pull(&r, None, &cfg, &dir, &limits);
    send(&f);
}

#[tokio::test]
async fn a_pull_again_asks_only_for_the_tag_and_the_layers() {
    let amd = image("cache", &[b"cached layer"]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"{}","os":"linux"}}}}]}}"#,
        amd.digest,
        amd.manifest.len(),
        Platform::host().architecture
    )
    .into_bytes();
    let mut c = Content::new();
    for repo in ["one/app", "two/app"] {
        add_image(&mut c, repo, None, &amd);
        c.insert(
            format!("/v2/{repo}/manifests/1.0"),
            (OCI_INDEX.into(), index.clone()),
        );
    }
    let srv = registry(c).await;
    let client = Client::new(&RegistryConfig::default(), &fast()).expect("client");
    let paths = |from: usize| -> Vec<String> {
        srv.requests()[from..]
            .iter()
            .map(|r| r.path().to_string())
            .collect()
    };
    let pull = |repo: &str| {
        let r = reference(&format!("{}/{repo}:1.0", srv.host()));
        let client = &client;
        async move {
            let d = tempfile::tempdir().expect("tempdir");
            client.pull(&r, None, d.path()).await.expect("pull")
        }
    };
    let first = pull("one/app").await;
    let mut asked = paths(0);
    asked.sort();
    let mut want = vec![
        "/v2/one/app/manifests/1.0".to_string(),
        format!("/v2/one/app/manifests/{}", amd.digest),
        format!("/v2/one/app/blobs/{}", amd.config_digest),
        format!("/v2/one/app/blobs/{}", sha(&amd.layers[0])),
    ];
    want.sort();
    assert_eq!(asked, want);

    // Again: the tag may name something else now, so it is asked; what
    // the digests name is known.
    let n = srv.requests().len();
    let again = pull("one/app").await;
    assert_eq!(
        paths(n),
        [
            "/v2/one/app/manifests/1.0".to_string(),
            format!("/v2/one/app/blobs/{}", sha(&amd.layers[0]))
        ]
    );
    assert_eq!(again.config, first.config);
    assert_eq!(again.image_manifest_digest, amd.digest);

    // Another repository naming the same digests is asked for all of them.
    let n = srv.requests().len();
    pull("two/app").await;
    assert_eq!(paths(n).len(), 4, "{:?}", paths(n));
}
