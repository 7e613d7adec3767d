//! A streaming reader for tar layers from untrusted sources.
//!
//! Understands ustar, GNU (long names and links, base-256 numbers) and PAX
//! (path, linkpath, size, uid, gid, mtime, `SCHILY.xattr.*`). Everything read into
//! memory is bounded: headers are 512 bytes, PAX records and GNU long names at most
//! [`MAX_SPECIAL`] bytes, and every byte read counts against the caller's budget of
//! uncompressed bytes. Paths are normalized and checked here, so that nothing
//! downstream sees `..`, an absolute path or an over-long name.

use std::io::{self, Read};

use super::error::ConvertError;
use super::layer::read_error;

pub(crate) const BLOCK: usize = 512;
/// Largest PAX extended header or GNU long name/link we read (as Go's archive/tar).
const MAX_SPECIAL: u64 = 1 << 20;
/// Longest path (bytes, after normalization) we accept.
pub(crate) const MAX_PATH: usize = 4096;
/// Longest path component we accept.
pub(crate) const MAX_NAME: usize = 255;
/// Longest symlink target we accept (PATH_MAX minus the NUL).
const MAX_LINK: usize = 4095;
/// Copy buffer for file data.
const COPY_BUF: usize = 128 * 1024;

/// Kinds of entries that may end up in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Kind {
    Regular,
    Hardlink,
    Symlink,
    Dir,
    Fifo,
}

/// One tar entry (after its extension headers were applied).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Entry {
    /// Normalized path, without `./` or trailing `/`; `None` for the root.
    pub path: Option<Vec<u8>>,
    pub kind: Kind,
    /// Symlink target (as stored) or hard link target (normalized).
    pub link: Vec<u8>,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// Data bytes following the header (0 for everything but regular files).
    pub size: u64,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// The path for messages.
    pub fn display(&self) -> String {
        match &self.path {
            Some(p) => String::from_utf8_lossy(p).into_owned(),
            None => ".".to_string(),
        }
    }
}

/// Values from a PAX extended header that we use.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<i64>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads entries from one decompressed layer stream.
pub(crate) struct TarReader<R> {
    r: R,
    layer: usize,
    used: u64,
    limit: u64,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    done: bool,
    /// Buffer for skipping and copying data (taken out while in use).
    buf: Vec<u8>,
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

impl<R: Read> TarReader<R> {
    /// `used` bytes of the `limit` were consumed by earlier layers.
    pub fn new(r: R, layer: usize, used: u64, limit: u64) -> Self {
        TarReader {
            r,
            layer,
            used,
            limit,
            remaining: 0,
            padding: 0,
            done: false,
            buf: vec![0u8; COPY_BUF],
        }
    }

    /// Uncompressed bytes consumed so far (this layer and the earlier ones).
    pub fn used(&self) -> u64 {
        self.used
    }

    fn invalid(&self, reason: impl Into<String>) -> ConvertError {
        ConvertError::InvalidLayer {
            layer: self.layer,
            reason: reason.into(),
        }
    }

    fn unsafe_path(&self, path: &[u8], reason: impl Into<String>) -> ConvertError {
        ConvertError::Unsafe {
            layer: self.layer,
            path: String::from_utf8_lossy(path).into_owned(),
            reason: reason.into(),
        }
    }

    /// One read, counted against the budget.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ConvertError> {
        loop {
            match self.r.read(buf) {
                Ok(n) => {
                    self.used = self.used.saturating_add(n as u64);
                    if self.used > self.limit {
                        return Err(ConvertError::TooLarge {
                            what: "uncompressed size of the layers",
                            limit: self.limit,
                        });
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(self.layer, e)),
            }
        }
    }

    /// Fills `buf` unless the stream ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, ConvertError> {
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_some(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    }

    /// The shared data buffer; give it back with `self.buf = buf`.
    fn take_buf(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            vec![0u8; COPY_BUF]
        } else {
            buf
        }
    }

