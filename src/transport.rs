//! The CRI socket's connections as the gRPC server reads them: every request's
//! `:authority` is made one that h2 accepts, so that any gRPC client is served.
//!
//! Why here: h2 (under hyper and tonic) parses `:authority` into an
//! `http::uri::Authority` and resets the stream with PROTOCOL_ERROR when that
//! fails (`h2::server::Peer::convert_poll_message`), before hyper or tonic see
//! the request, and no setting of h2, hyper or tonic relaxes it. On a unix
//! socket many clients send the socket path: grpcio (C core) since 1.57 sends
//! it percent-encoded (`run%2Fsycri.sock`: http 1.5 refuses a `%` in a host),
//! grpc-java and Bazel send it raw (`/run/sycri.sock`: refused for its `/`).
//! containerd ignores the authority. Serving the socket with hyper directly
//! changes nothing (the check is in h2), and no h2 release drops it (h2 PR
//! 487, which would, is unmerged).
//!
//! So the bytes from the client are read as HTTP/2 frames before h2 gets
//! them. Frames that carry no header block go through unchanged (their
//! payloads straight from the socket into h2's buffer). Header blocks
//! (HEADERS or PUSH_PROMISE and their CONTINUATIONs) are HPACK-decoded with a
//! decoder that follows the client's dynamic table, and re-encoded as literals
//! without indexing: h2's decoder table then stays empty and never has to
//! agree with the client's. An `:authority` that `http::uri::Authority`
//! refuses becomes `localhost` (what grpc-go and the kubelet send on a unix
//! socket); everything else, the order of the fields included, is kept, so h2
//! judges the request as before. Padding is dropped; the priority fields and
//! the promised stream are kept.
//!
//! Memory is bounded: one frame header, one header-block frame (at most the
//! advertised SETTINGS_MAX_FRAME_SIZE), the client's block up to
//! [`MAX_BLOCK`] bytes and the decoder's table of [`HEADER_TABLE_SIZE`]
//! bytes. What h2 would refuse before decoding a block (a frame too large, a
//! broken CONTINUATION sequence, bad padding) is passed on as received (an
//! interrupted block as its first frame with an empty fragment) and then the
//! connection's input ends, so h2 reports the error itself; what it
//! would have to decode (an HPACK error, a block over the bounds) is handed
//! on as a block h2 cannot decode, which makes it end the connection.

use loona_hpack::Decoder;
use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The dynamic table size the client's encoder may use: HTTP/2's default for
/// SETTINGS_HEADER_TABLE_SIZE, which tonic's server does not change.
pub const HEADER_TABLE_SIZE: usize = 4096;

/// Largest header block accepted, as sent and as re-encoded: well above what
/// h2 itself takes (its limit is 4 x SETTINGS_MAX_HEADER_LIST_SIZE, 64 KiB
/// with hyper's 16 KiB default), so every block h2 would judge still reaches it.
pub const MAX_BLOCK: usize = 256 << 10;

/// Most CONTINUATION frames in one header block (h2 allows fewer, counted on
/// what it receives: the re-encoded block, packed into full frames).
pub const MAX_CONTINUATIONS: usize = 64;

/// What replaces an `:authority` that h2 would refuse.
pub const PLACEHOLDER_AUTHORITY: &[u8] = b"localhost";

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEAD_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// An indexed field with index 0: an HPACK decoding error by definition
/// (RFC 7541 section 6.1), on which h2 ends the connection.
const UNDECODABLE_BLOCK: &[u8] = &[0x80];

/// A frame's 9-byte header.
#[derive(Clone, Copy, Debug)]
struct Head {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
    raw: [u8; HEAD_LEN],
}

impl Head {
    fn parse(raw: [u8; HEAD_LEN]) -> Head {
        Head {
            len: (usize::from(raw[0]) << 16) | (usize::from(raw[1]) << 8) | usize::from(raw[2]),
            kind: raw[3],
            flags: raw[4],
            stream: u32::from_be_bytes([raw[5], raw[6], raw[7], raw[8]]) & 0x7fff_ffff,
            raw,
        }
    }
}

fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A header block being received: its first frame's type, stream and flags
/// (without PADDED and END_HEADERS), the fields before its fragment (priority
/// or promised stream) and the fragments so far.
struct Block {
    kind: u8,
    stream: u32,
    flags: u8,
    prefix: Vec<u8>,
    fragments: Vec<u8>,
    continuations: usize,
}

enum State {
    /// Bytes of the connection preface seen so far.
    Preface(usize),
    /// Reading a frame header.
    Head,
    /// Copying this many payload bytes of a frame without a header block.
    Copy(usize),
    /// Reading the payload of a header-block frame.
    Payload(Head),
    /// Copying the rest of the frame h2 will refuse; then nothing more.
    Last(usize),
    /// The input is over for h2: what remained was a protocol error.
    Done,
}

/// The frame-level rewriting, without I/O: bytes from the client in, bytes
/// for h2 out.
pub struct Rewriter {
    state: State,
    head: [u8; HEAD_LEN],
    head_len: usize,
    payload: Vec<u8>,
    block: Option<Block>,
    decoder: Decoder<'static>,
    max_frame: usize,
    rewritten: u64,
}

impl Rewriter {
    /// `max_frame` is the SETTINGS_MAX_FRAME_SIZE the server advertises: no
    /// larger frame is accepted, none larger is emitted.
    pub fn new(max_frame: u32) -> Rewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            head: [0; HEAD_LEN],
            head_len: 0,
            payload: Vec::new(),
            block: None,
            decoder,
            max_frame: max_frame as usize,
            rewritten: 0,
        }
    }

    /// How many `:authority` fields were replaced.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Whether the input for h2 has ended.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Payload bytes that may go from the socket to h2 unchanged, now.
    pub fn passthrough(&self) -> usize {
        match self.state {
            State::Copy(n) | State::Last(n) => n,
            _ => 0,
        }
    }

    /// `n` bytes (at most [`Rewriter::passthrough`]) went through unchanged.
    pub fn passed(&mut self, n: usize) {
        self.state = match self.state {
            State::Copy(left) if left > n => State::Copy(left - n),
            State::Copy(_) => State::Head,
            State::Last(left) if left > n => State::Last(left - n),
            State::Last(_) => State::Done,
            _ => return,
        };
    }

    /// Takes all of `input`, appending what h2 is to read to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Done => return,
                State::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    if input[..n] != PREFACE[seen..seen + n] {
                        // h2 refuses the connection on this preface.
                        self.state = State::Done;
                        return;
                    }
                    input = &input[n..];
                    self.state = if seen + n == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + n)
                    };
                }
                State::Copy(left) | State::Last(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.passed(n);
                }
                State::Head => {
                    let n = (HEAD_LEN - self.head_len).min(input.len());
                    self.head[self.head_len..self.head_len + n].copy_from_slice(&input[..n]);
                    self.head_len += n;
                    input = &input[n..];
                    if self.head_len == HEAD_LEN {
                        self.head_len = 0;
                        self.on_head(Head::parse(self.head), out);
                    }
                }
                State::Payload(head) => {
                    let n = (head.len - self.payload.len()).min(input.len());
                    self.payload.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.payload.len() == head.len {
                        self.on_payload(head, out);
                    }
                }
            }
        }
    }

    fn on_head(&mut self, head: Head, out: &mut Vec<u8>) {
        let header_block = matches!(head.kind, HEADERS | PUSH_PROMISE | CONTINUATION);
        if let Some(block) = &self.block {
            if head.kind != CONTINUATION || head.stream != block.stream {
                // h2 refuses a block interrupted by another frame before it
                // decodes anything: show it the same sequence, the block's
                // first frame with an empty fragment.
                let flags = block.flags;
                let (kind, stream) = (block.kind, block.stream);
                let prefix = std::mem::take(&mut self.block)
                    .map(|b| b.prefix)
                    .unwrap_or_default();
                put_head(out, prefix.len(), kind, flags, stream);
                out.extend_from_slice(&prefix);
                return self.give_up(&head, head.len, out);
            }
        } else if head.kind == CONTINUATION {
            // A CONTINUATION out of a block: h2 refuses it once read.
            return self.give_up(&head, head.len, out);
        }
        if !header_block {
            out.extend_from_slice(&head.raw);
            self.state = State::Copy(head.len);
            self.passed(0);
            return;
        }
        if head.len > self.max_frame {
            // h2's codec refuses the frame on its length (FRAME_SIZE_ERROR).
            if let Some(block) = self.block.take() {
                put_head(
                    out,
                    block.prefix.len(),
                    block.kind,
                    block.flags,
                    block.stream,
                );
                out.extend_from_slice(&block.prefix);
            }
            return self.give_up(&head, 0, out);
        }
        self.payload.clear();
        self.state = State::Payload(head);
        if head.len == 0 {
            self.on_payload(head, out);
        }
    }

    fn on_payload(&mut self, head: Head, out: &mut Vec<u8>) {
        let payload = std::mem::take(&mut self.payload);
        self.state = State::Head;
        if head.kind == CONTINUATION {
            let Some(block) = self.block.as_mut() else {
                self.state = State::Done;
                return;
            };
            block.continuations += 1;
            if block.continuations > MAX_CONTINUATIONS
                || block.fragments.len() + payload.len() > MAX_BLOCK
            {
                return self.undecodable(out);
            }
            block.fragments.extend_from_slice(&payload);
        } else {
            let Some((prefix, fragment)) = split_payload(&head, &payload) else {
                // Bad padding, a missing field or stream 0: h2 refuses the
                // frame when it loads it, before decoding the block.
                out.extend_from_slice(&head.raw);
                out.extend_from_slice(&payload);
                self.state = State::Done;
                return;
            };
            self.block = Some(Block {
                kind: head.kind,
                stream: head.stream,
                flags: head.flags & !(PADDED | END_HEADERS),
                prefix: prefix.to_vec(),
                fragments: fragment.to_vec(),
                continuations: 0,
            });
        }
        self.payload = payload;
        self.payload.clear();
        if head.flags & END_HEADERS != 0 {
            self.finish_block(out);
        }
    }

    /// Decodes the complete block and hands on its re-encoding.
    fn finish_block(&mut self, out: &mut Vec<u8>) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut encoded = Vec::with_capacity(block.fragments.len() + 64);
        let mut over = false;
        let mut replaced = 0u64;
        let decoded =
            self.decoder
                .decode_with_cb(&block.fragments, |name: Cow<[u8]>, value: Cow<[u8]>| {
                    // Decoding goes on past the bound, to keep the table in step.
                    if over {
                        return;
                    }
                    let value: &[u8] = if &name[..] == b":authority" && !acceptable(&value) {
                        replaced += 1;
                        PLACEHOLDER_AUTHORITY
                    } else {
                        &value
                    };
                    put_literal(&mut encoded, &name, value);
                    over = encoded.len() > MAX_BLOCK;
                });
        match decoded {
            Ok(()) if !over => {
                if replaced > 0 && self.rewritten == 0 {
                    tracing::debug!("replacing the :authority h2 refuses on this connection");
                }
                self.rewritten += replaced;
                self.emit_block(&block, &encoded, out);
            }
            Ok(()) => {
                tracing::debug!("header block over {MAX_BLOCK} bytes: ending the connection");
                self.block = Some(block);
                self.undecodable(out);
            }
            Err(e) => {
                tracing::debug!("undecodable header block ({e}): ending the connection");
                self.block = Some(block);
                self.undecodable(out);
            }
        }
    }

    /// The block as frames of at most `max_frame` bytes.
    fn emit_block(&self, block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
        let room = self.max_frame.saturating_sub(block.prefix.len());
        let first = encoded.len().min(room);
        let mut rest = &encoded[first..];
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        put_head(
            out,
            block.prefix.len() + first,
            block.kind,
            block.flags | end,
            block.stream,
        );
        out.extend_from_slice(&block.prefix);
        out.extend_from_slice(&encoded[..first]);
        while !rest.is_empty() {
            let n = rest.len().min(self.max_frame);
            let end = if n == rest.len() { END_HEADERS } else { 0 };
            put_head(out, n, CONTINUATION, end, block.stream);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }

    /// Hands on the current block as one h2 cannot decode; nothing follows.
    fn undecodable(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            let encoded = UNDECODABLE_BLOCK;
            self.emit_block(&block, encoded, out);
        }
        self.state = State::Done;
    }

    /// Hands on this frame header and `payload` bytes after it as received
    /// (h2 reads a whole frame before judging it); nothing follows.
    fn give_up(&mut self, head: &Head, payload: usize, out: &mut Vec<u8>) {
        out.extend_from_slice(&head.raw);
        self.block = None;
        self.state = State::Last(payload);
        self.passed(0);
    }
}

