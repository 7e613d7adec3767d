//! The streaming server: exec, attach and port-forward over SPDY (with the
//! tests' own SPDY client) and WebSocket, tokens, and attach across a server
//! restart.

mod common;

use common::spdy::{upgrade, Client, Stream};
use common::*;
use std::time::Duration;
use sycri::proto::cri;

const V4: &str = "v4.channel.k8s.io";
const T: Duration = Duration::from_secs(20);

/// A server with the busybox image pulled and one pod.
async fn setup(test: &str) -> Option<(Server, String, cri::PodSandboxConfig, String)> {
    let sif = busybox_sif(test)?;
    let mut s = Server::start().await;
    let image = s.pull(&sif).await;
    let pod_cfg = pod_config(test, &s.log_dir());
    let pod = run_pod(&mut s.rt, pod_cfg.clone()).await;
    Some((s, pod, pod_cfg, image))
}

/// Removes the pod (and its containers) and checks that nothing of them is
/// left: mounts, processes, cgroups.
async fn teardown(s: &mut Server, pod: &str) {
    stop_pod(&mut s.rt, pod).await.expect("stop pod");
    remove_pod(&mut s.rt, pod).await.expect("remove pod");
    assert_no_leaks(s.dir.path(), &[]);
}

async fn running(
    s: &mut Server,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> String {
    let c = create(&mut s.rt, pod, pod_cfg, cfg).await.expect("create");
    start(&mut s.rt, &c).await.expect("start");
    wait_state(&mut s.rt, &c, cri::ContainerState::ContainerRunning).await;
    c
}

async fn exec_url(rt: &mut Rt, c: &str, cmd: &[&str], tty: bool, stdin: bool) -> String {
    let url = rt
        .exec(cri::ExecRequest {
            container_id: c.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty,
            stdin,
            stdout: true,
            stderr: !tty,
        })
        .await
        .expect("Exec")
        .into_inner()
        .url;
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/exec/"),
        "{url}"
    );
    url
}

/// The streams of one exec or attach, opened as client-go opens them.
struct Session {
    client: Client,
    error: Stream,
    stdin: Option<Stream>,
    stdout: Stream,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

async fn open_session(url: &str, tty: bool, stdin: bool) -> Session {
    let mut client = match Client::connect(url, &["v5.channel.k8s.io", V4]).await {
        Ok(c) => c,
        Err(up) => panic!("upgrade refused: {} {}", up.status, up.body),
    };
    assert_eq!(client.protocol, V4);
    let error = client.open(&[("streamType", "error")]).await;
    let stdin = if stdin {
        Some(client.open(&[("streamType", "stdin")]).await)
    } else {
        None
    };
    let stdout = client.open(&[("streamType", "stdout")]).await;
    let stderr = if tty {
        None
    } else {
        Some(client.open(&[("streamType", "stderr")]).await)
    };
    let resize = if tty {
        Some(client.open(&[("streamType", "resize")]).await)
    } else {
        None
    };
    client.ping(1).await;
    Session {
        client,
        error,
        stdin,
        stdout,
        stderr,
        resize,
    }
}

/// stdout, stderr and the status object, each read to its end.
async fn finish(mut s: Session) -> (String, String, serde_json::Value) {
    let out = s.stdout.read_to_end(T).await;
    let err = match s.stderr.as_mut() {
        Some(e) => e.read_to_end(T).await,
        None => Vec::new(),
    };
    let status = s.error.read_to_end(T).await;
    let status: serde_json::Value =
        serde_json::from_slice(&status).unwrap_or_else(|e| panic!("status {status:?}: {e}"));
    drop(s.client);
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
        status,
    )
}

