//! An in-process squashfs 4.0 writer for converted images, built for one pass
//! over the layers: file data is compressed (on worker threads) and written as
//! it is read, in arrival order; only the metadata (the merged tree, block
//! sizes, ids, xattrs) stays in memory until [`SqfsWriter::finish`] writes the
//! inode, directory, fragment, id and xattr tables and the superblock.
//!
//! Layout (what the kernel's `fs/squashfs` checks at mount): superblock, data
//! blocks and fragment blocks, inode table, directory table, fragment table
//! (metadata blocks, then their index), id table (metadata, index), xattr
//! table (key/value metadata, id metadata, then the id table header and
//! index); each index ends where the next table starts. Files smaller than a
//! block are packed into fragments; larger files' blocks (the short last one
//! included) are plain data blocks; all-zero blocks are stored as sparse
//! blocks. There is no NFS export table and no duplicate detection. The image
//! is padded to 4 KiB.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::error::ConvertError;
use super::options::Compression;

/// Data block size (the kernel allows 4 KiB to 1 MiB; 128 KiB is mksquashfs' default).
pub(crate) const BLOCK_SIZE: usize = 128 * 1024;
const BLOCK_LOG: u16 = 17;
/// Uncompressed size of a metadata block.
const META_SIZE: usize = 8192;
const META_UNCOMPRESSED: u16 = 0x8000;
pub(crate) const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
const INVALID_FRAG: u32 = u32::MAX;
const INVALID_XATTR: u32 = u32::MAX;
const INVALID_BLK: u64 = u64::MAX;
const SUPERBLOCK_SIZE: u64 = 96;
const PAD: u64 = 4096;
/// A block whose data are all zeros: no bytes on disk.
const SPARSE: u64 = u64::MAX;

const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;
const S_IFIFO: u16 = 0o010000;

/// Block compression and its level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Codec {
    pub kind: Compression,
    pub level: i32,
}

impl Codec {
    /// The superblock's compressor id. An uncompressed image names gzip, which
    /// every kernel with squashfs has (no block is ever handed to it).
    fn id(self) -> u16 {
        match self.kind {
            Compression::Gzip | Compression::None => 1,
            Compression::Zstd => 6,
        }
    }

    /// Superblock flags this codec sets: for `none`, "inodes, data, fragments
    /// and xattrs uncompressed" (bits 0, 1, 3 and 8), as mksquashfs -noI -noD
    /// -noF -noX writes them; readers go by each block's own flag either way.
    fn flags(self) -> u16 {
        match self.kind {
            Compression::None => 1 | 1 << 1 | 1 << 3 | 1 << 8,
            Compression::Gzip | Compression::Zstd => 0,
        }
    }

    fn compressor(self) -> io::Result<Compressor> {
        Ok(match self.kind {
            Compression::Gzip => Compressor::Gzip(flate2::Compress::new(
                flate2::Compression::new(self.level.clamp(1, 9) as u32),
                true,
            )),
            Compression::Zstd => Compressor::Zstd(zstd::bulk::Compressor::new(self.level)?),
            Compression::None => Compressor::None,
        })
    }
}

/// One thread's compressor (contexts are reused from block to block).
enum Compressor {
    /// zlib streams, as the kernel's squashfs gzip decompressor wants.
    Gzip(flate2::Compress),
    Zstd(zstd::bulk::Compressor<'static>),
    /// Stores every block as it is.
    None,
}

impl Compressor {
    /// Compresses `input` into `out`; false when that would not be smaller
    /// (the block is then stored as it is).
    fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        out.clear();
        out.reserve(input.len());
        match self {
            Compressor::Gzip(c) => {
                c.reset();
                matches!(
                    c.compress_vec(input, out, flate2::FlushCompress::Finish),
                    Ok(flate2::Status::StreamEnd)
                ) && out.len() < input.len()
            }
            // An error here is "the output does not fit": store it raw.
            Compressor::Zstd(c) => c
                .compress_to_buffer(input, out)
                .is_ok_and(|n| n < input.len()),
            Compressor::None => false,
        }
    }
}

fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

// ---------------------------------------------------------------------------
// Data blocks: compressed in parallel, written in order.

struct Job {
    seq: u64,
    raw: Vec<u8>,
    out: Vec<u8>,
}

/// Where each data block went: (offset from the image start, size field).
#[derive(Default)]
struct Placed {
    at: Vec<(u64, u32)>,
    end: u64,
    error: Option<io::Error>,
}

impl Placed {
    /// Writes one block (compressed or not) at the end of the data.
    fn put(&mut self, file: &File, base: u64, raw: &[u8], out: &[u8], compressed: bool) {
        let (bytes, size) = if compressed {
            (out, out.len() as u32)
        } else {
            (raw, raw.len() as u32 | BLOCK_UNCOMPRESSED)
        };
        if self.error.is_none() {
            if let Err(e) = file.write_all_at(bytes, base + self.end) {
                self.error = Some(e);
            }
        }
        self.at.push((self.end, size));
        self.end += bytes.len() as u64;
    }
}

