//! The CRI streaming server: exec, attach and port-forward over HTTP upgraded to
//! SPDY/3.1 or WebSocket.
//!
//! The Exec, Attach and PortForward RPCs only register a request and return an
//! absolute URL (`http://HOST:PORT/exec/<token>`); the client then connects
//! there. Tokens are single-use, expire after [`TOKEN_TTL`], and at most
//! [`MAX_TOKENS`] are outstanding. An unknown, expired or reused token is 404.
//!
//! Protocols (negotiated on the upgrade):
//! - SPDY (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version`): remotecommand
//!   `v4.channel.k8s.io`, `v3.channel.k8s.io`, `v2.channel.k8s.io` for exec and
//!   attach, `portforward.k8s.io` for port-forward.
//! - WebSocket (`Sec-WebSocket-Protocol`): `v5.channel.k8s.io`,
//!   `v4.channel.k8s.io` (and their `base64.` variants) for exec and attach;
//!   `SPDY/3.1+portforward.k8s.io` (SPDY tunnelled in binary messages) and
//!   `portforward.k8s.io` (channels per port) for port-forward.

pub mod attach;
pub mod dictionary;
pub mod exec;
pub mod portforward;
pub mod remotecommand;
mod sha1;
pub mod spdy;
pub mod websocket;

use crate::runtime::Runtime;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most tokens outstanding at once.
pub const MAX_TOKENS: usize = 1000;
/// How long a client has to open its streams after the upgrade.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// SPDY subprotocols for exec and attach, best first.
const REMOTECOMMAND_SPDY: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
/// WebSocket subprotocols for exec and attach, best first.
const REMOTECOMMAND_WS: [&str; 4] = [
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "base64.v5.channel.k8s.io",
    "base64.v4.channel.k8s.io",
];
pub const PORTFORWARD_PROTOCOL: &str = "portforward.k8s.io";
/// Port-forward over WebSocket, as client-go does it: SPDY inside binary messages.
pub const PORTFORWARD_WS_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";

#[derive(thiserror::Error, Debug)]
pub enum StreamingError {
    #[error("stream_address {addr:?}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("stream_address {0:?} is not host:port")]
    Address(String),
    #[error("no randomness for a token: {0}")]
    Random(std::io::Error),
    #[error("too many streaming requests are pending ({MAX_TOKENS})")]
    TooMany,
}

