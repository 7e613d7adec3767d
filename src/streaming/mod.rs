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
pub mod backend;
pub mod dictionary;
pub mod exec;
pub mod portforward;
pub mod remotecommand;
pub mod request;
pub mod server;
pub mod session;
mod sha1;
pub mod spdy;
pub mod websocket;
pub mod wsframe;

pub use backend::Backend;
pub use request::{
    check_streams, AttachParams, ExecParams, Pending, PortForwardParams, Streaming, StreamingError,
};
pub use server::{bind, Server};