/// The block pipeline: `submit` hands a block over and gets its sequence
/// number; blocks land in the file in that order.
struct DataWriter {
    file: Arc<File>,
    base: u64,
    next_seq: u64,
    /// Single-threaded: compress and write at once.
    inline: Option<(Compressor, Placed)>,
    /// Buffers not in use (for the single-threaded path, and blocks that were
    /// not submitted).
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    jobs: Option<SyncSender<Job>>,
    free: Option<Receiver<(Vec<u8>, Vec<u8>)>>,
    failed: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Placed>>,
}

impl DataWriter {
    /// A writer with no pipeline yet.
    fn idle(file: Arc<File>, base: u64) -> DataWriter {
        DataWriter {
            file,
            base,
            next_seq: 0,
            inline: None,
            spare: Vec::new(),
            jobs: None,
            free: None,
            failed: Arc::new(AtomicBool::new(false)),
            workers: Vec::new(),
            writer: None,
        }
    }

    /// Blocks go after what `start` has placed, numbered on from there.
    fn new(
        file: Arc<File>,
        base: u64,
        codec: Codec,
        threads: usize,
        start: Placed,
    ) -> io::Result<DataWriter> {
        let next_seq = start.at.len() as u64;
        let mut w = DataWriter::idle(file, base);
        w.next_seq = next_seq;
        if threads <= 1 {
            w.inline = Some((codec.compressor()?, start));
            return Ok(w);
        }
        // Buffers in flight (raw + compressed pairs) bound the memory: about
        // 2 * BLOCK_SIZE * (2 * threads + 2).
        let pairs = 2 * threads + 2;
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(threads * 2);
        let (done_tx, done_rx) = mpsc::channel::<(Job, bool)>();
        let (free_tx, free_rx) = mpsc::channel::<(Vec<u8>, Vec<u8>)>();
        for _ in 0..pairs {
            let _ = free_tx.send((Vec::with_capacity(BLOCK_SIZE), Vec::new()));
        }
        let job_rx = Arc::new(Mutex::new(job_rx));
        for _ in 0..threads {
            let mut comp = codec.compressor()?;
            let (rx, tx) = (job_rx.clone(), done_tx.clone());
            w.workers.push(std::thread::spawn(move || loop {
                let job = {
                    let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                    rx.recv()
                };
                let Ok(mut job) = job else { return };
                let compressed = comp.compress(&job.raw, &mut job.out);
                if tx.send((job, compressed)).is_err() {
                    return;
                }
            }));
        }
        drop(done_tx);
        let (file, failed) = (w.file.clone(), w.failed.clone());
        w.writer = Some(std::thread::spawn(move || {
            let mut placed = start;
            let mut waiting: HashMap<u64, (Job, bool)> = HashMap::new();
            let mut next = next_seq;
            while let Ok((job, compressed)) = done_rx.recv() {
                waiting.insert(job.seq, (job, compressed));
                while let Some((job, compressed)) = waiting.remove(&next) {
                    placed.put(&file, base, &job.raw, &job.out, compressed);
                    if placed.error.is_some() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    let _ = free_tx.send((job.raw, job.out));
                    next += 1;
                }
            }
            placed
        }));
        w.jobs = Some(job_tx);
        w.free = Some(free_rx);
        Ok(w)
    }

    /// A buffer to fill with a block (cleared).
    fn buffer(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        if let Some((mut raw, out)) = self.spare.pop() {
            raw.clear();
            return Ok((raw, out));
        }
        if self.inline.is_some() {
            return Ok((Vec::with_capacity(BLOCK_SIZE), Vec::new()));
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err(io::Error::other("writing the image failed"));
        }
        let free = self.free.as_ref().ok_or_else(closed)?;
        let (mut raw, out) = free.recv().map_err(|_| closed())?;
        raw.clear();
        Ok((raw, out))
    }

    /// Queues a block; returns its sequence number.
    fn submit(&mut self, raw: Vec<u8>, out: Vec<u8>) -> io::Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some((comp, placed)) = self.inline.as_mut() {
            let mut out = out;
            let compressed = comp.compress(&raw, &mut out);
            placed.put(&self.file, self.base, &raw, &out, compressed);
            if let Some(e) = placed.error.take() {
                return Err(e);
            }
            self.spare.push((raw, out));
            return Ok(seq);
        }
        let jobs = self.jobs.as_ref().ok_or_else(closed)?;
        jobs.send(Job { seq, raw, out }).map_err(|_| closed())?;
        Ok(seq)
    }

    /// Waits for every block to be written.
    fn close(mut self) -> io::Result<Placed> {
        if let Some((_, placed)) = self.inline.take() {
            return Ok(placed);
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let mut placed = self
            .writer
            .take()
            .and_then(|w| w.join().ok())
            .ok_or_else(closed)?;
        if let Some(e) = placed.error.take() {
            return Err(e);
        }
        if placed.at.len() as u64 != self.next_seq {
            return Err(closed());
        }
        Ok(placed)
    }
}

