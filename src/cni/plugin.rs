//! Running one CNI plugin: its binary with the CNI_* environment, the network
//! configuration on stdin, the result (or a CNI error) on stdout.
//!
//! The plugin is a child of the server, and the server reaps every child
//! through the [`Reaper`]: so it is started with `std::process::Command`, its
//! pipes are taken, and its exit comes from `Reaper::wait`, never from the
//! `Child` itself. The plugin enters the pod's network namespace (CNI_NETNS)
//! by itself; the server never does.

use super::error::CniError;
use crate::engine::process::{read_bounded, Group};
use crate::engine::Reaper;
use serde_json::Value;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Most of a plugin's stdout and stderr that is kept.
const MAX_OUTPUT: usize = 1 << 20;
const MAX_STDERR: usize = 16 << 10;

/// One call of one plugin.
pub struct Call<'a> {
    /// ADD, DEL, CHECK or VERSION.
    pub command: &'a str,
    pub container_id: &'a str,
    /// Path of the pod's network namespace; empty when it is gone (DEL only).
    pub netns: &'a Path,
    pub ifname: &'a str,
    /// `K=V;K=V` (CNI_ARGS).
    pub args: &'a str,
    /// The plugin directories (CNI_PATH).
    pub path: &'a [PathBuf],
    pub timeout: Duration,
    pub priority: Priority,
}

/// How the plugin's process is scheduled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// As the server: a pod waits for it.
    Normal,
    /// Nice [`BACKGROUND_NICE`]: work ahead of any pod (a spare network
    /// namespace attached before a pod takes it), which must not slow down
    /// the calls being served beside it.
    Background,
}

/// The nice value of a [`Priority::Background`] plugin (and of the tools it
/// starts, which inherit it).
pub const BACKGROUND_NICE: i32 = 10;

/// Sets the nice value of the plugin process `pid`, just started, which leads
/// a process group of its own: of every thread in the group (Linux keeps a
/// nice value per thread, and a Go plugin may have started some already);
/// the threads and tools started later inherit it. A failure only costs the
/// priority.
fn lower_priority(pid: i32) {
    // SAFETY: setpriority(2) takes plain integers and touches no memory of
    // ours; `pid` is our unreaped child and leads its own group (started
    // with `process_group(0)`), so the group holds only it and its children.
    let rc = unsafe { libc::setpriority(libc::PRIO_PGRP, pid as libc::id_t, BACKGROUND_NICE) };
    if rc != 0 {
        tracing::debug!(pid, error = %std::io::Error::last_os_error(), "lowering a CNI plugin's priority");
    }
}

/// Runs `binary` for `call` with `config` on stdin; its stdout on success.
pub async fn run(
    reaper: &Reaper,
    binary: &Path,
    call: &Call<'_>,
    config: &[u8],
) -> Result<Vec<u8>, CniError> {
    let plugin = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cni_path = std::env::join_paths(call.path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut command = Command::new(binary);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        // Plugins run host tools (iptables, ip) found on PATH.
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_ARGS", call.args)
        .env("CNI_PATH", &cni_path)
        // Its own group, so that a timeout ends the tools it started too,
        // and a tool it left running cannot hold its pipes open for ever.
        .process_group(0);
    let mut child = reaper
        .spawn(&mut command, Group::KillOnExit)
        .map_err(|e| CniError::Io {
            context: format!("start CNI plugin {}", binary.display()),
            source: e,
        })?;
    let pid = child.id() as i32;
    if call.priority == Priority::Background {
        lower_priority(pid);
    }
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    // Reaped by the Reaper, never through `child`.
    drop(child);
    let input = config.to_vec();
    let writer = tokio::task::spawn_blocking(move || {
        if let Some(mut w) = stdin {
            // A plugin that exits without reading makes this fail: its exit says why.
            let _ = w.write_all(&input);
        }
    });
    let out = tokio::task::spawn_blocking(move || stdout.map(|r| read_bounded(r, MAX_OUTPUT)));
    let err = tokio::task::spawn_blocking(move || stderr.map(|r| read_bounded(r, MAX_STDERR)));
    let code = match tokio::time::timeout(call.timeout, reaper.wait(pid)).await {
        Ok(code) => code,
        Err(_) => {
            reaper.signal(pid, libc::SIGKILL, true);
            reaper.wait(pid).await;
            return Err(CniError::Timeout {
                plugin,
                command: call.command.to_string(),
                secs: call.timeout.as_secs(),
            });
        }
    };
    let _ = writer.await;
    let join = |e: tokio::task::JoinError| CniError::Io {
        context: format!("read CNI plugin {plugin}"),
        source: std::io::Error::other(e.to_string()),
    };
    let stdout = out.await.map_err(join)?.unwrap_or_default();
    let stderr = err.await.map_err(join)?.unwrap_or_default();
    if code == 0 {
        return Ok(stdout);
    }
    // A CNI error: {"cniVersion", "code", "msg", "details"} on stdout.
    let parsed: Option<Value> = serde_json::from_slice(&stdout).ok();
    let text = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let msg = text("msg");
    let details = text("details");
    let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
    let message = match (msg.is_empty(), details.is_empty()) {
        (false, false) => format!("{msg}: {details}"),
        (false, true) => msg,
        _ if !stderr.is_empty() => stderr,
        _ => String::from_utf8_lossy(&stdout).trim().to_string(),
    };
    Err(CniError::Plugin {
        plugin,
        command: call.command.to_string(),
        code: parsed
            .as_ref()
            .and_then(|v| v.get("code"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        exit: code,
        message,
    })
}