/// The fields before a HEADERS or PUSH_PROMISE fragment, and the fragment,
/// or None where h2 refuses the frame as it loads it.
fn split_payload<'a>(head: &Head, payload: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
    if head.stream == 0 {
        return None;
    }
    let mut rest = payload;
    let mut pad = 0;
    if head.flags & PADDED != 0 {
        let (&n, tail) = rest.split_first()?;
        pad = usize::from(n);
        rest = tail;
    }
    let fields = match head.kind {
        HEADERS if head.flags & PRIORITY != 0 => 5,
        HEADERS => 0,
        _ => 4,
    };
    if rest.len() < fields + pad {
        return None;
    }
    let (prefix, rest) = rest.split_at(fields);
    Some((prefix, &rest[..rest.len() - pad]))
}

/// Whether h2 takes this `:authority` (the same parse as its own).
fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A literal header field without indexing, new name, no Huffman coding
/// (RFC 7541 section 6.2.2).
fn put_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    put_string(out, name);
    put_string(out, value);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // The length with a 7-bit prefix, its top bit (Huffman) clear.
    out.extend(loona_hpack::encoder::encode_integer(s.len(), 7));
    out.extend_from_slice(s);
}

/// A connection whose `:authority` fields h2 accepts (see the module doc);
/// writes go to the socket unchanged.
pub struct LenientAuthority<S> {
    io: S,
    rewriter: Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    scratch: Box<[u8]>,
    eof: bool,
}