impl From<StreamingError> for crate::error::Error {
    fn from(e: StreamingError) -> Self {
        match e {
            StreamingError::TooMany => crate::error::Error::FailedPrecondition(e.to_string()),
            other => crate::error::Error::Internal(other.to_string()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ExecParams {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Clone, Debug)]
pub struct AttachParams {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Clone, Debug)]
pub struct PortForwardParams {
    pub pod_id: String,
    pub ports: Vec<i32>,
}

/// A registered request, waiting for its client.
#[derive(Clone, Debug)]
pub enum Pending {
    Exec(ExecParams),
    Attach(AttachParams),
    PortForward(PortForwardParams),
}

impl Pending {
    fn route(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

/// The registry of tokens and the base URL; held by the runtime.
pub struct Streaming {
    base: String,
    tokens: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl Streaming {
    pub fn new(base: String) -> Streaming {
        Streaming {
            base,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The server's base URL, e.g. `http://127.0.0.1:34567`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers a request and returns the URL its client must use.
    pub fn register(&self, req: Pending) -> Result<String, StreamingError> {
        let token = new_token()?;
        let route = req.route();
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        t.retain(|_, (at, _)| now.duration_since(*at) < TOKEN_TTL);
        if t.len() >= MAX_TOKENS {
            return Err(StreamingError::TooMany);
        }
        t.insert(token.clone(), (now, req));
        Ok(format!("{}/{route}/{token}", self.base))
    }

    /// Takes (consumes) the request of `token` on `route`, if it is valid.
    fn take(&self, route: &str, token: &str) -> Option<Pending> {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (at, req) = t.remove(token)?;
        if at.elapsed() >= TOKEN_TTL {
            return None;
        }
        if req.route() != route {
            // Valid token on the wrong path: keep it for the right one.
            t.insert(token.to_string(), (at, req));
            return None;
        }
        Some(req)
    }
}

/// 16 random bytes, URL-safe base64 (no padding).
fn new_token() -> Result<String, StreamingError> {
    use base64::Engine;
    let mut buf = [0u8; 16];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into our buffer.
        let r =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(StreamingError::Random(e));
        }
        filled += r as usize;
    }
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// Binds the streaming server on `addr` and serves it in the background.
pub async fn start(rt: Arc<Runtime>, addr: &str) -> Result<Arc<Streaming>, StreamingError> {
    let sa: SocketAddr = match addr.parse() {
        Ok(sa) => sa,
        Err(_) => tokio::net::lookup_host(addr)
            .await
            .map_err(|_| StreamingError::Address(addr.to_string()))?
            .next()
            .ok_or_else(|| StreamingError::Address(addr.to_string()))?,
    };
    let listener =
        tokio::net::TcpListener::bind(sa)
            .await
            .map_err(|source| StreamingError::Bind {
                addr: addr.to_string(),
                source,
            })?;
    let local = listener
        .local_addr()
        .map_err(|source| StreamingError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    // A wildcard address is no place to connect to: name loopback instead.
    let host = match local.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let st = Arc::new(Streaming::new(format!("http://{host}:{}", local.port())));
    tracing::info!(address = %local, url = %st.base_url(), "streaming server listening");
    let st2 = st.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let rt = rt.clone();
            let st = st2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let rt = rt.clone();
                    let st = st.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(rt, st, req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades();
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "streaming connection ended");
                }
            });
        }
    });
    Ok(st)
}

fn plain(status: StatusCode, text: &str) -> Response<String> {
    let mut r = Response::new(format!("{text}\n"));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a header that may be repeated or comma-separated.
fn header_list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(h: &HeaderMap, name: &str, token: &str) -> bool {
    header_list(h, name)
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

/// The first protocol the client offers that we support (client's order).
fn negotiate<'a>(offered: &[String], ours: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| ours.iter().find(|s| **s == o.as_str()).copied())
}

fn handle(rt: Arc<Runtime>, st: Arc<Streaming>, mut req: Request<Incoming>) -> Response<String> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_matches('/').split('/');
    let (Some(route), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    if !matches!(route, "exec" | "attach" | "portforward") {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let Some(pending) = st.take(route, token) else {
        tracing::debug!(route, "streaming: unknown, expired or used token");
        return plain(StatusCode::NOT_FOUND, "unknown or expired token");
    };
    let h = req.headers();
    let websocket = has_token(h, "upgrade", "websocket");
    let spdy = has_token(h, "upgrade", "SPDY/3.1");
    if !has_token(h, "connection", "upgrade") || !(websocket || spdy) {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected an upgrade to SPDY/3.1 or websocket",
        );
    }
    let is_pf = matches!(pending, Pending::PortForward(_));
    if websocket {
        let key = match h.get("sec-websocket-key").and_then(|v| v.to_str().ok()) {
            Some(k) => k.trim().to_string(),
            None => return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key"),
        };
        let offered = header_list(h, "sec-websocket-protocol");
        let ours: &[&str] = if is_pf {
            &[PORTFORWARD_WS_TUNNEL, PORTFORWARD_PROTOCOL]
        } else {
            &REMOTECOMMAND_WS
        };
        let Some(proto) = negotiate(&offered, ours) else {
            let mut r = plain(
                StatusCode::BAD_REQUEST,
                &format!("no supported websocket subprotocol among {offered:?}"),
            );
            if let Ok(v) = HeaderValue::from_str(&ours.join(", ")) {
                r.headers_mut().insert("sec-websocket-protocol", v);
            }
            return r;
        };
        let query = req.uri().query().unwrap_or("").to_string();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(up) => {
                    websocket::serve(rt, pending, proto, &query, TokioIo::new(up)).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut r = Response::new(String::new());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hs = r.headers_mut();
        hs.insert("connection", HeaderValue::from_static("Upgrade"));
        hs.insert("upgrade", HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&websocket::accept_key(&key)) {
            hs.insert("sec-websocket-accept", v);
        }
        hs.insert("sec-websocket-protocol", HeaderValue::from_static(proto));
        return r;
    }
    // SPDY.
    let offered = header_list(h, "x-stream-protocol-version");
    if offered.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "missing X-Stream-Protocol-Version header",
        );
    }
    let ours: &[&str] = if is_pf {
        &[PORTFORWARD_PROTOCOL]
    } else {
        &REMOTECOMMAND_SPDY
    };
    let Some(proto) = negotiate(&offered, ours) else {
        let mut r = plain(
            StatusCode::FORBIDDEN,
            &format!("unable to upgrade: none of the protocols {offered:?} is supported"),
        );
        for p in ours {
            r.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(p),
            );
        }
        return r;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                let conn = spdy::serve(TokioIo::new(up));
                serve_spdy(rt, pending, proto, conn).await;
            }
            Err(e) => tracing::debug!(error = %e, "spdy upgrade failed"),
        }
    });
    let mut r = Response::new(String::new());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hs = r.headers_mut();
    hs.insert("connection", HeaderValue::from_static("Upgrade"));
    hs.insert("upgrade", HeaderValue::from_static("SPDY/3.1"));
    hs.insert("x-stream-protocol-version", HeaderValue::from_static(proto));
    r
}