fn exit_code(status: &serde_json::Value) -> i32 {
    if status["status"] == "Success" {
        return 0;
    }
    assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
    assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
    status["details"]["causes"][0]["message"]
        .as_str()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no exit code in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_output_exit_codes_and_tokens() {
    let Some((mut s, pod, pod_cfg, image)) = setup("exec_output_exit_codes_and_tokens").await
    else {
        return;
    };
    let c = running(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("target", &image, &["sleep", "1000"]),
    )
    .await;

    // echo -n hello: stdout exactly "hello", nothing on stderr, Success.
    let url = exec_url(&mut s.rt, &c, &["echo", "-n", "hello"], false, false).await;
    let (out, err, status) = finish(open_session(&url, false, false).await).await;
    assert_eq!(out, "hello", "{status} {err}\n{}", server_log(s.dir.path()));
    assert_eq!(err, "");
    assert_eq!(status["status"], "Success", "{status}");

    // The token was used: 404, as is an unknown one.
    let (up, _) = upgrade(
        &url,
        "GET",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", V4),
        ],
    )
    .await;
    assert_eq!(up.status, 404, "reused token: {}", up.body);
    let unknown = format!(
        "{}/exec/AAAAAAAAAAAAAAAAAAAAAA",
        url.rsplitn(3, '/').nth(2).unwrap_or("")
    );
    let (up, _) = upgrade(
        &unknown,
        "POST",
        &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")],
    )
    .await;
    assert_eq!(up.status, 404, "unknown token: {}", up.body);

    // No protocol in common: 403 with the ones we accept.
    let url = exec_url(&mut s.rt, &c, &["true"], false, false).await;
    match Client::connect(&url, &["v9.channel.k8s.io"]).await {
        Ok(_) => panic!("unsupported protocol accepted"),
        Err(up) => {
            assert_eq!(up.status, 403);
            assert!(
                up.headers.iter().any(|(k, v)| k
                    .eq_ignore_ascii_case("x-accepted-stream-protocol-versions")
                    && v == V4),
                "{:?}",
                up.headers
            );
        }
    }

    // Non-zero exit, with output on both streams.
    let url = exec_url(
        &mut s.rt,
        &c,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        false,
        false,
    )
    .await;
    let (out, err, status) = finish(open_session(&url, false, false).await).await;
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(status["status"], "Failure");
    assert_eq!(exit_code(&status), 3);

    // stdin without a tty: data, then end of file.
    let url = exec_url(&mut s.rt, &c, &["sh", "-c", "cat; echo done"], false, true).await;
    let sess = open_session(&url, false, true).await;
    if let Some(i) = &sess.stdin {
        i.write(b"line one\n").await;
        i.write(b"line two\n").await;
        i.close().await;
    }
    let (out, _, status) = finish(sess).await;
    assert_eq!(out, "line one\nline two\ndone\n");
    assert_eq!(exit_code(&status), 0);

    // A command that does not exist fails with an exit code, not a hang.
    let url = exec_url(&mut s.rt, &c, &["/no/such/command"], false, false).await;
    let (_, err, status) = finish(open_session(&url, false, false).await).await;
    assert_ne!(exit_code(&status), 0, "{err}");

    // Exec into a container that is not running is refused at the RPC.
    let r =
        s.rt.exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await;
    assert_eq!(r.err().map(|e| e.code()), Some(tonic::Code::NotFound));
    teardown(&mut s, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_tty_stdin_and_resize() {
    let Some((mut s, pod, pod_cfg, image)) = setup("exec_with_a_tty_stdin_and_resize").await else {
        return;
    };
    let c = running(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("target", &image, &["sleep", "1000"]),
    )
    .await;
    let url = exec_url(&mut s.rt, &c, &["sh"], true, true).await;
    let mut sess = open_session(&url, true, true).await;
    if let Some(r) = &sess.resize {
        r.write(b"{\"Width\":123,\"Height\":45}\n").await;
    }
    // Give the resize a moment to land before asking for it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stdin = sess.stdin.take().expect("stdin stream");
    stdin
        .write(b"[ -t 0 ] && [ -t 1 ] && echo is-a-tty; stty size; echo sum-$((40+2))\n")
        .await;
    let seen = sess.stdout.read_until(b"sum-42", T).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("is-a-tty\r\n"), "not a terminal: {text:?}");
    assert!(text.contains("45 123"), "size not applied: {text:?}");
    stdin.write(b"exit 7\n").await;
    let (_, _, status) = finish(sess).await;
    assert_eq!(exit_code(&status), 7);

    // critest's check: stdout holds "hello"; the session ends when the
    // process does, although stdin stays open.
    let url = exec_url(&mut s.rt, &c, &["echo", "hello"], true, true).await;
    let mut sess = open_session(&url, true, true).await;
    let keep_stdin_open = sess.stdin.take();
    let (out, _, status) = finish(sess).await;
    assert!(out.contains("hello"), "{out:?}");
    assert_eq!(exit_code(&status), 0);
    drop(keep_stdin_open);
    teardown(&mut s, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_execs_at_once() {
    let Some((mut s, pod, pod_cfg, image)) = setup("ten_execs_at_once").await else {
        return;
    };
    let c = running(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("target", &image, &["sleep", "1000"]),
    )
    .await;
    let mut urls = Vec::new();
    for i in 0..10 {
        let cmd = format!("sleep 0.5; echo -n run-{i}; exit {i}");
        urls.push(exec_url(&mut s.rt, &c, &["sh", "-c", &cmd], false, false).await);
    }
    let runs = urls.into_iter().enumerate().map(|(i, url)| {
        tokio::spawn(async move {
            let (out, _, status) = finish(open_session(&url, false, false).await).await;
            (i, out, exit_code(&status))
        })
    });
    let started = std::time::Instant::now();
    for r in futures_util::future::join_all(runs).await {
        let (i, out, code) = r.expect("exec task");
        assert_eq!(out, format!("run-{i}"));
        assert_eq!(code, i as i32);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "execs ran one after another: {:?}",
        started.elapsed()
    );
    teardown(&mut s, &pod).await;
}

async fn attach_url(rt: &mut Rt, c: &str) -> String {
    let url = rt
        .attach(cri::AttachRequest {
            container_id: c.into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    url
}

fn shell_config(image: &str) -> cri::ContainerConfig {
    let mut cfg = container_config("shell", image, &["/bin/sh"]);
    cfg.stdin = true;
    cfg.stdin_once = true;
    cfg
}

/// Sends `echo -n <word>` to an attached shell and reads the word back.
async fn echo_through(sess: &mut Session, word: &str) {
    let stdin = sess.stdin.as_ref().expect("stdin");
    stdin.write(format!("echo -n {word}\n").as_bytes()).await;
    sess.stdout.read_until(word.as_bytes(), T).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_to_a_shell_then_close_its_stdin() {
    let Some((mut s, pod, pod_cfg, image)) = setup("attach_to_a_shell_then_close_its_stdin").await
    else {
        return;
    };
    let c = running(&mut s, &pod, &pod_cfg, shell_config(&image)).await;
    let url = attach_url(&mut s.rt, &c).await;
    let mut sess = open_session(&url, false, true).await;
    // Quiet without input.
    let quiet = tokio::time::timeout(Duration::from_millis(500), sess.stdout.next()).await;
    assert!(quiet.is_err(), "output without input: {quiet:?}");
    echo_through(&mut sess, "hello").await;
    // Closing stdin (StdinOnce) closes the shell's stdin: it exits, and the
    // session ends with it.
    if let Some(i) = &sess.stdin {
        i.close().await;
    }
    let (_, _, status) = finish(sess).await;
    assert_eq!(status["status"], "Success", "{status}");
    let st = wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
    assert_eq!(st.exit_code, 0);
    // The output went to the log as well.
    let log = s.log_dir().join("shell.log");
    let lines = log_lines(&log);
    assert!(
        lines.iter().any(|(_, l)| l.contains("hello")),
        "log {lines:?}"
    );
    // Attach to an exited container is refused.
    let r =
        s.rt.attach(cri::AttachRequest {
            container_id: c.clone(),
            stdin: true,
            stdout: true,
            ..Default::default()
        })
        .await;
    assert_eq!(
        r.err().map(|e| e.code()),
        Some(tonic::Code::FailedPrecondition)
    );
    teardown(&mut s, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_after_a_server_restart() {
    let Some((mut s, pod, pod_cfg, image)) = setup("attach_after_a_server_restart").await else {
        return;
    };
    let c = running(&mut s, &pod, &pod_cfg, shell_config(&image)).await;
    // The monitor serves attach: a server killed and started again is no
    // obstacle.
    s.kill9();
    s.restart().await;
    let url = attach_url(&mut s.rt, &c).await;
    let mut sess = open_session(&url, false, true).await;
    echo_through(&mut sess, "again").await;
    // A second client attached at the same time sees the same output.
    let url2 =
        s.rt.attach(cri::AttachRequest {
            container_id: c.clone(),
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .expect("Attach")
        .into_inner()
        .url;
    let mut watcher = open_session(&url2, false, false).await;
    // Let the monitor register the second client before there is output.
    tokio::time::sleep(Duration::from_millis(300)).await;
    echo_through(&mut sess, "both").await;
    watcher.stdout.read_until(b"both", T).await;
    if let Some(i) = &sess.stdin {
        i.close().await;
    }
    let (_, _, status) = finish(sess).await;
    assert_eq!(status["status"], "Success", "{status}");
    let (_, _, status) = finish(watcher).await;
    assert_eq!(status["status"], "Success", "{status}");
    wait_state(&mut s.rt, &c, cri::ContainerState::ContainerExited).await;
    teardown(&mut s, &pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_into_the_pod() {
    let Some((mut s, pod, pod_cfg, image)) = setup("port_forward_into_the_pod").await else {
        return;
    };
    let script = "mkdir -p /tmp/www && echo -n hello-pf > /tmp/www/index.html \
                  && exec httpd -f -p 8080 -h /tmp/www";
    let c = running(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("web", &image, &["sh", "-c", script]),
    )
    .await;
    // Wait until the server listens (from inside the pod).
    let deadline = std::time::Instant::now() + T;
    loop {
        let r =
            s.rt.exec_sync(cri::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "netstat -ltn | grep -q :8080".into(),
                ],
                timeout: 5,
            })
            .await
            .expect("exec sync")
            .into_inner();
        if r.exit_code == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "httpd never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url =
        s.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .expect("PortForward")
        .into_inner()
        .url;
    assert!(url.contains("/portforward/"), "{url}");
    let mut client = match Client::connect(&url, &["portforward.k8s.io"]).await {
        Ok(c) => c,
        Err(up) => panic!("upgrade refused: {} {}", up.status, up.body),
    };
    // Three connections at once, and one to a port nobody listens on.
    let mut conns = Vec::new();
    for rid in 0..3 {
        let rid = rid.to_string();
        let port = "8080";
        let error = client
            .open(&[("streamType", "error"), ("port", port), ("requestID", &rid)])
            .await;
        error.close().await;
        let data = client
            .open(&[("streamType", "data"), ("port", port), ("requestID", &rid)])
            .await;
        conns.push((error, data));
    }
    let bad_err = {
        let mut e = client
            .open(&[("streamType", "error"), ("port", "9"), ("requestID", "9")])
            .await;
        e.close().await;
        let _data = client
            .open(&[("streamType", "data"), ("port", "9"), ("requestID", "9")])
            .await;
        String::from_utf8_lossy(&e.read_to_end(T).await).into_owned()
    };
    assert!(
        bad_err.contains("9"),
        "error for a closed port: {bad_err:?}"
    );
    for (_, data) in &conns {
        data.write(b"GET /index.html HTTP/1.0\r\n\r\n").await;
    }
    for (mut error, mut data) in conns {
        let resp = String::from_utf8_lossy(&data.read_to_end(T).await).into_owned();
        assert!(
            resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
            "{resp:?}"
        );
        assert!(resp.ends_with("hello-pf"), "{resp:?}");
        let e = error.read_to_end(T).await;
        assert!(e.is_empty(), "{}", String::from_utf8_lossy(&e));
    }
    drop(client);
    // No helper outlives the session.
    wait_for(
        "port-forward helpers to end",
        Duration::from_secs(10),
        || {
            !processes_under(s.dir.path())
                .iter()
                .any(|(_, cmd)| cmd.contains("__portforward"))
        },
    )
    .await;
    teardown(&mut s, &pod).await;
}

// ---------------------------------------------------------------------------
// WebSocket: a minimal client (masking, binary messages).

async fn ws_connect(url: &str, protocol: &str) -> (tokio::net::TcpStream, String) {
    let (up, tcp) = upgrade(
        url,
        "GET",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", protocol),
        ],
    )
    .await;
    assert_eq!(up.status, 101, "{}", up.body);
    assert_eq!(
        up.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    let proto = up
        .header("sec-websocket-protocol")
        .unwrap_or("")
        .to_string();
    (tcp.expect("connection"), proto)
}

async fn ws_send(tcp: &mut tokio::net::TcpStream, data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut f = vec![0x82u8];
    assert!(data.len() < 126);
    f.push(0x80 | data.len() as u8);
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&f).await.expect("ws send");
}

/// Next message (opcode, payload); None at the end.
async fn ws_recv(tcp: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    tcp.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).await.ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    tcp.read_exact(&mut p).await.ok()?;
    Some((h[0] & 0x0f, p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_websocket_v5_and_v4() {
    let Some((mut s, pod, pod_cfg, image)) = setup("exec_over_websocket_v5_and_v4").await else {
        return;
    };
    let c = running(
        &mut s,
        &pod,
        &pod_cfg,
        container_config("target", &image, &["sleep", "1000"]),
    )
    .await;
    for proto in ["v5.channel.k8s.io", V4] {
        let url = exec_url(
            &mut s.rt,
            &c,
            &["sh", "-c", "read x; echo -n got-$x; echo e >&2; exit 4"],
            false,
            true,
        )
        .await;
        let (mut tcp, chosen) = ws_connect(&url, proto).await;
        assert_eq!(chosen, proto);
        ws_send(&mut tcp, b"\x00abc\n").await;
        if proto.starts_with("v5") {
            // v5: close stdin explicitly.
            ws_send(&mut tcp, &[255, 0]).await;
        }
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
        let r = tokio::time::timeout(T, async {
            while let Some((op, p)) = ws_recv(&mut tcp).await {
                if op == 8 {
                    break;
                }
                match p.split_first() {
                    Some((1, d)) => out.extend_from_slice(d),
                    Some((2, d)) => err.extend_from_slice(d),
                    Some((3, d)) => status.extend_from_slice(d),
                    _ => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "{proto}: no end");
        assert_eq!(String::from_utf8_lossy(&out), "got-abc", "{proto}");
        assert_eq!(String::from_utf8_lossy(&err), "e\n", "{proto}");
        let status: serde_json::Value = serde_json::from_slice(&status).expect("status JSON");
        assert_eq!(exit_code(&status), 4, "{proto}");
    }
    teardown(&mut s, &pod).await;
}