impl Drop for DataWriter {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn closed() -> io::Error {
    io::Error::other("the block compressor threads stopped")
}

/// Data start right after the superblock (no compressor options are written).
pub(crate) fn base_data_start() -> u64 {
    SUPERBLOCK_SIZE
}

// ---------------------------------------------------------------------------
// Metadata blocks.

struct MetaWriter {
    comp: Compressor,
    out: Vec<u8>,
    cur: Vec<u8>,
    /// Offset in `out` of each metadata block.
    starts: Vec<u32>,
    scratch: Vec<u8>,
}

impl MetaWriter {
    fn new(codec: Codec) -> io::Result<MetaWriter> {
        Ok(MetaWriter {
            comp: codec.compressor()?,
            out: Vec::new(),
            cur: Vec::with_capacity(META_SIZE),
            starts: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Where the next byte goes: (block offset in the table, offset in the block).
    fn pos(&self) -> (u32, u16) {
        (self.out.len() as u32, self.cur.len() as u16)
    }

    fn put(&mut self, mut b: &[u8]) {
        while !b.is_empty() {
            let n = (META_SIZE - self.cur.len()).min(b.len());
            self.cur.extend_from_slice(&b[..n]);
            b = &b[n..];
            if self.cur.len() == META_SIZE {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.cur.is_empty() {
            return;
        }
        self.starts.push(self.out.len() as u32);
        let compressed = self.comp.compress(&self.cur, &mut self.scratch);
        if compressed {
            self.out
                .extend_from_slice(&(self.scratch.len() as u16).to_le_bytes());
            self.out.extend_from_slice(&self.scratch);
        } else {
            self.out
                .extend_from_slice(&(self.cur.len() as u16 | META_UNCOMPRESSED).to_le_bytes());
            self.out.extend_from_slice(&self.cur);
        }
        self.cur.clear();
    }

    /// The table's bytes and the offsets of its blocks; the writer is left empty.
    fn finish(&mut self) -> (Vec<u8>, Vec<u32>) {
        self.flush();
        (
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.starts),
        )
    }
}

// ---------------------------------------------------------------------------
// What the converter hands over.

/// Where a regular file's data went.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FileData {
    pub size: u64,
    /// Sequence numbers of its blocks (`SPARSE` for all-zero blocks).
    blocks: Vec<u64>,
    /// The block that would have come next (where a file of sparse blocks starts).
    next_seq: u64,
    /// Fragment index and offset, for files smaller than a block.
    frag: Option<(u32, u32)>,
}

impl FileData {
    /// Whether it is laid out as the writer lays a file of its size out
    /// (a fragment below a block, else one block number per block) and
    /// only names blocks below `next_seq` and fragments that exist (`frags`
    /// written, the open one `open_len` bytes long).
    pub(crate) fn fits(&self, next_seq: u64, frags: usize, open_len: usize) -> bool {
        let block = BLOCK_SIZE as u64;
        let shape = match self.frag {
            None if self.size == 0 => self.blocks.is_empty(),
            None => self.size >= block && self.blocks.len() as u64 == self.size.div_ceil(block),
            Some(_) => self.size > 0 && self.size < block && self.blocks.is_empty(),
        };
        let blocks = self.blocks.iter().all(|&b| b == SPARSE || b < next_seq);
        let frag = match self.frag {
            None => true,
            Some((i, at)) => {
                let end = u64::from(at).saturating_add(self.size);
                if (i as usize) < frags {
                    end <= block
                } else {
                    i as usize == frags && end <= open_len as u64
                }
            }
        };
        shape && blocks && frag && self.next_seq <= next_seq
    }
}

/// Attributes of an inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attrs {
    /// Permission bits (with setuid, setgid, sticky).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    /// Only `user.`, `trusted.` and `security.` names.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
pub(crate) enum NodeData {
    File(FileData),
    Symlink(Vec<u8>),
    Fifo,
}

/// A non-directory inode and its names (full paths, the first one sorted first).
#[derive(Debug)]
pub(crate) struct TreeInode {
    pub names: Vec<Vec<u8>>,
    pub attrs: Attrs,
    pub data: NodeData,
}

/// The merged image: every directory (full path, parents exist) and inode.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    pub root: Attrs,
    pub dirs: Vec<(Vec<u8>, Attrs)>,
    pub inodes: Vec<TreeInode>,
}

/// The parent directory ("" for the root) and the last component.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

// ---------------------------------------------------------------------------
// The writer.

pub(crate) struct SqfsWriter {
    file: Arc<File>,
    codec: Codec,
    data: DataWriter,
    frag: Vec<u8>,
    /// Sequence number of each fragment block.
    frag_seqs: Vec<u64>,
}

/// What [`SqfsWriter::finish`] wrote.
pub(crate) struct Written {
    /// Image size, padded.
    pub bytes: u64,
    pub inodes: u32,
    /// Where each data block went (offset, size field), by sequence number.
    pub placed: Vec<(u64, u32)>,
    /// End of the data blocks.
    pub data_end: u64,
}

/// The writer between two layers: what a later conversion needs to go on
/// from the same point over a copy of the data written so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Boundary {
    /// Blocks submitted so far.
    pub next_seq: u64,
    /// The open fragment block's bytes.
    #[serde(with = "hex_bytes")]
    pub frag: Vec<u8>,
    /// Sequence numbers of the fragment blocks written.
    pub frag_seqs: Vec<u64>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        hex::decode(text).map_err(serde::de::Error::custom)
    }
}

impl SqfsWriter {
    /// Writes an image into `file` (from offset 0) with `threads` compressor threads.
    pub fn new(file: File, codec: Codec, threads: usize) -> io::Result<SqfsWriter> {
        let start = Placed {
            end: base_data_start(),
            ..Placed::default()
        };
        Self::with(file, codec, threads, start, Boundary::default())
    }

