//! Clients that send the socket's path as `:authority` are served (issue 11,
//! point 9). Such a request cannot be made with tonic or the h2 crate (both
//! parse the authority into a URI), so this test speaks HTTP/2 on the socket
//! itself: its own frames, its own HPACK (literals the server's table must
//! index, then references to them), a gRPC-framed empty VersionRequest.

mod common;

use common::*;
use prost::Message;
use std::path::Path;
use std::time::Duration;
use sycri::proto::cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

const VERSION: &str = "/runtime.v1.RuntimeService/Version";

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// What came back on one stream.
#[derive(Debug, Default)]
struct Answer {
    headers: Fields,
    data: Vec<u8>,
    trailers: Fields,
    reset: Option<u32>,
}

impl Answer {
    fn field<'a>(list: &'a Fields, name: &str) -> Option<&'a [u8]> {
        list.iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| &v[..])
    }

    /// Asserts a successful Version call and returns its runtime name.
    fn version(&self, what: &str) -> String {
        assert_eq!(self.reset, None, "{what}: stream reset: {self:?}");
        assert_eq!(
            Answer::field(&self.headers, ":status"),
            Some(&b"200"[..]),
            "{what}: {self:?}"
        );
        // A trailers-only answer carries grpc-status in its headers.
        let status = Answer::field(&self.trailers, "grpc-status")
            .or_else(|| Answer::field(&self.headers, "grpc-status"));
        assert_eq!(status, Some(&b"0"[..]), "{what}: {self:?}");
        assert!(self.data.len() >= 5, "{what}: no gRPC message: {self:?}");
        assert_eq!(self.data[0], 0, "{what}: compressed message");
        let len = u32::from_be_bytes([self.data[1], self.data[2], self.data[3], self.data[4]]);
        assert_eq!(self.data.len(), 5 + len as usize, "{what}: one message");
        let v = cri::VersionResponse::decode(&self.data[5..]).expect("a VersionResponse");
        v.runtime_name
    }
}

struct Client {
    io: UnixStream,
    hpack: loona_hpack::Decoder<'static>,
}

/// An HPACK string, not Huffman-coded.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(loona_hpack::encoder::encode_integer(s.len(), 7));
    out.extend_from_slice(s);
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The first request of a connection: every field a literal the server's
/// decoder must add to its table (RFC 7541 6.2.1), `:authority` as given.
/// Afterwards the table holds, newest first: te (62), content-type (63),
/// :authority (64), :path (65).
fn first_block(authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static)
    b.push(0x44); // :path, name from the static table, indexed
    put_string(&mut b, VERSION.as_bytes());
    b.push(0x41); // :authority likewise
    put_string(&mut b, authority);
    for (n, v) in [("content-type", "application/grpc"), ("te", "trailers")] {
        b.push(0x40);
        put_string(&mut b, n.as_bytes());
        put_string(&mut b, v.as_bytes());
    }
    b
}

/// The same request again, all from the dynamic table.
fn again_block() -> Vec<u8> {
    vec![0x83, 0x86, 0x80 | 65, 0x80 | 64, 0x80 | 63, 0x80 | 62]
}

impl Client {
    async fn connect(socket: &Path) -> Client {
        let mut io = UnixStream::connect(socket).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        io.write_all(&hello).await.expect("preface");
        Client {
            io,
            hpack: loona_hpack::Decoder::new(),
        }
    }

