//! Writes container output in the CRI log format:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <content>\n`, one record per line;
//! a line longer than the buffer is split into P (partial) records ended by an F.

use crate::util::{format_rfc3339_nano, now_ns};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Longest line kept whole; longer ones are written as partial records.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

pub struct CriLog {
    path: Option<PathBuf>,
    file: Option<File>,
    pending: [Vec<u8>; 2],
    scratch: Vec<u8>,
    ts: String,
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl CriLog {
    /// Opens (creates) the log file; `None` discards everything.
    pub fn open(path: Option<&Path>) -> io::Result<CriLog> {
        let file = match path {
            Some(p) => Some(open_log(p)?),
            None => None,
        };
        Ok(CriLog {
            path: path.map(Path::to_path_buf),
            file,
            pending: [Vec::new(), Vec::new()],
            scratch: Vec::with_capacity(4096),
            ts: String::with_capacity(32),
        })
    }

    /// Opens the log path afresh (after the kubelet rotated the file away).
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(p) = &self.path {
            self.file = Some(open_log(p)?);
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, tag: u8, content: &[u8]) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        self.ts.clear();
        format_rfc3339_nano(now_ns(), &mut self.ts);
        self.scratch.clear();
        self.scratch.extend_from_slice(self.ts.as_bytes());
        self.scratch.push(b' ');
        self.scratch.extend_from_slice(stream.name().as_bytes());
        self.scratch.push(b' ');
        self.scratch.push(tag);
        self.scratch.push(b' ');
        self.scratch.extend_from_slice(content);
        self.scratch.push(b'\n');
        file.write_all(&self.scratch)
    }

    /// Feeds bytes read from one of the container's streams.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        let idx = stream as usize;
        while !data.is_empty() {
            match data.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.pending[idx]);
                    line.extend_from_slice(&data[..nl]);
                    let line_end = line.strip_suffix(b"\r").unwrap_or(&line).len();
                    self.emit_full(stream, &line[..line_end])?;
                    line.clear();
                    self.pending[idx] = line;
                    data = &data[nl + 1..];
                }
                None => {
                    self.pending[idx].extend_from_slice(data);
                    data = &[];
                }
            }
            while self.pending[idx].len() >= MAX_LINE {
                let rest = self.pending[idx].split_off(MAX_LINE);
                let chunk = std::mem::replace(&mut self.pending[idx], rest);
                self.record(stream, b'P', &chunk)?;
            }
        }
        Ok(())
    }

    fn emit_full(&mut self, stream: Stream, line: &[u8]) -> io::Result<()> {
        let mut rest = line;
        while rest.len() > MAX_LINE {
            let (head, tail) = rest.split_at(MAX_LINE);
            self.record(stream, b'P', head)?;
            rest = tail;
        }
        self.record(stream, b'F', rest)
    }

    /// The stream ended: whatever is left without a newline becomes a full record.
    pub fn finish(&mut self, stream: Stream) -> io::Result<()> {
        let idx = stream as usize;
        if self.pending[idx].is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.pending[idx]);
        self.emit_full(stream, &line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().expect("ts");
                assert!(ts.ends_with('Z') && ts.len() == 30, "timestamp {ts}");
                (
                    it.next().expect("stream").to_string(),
                    it.next().expect("tag").to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn lines_partials_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let mut log = CriLog::open(Some(&path)).expect("open");
        log.write(Stream::Stdout, b"hel").expect("w");
        log.write(Stream::Stderr, b"oops\n").expect("w");
        log.write(Stream::Stdout, b"lo\r\nworld\n\nend").expect("w");
        log.finish(Stream::Stdout).expect("finish");
        let long = vec![b'x'; MAX_LINE + 10];
        log.write(Stream::Stdout, &long).expect("w");
        log.write(Stream::Stdout, b"\n").expect("w");
        let recs = records(&path);
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(recs[0], s("stderr", "F", "oops"));
        assert_eq!(recs[1], s("stdout", "F", "hello"));
        assert_eq!(recs[2], s("stdout", "F", "world"));
        assert_eq!(recs[3], s("stdout", "F", ""));
        assert_eq!(recs[4], s("stdout", "F", "end"));
        assert_eq!(recs[5].1, "P");
        assert_eq!(recs[5].2.len(), MAX_LINE);
        assert_eq!(recs[6], s("stdout", "F", "xxxxxxxxxx"));

        let rotated = dir.path().join("c/0.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.reopen().expect("reopen");
        assert!(path.exists());
        log.write(Stream::Stdout, b"after\n").expect("w");
        assert_eq!(records(&path), vec![s("stdout", "F", "after")]);
        assert_eq!(records(&rotated).len(), 7);
    }
}
