//! Port-forward (`portforward.k8s.io`): each forwarded connection is a pair of
//! SPDY streams with the same `requestID` header: `streamType: error` (the
//! client half-closes it at once; we write a plain-text error there if the
//! connection fails) and `streamType: data` (the bytes), with the pod's port
//! in the `port` header.
//!
//! Connections into the pod's network namespace are made by one
//! `sycri __portforward <netns>` helper per session (the server never enters
//! namespaces itself); it hands each connected socket back over a
//! SOCK_SEQPACKET socket pair (SCM_RIGHTS). Pods on the host network are
//! connected to directly.

use super::spdy::{self, Chunk};
use super::{PortForwardParams, STREAM_CREATION_TIMEOUT};
use crate::fdio::Fd;
use crate::helpers::{self_exe, PORTFORWARD_ARG};
use crate::runtime::Runtime;
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Makes connections to the pod's ports.
pub enum Connector {
    /// The pod uses the host's network.
    Host,
    /// A helper inside the pod's network namespace.
    Helper {
        sock: Mutex<Fd>,
        pid: i32,
        rt: Arc<Runtime>,
    },
}

impl Connector {
    /// The connector for pod `pod_id`.
    pub async fn for_pod(rt: &Arc<Runtime>, pod_id: &str) -> Result<Connector, String> {
        let (id, pod) = Runtime::find(&rt.pods, pod_id)
            .ok_or_else(|| format!("pod sandbox {pod_id:?} not found"))?;
        let netns = {
            let pod = pod.lock().await;
            if !pod.rec.ready {
                return Err(format!("pod sandbox {id} is not ready"));
            }
            if !pod.rec.own_net {
                return Ok(Connector::Host);
            }
            pod.ns_path("net")
        };
        let mut fds = [0i32; 2];
        // SAFETY: socketpair writes two descriptors into our array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: socketpair succeeded: both descriptors are new and ours.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child = Command::new(self_exe())
            .arg(PORTFORWARD_ARG)
            .arg(&netns)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env_clear()
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start port-forward helper: {e}"))?;
        let pid = child.id() as i32;
        drop(child);
        let sock = Fd::new(ours).map_err(|e| format!("watch helper socket: {e}"))?;
        Ok(Connector::Helper {
            sock: Mutex::new(sock),
            pid,
            rt: rt.clone(),
        })
    }

    /// A connection to `port` on the pod's loopback.
    pub async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        match self {
            Connector::Host => TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect to localhost:{port}: {e}")),
            Connector::Helper { sock, .. } => {
                let sock = sock.lock().await;
                let req = port.to_be_bytes();
                sock.write_with(|fd| sycri_native::exec::send_with_fd(fd, &req, None))
                    .await
                    .map_err(|e| format!("port-forward helper: {e}"))?;
                let mut buf = [0u8; 1024];
                let (n, fd) = sock
                    .read_with(|fd| sycri_native::exec::recv_with_fd(fd, &mut buf))
                    .await
                    .map_err(|e| format!("port-forward helper: {e}"))?;
                match (n, buf.first(), fd) {
                    (0, _, _) => Err("port-forward helper ended".into()),
                    (_, Some(&sycri_native::exec::portforward::OK), Some(fd)) => {
                        let std = std::net::TcpStream::from(fd);
                        std.set_nonblocking(true)
                            .map_err(|e| format!("connected socket: {e}"))?;
                        TcpStream::from_std(std).map_err(|e| format!("connected socket: {e}"))
                    }
                    _ => {
                        Err(String::from_utf8_lossy(buf.get(1..n).unwrap_or_default()).into_owned())
                    }
                }
            }
        }
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        if let Connector::Helper { pid, rt, .. } = self {
            // Our end of the socket closes with us; the helper then exits. Collect
            // its exit so that the reaper does not keep it.
            let (pid, rt) = (*pid, rt.clone());
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    if tokio::time::timeout(Duration::from_secs(10), rt.reaper.wait(pid))
                        .await
                        .is_err()
                    {
                        // SAFETY: kill(2) with integer arguments on our helper.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        rt.reaper.wait(pid).await;
                    }
                });
            }
        }
    }
}

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
    connector: Arc<Connector>,
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
pub async fn serve_spdy(rt: Arc<Runtime>, p: PortForwardParams, mut conn: spdy::Conn) {
    let connector = match Connector::for_pod(&rt, &p.pod_id).await {
        Ok(c) => Arc::new(c),
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
