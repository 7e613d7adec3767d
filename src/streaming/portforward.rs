//! Port-forward (`portforward.k8s.io`): each forwarded connection is a pair of
//! SPDY streams with the same `requestID` header: `streamType: error` (the
//! client half-closes it at once; we write a plain-text error there if the
//! connection fails) and `streamType: data` (the bytes), with the pod's port
//! in the `port` header.
//!
//! The connections to the pod's ports come from the backend (the engine
//! makes them inside the pod's network namespace).

use super::backend::{Backend, PortConnector};
use super::request::{PortForwardParams, STREAM_CREATION_TIMEOUT};
use super::spdy::{self, Chunk};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Relays between one data stream and one TCP connection until the pod's
/// side ended (or the client reset the stream). The client's half-close only
/// ends the direction into the pod; client-go waits for the error stream to
/// end once the pod's side is done, so that is when the session ends.
async fn relay(
    w: &spdy::Writer,
    id: u32,
    mut data: tokio::sync::mpsc::Receiver<Chunk>,
    tcp: TcpStream,
) {
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf = vec![0u8; 32 * 1024];
    let (mut in_done, mut out_done) = (false, false);
    while !out_done {
        tokio::select! {
            c = data.recv(), if !in_done => match c {
                Some(Chunk::Data(d)) => {
                    if wr.write_all(&d).await.is_err() {
                        in_done = true;
                    }
                }
                Some(Chunk::Reset) => return,
                None => {
                    let _ = wr.shutdown().await;
                    in_done = true;
                }
            },
            n = rd.read(&mut buf), if !out_done => match n {
                Ok(0) | Err(_) => {
                    w.close(id).await;
                    out_done = true;
                }
                Ok(n) => {
                    if !w.data(id, &buf[..n]).await {
                        return;
                    }
                }
            },
        }
    }
}

async fn forward(
    connector: Arc<dyn PortConnector>,
    w: spdy::Writer,
    pod: String,
    data: spdy::Stream,
    error: spdy::Stream,
) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0);
    let Some(port) = port else {
        let msg = format!("invalid port {:?}", data.header("port"));
        w.data(error.id, msg.as_bytes()).await;
        w.close(error.id).await;
        w.close(data.id).await;
        return;
    };
    match connector.connect(port).await {
        Ok(tcp) => {
            tracing::debug!(pod = %pod, port, "port-forward connected");
            let id = data.id;
            relay(&w, id, data.data, tcp).await;
        }
        Err(e) => {
            tracing::debug!(pod = %pod, port, error = %e, "port-forward failed");
            let msg = format!("error forwarding port {port} to pod {pod}: {e}");
            w.data(error.id, msg.as_bytes()).await;
            w.close(data.id).await;
        }
    }
    w.close(error.id).await;
}

/// Port-forward over an established SPDY connection.
pub async fn serve_spdy(backend: Arc<dyn Backend>, p: PortForwardParams, mut conn: spdy::Conn) {
    let connector: Arc<dyn PortConnector> = match backend.port_forward(&p.pod_id).await {
        Ok(c) => Arc::from(c),
        Err(e) => {
            tracing::warn!(pod = %p.pod_id, error = %e, "port-forward refused");
            conn.finish(Duration::ZERO).await;
            return;
        }
    };
    // Streams waiting for their partner, by request id.
    let mut waiting: HashMap<String, (tokio::time::Instant, spdy::Stream)> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), conn.incoming.recv()).await;
        // Partners that never came.
        waiting.retain(|_, (at, s)| {
            let keep = at.elapsed() < STREAM_CREATION_TIMEOUT;
            if !keep {
                tracing::debug!(stream = s.id, "port-forward stream without a partner");
            }
            keep
        });
        while tasks.try_join_next().is_some() {}
        let s = match next {
            Ok(Some(s)) => s,
            Ok(None) => break,
            Err(_) => continue,
        };
        let kind = s.header("streamtype").unwrap_or("").to_string();
        let request = s
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| format!("port-{}", s.header("port").unwrap_or("")));
        if kind != "data" && kind != "error" {
            conn.writer.reset(s.id, spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        let Some((_, other)) = waiting.remove(&request) else {
            waiting.insert(request, (tokio::time::Instant::now(), s));
            continue;
        };
        let (data, error) = if kind == "data" {
            (s, other)
        } else {
            (other, s)
        };
        if data.header("streamtype") != Some("data") || error.header("streamtype") != Some("error")
        {
            conn.writer
                .reset(s_id(&data), spdy::RST_PROTOCOL_ERROR)
                .await;
            conn.writer
                .reset(s_id(&error), spdy::RST_PROTOCOL_ERROR)
                .await;
            continue;
        }
        tasks.spawn(forward(
            connector.clone(),
            conn.writer.clone(),
            p.pod_id.clone(),
            data,
            error,
        ));
    }
    // The client is gone: its connections go with it.
    tasks.shutdown().await;
    drop(connector);
    conn.finish(Duration::ZERO).await;
}

fn s_id(s: &spdy::Stream) -> u32 {
    s.id
}
