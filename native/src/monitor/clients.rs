//! One attached client of the monitor: its socket, what it asked for, and
//! its two bounded buffers (frames queued for it, a partial frame from it).
//! Nothing here blocks: a client that does not keep up is marked dead, and
//! the poll loop in mod.rs drops it.

use super::protocol::attach;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// Output queued for one client before it counts as too slow and is dropped.
const CLIENT_QUEUE: usize = 256 * 1024;

/// One attached client (a control-socket connection in attach mode).
pub(super) struct Client {
    pub(super) conn: UnixStream,
    /// What the client attached to.
    pub(super) stdin: bool,
    pub(super) stdout: bool,
    pub(super) stderr: bool,
    /// Frames for the client; `out[sent..]` is still to be written.
    out: Vec<u8>,
    sent: usize,
    /// A partial frame from the client.
    inbuf: Vec<u8>,
    /// The client ended its stdin (or left).
    pub(super) stdin_closed: bool,
    /// Gone, too slow or broken: to be dropped.
    pub(super) dead: bool,
}

impl Client {
    /// A client on `conn`; `early` holds what it sent right after its request.
    pub(super) fn new(
        conn: UnixStream,
        stdin: bool,
        stdout: bool,
        stderr: bool,
        early: Vec<u8>,
    ) -> Client {
        Client {
            conn,
            stdin,
            stdout,
            stderr,
            out: Vec::new(),
            sent: 0,
            inbuf: early,
            stdin_closed: false,
            dead: false,
        }
    }

    pub(super) fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Queues a frame; a client whose queue is full is dropped.
    pub(super) fn queue(&mut self, ch: u8, data: &[u8]) {
        if self.dead {
            return;
        }
        if self.pending() + attach::HEADER + data.len() > CLIENT_QUEUE {
            self.dead = true;
            return;
        }
        if self.sent > 0 && self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        for chunk in data.chunks(attach::MAX_PAYLOAD) {
            attach::push(&mut self.out, ch, chunk);
        }
    }

    /// Writes what the socket takes without blocking.
    pub(super) fn flush(&mut self) {
        while self.pending() > 0 && !self.dead {
            // SAFETY: writing from our own buffer, within its length, to a
            // socket we own; MSG_NOSIGNAL because the peer may be gone.
            let n = unsafe {
                libc::send(
                    self.conn.as_raw_fd(),
                    self.out[self.sent..].as_ptr().cast(),
                    self.pending(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    self.dead = true;
                }
                return;
            }
            self.sent += n as usize;
        }
        if self.pending() == 0 {
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > 64 * 1024 {
                self.out.shrink_to(16 * 1024);
            }
        }
    }

    /// Reads what is there and returns the complete frames.
    pub(super) fn read_frames(&mut self, buf: &mut [u8]) -> Vec<(u8, Vec<u8>)> {
        // SAFETY: reading into our own buffer, within its length, from a socket we own.
        let n = unsafe {
            libc::recv(
                self.conn.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len().min(16 * 1024),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            self.dead = true;
        } else if n < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                self.dead = true;
            }
        } else {
            self.inbuf.extend_from_slice(&buf[..n as usize]);
        }
        self.take_frames()
    }

    pub(super) fn take_frames(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while self.inbuf.len() >= attach::HEADER {
            let mut h = [0u8; attach::HEADER];
            h.copy_from_slice(&self.inbuf[..attach::HEADER]);
            let (ch, len) = attach::parse_header(&h);
            if len > attach::MAX_PAYLOAD {
                self.dead = true;
                break;
            }
            if self.inbuf.len() < attach::HEADER + len {
                break;
            }
            frames.push((
                ch,
                self.inbuf[attach::HEADER..attach::HEADER + len].to_vec(),
            ));
            self.inbuf.drain(..attach::HEADER + len);
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pair() -> (Client, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        ours.set_nonblocking(true).expect("nonblocking");
        (Client::new(ours, true, true, false, Vec::new()), theirs)
    }

    #[test]
    fn queued_output_reaches_the_client_framed() {
        let (mut c, mut peer) = pair();
        c.queue(attach::STDOUT, b"hello");
        assert_eq!(c.pending(), attach::HEADER + 5);
        c.flush();
        assert_eq!(c.pending(), 0);
        let mut got = [0u8; attach::HEADER + 5];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(got.to_vec(), attach::encode(attach::STDOUT, b"hello"));
        assert!(!c.dead);
    }

    #[test]
    fn a_client_that_does_not_read_is_dropped_not_waited_for() {
        let (mut c, _peer) = pair();
        let chunk = vec![0u8; 16 * 1024];
        let mut rounds = 0;
        while !c.dead {
            c.queue(attach::STDOUT, &chunk);
            c.flush();
            rounds += 1;
            assert!(rounds < 1000, "never dropped");
        }
        // Bounded: what it holds never passes the limit.
        assert!(c.pending() <= CLIENT_QUEUE);
        let before = c.pending();
        c.queue(attach::STDOUT, b"more");
        assert_eq!(c.pending(), before, "a dead client queues nothing");
    }

    #[test]
    fn frames_are_taken_whole_and_across_reads() {
        let (mut c, mut peer) = pair();
        let mut buf = vec![0u8; 64 * 1024];
        let f = attach::encode(attach::STDIN, b"abc");
        // Header and half the payload first: no frame yet.
        peer.write_all(&f[..attach::HEADER + 1]).expect("write");
        assert!(c.read_frames(&mut buf).is_empty());
        peer.write_all(&f[attach::HEADER + 1..]).expect("write");
        peer.write_all(&attach::encode(attach::CLOSE_STDIN, b""))
            .expect("write");
        assert_eq!(
            c.read_frames(&mut buf),
            vec![
                (attach::STDIN, b"abc".to_vec()),
                (attach::CLOSE_STDIN, vec![])
            ]
        );
        drop(peer);
        assert!(c.read_frames(&mut buf).is_empty());
        assert!(c.dead, "end of stream marks the client gone");
    }

    #[test]
    fn an_oversized_frame_ends_the_client() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        let mut header = vec![attach::STDIN];
        header.extend_from_slice(&((attach::MAX_PAYLOAD as u32) + 1).to_be_bytes());
        let mut c = Client::new(ours, true, false, false, header);
        assert!(c.take_frames().is_empty());
        assert!(c.dead);
    }
}