    fn skip(&mut self, mut n: u64) -> Result<(), ConvertError> {
        if n == 0 {
            return Ok(());
        }
        let mut buf = self.take_buf();
        while n > 0 {
            // Bounded by the buffer length, so the cast cannot truncate.
            let want = n.min(buf.len() as u64) as usize;
            let k = self.read_some(&mut buf[..want])?;
            if k == 0 {
                return Err(self.invalid("the tar stream is truncated inside an entry"));
            }
            n -= k as u64;
        }
        self.buf = buf;
        Ok(())
    }

    /// Reads to the end of the stream, so that the decompressor checks its
    /// trailer (gzip CRC, zstd frame end).
    fn drain(&mut self) -> Result<(), ConvertError> {
        let mut buf = self.take_buf();
        while self.read_some(&mut buf)? > 0 {}
        self.buf = buf;
        Ok(())
    }

    /// Reads the data of an extension entry (PAX header, GNU long name).
    fn read_special(&mut self, size: u64, what: &str) -> Result<Vec<u8>, ConvertError> {
        if size > MAX_SPECIAL {
            return Err(self.invalid(format!(
                "{what} of {size} bytes is larger than the allowed {MAX_SPECIAL}"
            )));
        }
        // At most MAX_SPECIAL, so the cast cannot truncate.
        let mut data = vec![0u8; size as usize];
        if self.read_full(&mut data)? < data.len() {
            return Err(self.invalid(format!("the tar stream is truncated inside a {what}")));
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive. Data of the previous
    /// entry that was not copied is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, ConvertError> {
        if self.done {
            return Ok(None);
        }
        let pending = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(pending)?;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK];
            let n = self.read_full(&mut block)?;
            let extended = pax.is_some() || long_name.is_some() || long_link.is_some();
            if n == 0 || block.iter().all(|&b| b == 0) {
                if n != 0 && n < BLOCK {
                    return Err(self.invalid("the tar stream is truncated inside a header"));
                }
                if extended {
                    return Err(self.invalid("the archive ends after an extension header"));
                }
                // End of archive (two zero blocks, or a stream that just ends at an
                // entry boundary as Go's archive/tar also accepts).
                self.done = true;
                self.drain()?;
                return Ok(None);
            }
            if n < BLOCK {
                return Err(self.invalid("the tar stream is truncated inside a header"));
            }
            self.check_checksum(&block)?;
            let typeflag = block[156];
            let size = self.num(&block[124..136], "size")?;
            match typeflag {
                b'x' => {
                    let data = self.read_special(size, "PAX header")?;
                    pax = Some(self.parse_pax(&data)?);
                    continue;
                }
                b'g' => {
                    // Global PAX headers are ignored, as containerd does.
                    self.skip(size.saturating_add(padding(size)))?;
                    continue;
                }
                b'L' => {
                    long_name = Some(trim_nul(self.read_special(size, "GNU long name")?));
                    continue;
                }
                b'K' => {
                    long_link = Some(trim_nul(self.read_special(size, "GNU long link")?));
                    continue;
                }
                _ => {}
            }
            let pax = pax.unwrap_or_default();
            return self
                .entry(&block, typeflag, size, pax, long_name, long_link)
                .map(Some);
        }
    }

    fn check_checksum(&self, block: &[u8; BLOCK]) -> Result<(), ConvertError> {
        let stored = self.num(&block[148..156], "checksum")?;
        let mut unsigned: u64 = 0;
        let mut signed: i64 = 0;
        for (i, &b) in block.iter().enumerate() {
            let b = if (148..156).contains(&i) { b' ' } else { b };
            unsigned += u64::from(b);
            signed += i64::from(b as i8);
        }
        if stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed) {
            Ok(())
        } else {
            Err(self.invalid("bad tar header checksum (not a tar archive, or corrupt)"))
        }
    }

    /// A numeric header field: octal text, or base-256 (GNU) when the high bit is set.
    fn num(&self, field: &[u8], what: &str) -> Result<u64, ConvertError> {
        parse_num(field).ok_or_else(|| self.invalid(format!("bad {what} field in a tar header")))
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        block: &[u8; BLOCK],
        typeflag: u8,
        header_size: u64,
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Entry, ConvertError> {
        let raw_path = match (pax.path, long_name) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => header_path(block),
        };
        let raw_link = match (pax.linkpath, long_link) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => cstr(&block[157..257]).to_vec(),
        };
        let kind = match typeflag {
            b'0' | b'7' => Kind::Regular,
            // Old tars mark directories by a trailing slash only.
            0 if raw_path.ends_with(b"/") => Kind::Dir,
            0 => Kind::Regular,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'3' | b'4' => {
                return Err(self.unsafe_path(&raw_path, "device nodes are not allowed in images"))
            }
            b'S' => return Err(self.invalid("GNU sparse files are not supported")),
            other => {
                return Err(self.invalid(format!(
                    "unsupported tar entry type {:?} for {}",
                    char::from(other),
                    String::from_utf8_lossy(&raw_path)
                )))
            }
        };
        // Only regular files have data; for the other types the size field is
        // ignored, as Go's archive/tar does.
        let size = if kind == Kind::Regular {
            pax.size.unwrap_or(header_size)
        } else {
            0
        };
        let path = self.normalize(&raw_path)?;
        let link = match kind {
            Kind::Symlink => {
                if raw_link.is_empty() {
                    return Err(self.invalid(format!(
                        "symlink {} has an empty target",
                        String::from_utf8_lossy(&raw_path)
                    )));
                }
                if raw_link.len() > MAX_LINK || raw_link.contains(&0) {
                    return Err(self.invalid(format!(
                        "symlink {} has a target longer than {MAX_LINK} bytes or with a NUL byte",
                        String::from_utf8_lossy(&raw_path)
                    )));
                }
                raw_link
            }
            Kind::Hardlink => match self.normalize(&raw_link)? {
                Some(t) => t,
                None => {
                    return Err(self.invalid(format!(
                        "hard link {} points to the root directory",
                        String::from_utf8_lossy(&raw_path)
                    )))
                }
            },
            _ => Vec::new(),
        };
        if path.is_none() && kind != Kind::Dir {
            return Err(self.invalid("the root of the archive is not a directory"));
        }
        let mode = self.num(&block[100..108], "mode")?;
        let uid = match pax.uid {
            Some(v) => v,
            None => self.num(&block[108..116], "uid")?,
        };
        let gid = match pax.gid {
            Some(v) => v,
            None => self.num(&block[116..124], "gid")?,
        };
        let mtime = match pax.mtime {
            Some(v) => v,
            // Negative base-256 times (before 1970) become 0.
            None if block[136] == 0xff => 0,
            None => i64::try_from(self.num(&block[136..148], "mtime")?).unwrap_or(i64::MAX),
        };
        self.remaining = size;
        self.padding = padding(size);
        Ok(Entry {
            path,
            kind,
            link,
            // Masked to 12 bits, so the cast cannot truncate.
            mode: (mode & 0o7777) as u32,
            uid,
            gid,
            mtime,
            size,
            xattrs: pax.xattrs,
        })
    }

    /// Normalizes a path from the archive: drops `.` components, repeated and
    /// trailing slashes; refuses absolute paths and `..`. `None` is the root.
    pub fn normalize(&self, raw: &[u8]) -> Result<Option<Vec<u8>>, ConvertError> {
        normalize(raw).map_err(|e| match e {
            PathError::Unsafe(reason) => self.unsafe_path(raw, reason),
            PathError::Invalid(reason) => self.invalid(format!(
                "{reason}: {}",
                String::from_utf8_lossy(&raw[..raw.len().min(300)])
            )),
        })
    }

    fn parse_pax(&self, data: &[u8]) -> Result<Pax, ConvertError> {
        parse_pax(data).map_err(|reason| self.invalid(format!("bad PAX header: {reason}")))
    }

    /// Fills `buf` with the current entry's next data bytes (an error if the
    /// entry has fewer left or the stream ends).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<(), ConvertError> {
        if buf.len() as u64 > self.remaining {
            return Err(self.invalid("internal: read past the end of a file entry"));
        }
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_some(&mut buf[n..])?;
            if k == 0 {
                return Err(self.invalid("the tar stream is truncated inside a file"));
            }
            n += k;
        }
        self.remaining -= n as u64;
        Ok(())
    }
}

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathError {
    Unsafe(&'static str),
    Invalid(&'static str),
}

/// See [`TarReader::normalize`].
pub(crate) fn normalize(raw: &[u8]) -> Result<Option<Vec<u8>>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Invalid("empty path"));
    }
    if raw.contains(&0) {
        return Err(PathError::Invalid("path contains a NUL byte"));
    }
    if raw[0] == b'/' {
        return Err(PathError::Unsafe("absolute path"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => continue,
            b".." => return Err(PathError::Unsafe("path contains \"..\"")),
            c if c.len() > MAX_NAME => {
                return Err(PathError::Invalid("path component longer than 255 bytes"))
            }
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
                if out.len() > MAX_PATH {
                    return Err(PathError::Invalid("path longer than 4096 bytes"));
                }
            }
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// The bytes of a NUL-terminated header field.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(i) => &field[..i],
        None => field,
    }
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    let len = cstr(&v).len();
    v.truncate(len);
    v
}