impl<S> LenientAuthority<S> {
    /// `max_frame`: the SETTINGS_MAX_FRAME_SIZE the server advertises.
    pub fn new(io: S, max_frame: u32) -> LenientAuthority<S> {
        LenientAuthority {
            io,
            rewriter: Rewriter::new(max_frame),
            out: Vec::new(),
            out_pos: 0,
            scratch: vec![0; 16 << 10].into_boxed_slice(),
            eof: false,
        }
    }

    /// How many `:authority` fields were replaced so far.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LenientAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || this.rewriter.is_done() || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let direct = this.rewriter.passthrough();
            if direct > 0 {
                // A payload that goes through unchanged: read it straight
                // into h2's buffer.
                let want = direct.min(buf.remaining());
                let mut part = ReadBuf::new(buf.initialize_unfilled_to(want));
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
                let n = part.filled().len();
                if n == 0 {
                    this.eof = true;
                } else {
                    buf.advance(n);
                    this.rewriter.passed(n);
                }
                return Poll::Ready(Ok(()));
            }
            let mut part = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut part))?;
            let n = part.filled().len();
            if n == 0 {
                // An unfinished frame at the end is dropped: h2 would not act
                // on it either.
                this.eof = true;
                continue;
            }
            this.rewriter.feed(&this.scratch[..n], &mut this.out);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LenientAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for LenientAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_FRAME: u32 = 16384;

    /// HPACK with incremental indexing, new name, as a client might send.
    fn indexed_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x40);
        put_string(out, name);
        put_string(out, value);
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_head(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn connection(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    }

    /// Parses frames after the preface: (type, flags, stream, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let mut raw = [0; HEAD_LEN];
            raw.copy_from_slice(&rest[..HEAD_LEN]);
            let h = Head::parse(raw);
            out.push((
                h.kind,
                h.flags,
                h.stream,
                rest[HEAD_LEN..HEAD_LEN + h.len].to_vec(),
            ));
            rest = &rest[HEAD_LEN + h.len..];
        }
        out
    }

    /// Header lists of the header blocks in `bytes`, decoded as h2 would.
    fn blocks(bytes: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut dec = Decoder::new();
        let mut lists = Vec::new();
        let mut block = Vec::new();
        for (kind, flags, _, payload) in frames(bytes) {
            match kind {
                HEADERS => {
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    assert_eq!(flags & PADDED, 0);
                    block.extend_from_slice(&payload[skip..]);
                }
                CONTINUATION => block.extend_from_slice(&payload),
                _ => continue,
            }
            if flags & END_HEADERS != 0 {
                lists.push(dec.decode(&block).expect("re-encoded block decodes"));
                block.clear();
            }
        }
        lists
    }

    fn run(input: &[u8]) -> (Vec<u8>, Rewriter) {
        let mut rw = Rewriter::new(MAX_FRAME);
        let mut out = Vec::new();
        rw.feed(input, &mut out);
        (out, rw)
    }

    fn request(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/Version"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    fn encode(list: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in list {
            indexed_literal(&mut out, n, v);
        }
        out
    }

    #[test]
    fn a_refused_authority_becomes_localhost_and_the_rest_is_kept() {
        for bad in [&b"/run/sycri.sock"[..], b"run%2Fsycri.sock", b"", b"a b"] {
            let input = connection(&[frame(HEADERS, END_HEADERS, 1, &encode(&request(bad)))]);
            let (out, rw) = run(&input);
            assert_eq!(blocks(&out), vec![request(b"localhost")], "{bad:?}");
            assert_eq!(rw.rewritten(), 1);
        }
    }

    #[test]
    fn an_accepted_authority_is_kept() {
        for good in [&b"localhost"[..], b"example.com:8080", b"[::1]:1"] {
            let input = connection(&[frame(HEADERS, END_HEADERS, 1, &encode(&request(good)))]);
            let (out, rw) = run(&input);
            assert_eq!(blocks(&out), vec![request(good)]);
            assert_eq!(rw.rewritten(), 0);
        }
    }

    #[test]
    fn the_clients_dynamic_table_is_followed_across_blocks() {
        let first = encode(&request(b"/run/sycri.sock"));
        // The same request again by reference: the newest entry is 62.
        let second: Vec<u8> = (0..6u8).map(|i| 0x80 | (62 + 5 - i)).collect();
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &first),
            frame(HEADERS, END_HEADERS, 3, &second),
        ]);
        let (out, rw) = run(&input);
        assert_eq!(
            blocks(&out),
            vec![request(b"localhost"), request(b"localhost")]
        );
        assert_eq!(rw.rewritten(), 2);
    }

    #[test]
    fn other_frames_go_through_unchanged_and_fed_in_pieces_gives_the_same() {
        let data = frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]);
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        let input = connection(&[
            settings.clone(),
            frame(HEADERS, END_HEADERS, 1, &encode(&request(b"x/y"))),
            data.clone(),
        ]);
        let (whole, _) = run(&input);
        let f = frames(&whole);
        assert_eq!(frame(f[0].0, f[0].1, f[0].2, &f[0].3), settings);
        assert_eq!(frame(f[2].0, f[2].1, f[2].2, &f[2].3), data);
        let mut rw = Rewriter::new(MAX_FRAME);
        let mut bytewise = Vec::new();
        for b in &input {
            rw.feed(std::slice::from_ref(b), &mut bytewise);
        }
        assert_eq!(bytewise, whole);
    }

    #[test]
    fn continuations_padding_and_priority() {
        let block = encode(&request(b"/a/b"));
        let (one, two) = block.split_at(7);
        let mut first = vec![3]; // pad length
        first.extend_from_slice(&[0, 0, 0, 0, 16]); // priority: no dependency, weight 16
        first.extend_from_slice(one);
        first.extend_from_slice(&[0, 0, 0]);
        let input = connection(&[
            frame(HEADERS, PADDED | PRIORITY | 0x1, 5, &first),
            frame(CONTINUATION, END_HEADERS, 5, two),
        ]);
        let (out, _) = run(&input);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].1, PRIORITY | END_HEADERS | 0x1);
        assert_eq!(&f[0].3[..5], &[0, 0, 0, 0, 16]);
        assert_eq!(blocks(&out), vec![request(b"localhost")]);
    }

    #[test]
    fn a_large_block_is_split_into_frames_of_the_advertised_size() {
        let mut list = request(b"/a");
        list.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
        let mut block = Vec::new();
        for (n, v) in &list {
            put_literal(&mut block, n, v);
        }
        let frames_in: Vec<Vec<u8>> = block
            .chunks(MAX_FRAME as usize)
            .enumerate()
            .map(|(i, c)| {
                let last = (i + 1) * MAX_FRAME as usize >= block.len();
                let kind = if i == 0 { HEADERS } else { CONTINUATION };
                frame(kind, if last { END_HEADERS } else { 0 }, 1, c)
            })
            .collect();
        let (out, _) = run(&connection(&frames_in));
        let f = frames(&out);
        assert!(f.len() >= 3);
        assert!(f.iter().all(|x| x.3.len() <= MAX_FRAME as usize));
        assert_eq!(f[0].0, HEADERS);
        assert!(f[1..].iter().all(|x| x.0 == CONTINUATION));
        list[3].1 = b"localhost".to_vec();
        assert_eq!(blocks(&out), vec![list]);
    }

    #[test]
    fn an_undecodable_block_reaches_h2_as_one_and_ends_the_input() {
        // Index 70 is beyond an empty dynamic table.
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &[0x80 | 70]),
            frame(0x0, 0x1, 1, &[0; 5]),
        ]);
        let (out, rw) = run(&input);
        assert!(rw.is_done());
        assert_eq!(
            frames(&out),
            vec![(HEADERS, END_HEADERS, 1, UNDECODABLE_BLOCK.to_vec())]
        );
    }

    #[test]
    fn a_block_over_the_bound_ends_the_input() {
        // One 4 KiB entry referenced many times decodes past MAX_BLOCK.
        let mut block = Vec::new();
        indexed_literal(&mut block, b"x", &[b'v'; 4000]);
        block.extend(std::iter::repeat_n(0x80 | 62, 100));
        let frames_in: Vec<Vec<u8>> = vec![frame(HEADERS, END_HEADERS, 1, &block)];
        let (out, rw) = run(&connection(&frames_in));
        assert!(rw.is_done());
        assert_eq!(
            frames(&out),
            vec![(HEADERS, END_HEADERS, 1, UNDECODABLE_BLOCK.to_vec())]
        );
    }

    #[test]
    fn protocol_errors_before_decoding_reach_h2_as_received() {
        // A CONTINUATION without a block.
        let cont = frame(CONTINUATION, END_HEADERS, 1, &[0x82]);
        let (out, rw) = run(&connection(std::slice::from_ref(&cont)));
        assert!(rw.is_done());
        assert_eq!(out[PREFACE.len()..], cont[..]);
        // A block interrupted by DATA: the same sequence, empty fragment.
        let input = connection(&[
            frame(HEADERS, 0, 1, &encode(&request(b"/a"))),
            frame(0x0, 0, 1, &[1, 2, 3]),
        ]);
        let (out, rw) = run(&input);
        assert!(rw.is_done());
        let mut want = PREFACE.to_vec();
        put_head(&mut want, 0, HEADERS, 0, 1);
        want.extend_from_slice(&frame(0x0, 0, 1, &[1, 2, 3]));
        assert_eq!(out, want);
        // A frame over the advertised size.
        let mut big = Vec::new();
        put_head(&mut big, MAX_FRAME as usize + 1, HEADERS, END_HEADERS, 1);
        let (out, rw) = run(&connection(&[big.clone()]));
        assert!(rw.is_done());
        assert_eq!(out[PREFACE.len()..], big[..]);
        // Padding longer than the frame.
        let bad = frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82]);
        let (out, rw) = run(&connection(std::slice::from_ref(&bad)));
        assert!(rw.is_done());
        assert_eq!(out[PREFACE.len()..], bad[..]);
        // Not HTTP/2.
        let (out, rw) = run(b"GET / HTTP/1.1\r\n\r\n");
        assert!(rw.is_done());
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
    }

    /// Serves `input`, then a last request with authority `end`, with h2
    /// behind the rewriter (or without it): the authorities of the requests
    /// h2 accepted before that one, and how the connection ended.
    async fn through_h2(input: &[u8], rewrite: bool) -> (Vec<String>, Option<h2::Reason>) {
        use tokio::io::AsyncWriteExt;
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(input).await.expect("write");
        let last = frame(HEADERS, END_HEADERS | 0x1, 99, &encode(&request(b"end")));
        client.write_all(&last).await.expect("write");
        let io: Box<dyn Io> = if rewrite {
            Box::new(LenientAuthority::new(server, MAX_FRAME))
        } else {
            Box::new(server)
        };
        let served = async move {
            let mut conn = h2::server::handshake(io).await.expect("handshake");
            let mut authorities = Vec::new();
            let end = loop {
                match conn.accept().await {
                    Some(Ok((req, mut respond))) => {
                        let authority = req.uri().authority().map(|a| a.to_string());
                        if authority.as_deref() == Some("end") {
                            break None;
                        }
                        authorities.extend(authority);
                        let _ = respond.send_response(http::Response::new(()), true);
                    }
                    Some(Err(e)) => break e.reason(),
                    None => break Some(h2::Reason::NO_ERROR),
                }
            };
            (authorities, end)
        };
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), served)
            .await
            .expect("h2 ends");
        drop(client);
        r
    }

    trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
    impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

    #[tokio::test]
    async fn h2_serves_what_it_refused_and_keeps_refusing_protocol_errors() {
        let settings = frame(0x4, 0, 0, &[]);
        let mut bad = vec![settings.clone()];
        for (i, a) in [&b"/run/sycri.sock"[..], b"run%2Fsycri.sock"]
            .iter()
            .enumerate()
        {
            bad.push(frame(
                HEADERS,
                END_HEADERS | 0x1,
                1 + 2 * i as u32,
                &encode(&request(a)),
            ));
        }
        let bad = connection(&bad);
        // Without the rewriter h2 accepts neither request; if it ever does,
        // the rewriter may be unneeded.
        let (plain, end) = through_h2(&bad, false).await;
        assert!(plain.is_empty(), "h2 now accepts these: {plain:?}");
        assert_eq!(end, None);
        let (served, end) = through_h2(&bad, true).await;
        assert_eq!(served, vec!["localhost", "localhost"], "{end:?}");
        assert_eq!(end, None);

        let good = connection(&[
            settings.clone(),
            frame(
                HEADERS,
                END_HEADERS | 0x1,
                1,
                &encode(&request(b"localhost")),
            ),
        ]);
        assert_eq!(through_h2(&good, true).await.0, vec!["localhost"]);

        // Each of these ends the connection with the error h2 gives alone.
        let mut too_big = Vec::new();
        put_head(
            &mut too_big,
            MAX_FRAME as usize + 1,
            HEADERS,
            END_HEADERS,
            3,
        );
        too_big.resize(too_big.len() + MAX_FRAME as usize + 1, 0);
        let cases = [
            (
                "undecodable",
                frame(HEADERS, END_HEADERS, 3, &[0x80 | 90]),
                h2::Reason::PROTOCOL_ERROR,
            ),
            (
                "interrupted",
                {
                    let mut f = frame(HEADERS, 0, 3, &encode(&request(b"/a")));
                    f.extend(frame(0x0, 0, 3, &[0; 5]));
                    f
                },
                h2::Reason::PROTOCOL_ERROR,
            ),
            (
                "stray continuation",
                frame(CONTINUATION, END_HEADERS, 3, &[0x82]),
                h2::Reason::PROTOCOL_ERROR,
            ),
            ("too big", too_big, h2::Reason::FRAME_SIZE_ERROR),
        ];
        for (what, f, reason) in cases {
            let input = connection(&[settings.clone(), f]);
            assert_eq!(
                through_h2(&input, false).await.1,
                Some(reason),
                "{what}: h2 alone"
            );
            let (served, end) = through_h2(&input, true).await;
            assert_eq!(end, Some(reason), "{what}");
            assert!(served.is_empty(), "{what}");
        }
    }

    #[test]
    fn literals_round_trip_through_the_decoder() {
        for len in [0usize, 1, 126, 127, 128, 255, 16_383, 70_000] {
            let value = vec![b'a'; len];
            let mut block = Vec::new();
            put_literal(&mut block, b"x-n", &value);
            let list = Decoder::new().decode(&block).expect("decodes");
            assert_eq!(list, vec![(b"x-n".to_vec(), value)]);
        }
    }
}
