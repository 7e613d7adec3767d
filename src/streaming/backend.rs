//! What the streaming server needs from the runtime, and nothing more: start
//! a command in a container, attach to a container's stdio, connect to a
//! pod's ports. The service implements it; the streaming code knows no
//! store, no engine and no container record.

use std::os::fd::OwnedFd;
use tokio::net::{TcpStream, UnixStream};

use super::request::{AttachParams, ExecParams};

/// A command started for an exec session, with the server's ends of its stdio.
pub struct ExecSession {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// The pseudo-terminal's master (tty mode): input and output both.
    pub pty: Option<OwnedFd>,
    pub control: Box<dyn ProcessControl>,
}

/// The running command of an exec session.
#[async_trait::async_trait]
pub trait ProcessControl: Send + Sync {
    /// Waits for the command to end; its exit code.
    async fn wait(&mut self) -> i32;
    /// Ends the command and everything it started, and waits for it.
    async fn kill(&mut self) -> i32;
}

/// An attach connection to a container's monitor: its frames both ways
/// (`sycri_native::monitor::protocol::attach`), `early` being what came before the
/// first read.
pub struct AttachSession {
    pub early: Vec<u8>,
    pub stream: UnixStream,
}

/// Makes connections to one pod's ports.
#[async_trait::async_trait]
pub trait PortConnector: Send + Sync {
    async fn connect(&self, port: u16) -> Result<TcpStream, String>;
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Starts `p.cmd` in the running container `p.container_id`.
    async fn exec(&self, p: &ExecParams) -> Result<ExecSession, String>;
    /// Attaches to the running container `p.container_id`.
    async fn attach(&self, p: &AttachParams) -> Result<AttachSession, String>;
    /// A connector to the ports of the ready pod `pod_id`.
    async fn port_forward(&self, pod_id: &str) -> Result<Box<dyn PortConnector>, String>;
}
