//! WebSocket (RFC 6455, server side) for the streaming server.
//!
//! Exec and attach: `v4.channel.k8s.io` and `v5.channel.k8s.io` put one byte
//! of channel in front of each binary message (0 stdin, 1 stdout, 2 stderr,
//! 3 error, 4 resize); v5 adds channel 255, `[255, ch]`, with which the
//! client closes one channel (stdin). The server ends all channels by closing
//! the connection. The `base64.` variants send text
//! messages: the channel as an ASCII digit, then the data in base64.
//!
//! Port-forward: `SPDY/3.1+portforward.k8s.io` carries a whole SPDY connection
//! in binary messages (client-go's tunnel), served by the SPDY code; plain
//! `portforward.k8s.io` has two channels per requested port (`?port=` in the
//! URL): data `2i` and error `2i+1`, each starting with the port as u16
//! little-endian in the server's first message.

use super::backend::Backend;
use super::portforward;
use super::remotecommand::{self, Target};
use super::request::{Pending, PortForwardParams, PORTFORWARD_WS_TUNNEL};
use super::session::{self, Outcome, Session};
use super::spdy::Chunk;
use super::wsframe::{self, Message, Writer, CLOSE_CHANNEL, MAX_SEND, OP_BINARY, OP_CLOSE};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Serves one request over an upgraded WebSocket connection.
pub async fn serve<IO>(
    backend: Arc<dyn Backend>,
    pending: Pending,
    proto: &str,
    query: &str,
    io: IO,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(io);
    let (w, rx) = Writer::new(proto.starts_with("base64."));
    let writer_task = tokio::spawn(wsframe::write_loop(wr, rx));
    // Messages from the client, read by a task of their own (reading a frame
    // is not cancel-safe); the channel ends with the connection.
    let (msg_tx, mut messages) = mpsc::channel::<Message>(16);
    let w0 = w.clone();
    let reader = tokio::spawn(async move {
        while let Some(m) = wsframe::read_message(&mut rd, &w0).await {
            if msg_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    match pending {
        Pending::PortForward(p) if proto == PORTFORWARD_WS_TUNNEL => {
            // SPDY inside binary messages: a pipe between the two.
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let (mut from_spdy, mut to_spdy) = tokio::io::split(ours);
            let conn = super::spdy::serve(theirs);
            let w2 = w.clone();
            let up = tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_SEND];
                loop {
                    match from_spdy.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !w2.raw(OP_BINARY, buf[..n].to_vec()).await {
                                break;
                            }
                        }
                    }
                }
            });
            let down = tokio::spawn(async move {
                while let Some(m) = messages.recv().await {
                    if to_spdy.write_all(&m.data).await.is_err() {
                        break;
                    }
                }
                let _ = to_spdy.shutdown().await;
            });
            portforward::serve_spdy(backend, p, conn).await;
            down.abort();
            let _ = up.await;
        }
        Pending::PortForward(p) => {
            serve_portforward_channels(backend, p, query, &mut messages, &w).await;
        }
        Pending::Exec(p) => {
            serve_remotecommand(&mut messages, &w, Target::Exec(backend, p)).await;
        }
        Pending::Attach(p) => {
            serve_remotecommand(&mut messages, &w, Target::Attach(backend, p)).await;
        }
    }
    w.raw(OP_CLOSE, 1000u16.to_be_bytes().to_vec()).await;
    drop(w);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    reader.abort();
}

async fn serve_remotecommand(messages: &mut mpsc::Receiver<Message>, w: &Writer, target: Target) {
    let opts = target.opts();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Chunk>(16);
    let (resize_tx, resize_rx) = mpsc::channel::<Chunk>(4);
    let (gone_tx, gone_rx) = watch::channel(false);
    let session = Session {
        opts,
        stdin: opts.stdin.then_some(stdin_rx),
        resize: opts.tty.then(|| session::sizes(resize_rx)),
        out: session::Output::Ws(w.clone()),
        gone: gone_rx,
    };
    let run = target.run(session);
    tokio::pin!(run);
    let mut stdin_tx = Some(stdin_tx);
    let base64 = w.base64;
    let outcome = loop {
        tokio::select! {
            o = &mut run => break o,
            m = messages.recv() => {
                let Some(m) = m else {
                    let _ = gone_tx.send(true);
                    // Let the backend end what it started.
                    break run.await;
                };
                let (ch, data) = match wsframe::decode(base64, &m) {
                    Some(x) => x,
                    None => continue,
                };
                match ch {
                    session::STDIN => {
                        if let Some(tx) = &stdin_tx {
                            if !data.is_empty() && tx.send(Chunk::Data(data)).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                    }
                    session::RESIZE => {
                        let _ = resize_tx.send(Chunk::Data(data)).await;
                    }
                    CLOSE_CHANNEL if data.first() == Some(&session::STDIN) => {
                        stdin_tx = None;
                    }
                    _ => {}
                }
            }
        }
    };
    let status = match outcome {
        Outcome::Failed(ref m) if m == "the client went away" => None,
        ref o => Some(remotecommand::status_json(o)),
    };
    session::Output::Ws(w.clone()).finish(status).await;
}

/// `portforward.k8s.io` over WebSocket: one connection per requested port.
async fn serve_portforward_channels(
    backend: Arc<dyn Backend>,
    p: PortForwardParams,
    query: &str,
    messages: &mut mpsc::Receiver<Message>,
    w: &Writer,
) {
    let mut ports: Vec<u16> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .filter_map(|v| v.parse().ok())
        .collect();
    if ports.is_empty() {
        ports = p
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
    }
    let connector = match backend.port_forward(&p.pod_id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(pod = %p.pod_id, error = %e, "port-forward refused");
            return;
        }
    };
    let mut sinks: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().enumerate() {
        let data_ch = (2 * i) as u8;
        let err_ch = data_ch + 1;
        let prefix = port.to_le_bytes();
        w.raw(OP_BINARY, vec![data_ch, prefix[0], prefix[1]]).await;
        w.raw(OP_BINARY, vec![err_ch, prefix[0], prefix[1]]).await;
        match connector.connect(*port).await {
            Ok(tcp) => {
                let (mut r, wr) = tcp.into_split();
                sinks.push(Some(wr));
                let w = w.clone();
                readers.spawn(async move {
                    let mut buf = vec![0u8; MAX_SEND];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                let mut m = Vec::with_capacity(n + 1);
                                m.push(data_ch);
                                m.extend_from_slice(&buf[..n]);
                                if !w.raw(OP_BINARY, m).await {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
            Err(e) => {
                let mut m = vec![err_ch];
                m.extend_from_slice(e.as_bytes());
                w.raw(OP_BINARY, m).await;
                sinks.push(None);
            }
        }
    }
    // The client's first message on each channel repeats the port: skip it.
    let mut seen = vec![false; sinks.len()];
    loop {
        tokio::select! {
            m = messages.recv() => {
                let Some(m) = m else { break };
                let Some((&ch, data)) = m.data.split_first() else { continue };
                if ch % 2 == 1 {
                    continue;
                }
                let i = usize::from(ch / 2);
                let Some(sink) = sinks.get_mut(i) else { continue };
                let data = if !seen[i] {
                    seen[i] = true;
                    data.get(2..).unwrap_or_default()
                } else {
                    data
                };
                if let Some(s) = sink {
                    if !data.is_empty() && s.write_all(data).await.is_err() {
                        *sink = None;
                    }
                }
            }
            r = readers.join_next(), if !readers.is_empty() => {
                if r.is_none() {
                    continue;
                }
                if readers.is_empty() {
                    break;
                }
            }
        }
    }
    readers.shutdown().await;
}
