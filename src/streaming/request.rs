//! What a streaming request is: the parameters an Exec, Attach or
//! PortForward RPC registered, the single-use tokens that name them in their
//! URL, and the protocol names both sides of the server use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most tokens outstanding at once.
pub const MAX_TOKENS: usize = 1000;
/// How long a client has to open its streams after the upgrade.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// SPDY subprotocols for exec and attach, best first.
pub const REMOTECOMMAND_SPDY: [&str; 3] = [
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];
/// WebSocket subprotocols for exec and attach, best first.
pub const REMOTECOMMAND_WS: [&str; 4] = [
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
    pub fn route(&self) -> &'static str {
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
    pub fn take(&self, route: &str, token: &str) -> Option<Pending> {
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

/// The CRI rules on which streams an exec or attach may ask for.
pub fn check_streams(
    tty: bool,
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> crate::error::Result<()> {
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
}