/// Runs one request over an established SPDY connection.
pub async fn serve_spdy(rt: Arc<Runtime>, pending: Pending, proto: &str, conn: spdy::Conn) {
    match pending {
        Pending::PortForward(p) => portforward::serve_spdy(rt, p, conn).await,
        Pending::Exec(p) => {
            let opts = remotecommand::Opts {
                stdin: p.stdin,
                stdout: p.stdout,
                stderr: p.stderr,
                tty: p.tty,
            };
            remotecommand::serve_spdy(conn, proto, opts, remotecommand::Target::Exec(rt, p)).await
        }
        Pending::Attach(p) => {
            let opts = remotecommand::Opts {
                stdin: p.stdin,
                stdout: p.stdout,
                stderr: p.stderr,
                tty: p.tty,
            };
            remotecommand::serve_spdy(conn, proto, opts, remotecommand::Target::Attach(rt, p)).await
        }
    }
}

fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> crate::error::Result<()> {
    use crate::error::Error;
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout, or stderr must be set".into(),
        ));
    }
    Ok(())
}

/// The Exec, Attach and PortForward RPCs: check the request, register it,
/// return its URL.
impl Runtime {
    fn streaming_server(&self) -> crate::error::Result<&Arc<Streaming>> {
        self.streaming.get().ok_or_else(|| {
            crate::error::Error::FailedPrecondition("the streaming server is not running".into())
        })
    }

    async fn running_container(&self, id: &str) -> crate::error::Result<String> {
        use crate::error::Error;
        let (id, c) = Runtime::find(&self.containers, id)
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))?;
        if c.lock().await.refresh() != crate::containers::State::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(id)
    }

    pub async fn exec_url(
        &self,
        req: crate::proto::cri::ExecRequest,
    ) -> crate::error::Result<String> {
        if req.cmd.is_empty() {
            return Err(crate::error::Error::InvalidArgument(
                "exec needs a command".into(),
            ));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let container_id = self.running_container(&req.container_id).await?;
        let url = self
            .streaming_server()?
            .register(Pending::Exec(ExecParams {
                container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            }))?;
        Ok(url)
    }

    pub async fn attach_url(
        &self,
        req: crate::proto::cri::AttachRequest,
    ) -> crate::error::Result<String> {
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let container_id = self.running_container(&req.container_id).await?;
        let url = self
            .streaming_server()?
            .register(Pending::Attach(AttachParams {
                container_id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            }))?;
        Ok(url)
    }

    pub async fn port_forward_url(
        &self,
        req: crate::proto::cri::PortForwardRequest,
    ) -> crate::error::Result<String> {
        use crate::error::Error;
        let (pod_id, pod) = Runtime::find(&self.pods, &req.pod_sandbox_id).ok_or_else(|| {
            Error::NotFound(format!("pod sandbox {:?} not found", req.pod_sandbox_id))
        })?;
        if !pod.lock().await.rec.ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!("invalid port {bad}")));
        }
        let url = self
            .streaming_server()?
            .register(Pending::PortForward(PortForwardParams {
                pod_id,
                ports: req.port,
            }))?;
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_bound_to_their_route() {
        let st = Streaming::new("http://127.0.0.1:1".into());
        let url = st
            .register(Pending::PortForward(PortForwardParams {
                pod_id: "p".into(),
                ports: vec![80],
            }))
            .expect("register");
        let token = url.rsplit('/').next().unwrap_or_default().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/portforward/"));
        assert!(st.take("exec", &token).is_none());
        assert!(st.take("portforward", &token).is_some());
        assert!(st.take("portforward", &token).is_none());
        assert!(st.take("portforward", "nope").is_none());
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        let offered: Vec<String> = [
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            negotiate(&offered, &REMOTECOMMAND_SPDY),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(
            negotiate(&offered, &REMOTECOMMAND_WS),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(negotiate(&offered, &[PORTFORWARD_PROTOCOL]), None);
    }
}