    /// Goes on at `at` over `file`, which already holds the data blocks that
    /// `placed` says (from offset 0, as the image that wrote them had them).
    pub fn resume(
        file: File,
        codec: Codec,
        threads: usize,
        at: Boundary,
        placed: Vec<(u64, u32)>,
        data_end: u64,
    ) -> io::Result<SqfsWriter> {
        let start = Placed {
            at: placed,
            end: data_end,
            error: None,
        };
        Self::with(file, codec, threads, start, at)
    }

    fn with(
        file: File,
        codec: Codec,
        threads: usize,
        start: Placed,
        at: Boundary,
    ) -> io::Result<SqfsWriter> {
        let file = Arc::new(file);
        let mut frag = at.frag;
        frag.reserve(BLOCK_SIZE.saturating_sub(frag.len()));
        Ok(SqfsWriter {
            data: DataWriter::new(file.clone(), 0, codec, threads, start)?,
            file,
            codec,
            frag,
            frag_seqs: at.frag_seqs,
        })
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Where the writer is now (between two files).
    pub fn boundary(&self) -> Boundary {
        Boundary {
            next_seq: self.data.next_seq,
            frag: self.frag.clone(),
            frag_seqs: self.frag_seqs.clone(),
        }
    }

    fn io(what: &str) -> impl FnOnce(io::Error) -> ConvertError + '_ {
        move |e| ConvertError::Io {
            context: format!("write the squashfs image ({what})"),
            source: e,
        }
    }

    /// Adds one file of `size` bytes; `fill` must fill each buffer it is given
    /// with the file's next bytes.
    pub fn add_file(
        &mut self,
        size: u64,
        fill: &mut dyn FnMut(&mut [u8]) -> Result<(), ConvertError>,
    ) -> Result<FileData, ConvertError> {
        let mut fd = FileData {
            size,
            next_seq: self.data.next_seq,
            ..FileData::default()
        };
        if size == 0 {
            return Ok(fd);
        }
        if size < BLOCK_SIZE as u64 {
            // Below BLOCK_SIZE, so the cast cannot truncate.
            let n = size as usize;
            if self.frag.len() + n > BLOCK_SIZE {
                self.flush_fragment()?;
            }
            let at = self.frag.len();
            self.frag.resize(at + n, 0);
            fill(&mut self.frag[at..])?;
            fd.frag = Some((self.frag_seqs.len() as u32, at as u32));
            return Ok(fd);
        }
        let mut left = size;
        while left > 0 {
            let n = left.min(BLOCK_SIZE as u64) as usize;
            let (mut raw, out) = self.data.buffer().map_err(Self::io("data"))?;
            raw.resize(n, 0);
            fill(&mut raw)?;
            if is_zero(&raw) {
                fd.blocks.push(SPARSE);
                self.data.give_back(raw, out);
            } else {
                let seq = self.data.submit(raw, out).map_err(Self::io("data"))?;
                fd.blocks.push(seq);
            }
            left -= n as u64;
        }
        Ok(fd)
    }

    fn flush_fragment(&mut self) -> Result<(), ConvertError> {
        if self.frag.is_empty() {
            return Ok(());
        }
        let (mut raw, out) = self.data.buffer().map_err(Self::io("fragment"))?;
        std::mem::swap(&mut raw, &mut self.frag);
        let seq = self.data.submit(raw, out).map_err(Self::io("fragment"))?;
        self.frag_seqs.push(seq);
        Ok(())
    }