    async fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0; len];
        self.io
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        (head[3], head[4], stream, payload)
    }

    /// Sends the header block (and an empty VersionRequest) on `stream` and
    /// reads until that stream ends.
    async fn call(&mut self, stream: u32, block: &[u8]) -> Answer {
        let mut req = frame(HEADERS, END_HEADERS, stream, block);
        // The gRPC message: not compressed, 0 bytes (an empty VersionRequest).
        req.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        self.io.write_all(&req).await.expect("send request");
        tokio::time::timeout(Duration::from_secs(20), self.answer(stream))
            .await
            .expect("an answer within 20 s")
    }

    async fn answer(&mut self, stream: u32) -> Answer {
        let mut a = Answer::default();
        let mut block = Vec::new();
        loop {
            let (kind, flags, id, payload) = self.read_frame().await;
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    self.io
                        .write_all(&frame(SETTINGS, ACK, 0, &[]))
                        .await
                        .expect("settings ack");
                }
                PING if flags & ACK == 0 => {
                    self.io
                        .write_all(&frame(PING, ACK, 0, &payload))
                        .await
                        .expect("ping ack");
                }
                GOAWAY => panic!("GOAWAY from the server: {payload:?}"),
                RST_STREAM if id == stream => {
                    a.reset = Some(u32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                    return a;
                }
                HEADERS | CONTINUATION if id == stream => {
                    block.extend_from_slice(&payload);
                    if flags & END_HEADERS != 0 {
                        let list = self.hpack.decode(&block).expect("server's HPACK");
                        block.clear();
                        if a.headers.is_empty() {
                            a.headers = list;
                        } else {
                            a.trailers = list;
                        }
                    }
                    if flags & END_STREAM != 0 {
                        return a;
                    }
                }
                DATA if id == stream => {
                    a.data.extend_from_slice(&payload);
                    if flags & END_STREAM != 0 {
                        return a;
                    }
                }
                _ => {}
            }
        }
    }
}

/// grpcio's default authority for `unix:<path>`: the path without its leading
/// slash, percent-encoded.
fn grpcio_authority(socket: &Path) -> String {
    socket
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "%2F")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_path_as_authority_is_served() {
    assert!(is_root(), "integration tests run as root");
    let s = Server::start().await;
    let socket = s.socket();
    let raw = socket.to_string_lossy().into_owned();
    for authority in [raw.clone(), grpcio_authority(&socket)] {
        let mut c = Client::connect(&socket).await;
        let a = c.call(1, &first_block(authority.as_bytes())).await;
        assert_eq!(a.version(&format!("authority {authority:?}")), "sycri");
        // The same request by reference to what the first one indexed: the
        // server has to follow the client's table.
        let a = c.call(3, &again_block()).await;
        assert_eq!(a.version(&format!("{authority:?} again")), "sycri");
        // A valid authority on the same connection is served too.
        let a = c.call(5, &first_block(b"localhost")).await;
        assert_eq!(a.version("authority localhost"), "sycri");
    }
}

/// The real client of the issue, where it is installed (`pip install grpcio`;
/// SYCRI_TEST_PYTHON names the interpreter, default python3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_client_is_served() {
    let python = std::env::var("SYCRI_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpcio = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpcio {
        sycri_native::testing::skip(
            "grpcio_client_is_served",
            &format!("{python} cannot import grpc (pip install grpcio)"),
        );
        return;
    }
    assert!(is_root(), "integration tests run as root");
    let s = Server::start().await;
    const SCRIPT: &str = r#"
import sys, grpc
for target in ("unix://" + sys.argv[1], "unix:" + sys.argv[1]):
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(sys.argv[2])
        print(target, call(b"", timeout=20).hex())
"#;
    let socket = s.socket();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg("-c")
            .arg(SCRIPT)
            .arg(socket)
            .arg(VERSION)
            .output()
    })
    .await
    .expect("join")
    .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcio call failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<&str> = stdout.lines().collect();
    assert_eq!(answers.len(), 2, "{stdout}");
    for line in answers {
        let hex = line.rsplit(' ').next().unwrap_or_default();
        let bytes = hex::decode(hex).expect("hex");
        let v = cri::VersionResponse::decode(&bytes[..]).expect("a VersionResponse");
        assert_eq!(v.runtime_name, "sycri", "{line}");
    }
}

/// The connections' reading keeps the server's limits: a message just under
/// the 16 MiB limit goes through (in many DATA frames), one over it is
/// refused as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_limits_hold_on_the_rewritten_connections() {
    assert!(is_root(), "integration tests run as root");
    let mut s = Server::start().await;
    let near = (16 << 20) - 64;
    let v =
        s.rt.version(cri::VersionRequest {
            version: "v".repeat(near),
        })
        .await
        .expect("a message under the limit is served")
        .into_inner();
    assert_eq!(v.runtime_name, "sycri");
    let e =
        s.rt.version(cri::VersionRequest {
            version: "v".repeat((16 << 20) + 1),
        })
        .await
        .expect_err("a message over the limit is refused");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    // The connection still serves.
    let v =
        s.rt.version(cri::VersionRequest::default())
            .await
            .expect("served after the refusal");
    assert_eq!(v.into_inner().runtime_name, "sycri");
}
