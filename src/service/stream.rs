//! The Exec, Attach and PortForward RPCs (check the request, register it
//! with the streaming server, answer its URL), and the runtime as the
//! streaming server's backend: the sessions' commands, attach connections
//! and pod connections, made by the engine.

use super::Runtime;
use crate::engine::{AttachOpts, Engine, ExecProcess, PortForwarder};
use crate::error::{Error, Result};
use crate::proto::cri;
use crate::streaming::backend::{AttachSession, ExecSession, PortConnector, ProcessControl};
use crate::streaming::{
    check_streams, AttachParams, Backend, ExecParams, Pending, PortForwardParams, Streaming,
};
use std::sync::Arc;
use tokio::net::TcpStream;

impl Runtime {
    fn streaming(&self) -> Result<&Arc<Streaming>> {
        self.streaming
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("the streaming server is not running".into()))
    }

    pub fn exec_url(&self, req: cri::ExecRequest) -> Result<String> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("exec needs a command".into()));
        }
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let c = self.running_container(&req.container_id)?;
        Ok(self.streaming()?.register(Pending::Exec(ExecParams {
            container_id: c.meta.id.clone(),
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?)
    }

    pub fn attach_url(&self, req: cri::AttachRequest) -> Result<String> {
        check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        let c = self.running_container(&req.container_id)?;
        Ok(self.streaming()?.register(Pending::Attach(AttachParams {
            container_id: c.meta.id.clone(),
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))?)
    }

    pub fn port_forward_url(&self, req: cri::PortForwardRequest) -> Result<String> {
        let pod = self.pods.get(&req.pod_sandbox_id)?;
        if !pod.status().ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.meta.id
            )));
        }
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::InvalidArgument(format!("invalid port {bad}")));
        }
        Ok(self
            .streaming()?
            .register(Pending::PortForward(PortForwardParams {
                pod_id: pod.meta.id.clone(),
                ports: req.port,
            }))?)
    }
}

/// A streaming exec's command, as the engine runs it.
struct ExecControl {
    engine: Arc<dyn Engine>,
    /// Holds the helper's spec file until the session ends.
    proc: ExecProcess,
}

#[async_trait::async_trait]
impl ProcessControl for ExecControl {
    async fn wait(&mut self) -> i32 {
        self.engine.wait_exec(self.proc.pid).await
    }

    async fn kill(&mut self) -> i32 {
        self.engine.kill_exec(self.proc.pid).await
    }
}

struct Ports(PortForwarder);

#[async_trait::async_trait]
impl PortConnector for Ports {
    async fn connect(&self, port: u16) -> std::result::Result<TcpStream, String> {
        self.0.connect(port).await
    }
}

#[async_trait::async_trait]
impl Backend for Runtime {
    async fn exec(&self, p: &ExecParams) -> std::result::Result<ExecSession, String> {
        let req = self
            .exec_request(&p.container_id, p.cmd.clone(), p.tty)
            .map_err(|e| e.to_string())?;
        let mut proc = self
            .engine
            .spawn_exec(&req, p.stdin)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ExecSession {
            stdin: proc.stdin.take(),
            stdout: proc.stdout.take(),
            stderr: proc.stderr.take(),
            pty: proc.pty.take(),
            control: Box::new(ExecControl {
                engine: self.engine.clone(),
                proc,
            }),
        })
    }

    async fn attach(&self, p: &AttachParams) -> std::result::Result<AttachSession, String> {
        let c = self
            .running_container(&p.container_id)
            .map_err(|e| e.to_string())?;
        let a = self
            .engine
            .attach(
                &c.meta.control_socket,
                AttachOpts {
                    stdin: p.stdin,
                    stdout: p.stdout,
                    stderr: p.stderr,
                    tty: p.tty,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        tracing::debug!(container = %c.meta.id, "attached");
        Ok(AttachSession {
            early: a.early,
            stream: a.stream,
        })
    }

    async fn port_forward(
        &self,
        pod_id: &str,
    ) -> std::result::Result<Box<dyn PortConnector>, String> {
        let pod = self.pods.get(pod_id).map_err(|e| e.to_string())?;
        if !pod.status().ready {
            return Err(format!("pod sandbox {} is not ready", pod.meta.id));
        }
        let netns = pod.meta.own_net.then(|| pod.meta.ns_path("net"));
        let f = self
            .engine
            .port_forward(netns.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(Ports(f)))
    }
}
