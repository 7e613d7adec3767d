//! Connections to a pod's ports for port-forward. Inside the pod's network
//! namespace they are made by one `__portforward <netns>` helper per session
//! (the server never enters namespaces itself), which hands each connected
//! socket back over a SOCK_SEQPACKET socket pair (SCM_RIGHTS); a pod on the
//! host network is connected to directly.

use super::process::{Group, Reaper};
use crate::error::{Error, Result};
use crate::fdio::Fd;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

pub enum PortForwarder {
    /// The pod uses the host's network.
    Host,
    /// A helper inside the pod's network namespace.
    Helper {
        sock: Mutex<Fd>,
        pid: i32,
        reaper: Reaper,
    },
}

impl PortForwarder {
    /// Starts the helper for `netns` from `engine`.
    pub fn spawn(engine: &Path, reaper: &Reaper, netns: &Path) -> Result<PortForwarder> {
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
            return Err(Error::io("socketpair", std::io::Error::last_os_error()));
        }
        // SAFETY: socketpair succeeded: both descriptors are new and ours.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let child = reaper
            .spawn(
                Command::new(engine)
                    .arg(sycri_native::PORTFORWARD_ARG)
                    .arg(netns)
                    .stdin(Stdio::from(theirs))
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .env_clear()
                    .process_group(0),
                Group::KillOnExit,
            )
            .map_err(|e| Error::io("start port-forward helper", e))?;
        let pid = child.id() as i32;
        drop(child);
        let sock = Fd::new(ours).map_err(|e| Error::io("watch helper socket", e))?;
        Ok(PortForwarder::Helper {
            sock: Mutex::new(sock),
            pid,
            reaper: reaper.clone(),
        })
    }

    /// A connection to `port` on the pod's loopback.
    pub async fn connect(&self, port: u16) -> std::result::Result<TcpStream, String> {
        match self {
            PortForwarder::Host => TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| format!("connect to localhost:{port}: {e}")),
            PortForwarder::Helper { sock, .. } => {
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

impl Drop for PortForwarder {
    fn drop(&mut self) {
        if let PortForwarder::Helper { pid, reaper, .. } = self {
            // Our end of the socket closes with us; the helper then exits.
            // Collect its exit, and end it if it does not go.
            let (pid, reaper) = (*pid, reaper.clone());
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    if tokio::time::timeout(Duration::from_secs(10), reaper.wait(pid))
                        .await
                        .is_err()
                    {
                        reaper.signal(pid, libc::SIGKILL, true);
                        reaper.wait(pid).await;
                    }
                });
            }
        }
    }
}