    /// Writes the tables and the superblock.
    pub fn finish(mut self, tree: Tree) -> Result<Written, ConvertError> {
        self.flush_fragment()?;
        let codec = self.codec;
        let file = self.file.clone();
        let frag_seqs = std::mem::take(&mut self.frag_seqs);
        let placed = self.data_close().map_err(Self::io("data"))?;
        let mut t = Tables::new(codec, &placed).map_err(Self::io("tables"))?;
        let (root, count) = t.write_tree(&tree)?;
        let mut pos = placed.end;
        let w = |pos: &mut u64, b: &[u8], what: &str| -> Result<u64, ConvertError> {
            let at = *pos;
            file.write_all_at(b, at).map_err(Self::io(what))?;
            *pos += b.len() as u64;
            Ok(at)
        };
        let inodes = t.inodes.finish().0;
        let dirs = t.dirs.finish().0;
        let inode_table = w(&mut pos, &inodes, "inode table")?;
        let dir_table = w(&mut pos, &dirs, "directory table")?;
        drop((inodes, dirs));

        // Fragment table.
        let mut fm = MetaWriter::new(codec).map_err(Self::io("tables"))?;
        for seq in &frag_seqs {
            let (start, size) = placed.at.get(*seq as usize).copied().unwrap_or((0, 0));
            fm.put(&start.to_le_bytes());
            fm.put(&size.to_le_bytes());
            fm.put(&0u32.to_le_bytes());
        }
        let (fbytes, fstarts) = fm.finish();
        let fblocks = w(&mut pos, &fbytes, "fragment table")?;
        let fragment_table = w(&mut pos, &index(fblocks, &fstarts), "fragment index")?;

        // Id table.
        let mut im = MetaWriter::new(codec).map_err(Self::io("tables"))?;
        for id in &t.ids {
            im.put(&id.to_le_bytes());
        }
        let (ibytes, istarts) = im.finish();
        let iblocks = w(&mut pos, &ibytes, "id table")?;
        let id_table = w(&mut pos, &index(iblocks, &istarts), "id index")?;

        // Xattr table.
        let xattr_id_table = if t.xattr_ids.is_empty() {
            INVALID_BLK
        } else {
            let kv = t.xkv.finish().0;
            let kv_start = w(&mut pos, &kv, "xattr table")?;
            let mut xm = MetaWriter::new(codec).map_err(Self::io("tables"))?;
            for (r, count, size) in &t.xattr_ids {
                xm.put(&r.to_le_bytes());
                xm.put(&count.to_le_bytes());
                xm.put(&size.to_le_bytes());
            }
            let (xbytes, xstarts) = xm.finish();
            let xblocks = w(&mut pos, &xbytes, "xattr ids")?;
            let mut head = Vec::new();
            head.extend_from_slice(&kv_start.to_le_bytes());
            head.extend_from_slice(&(t.xattr_ids.len() as u32).to_le_bytes());
            head.extend_from_slice(&0u32.to_le_bytes());
            head.extend_from_slice(&index(xblocks, &xstarts));
            w(&mut pos, &head, "xattr id index")?
        };
        let bytes_used = pos;
        let padded = bytes_used.div_ceil(PAD) * PAD;
        file.set_len(padded).map_err(Self::io("padding"))?;

        let mut sb = Vec::with_capacity(SUPERBLOCK_SIZE as usize);
        sb.extend_from_slice(&0x7371_7368u32.to_le_bytes());
        sb.extend_from_slice(&count.to_le_bytes());
        sb.extend_from_slice(&0u32.to_le_bytes()); // mkfs time: reproducible images
        sb.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        sb.extend_from_slice(&(frag_seqs.len() as u32).to_le_bytes());
        sb.extend_from_slice(&codec.id().to_le_bytes());
        sb.extend_from_slice(&BLOCK_LOG.to_le_bytes());
        // Bit 9: no xattrs at all.
        let flags: u16 = codec.flags() | if t.xattr_ids.is_empty() { 0x0200 } else { 0 };
        sb.extend_from_slice(&flags.to_le_bytes());
        sb.extend_from_slice(&(t.ids.len() as u16).to_le_bytes());
        sb.extend_from_slice(&4u16.to_le_bytes());
        sb.extend_from_slice(&0u16.to_le_bytes());
        sb.extend_from_slice(&root.to_le_bytes());
        sb.extend_from_slice(&bytes_used.to_le_bytes());
        sb.extend_from_slice(&id_table.to_le_bytes());
        sb.extend_from_slice(&xattr_id_table.to_le_bytes());
        sb.extend_from_slice(&inode_table.to_le_bytes());
        sb.extend_from_slice(&dir_table.to_le_bytes());
        sb.extend_from_slice(&fragment_table.to_le_bytes());
        sb.extend_from_slice(&INVALID_BLK.to_le_bytes()); // no export table
        debug_assert_eq!(sb.len() as u64, SUPERBLOCK_SIZE);
        file.write_all_at(&sb, 0).map_err(Self::io("superblock"))?;
        Ok(Written {
            bytes: padded,
            inodes: count,
            data_end: placed.end,
            placed: placed.at,
        })
    }

