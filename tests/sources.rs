//! PullImage of SIF files that are stored whole: http(s) URLs, oras:// (a SIF
//! as an OCI artifact) and library:// (the Sylabs library API, OCI redirect
//! and legacy image file paths), each against a small local server.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use sycri::proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One canned answer: status, headers, body.
#[derive(Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn ok(body: Vec<u8>, content_type: &str) -> Answer {
    Answer {
        status: 200,
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
    }
}

fn status_only(status: u16) -> Answer {
    Answer {
        status,
        headers: vec![],
        body: vec![],
    }
}

type Routes = Arc<Mutex<HashMap<String, Answer>>>;

/// A tiny HTTP/1.1 server on 127.0.0.1 answering by path (query ignored) and
/// recording each request's path and Authorization header.
struct Httpd {
    port: u16,
    routes: Routes,
    seen: Arc<Mutex<Vec<(String, String)>>>,
    /// Paths under this prefix need `Authorization: Bearer <token>` (else 401 with a challenge).
    protected: Arc<Mutex<Option<(String, String)>>>,
}

impl Httpd {
    async fn start() -> Httpd {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let routes: Routes = Arc::default();
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let protected: Arc<Mutex<Option<(String, String)>>> = Arc::default();
        let (r, sn, pr) = (routes.clone(), seen.clone(), protected.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (r, sn, pr) = (r.clone(), sn.clone(), pr.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = head.lines();
                    let first = lines.next().unwrap_or("");
                    let mut parts = first.split(' ');
                    let method = parts.next().unwrap_or("").to_string();
                    let target = parts.next().unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/").to_string();
                    let auth = lines
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_string())
                        .unwrap_or_default();
                    sn.lock().expect("seen").push((path.clone(), auth.clone()));
                    let guard = pr.lock().expect("protected").clone();
                    let answer = match guard {
                        Some((prefix, token))
                            if path.starts_with(&prefix) && auth != format!("Bearer {token}") =>
                        {
                            Answer {
                                status: 401,
                                headers: vec![(
                                    "WWW-Authenticate".into(),
                                    "Bearer realm=\"http://127.0.0.1:1/token\",service=\"lib\""
                                        .into(),
                                )],
                                body: vec![],
                            }
                        }
                        _ => r
                            .lock()
                            .expect("routes")
                            .get(&path)
                            .cloned()
                            .unwrap_or(status_only(404)),
                    };
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        answer.status,
                        answer.body.len()
                    );
                    for (k, v) in &answer.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    if method != "HEAD" {
                        bytes.extend_from_slice(&answer.body);
                    }
                    let _ = conn.write_all(&bytes).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Httpd {
            port,
            routes,
            seen,
            protected,
        }
    }

    fn route(&self, path: &str, a: Answer) {
        self.routes
            .lock()
            .expect("routes")
            .insert(path.to_string(), a);
    }

    fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// Serves `sif` as an OCI artifact at /v2/<repo>/manifests/<tag>.
fn serve_artifact(h: &Httpd, repo: &str, tag: &str, sif: &[u8], layers: usize) {
    let cfg = b"{}".to_vec();
    let layer = serde_json::json!({
        "mediaType": "application/vnd.sylabs.sif.layer.v1.sif",
        "digest": digest(sif),
        "size": sif.len(),
        "annotations": {"org.opencontainers.image.title": "busybox.sif"}
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.sylabs.sif.config.v1+json", "digest": digest(&cfg), "size": cfg.len()},
        "layers": vec![layer; layers],
    });
    let m = serde_json::to_vec(&manifest).expect("json");
    h.route("/v2/", ok(b"{}".to_vec(), "application/json"));
    h.route(
        &format!("/v2/{repo}/manifests/{tag}"),
        ok(m, "application/vnd.oci.image.manifest.v1+json"),
    );
    h.route(
        &format!("/v2/{repo}/blobs/{}", digest(sif)),
        ok(sif.to_vec(), "application/octet-stream"),
    );
    h.route(
        &format!("/v2/{repo}/blobs/{}", digest(&cfg)),
        ok(cfg, "application/json"),
    );
}

async fn pull(s: &mut Server, image: &str) -> Result<String, tonic::Status> {
    s.img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().image_ref)
}

