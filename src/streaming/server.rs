//! The streaming server's HTTP side: the upgrade to SPDY/3.1 or WebSocket,
//! the subprotocol negotiation, and the hand-off of each session to the
//! remotecommand or port-forward code.

use super::backend::Backend;
use super::request::{
    Pending, Streaming, StreamingError, PORTFORWARD_PROTOCOL, PORTFORWARD_WS_TUNNEL,
    REMOTECOMMAND_SPDY, REMOTECOMMAND_WS,
};
use super::{portforward, remotecommand, spdy, websocket, wsframe};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The streaming server, bound but not serving yet: the runtime needs its
/// token registry before it exists, and the server needs the runtime.
pub struct Server {
    listener: tokio::net::TcpListener,
    registry: Arc<Streaming>,
}

/// Binds the streaming server on `addr`.
pub async fn bind(addr: &str) -> Result<Server, StreamingError> {
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
    let registry = Arc::new(Streaming::new(format!("http://{host}:{}", local.port())));
    tracing::info!(address = %local, url = %registry.base_url(), "streaming server listening");
    Ok(Server { listener, registry })
}

impl Server {
    /// The token registry the Exec, Attach and PortForward RPCs use.
    pub fn registry(&self) -> Arc<Streaming> {
        self.registry.clone()
    }

    /// Serves in the background, running sessions on `backend`.
    pub fn serve(self, backend: Arc<dyn Backend>) {
        let Server { listener, registry } = self;
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
                let backend = backend.clone();
                let st = registry.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let backend = backend.clone();
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(backend, st, req)) }
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
    }
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

fn handle(
    backend: Arc<dyn Backend>,
    st: Arc<Streaming>,
    mut req: Request<Incoming>,
) -> Response<String> {
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
                    websocket::serve(backend, pending, proto, &query, TokioIo::new(up)).await;
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let mut r = Response::new(String::new());
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let hs = r.headers_mut();
        hs.insert("connection", HeaderValue::from_static("Upgrade"));
        hs.insert("upgrade", HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&wsframe::accept_key(&key)) {
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
                serve_spdy(backend, pending, proto, conn).await;
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
pub async fn serve_spdy(
    backend: Arc<dyn Backend>,
    pending: Pending,
    proto: &str,
    conn: spdy::Conn,
) {
    match pending {
        Pending::PortForward(p) => portforward::serve_spdy(backend, p, conn).await,
        Pending::Exec(p) => {
            remotecommand::serve_spdy(conn, proto, remotecommand::Target::Exec(backend, p)).await
        }
        Pending::Attach(p) => {
            remotecommand::serve_spdy(conn, proto, remotecommand::Target::Attach(backend, p)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
