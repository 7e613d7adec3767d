//! Writing the merged tar stream for tar2sqfs: ustar headers, preceded by a PAX
//! header when a value does not fit (long paths and link targets, large sizes or
//! ids) or when there are xattrs.

use std::io::{self, Write};

use super::tar_read::BLOCK;

/// Xattr namespaces squashfs can store; others (e.g. `system.posix_acl_*`) would make
/// tar2sqfs fail and are dropped.
const XATTR_PREFIXES: &[&[u8]] = &[b"user.", b"trusted.", b"security."];

/// What an output entry is.
#[derive(Clone, Copy, Debug)]
pub(crate) enum OutKind<'a> {
    Regular { size: u64 },
    Dir,
    Symlink { target: &'a [u8] },
    Hardlink { target: &'a [u8] },
    Fifo,
}

/// Metadata of an output entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta<'a> {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// One PAX record: `<len> <key>=<value>\n`, the length counting itself.
pub(crate) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(len.to_string().as_bytes());
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Whether an xattr can be stored in the image.
pub(crate) fn xattr_supported(name: &[u8]) -> bool {
    XATTR_PREFIXES
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p))
        && !name.contains(&b'=')
        && !name.contains(&0)
}

/// Writes `value` as zero-padded octal into `field` (the last byte stays NUL);
/// false if it does not fit.
fn put_octal(field: &mut [u8], value: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// Streams tar entries into `w`.
pub(crate) struct TarWriter<W: Write> {
    w: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(w: W) -> Self {
        TarWriter { w }
    }

    /// The sink for file data after [`Self::header`] for a regular file.
    pub fn data(&mut self) -> &mut W {
        &mut self.w
    }

    /// Pads file data of `size` bytes to a block boundary.
    pub fn pad(&mut self, size: u64) -> io::Result<()> {
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        // Less than BLOCK, so the cast cannot truncate.
        self.w.write_all(&[0u8; BLOCK][..pad as usize])
    }

    fn block(&mut self, b: &[u8; BLOCK]) -> io::Result<()> {
        self.w.write_all(b)
    }

    /// Writes the header(s) of one entry. `path` is normalized and non-empty, or
    /// empty for the root directory.
    pub fn header(&mut self, path: &[u8], kind: OutKind<'_>, meta: &Meta<'_>) -> io::Result<()> {
        let mut name = if path.is_empty() {
            b"./".to_vec()
        } else {
            path.to_vec()
        };
        if matches!(kind, OutKind::Dir) && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let (typeflag, size, link): (u8, u64, &[u8]) = match kind {
            OutKind::Regular { size } => (b'0', size, b""),
            OutKind::Dir => (b'5', 0, b""),
            OutKind::Symlink { target } => (b'2', 0, target),
            OutKind::Hardlink { target } => (b'1', 0, target),
            OutKind::Fifo => (b'6', 0, b""),
        };
        // squashfs keeps 32-bit times.
        let mtime = u64::try_from(meta.mtime.clamp(0, i64::from(u32::MAX))).unwrap_or(0);

        let mut h = [0u8; BLOCK];
        let mut pax = Vec::new();
        if name.len() <= 100 {
            h[..name.len()].copy_from_slice(&name);
        } else {
            pax.extend(pax_record(b"path", &name));
            h[..100].copy_from_slice(&name[..100]);
        }
        if link.len() <= 100 {
            h[157..157 + link.len()].copy_from_slice(link);
        } else {
            pax.extend(pax_record(b"linkpath", link));
            h[157..257].copy_from_slice(&link[..100]);
        }
        put_octal(&mut h[100..108], u64::from(meta.mode & 0o7777));
        for (range, key, value) in [
            (108..116, &b"uid"[..], meta.uid),
            (116..124, &b"gid"[..], meta.gid),
            (124..136, &b"size"[..], size),
        ] {
            if !put_octal(&mut h[range.clone()], value) {
                put_octal(&mut h[range], 0);
                pax.extend(pax_record(key, value.to_string().as_bytes()));
            }
        }
        put_octal(&mut h[136..148], mtime);
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        for (n, v) in meta.xattrs {
            if xattr_supported(n) {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(n);
                pax.extend(pax_record(&key, v));
            } else {
                tracing::debug!(
                    path = %String::from_utf8_lossy(path),
                    xattr = %String::from_utf8_lossy(n),
                    "dropping an xattr squashfs cannot store"
                );
            }
        }
        if !pax.is_empty() {
            let mut x = [0u8; BLOCK];
            let xname = b"././@PaxHeader";
            x[..xname.len()].copy_from_slice(xname);
            put_octal(&mut x[100..108], 0o644);
            put_octal(&mut x[108..116], 0);
            put_octal(&mut x[116..124], 0);
            put_octal(&mut x[124..136], pax.len() as u64);
            put_octal(&mut x[136..148], mtime);
            x[156] = b'x';
            x[257..263].copy_from_slice(b"ustar\0");
            x[263..265].copy_from_slice(b"00");
            checksum(&mut x);
            self.block(&x)?;
            self.w.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        checksum(&mut h);
        self.block(&h)
    }

    /// Writes the end-of-archive marker and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.block(&[0u8; BLOCK])?;
        self.block(&[0u8; BLOCK])?;
        self.w.flush()?;
        Ok(self.w)
    }
}

fn checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    // At most 512 * 255, which fits 6 octal digits.
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        for vlen in [0usize, 1, 5, 6, 7, 90, 95, 96, 97, 990, 995, 996, 9990] {
            let r = pax_record(b"path", &vec![b'a'; vlen]);
            let sp = r.iter().position(|&b| b == b' ').expect("space");
            let len: usize = std::str::from_utf8(&r[..sp])
                .expect("utf8")
                .parse()
                .expect("number");
            assert_eq!(len, r.len(), "value length {vlen}");
        }
    }

    #[test]
    fn headers_read_back_with_the_tar_crate() {
        let mut w = TarWriter::new(Vec::new());
        let long = vec![b'd'; 150];
        let xattrs = vec![
            (b"user.a".to_vec(), b"1\0".to_vec()),
            (b"system.posix_acl_access".to_vec(), b"x".to_vec()),
        ];
        let meta = Meta {
            mode: 0o4755,
            uid: 1 << 40,
            gid: 7,
            mtime: 1_700_000_000,
            xattrs: &xattrs,
        };
        w.header(&long, OutKind::Regular { size: 3 }, &meta)
            .expect("header");
        w.data().write_all(b"abc").expect("data");
        w.pad(3).expect("pad");
        w.header(b"l", OutKind::Symlink { target: &long }, &meta)
            .expect("header");
        let buf = w.finish().expect("finish");
        let mut ar = tar::Archive::new(&buf[..]);
        let mut it = ar.entries().expect("entries");
        let mut e = it.next().expect("one").expect("ok");
        assert_eq!(&*e.path_bytes(), &long[..]);
        assert_eq!(e.header().uid().expect("uid"), 1 << 40);
        assert_eq!(e.header().mode().expect("mode"), 0o4755);
        let exts: Vec<_> = e
            .pax_extensions()
            .expect("pax")
            .expect("some")
            .map(|x| x.expect("ext").key().expect("key").to_string())
            .collect();
        assert!(exts.contains(&"SCHILY.xattr.user.a".to_string()));
        assert!(!exts.iter().any(|k| k.contains("system")));
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).expect("read");
        assert_eq!(s, "abc");
        let e = it.next().expect("two").expect("ok");
        assert_eq!(&*e.link_name_bytes().expect("link"), &long[..]);
        assert!(it.next().is_none());
    }
}
