//! Serving the CRI on a unix socket until SIGTERM or SIGINT. Stopping the
//! server never stops containers: their monitors carry on without us.

use crate::config::Config;
use crate::cri::{ImageService, RuntimeService};
use crate::engine::{LinuxEngine, Reaper};
use crate::proto::cri::image_service_server::ImageServiceServer;
use crate::proto::cri::runtime_service_server::RuntimeServiceServer;
use crate::service::Runtime;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

#[derive(thiserror::Error, Debug)]
pub enum ServeError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Runtime(#[from] crate::error::Error),
    #[error("listen on {path}: {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("start the reaper: {0}")]
    Reaper(std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("streaming server: {0}")]
    Streaming(#[from] crate::streaming::StreamingError),
}

/// How long a stopping server waits for connected clients.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Largest gRPC message accepted or sent (as kubelet's 16 MiB).
const MAX_MESSAGE: usize = 16 << 20;

/// The HTTP/2 SETTINGS_MAX_FRAME_SIZE the server advertises (the protocol's
/// default and minimum). The connections' reader (`transport`) refuses larger
/// frames from clients and re-frames header blocks to it, so it is set here
/// explicitly rather than left to hyper's default.
const MAX_FRAME: u32 = 16 << 10;

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    // What the server cannot do as configured stops it here, before it
    // makes anything or tells the kubelet otherwise.
    cfg.validate()?;
    let socket = cfg.socket_path()?;
    // Chosen before the reaper starts: the probe waits for its own child.
    let binary = crate::engine::binary::select(cfg.engine_binary.as_deref())?;
    let reaper = Reaper::start().map_err(ServeError::Reaper)?;
    let engine = Arc::new(LinuxEngine::new(
        binary,
        reaper.clone(),
        cfg.cgroup_parent_path(),
    ));
    let streaming = crate::streaming::bind(&cfg.stream_address).await?;
    let rt = Runtime::open(cfg, engine, reaper, Some(streaming.registry())).await?;
    streaming.serve(rt.clone());
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Listen {
            path: socket.display().to_string(),
            source,
        })?;
    }
    match std::fs::remove_file(&socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServeError::Listen {
                path: socket.display().to_string(),
                source,
            })
        }
    }
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(|source| ServeError::Listen {
            path: socket.display().to_string(),
            source,
        })?;
    let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660));
    tracing::info!(socket = %socket.display(), "sycri serving the CRI");

    // h2 resets every request whose `:authority` is not a valid URI
    // authority, and clients on a unix socket often send the socket's path
    // (grpcio percent-encoded, grpc-java raw). No setting of h2, hyper or
    // tonic relaxes that check, so each connection is read through
    // `LenientAuthority`, which re-encodes the client's header blocks with
    // such an authority replaced by `localhost` before h2 sees them (the
    // module says why at that depth and what is bounded).
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnixListenerStream::new(listener),
        |conn| conn.map(|io| crate::transport::LenientAuthority::new(io, MAX_FRAME)),
    );
    // When a stop signal comes, tonic stops accepting and waits for open
    // connections; a client that keeps its connection must not hold the server
    // for ever: after a grace period it stops regardless.
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    return std::future::pending().await;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping the server; containers keep running"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the server; containers keep running"),
        }
        let _ = stopping_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME)
        .layer(crate::deadline::DeadlineLayer)
        .add_service(
            RuntimeServiceServer::new(RuntimeService::new(rt.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(ImageService::new(rt.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        served = server => served?,
        _ = async {
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("clients still connected {SHUTDOWN_GRACE:?} after the stop signal; stopping anyway"),
    }
    let _ = std::fs::remove_file(&socket);
    // Images kept mounted for a next container (image_unmount_delay) that no
    // container uses: their release timers end with this process.
    rt.release_unused_image_mounts(true).await;
    rt.release_spare_nets().await;
    Ok(())
}