    fn data_close(&mut self) -> io::Result<Placed> {
        // Swap in an idle writer so that `self` can still be dropped.
        let inert = DataWriter::idle(self.file.clone(), 0);
        std::mem::replace(&mut self.data, inert).close()
    }
}

impl DataWriter {
    /// Returns a buffer that was not submitted (a sparse block).
    fn give_back(&mut self, raw: Vec<u8>, out: Vec<u8>) {
        self.spare.push((raw, out));
    }
}

/// The index of a table's metadata blocks: their absolute positions.
fn index(table_at: u64, starts: &[u32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(starts.len() * 8);
    for s in starts {
        v.extend_from_slice(&(table_at + u64::from(*s)).to_le_bytes());
    }
    v
}

/// An inode's xattrs: (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The inode and directory tables being built, and the id and xattr tables.
struct Tables<'a> {
    placed: &'a Placed,
    inodes: MetaWriter,
    dirs: MetaWriter,
    xkv: MetaWriter,
    ids: Vec<u32>,
    id_of: HashMap<u32, u16>,
    /// (reference of the key/value list, count, size).
    xattr_ids: Vec<(u64, u32, u32)>,
    xattr_of: HashMap<Xattrs, u32>,
}

#[derive(Clone, Copy)]
enum Child {
    Dir(usize),
    Inode(usize),
}

impl<'a> Tables<'a> {
    fn new(codec: Codec, placed: &'a Placed) -> io::Result<Tables<'a>> {
        Ok(Tables {
            placed,
            inodes: MetaWriter::new(codec)?,
            dirs: MetaWriter::new(codec)?,
            xkv: MetaWriter::new(codec)?,
            ids: Vec::new(),
            id_of: HashMap::new(),
            xattr_ids: Vec::new(),
            xattr_of: HashMap::new(),
        })
    }

    fn id(&mut self, v: u32) -> Result<u16, ConvertError> {
        if let Some(i) = self.id_of.get(&v) {
            return Ok(*i);
        }
        let i = u16::try_from(self.ids.len()).map_err(|_| ConvertError::TooLarge {
            what: "number of distinct uids and gids",
            limit: 65536,
        })?;
        self.ids.push(v);
        self.id_of.insert(v, i);
        Ok(i)
    }

    fn xattr(&mut self, xattrs: &[(Vec<u8>, Vec<u8>)]) -> u32 {
        if xattrs.is_empty() {
            return INVALID_XATTR;
        }
        if let Some(i) = self.xattr_of.get(xattrs) {
            return *i;
        }
        let (blk, off) = self.xkv.pos();
        let mut size = 0u32;
        let mut count = 0u32;
        for (name, value) in xattrs {
            let (kind, rest): (u16, &[u8]) = if let Some(r) = name.strip_prefix(b"user.") {
                (0, r)
            } else if let Some(r) = name.strip_prefix(b"trusted.") {
                (1, r)
            } else if let Some(r) = name.strip_prefix(b"security.") {
                (2, r)
            } else {
                continue;
            };
            let (Ok(nlen), Ok(vlen)) = (u16::try_from(rest.len()), u32::try_from(value.len()))
            else {
                continue;
            };
            self.xkv.put(&kind.to_le_bytes());
            self.xkv.put(&nlen.to_le_bytes());
            self.xkv.put(rest);
            self.xkv.put(&vlen.to_le_bytes());
            self.xkv.put(value);
            size = size.saturating_add(8 + u32::from(nlen) + vlen);
            count += 1;
        }
        let i = self.xattr_ids.len() as u32;
        self.xattr_ids
            .push(((u64::from(blk) << 16) | u64::from(off), count, size));
        self.xattr_of.insert(xattrs.to_vec(), i);
        i
    }

    /// The common inode header.
    fn header(
        &mut self,
        b: &mut Vec<u8>,
        kind: u16,
        ftype: u16,
        a: &Attrs,
        number: u32,
    ) -> Result<(), ConvertError> {
        let (uid, gid) = (self.id(a.uid)?, self.id(a.gid)?);
        b.extend_from_slice(&kind.to_le_bytes());
        // Permission bits only: the type is the inode's (the kernel refuses modes
        // with type bits, as mksquashfs never writes them).
        let _ = ftype;
        b.extend_from_slice(&(a.mode & 0o7777).to_le_bytes());
        b.extend_from_slice(&uid.to_le_bytes());
        b.extend_from_slice(&gid.to_le_bytes());
        b.extend_from_slice(&a.mtime.to_le_bytes());
        b.extend_from_slice(&number.to_le_bytes());
        Ok(())
    }

    /// Writes a non-directory inode; returns its reference.
    fn inode(&mut self, ino: &TreeInode, number: u32) -> Result<u64, ConvertError> {
        let nlink = ino.names.len() as u32;
        let xattr = self.xattr(&ino.attrs.xattrs);
        let mut b = Vec::with_capacity(64);
        match &ino.data {
            NodeData::File(fd) => {
                let mut sizes = Vec::with_capacity(fd.blocks.len());
                let mut start = None;
                let mut sparse = 0u64;
                for (i, seq) in fd.blocks.iter().enumerate() {
                    if *seq == SPARSE {
                        sizes.push(0u32);
                        let len = (fd.size - i as u64 * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64);
                        sparse += len;
                        continue;
                    }
                    let (at, size) = self.placed.at.get(*seq as usize).copied().unwrap_or((0, 0));
                    start.get_or_insert(at);
                    sizes.push(size);
                }
                let start = start.unwrap_or_else(|| {
                    self.placed
                        .at
                        .get(fd.next_seq as usize)
                        .map_or(self.placed.end, |p| p.0)
                });
                let (frag, off) = fd.frag.unwrap_or((INVALID_FRAG, 0));
                let basic = nlink == 1
                    && xattr == INVALID_XATTR
                    && sparse == 0
                    && start <= u64::from(u32::MAX)
                    && fd.size <= u64::from(u32::MAX);
                if basic {
                    self.header(&mut b, 2, S_IFREG, &ino.attrs, number)?;
                    b.extend_from_slice(&(start as u32).to_le_bytes());
                    b.extend_from_slice(&frag.to_le_bytes());
                    b.extend_from_slice(&off.to_le_bytes());
                    b.extend_from_slice(&(fd.size as u32).to_le_bytes());
                } else {
                    self.header(&mut b, 9, S_IFREG, &ino.attrs, number)?;
                    b.extend_from_slice(&start.to_le_bytes());
                    b.extend_from_slice(&fd.size.to_le_bytes());
                    b.extend_from_slice(&sparse.to_le_bytes());
                    b.extend_from_slice(&nlink.to_le_bytes());
                    b.extend_from_slice(&frag.to_le_bytes());
                    b.extend_from_slice(&off.to_le_bytes());
                    b.extend_from_slice(&xattr.to_le_bytes());
                }
                for s in sizes {
                    b.extend_from_slice(&s.to_le_bytes());
                }
            }
            NodeData::Symlink(target) => {
                let ext = xattr != INVALID_XATTR;
                // Symlinks are 0777 on Linux (as tar2sqfs and mksquashfs store them).
                let attrs = Attrs {
                    mode: 0o777,
                    ..ino.attrs.clone()
                };
                self.header(&mut b, if ext { 10 } else { 3 }, S_IFLNK, &attrs, number)?;
                b.extend_from_slice(&nlink.to_le_bytes());
                b.extend_from_slice(&(target.len() as u32).to_le_bytes());
                b.extend_from_slice(target);
                if ext {
                    b.extend_from_slice(&xattr.to_le_bytes());
                }
            }
            NodeData::Fifo => {
                let ext = xattr != INVALID_XATTR;
                self.header(
                    &mut b,
                    if ext { 13 } else { 6 },
                    S_IFIFO,
                    &ino.attrs,
                    number,
                )?;
                b.extend_from_slice(&nlink.to_le_bytes());
                if ext {
                    b.extend_from_slice(&xattr.to_le_bytes());
                }
            }
        }
        let (blk, off) = self.inodes.pos();
        self.inodes.put(&b);
        Ok((u64::from(blk) << 16) | u64::from(off))
    }

    /// Writes the whole tree; returns the root's reference and the inode count.
    fn write_tree(&mut self, tree: &Tree) -> Result<(u64, u32), ConvertError> {
        let ndirs = tree.dirs.len() + 1;
        let mut dir_of: HashMap<&[u8], usize> = HashMap::with_capacity(ndirs);
        dir_of.insert(b"", 0);
        for (i, (p, _)) in tree.dirs.iter().enumerate() {
            dir_of.insert(p.as_slice(), i + 1);
        }
        let mut children: Vec<Vec<(&[u8], Child)>> = vec![Vec::new(); ndirs];
        let missing = |p: &[u8]| {
            ConvertError::InvalidConfig(format!(
                "internal: no parent directory for {}",
                String::from_utf8_lossy(p)
            ))
        };
        for (i, (p, _)) in tree.dirs.iter().enumerate() {
            let (parent, name) = split(p);
            let d = *dir_of.get(parent).ok_or_else(|| missing(p))?;
            children[d].push((name, Child::Dir(i + 1)));
        }
        for (j, ino) in tree.inodes.iter().enumerate() {
            for p in &ino.names {
                let (parent, name) = split(p);
                let d = *dir_of.get(parent).ok_or_else(|| missing(p))?;
                children[d].push((name, Child::Inode(j)));
            }
        }
        for c in children.iter_mut() {
            c.sort_unstable_by(|a, b| a.0.cmp(b.0));
        }

        // Post-order: children before their directory; inode numbers in that order.
        let mut order: Vec<Child> = Vec::with_capacity(ndirs + tree.inodes.len());
        let mut seen = vec![false; tree.inodes.len()];
        let mut parent = vec![0usize; ndirs];
        let mut stack: Vec<(usize, usize)> = vec![(0, 0)];
        while let Some(top) = stack.last_mut() {
            let (d, k) = *top;
            if let Some((_, c)) = children[d].get(k) {
                top.1 += 1;
                match *c {
                    Child::Dir(s) => {
                        parent[s] = d;
                        stack.push((s, 0));
                    }
                    Child::Inode(j) => {
                        if !seen[j] {
                            seen[j] = true;
                            order.push(Child::Inode(j));
                        }
                    }
                }
            } else {
                stack.pop();
                order.push(Child::Dir(d));
            }
        }
        let count = u32::try_from(order.len()).map_err(|_| ConvertError::TooLarge {
            what: "number of inodes",
            limit: u64::from(u32::MAX),
        })?;
        let mut dir_no = vec![0u32; ndirs];
        let mut ino_no = vec![0u32; tree.inodes.len()];
        for (i, c) in order.iter().enumerate() {
            match *c {
                Child::Dir(d) => dir_no[d] = i as u32 + 1,
                Child::Inode(j) => ino_no[j] = i as u32 + 1,
            }
        }
        let mut dir_ref = vec![0u64; ndirs];
        let mut ino_ref = vec![0u64; tree.inodes.len()];
        for c in &order {
            match *c {
                Child::Inode(j) => ino_ref[j] = self.inode(&tree.inodes[j], ino_no[j])?,
                Child::Dir(d) => {
                    let entries: Vec<(&[u8], u64, u32, u16)> = children[d]
                        .iter()
                        .map(|(name, c)| match *c {
                            Child::Dir(s) => (*name, dir_ref[s], dir_no[s], 1),
                            Child::Inode(j) => {
                                let t = match tree.inodes[j].data {
                                    NodeData::File(_) => 2,
                                    NodeData::Symlink(_) => 3,
                                    NodeData::Fifo => 6,
                                };
                                (*name, ino_ref[j], ino_no[j], t)
                            }
                        })
                        .collect();
                    let subdirs = children[d]
                        .iter()
                        .filter(|(_, c)| matches!(c, Child::Dir(_)))
                        .count() as u32;
                    let attrs = if d == 0 {
                        &tree.root
                    } else {
                        &tree.dirs[d - 1].1
                    };
                    let parent_no = if d == 0 { count + 1 } else { dir_no[parent[d]] };
                    dir_ref[d] =
                        self.directory(&entries, attrs, dir_no[d], parent_no, 2 + subdirs)?;
                }
            }
        }
        Ok((dir_ref[0], count))
    }

    /// Writes a directory's listing and inode; returns the inode's reference.
    fn directory(
        &mut self,
        entries: &[(&[u8], u64, u32, u16)],
        attrs: &Attrs,
        number: u32,
        parent: u32,
        nlink: u32,
    ) -> Result<u64, ConvertError> {
        let (lblk, loff) = self.dirs.pos();
        let mut buf: Vec<u8> = Vec::new();
        // (offset in the listing, first name) of headers that start a new metadata block.
        let mut marks: Vec<(usize, &[u8])> = Vec::new();
        // (position of the count field, block, base number, count, metadata block number).
        let mut cur: Option<(usize, u32, u32, u32, usize)> = None;
        for (name, r, num, t) in entries {
            let blk = (r >> 16) as u32;
            let off = (r & 0xffff) as u16;
            let mblock = (usize::from(loff) + buf.len()) / META_SIZE;
            let fits = cur.is_some_and(|(_, b, base, n, mb)| {
                b == blk
                    && n < 256
                    && mb == mblock
                    && (i64::from(*num) - i64::from(base)).abs() <= 32767
            });
            if !fits {
                if let Some((at, _, _, n, mb)) = cur {
                    buf[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
                    if mb != mblock {
                        marks.push((buf.len(), name));
                    }
                }
                let at = buf.len();
                buf.extend_from_slice(&0u32.to_le_bytes());
                buf.extend_from_slice(&blk.to_le_bytes());
                buf.extend_from_slice(&num.to_le_bytes());
                cur = Some((at, blk, *num, 0, mblock));
            }
            let Some(c) = cur.as_mut() else { continue };
            c.3 += 1;
            let delta = (i64::from(*num) - i64::from(c.2)) as i16;
            buf.extend_from_slice(&off.to_le_bytes());
            buf.extend_from_slice(&delta.to_le_bytes());
            buf.extend_from_slice(&t.to_le_bytes());
            buf.extend_from_slice(&((name.len() - 1) as u16).to_le_bytes());
            buf.extend_from_slice(name);
        }
        if let Some((at, _, _, n, _)) = cur {
            buf[at..at + 4].copy_from_slice(&(n - 1).to_le_bytes());
        }
        // Write the listing, noting the metadata block of each marked header.
        let mut index: Vec<(u32, u32, &[u8])> = Vec::with_capacity(marks.len());
        let mut done = 0;
        for (at, name) in &marks {
            self.dirs.put(&buf[done..*at]);
            done = *at;
            index.push((*at as u32, self.dirs.pos().0, name));
        }
        self.dirs.put(&buf[done..]);

        let size = buf.len() as u64 + 3;
        let xattr = self.xattr(&attrs.xattrs);
        let mut b = Vec::with_capacity(40);
        if size <= 0xffff && xattr == INVALID_XATTR && index.is_empty() {
            self.header(&mut b, 1, S_IFDIR, attrs, number)?;
            b.extend_from_slice(&lblk.to_le_bytes());
            b.extend_from_slice(&nlink.to_le_bytes());
            b.extend_from_slice(&(size as u16).to_le_bytes());
            b.extend_from_slice(&loff.to_le_bytes());
            b.extend_from_slice(&parent.to_le_bytes());
        } else {
            let size = u32::try_from(size).map_err(|_| ConvertError::TooLarge {
                what: "size of a directory listing",
                limit: u64::from(u32::MAX),
            })?;
            self.header(&mut b, 8, S_IFDIR, attrs, number)?;
            b.extend_from_slice(&nlink.to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&lblk.to_le_bytes());
            b.extend_from_slice(&parent.to_le_bytes());
            b.extend_from_slice(&(index.len() as u16).to_le_bytes());
            b.extend_from_slice(&loff.to_le_bytes());
            b.extend_from_slice(&xattr.to_le_bytes());
            for (at, blk, name) in &index {
                b.extend_from_slice(&at.to_le_bytes());
                b.extend_from_slice(&blk.to_le_bytes());
                b.extend_from_slice(&((name.len() - 1) as u32).to_le_bytes());
                b.extend_from_slice(name);
            }
        }
        let (blk, off) = self.inodes.pos();
        self.inodes.put(&b);
        Ok((u64::from(blk) << 16) | u64::from(off))
    }
}
