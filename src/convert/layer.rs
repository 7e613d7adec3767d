//! Opening layer blobs: media type check, compression detection by magic bytes,
//! and telling errors of the file apart from errors in the compressed data.

use std::io::{self, BufRead, BufReader, Read};

use super::error::ConvertError;

/// Read buffer for layer files.
const FILE_BUF: usize = 256 * 1024;

/// Media types of layers we convert. The compression is detected from the data
/// itself; the media type only has to name a tar layer.
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Compression of a layer stream, as found from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Plain,
    Gzip,
    Zstd,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Plain => "tar",
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }
}

/// Checks that `media_type` names a tar layer (empty: unknown, allowed).
pub fn check_media_type(layer: usize, media_type: &str) -> Result<(), ConvertError> {
    if media_type.is_empty() || LAYER_MEDIA_TYPES.contains(&media_type) {
        Ok(())
    } else {
        Err(ConvertError::UnsupportedMediaType {
            layer,
            media_type: media_type.to_string(),
        })
    }
}

/// The compression a media type announces, if it announces one.
fn announced(media_type: &str) -> Option<Codec> {
    if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
        Some(Codec::Gzip)
    } else if media_type.ends_with("+zstd") {
        Some(Codec::Zstd)
    } else if media_type.ends_with(".tar") {
        Some(Codec::Plain)
    } else {
        None
    }
}

/// Marks an error that came from reading the layer file itself (not from decoding
/// its contents), so that it is reported as I/O rather than as a bad layer.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

/// The layer blob, with its read errors wrapped in [`SourceError`].
struct Source<R>(R);

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

/// Maps an error from reading a (decompressed) layer stream to a [`ConvertError`].
pub(crate) fn read_error(layer: usize, e: io::Error) -> ConvertError {
    let from_file = e.get_ref().is_some_and(|inner| inner.is::<SourceError>());
    if from_file {
        let kind = e.kind();
        let source = match e.into_inner().map(|b| b.downcast::<SourceError>()) {
            Some(Ok(s)) => s.0,
            _ => io::Error::from(kind),
        };
        return ConvertError::Io {
            context: format!("read layer {layer}"),
            source,
        };
    }
    let reason = if e.kind() == io::ErrorKind::UnexpectedEof {
        "the compressed stream is truncated".to_string()
    } else {
        format!("corrupt compressed data: {e}")
    };
    ConvertError::InvalidLayer { layer, reason }
}

/// The decompressed tar stream of layer `index`, read from `blob` (errors of
/// `blob` itself are reported as I/O errors, not as a bad layer).
pub(crate) fn decompress<'a, R: Read + 'a>(
    index: usize,
    blob: R,
    media_type: &str,
) -> Result<(Box<dyn Read + 'a>, Codec), ConvertError> {
    check_media_type(index, media_type)?;
    let mut br = BufReader::with_capacity(FILE_BUF, Source(blob));
    let head = peek(&mut br, 6).map_err(|e| read_error(index, e))?;
    let codec = if head.starts_with(&[0x1f, 0x8b]) {
        Codec::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Codec::Zstd
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(ConvertError::InvalidLayer {
            layer: index,
            reason: "xz-compressed layers are not supported".into(),
        });
    } else {
        Codec::Plain
    };
    if let Some(a) = announced(media_type) {
        if a != codec {
            tracing::warn!(
                layer = index,
                media_type,
                found = codec.name(),
                "layer compression differs from its media type; using what the data says"
            );
        }
    }
    let stream: Box<dyn Read + 'a> = match codec {
        Codec::Plain => Box::new(br),
        Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(br)),
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(br).map_err(|e| read_error(index, e))?,
        ),
    };
    Ok((stream, codec))
}

/// The first `n` bytes of `br` (fewer at EOF), without consuming them.
fn peek<R: Read>(br: &mut BufReader<R>, n: usize) -> io::Result<Vec<u8>> {
    loop {
        match br.fill_buf() {
            Ok(b) => return Ok(b[..b.len().min(n)].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