/// The path stored in a header: `prefix/name` for POSIX ustar, else `name`.
fn header_path(block: &[u8; BLOCK]) -> Vec<u8> {
    let name = cstr(&block[0..100]);
    if &block[257..263] == b"ustar\0" {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            let mut p = prefix.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            return p;
        }
    }
    name.to_vec()
}

/// Octal text (padded with spaces or NULs) or GNU base-256 (positive only).
pub(crate) fn parse_num(field: &[u8]) -> Option<u64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        if first & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(first & 0x3f);
        for &b in &field[1..] {
            if v > (u64::MAX >> 8) {
                return None;
            }
            v = (v << 8) | u64::from(b);
        }
        return Some(v);
    }
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !is_pad(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    let mut v: u64 = 0;
    for &b in &field[start..end] {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 20 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A PAX time: `[-]seconds[.fraction]`, truncated to whole seconds.
fn parse_time(v: &[u8]) -> Option<i64> {
    let (neg, v) = match v.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let secs = match v.iter().position(|&b| b == b'.') {
        Some(i) => {
            if !v[i + 1..].iter().all(u8::is_ascii_digit) {
                return None;
            }
            &v[..i]
        }
        None => v,
    };
    let s = i64::try_from(parse_decimal(secs)?).ok()?;
    Some(if neg { -s } else { s })
}

fn parse_pax(data: &[u8]) -> Result<Pax, String> {
    let mut pax = Pax::default();
    let mut rest = data;
    while !rest.is_empty() {
        // Some writers pad the records with NULs.
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let sp = rest
            .iter()
            .take(21)
            .position(|&b| b == b' ')
            .ok_or("record without a length")?;
        let len = parse_decimal(&rest[..sp])
            .and_then(|l| usize::try_from(l).ok())
            .ok_or("bad record length")?;
        if len <= sp + 1 || len > rest.len() {
            return Err("record length out of range".into());
        }
        let rec = &rest[sp + 1..len];
        rest = &rest[len..];
        let rec = rec
            .strip_suffix(b"\n")
            .ok_or("record not ended by a newline")?;
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or("record without '='")?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let bad = |what: &str| format!("bad {what} value");
        // An empty value unsets the key (the header field applies).
        match key {
            b"path" => pax.path = (!value.is_empty()).then(|| value.to_vec()),
            b"linkpath" => pax.linkpath = (!value.is_empty()).then(|| value.to_vec()),
            b"size" if !value.is_empty() => {
                pax.size = Some(parse_decimal(value).ok_or_else(|| bad("size"))?)
            }
            b"uid" if !value.is_empty() => {
                pax.uid = Some(parse_decimal(value).ok_or_else(|| bad("uid"))?)
            }
            b"gid" if !value.is_empty() => {
                pax.gid = Some(parse_decimal(value).ok_or_else(|| bad("gid"))?)
            }
            b"mtime" if !value.is_empty() => {
                pax.mtime = Some(parse_time(value).ok_or_else(|| bad("mtime"))?)
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err("GNU sparse files are not supported".into())
            }
            k => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    if name.is_empty() {
                        return Err("empty xattr name".into());
                    }
                    pax.xattrs.retain(|(n, _)| n != name);
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
                // Anything else (atime, ctime, uname, gname, comment, charset,
                // LIBARCHIVE.xattr.*, ...) does not matter for the image.
            }
        }
    }
    Ok(pax)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One PAX record: `<len> <key>=<value>\n`, the length counting itself.
    fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let base = key.len() + value.len() + 3;
        let mut len = base + 1;
        while base + len.to_string().len() != len {
            len = base + len.to_string().len();
        }
        let mut r = len.to_string().into_bytes();
        r.push(b' ');
        r.extend_from_slice(key);
        r.push(b'=');
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    #[test]
    fn normalize_paths() {
        let n = |s: &str| normalize(s.as_bytes());
        assert_eq!(n("./a//b/./c/"), Ok(Some(b"a/b/c".to_vec())));
        assert_eq!(n("./"), Ok(None));
        assert_eq!(n("."), Ok(None));
        assert_eq!(n("a"), Ok(Some(b"a".to_vec())));
        assert!(matches!(n("/abs"), Err(PathError::Unsafe(_))));
        assert!(matches!(n("../x"), Err(PathError::Unsafe(_))));
        assert!(matches!(n("a/../../x"), Err(PathError::Unsafe(_))));
        assert!(matches!(n("a/.."), Err(PathError::Unsafe(_))));
        assert!(matches!(n(""), Err(PathError::Invalid(_))));
        assert!(matches!(n(&"x".repeat(256)), Err(PathError::Invalid(_))));
        assert!(n(&"x".repeat(255)).is_ok());
        let long = vec!["y".repeat(200); 21].join("/");
        assert!(matches!(n(&long), Err(PathError::Invalid(_))));
        assert!(matches!(normalize(b"a\0b"), Err(PathError::Invalid(_))));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0"), Some(0o644));
        assert_eq!(parse_num(b"  755 \0"), Some(0o755));
        assert_eq!(parse_num(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_num(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_num(&[0xff, 0xff]), None);
        assert_eq!(parse_num(b"0009"), None);
        assert_eq!(parse_time(b"1700000000.123"), Some(1_700_000_000));
        assert_eq!(parse_time(b"-5"), Some(-5));
        assert_eq!(parse_time(b"x"), None);
    }

    #[test]
    fn pax_records() {
        let mut data = pax_record(b"path", b"a/b/cd");
        data.extend(pax_record(b"SCHILY.xattr.user.k", b"v\0\n"));
        data.extend(pax_record(b"uid", b"1000"));
        let p = parse_pax(&data).expect("valid");
        assert_eq!(p.path.as_deref(), Some(&b"a/b/cd"[..]));
        assert_eq!(p.uid, Some(1000));
        assert_eq!(p.xattrs, vec![(b"user.k".to_vec(), b"v\0\n".to_vec())]);
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"x path=x\n").is_err());
        assert!(parse_pax(&pax_record(b"GNU.sparse.major", b"1")).is_err());
        assert!(parse_pax(&pax_record(b"size", b"-1")).is_err());
    }
}
