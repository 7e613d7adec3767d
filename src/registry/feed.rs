//! A blob that is being downloaded into a file, readable while it grows: the
//! download appends and announces each stretch that reached the file; a
//! reader (on a blocking thread, e.g. the layer converter) gets the bytes as
//! they land and waits for more. The end of the stream is only reported
//! after the download checked the blob's digest, so a reader never finishes
//! on unverified data; a failed or cancelled download is a read error.

use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    file: Option<Arc<std::fs::File>>,
    /// Bytes in the file (all readable).
    written: u64,
    /// Set once: Ok when complete and verified, else why not.
    end: Option<Result<(), String>>,
}

/// See the module documentation.
#[derive(Default)]
pub struct Feed {
    state: Mutex<State>,
    cond: Condvar,
}

impl Feed {
    pub fn new() -> Arc<Feed> {
        Arc::new(Feed::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file the blob goes into (its start is readable after [`Self::grew`]).
    pub(crate) fn set_file(&self, file: std::fs::File) {
        let mut s = self.lock();
        s.file = Some(Arc::new(file));
        s.written = 0;
        self.cond.notify_all();
    }

    /// The file now holds `written` bytes.
    pub(crate) fn grew(&self, written: u64) {
        let mut s = self.lock();
        s.written = written;
        self.cond.notify_all();
    }

    /// Ends the feed (the first call counts): Ok once the blob is complete and
    /// verified, Err with the reason otherwise.
    pub fn finish(&self, result: Result<(), String>) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(result);
        }
        self.cond.notify_all();
    }

    /// A reader from the blob's start.
    pub fn reader(self: &Arc<Self>) -> FeedReader {
        FeedReader {
            feed: self.clone(),
            pos: 0,
        }
    }
}

/// Reads a [`Feed`] from its start, blocking until bytes arrive.
pub struct FeedReader {
    feed: Arc<Feed>,
    pos: u64,
}

impl Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (file, n) = {
            let mut s = self.feed.lock();
            loop {
                if let Some(Err(why)) = &s.end {
                    return Err(io::Error::other(why.clone()));
                }
                if let Some(f) = s.file.as_ref().filter(|_| s.written > self.pos) {
                    let n = (s.written - self.pos).min(buf.len() as u64) as usize;
                    break (f.clone(), n);
                }
                if matches!(s.end, Some(Ok(()))) {
                    return Ok(0);
                }
                s = self.feed.cond.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        };
        let k = file.read_at(&mut buf[..n], self.pos)?;
        if k == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the downloaded file is shorter than announced",
            ));
        }
        self.pos += k as u64;
        Ok(k)
    }
}

/// Ends its feed with an error when dropped before the download finished it:
/// the pull was given up, and readers must not wait for bytes that will not come.
pub struct FeedGuard(pub Arc<Feed>);

impl Drop for FeedGuard {
    fn drop(&mut self) {
        self.0.finish(Err("the download was stopped".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reader_follows_the_file_and_waits_for_the_verdict() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let mut w = std::fs::File::create(&path).expect("create");
        let feed = Feed::new();
        feed.set_file(std::fs::File::open(&path).expect("open"));
        let mut r = feed.reader();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            r.read_to_end(&mut all).map(|_| all)
        });
        w.write_all(b"hello ").expect("write");
        feed.grew(6);
        std::thread::sleep(std::time::Duration::from_millis(50));
        w.write_all(b"world").expect("write");
        feed.grew(11);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished(), "no end before the verdict");
        feed.finish(Ok(()));
        assert_eq!(reader.join().expect("join").expect("read"), b"hello world");

        // A dropped guard ends a waiting reader with an error.
        let feed = Feed::new();
        let mut r = feed.reader();
        let reader = std::thread::spawn(move || r.read(&mut [0u8; 8]));
        drop(FeedGuard(feed.clone()));
        let err = reader.join().expect("join").expect_err("cancelled");
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
