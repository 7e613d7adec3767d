//! Exec over the streaming server, as kubectl does it today: the Exec RPC's
//! URL, upgraded to a WebSocket with the `v4.channel.k8s.io` subprotocol,
//! whose binary messages start with a channel byte (1 stdout, 2 stderr, 3 the
//! final status). Just enough of RFC 6455 for one command without stdin.

use crate::client::{call, Cri};
use crate::fail::{Context, Fail, Result};
use base64::Engine;
use std::time::Duration;
use sycri::proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a streamed command produced.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// The status message of channel 3 (JSON, `"status":"Success"` when the
    /// command exited 0).
    pub status: String,
}

/// Runs `cmd` in the container through Exec and the streaming server.
pub async fn exec(cri: &mut Cri, id: &str, cmd: &[&str]) -> Result<Output> {
    let req = cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    };
    let url = call("Exec", cri.rt.exec(req)).await?.url;
    tokio::time::timeout(Duration::from_secs(120), run(&url))
        .await
        .map_err(|_| Fail(format!("streamed exec at {url}: no end in 120 s")))?
}

async fn run(url: &str) -> Result<Output> {
    let rest = url
        .strip_prefix("http://")
        .context(format!("exec URL {url:?} is not http://"))?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = TcpStream::connect(hostport)
        .await
        .context(format!("connect to the streaming server {hostport}"))?;
    let key = base64::engine::general_purpose::STANDARD.encode(std::process::id().to_be_bytes());
    let req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    // The response head, byte by byte up to the blank line (frames follow).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let b = s.read_u8().await.context("read the upgrade response")?;
        head.push(b);
        if head.len() > 16 << 10 {
            return Err(Fail("upgrade response head over 16 KiB".into()));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(Fail(format!("no WebSocket upgrade: {head:?}")));
    }
    let mut out = Output::default();
    loop {
        let b0 = match s.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        };
        let b1 = s.read_u8().await?;
        let mut len = u64::from(b1 & 0x7f);
        if len == 126 {
            len = u64::from(s.read_u16().await?);
        } else if len == 127 {
            len = s.read_u64().await?;
        }
        if len > 16 << 20 {
            return Err(Fail(format!("WebSocket frame of {len} bytes")));
        }
        let mut mask = [0u8; 4];
        if b1 & 0x80 != 0 {
            s.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        if b1 & 0x80 != 0 {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match b0 & 0x0f {
            // Close.
            0x8 => break,
            // Binary (or text, or a continuation): a channel byte, then data.
            0x0..=0x2 => {
                let Some((&ch, data)) = payload.split_first() else {
                    continue;
                };
                let text = String::from_utf8_lossy(data);
                match ch {
                    1 => out.stdout.push_str(&text),
                    2 => out.stderr.push_str(&text),
                    3 => out.status.push_str(&text),
                    _ => {}
                }
            }
            // Ping, pong: nothing to do for a reader that sends nothing.
            _ => {}
        }
    }
    Ok(out)
}