fn stored_files(s: &Server) -> usize {
    std::fs::read_dir(s.storage_dir().join("images/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_oras_and_library_sources() {
    let Some(fixture) = busybox_sif("http_oras_and_library_sources") else {
        return;
    };
    let sif = std::fs::read(&fixture).expect("read fixture");
    let id = digest(&sif);
    let h = Httpd::start().await;
    let mut s = Server::start().await;

    // http://: the file as it is.
    h.route(
        "/files/busybox.sif",
        ok(sif.clone(), "application/octet-stream"),
    );
    let url = format!("http://{}/files/busybox.sif", h.base());
    assert_eq!(pull(&mut s, &url).await.expect("http pull"), id);
    let st = s
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: url.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.image.map(|i| i.repo_tags), Some(vec![url.clone()]));

    // It runs.
    let pod_cfg = pod_config("src", &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    let c = create(
        &mut s.rt,
        &pod,
        &pod_cfg,
        container_config("hello", &url, &["echo", "from-http"]),
    )
    .await
    .expect("create");
    start(&mut s.rt, &c).await.expect("start");
    wait_log_line(&s.log_dir().join("hello.log"), "from-http").await;

    // oras://: one layer of the SIF media type; the same file is stored once.
    serve_artifact(&h, "sylabs/busybox", "v1", &sif, 1);
    let oras = format!("oras://{}/sylabs/busybox:v1", h.base());
    assert_eq!(pull(&mut s, &oras).await.expect("oras pull"), id);
    assert_eq!(stored_files(&s), 1);
    let listed = s
        .img
        .list_images(cri::ListImagesRequest::default())
        .await
        .expect("list")
        .into_inner()
        .images;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].repo_tags.contains(&oras) && listed[0].repo_tags.contains(&url));
    assert_eq!(
        listed[0].repo_digests,
        vec![format!("{}/sylabs/busybox@{id}", h.base())]
    );

    // library:// through the OCI redirect, with the library's token on the registry.
    h.route(
        "/v1/oci-redirect",
        ok(
            serde_json::to_vec(&serde_json::json!({"token": "libtoken", "url": format!("http://{}", h.base()), "name": "sylabs/busybox"}))
                .expect("json"),
            "application/json",
        ),
    );
    *h.protected.lock().expect("protected") =
        Some(("/v2/sylabs/busybox/".into(), "libtoken".into()));
    let lib = format!("library://{}/sylabs/default/busybox:v1", h.base());
    assert_eq!(pull(&mut s, &lib).await.expect("library pull"), id);
    let authed = h
        .seen
        .lock()
        .expect("seen")
        .iter()
        .any(|(p, a)| p.starts_with("/v2/sylabs/busybox/blobs/") && a == "Bearer libtoken");
    assert!(authed, "the library token reaches the registry");
    *h.protected.lock().expect("protected") = None;

    // library:// through the legacy image file API (no OCI redirect), with a redirect to the file.
    h.route("/v1/oci-redirect", status_only(404));
    h.route(
        "/v1/imagefile/sylabs/default/old:latest",
        Answer {
            status: 303,
            headers: vec![("Location".into(), "/files/busybox.sif".into())],
            body: vec![],
        },
    );
    let old = format!("library://{}/sylabs/default/old", h.base());
    assert_eq!(pull(&mut s, &old).await.expect("legacy library pull"), id);

    // Failures: clear codes, nothing half stored.
    let before = stored_files(&s);
    let err = pull(&mut s, &format!("http://{}/files/missing.sif", h.base()))
        .await
        .expect_err("404");
    assert_eq!(err.code(), tonic::Code::NotFound);
    h.route(
        "/files/garbage.sif",
        ok(vec![7u8; 50_000], "application/octet-stream"),
    );
    let err = pull(&mut s, &format!("http://{}/files/garbage.sif", h.base()))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    serve_artifact(&h, "sylabs/two", "v1", &sif, 2);
    let err = pull(&mut s, &format!("oras://{}/sylabs/two:v1", h.base()))
        .await
        .expect_err("two layers");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = pull(&mut s, "library://only/two")
        .await
        .expect_err("bad library ref");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = pull(&mut s, "shub://x/y").await.expect_err("shub");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(stored_files(&s), before);
    let tmp = s.storage_dir().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "no pull leftovers"
    );

    s.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}
