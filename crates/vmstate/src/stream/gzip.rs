//! Gzip-compressed streams, recognised by their magic.

use std::borrow::Cow;
use std::io::{Read, Write};

use crate::envelope::Compression;
use crate::error::Result;

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// True when `prefix`, the first bytes of an input, starts with the gzip magic.
pub fn is_gzip(prefix: &[u8]) -> bool {
    prefix.starts_with(&GZIP_MAGIC)
}

/// Returns `data` decompressed when it starts with the gzip magic, else `data` itself.
///
/// Refuses to produce more than `limit` bytes, so that a small compressed input cannot
/// exhaust memory. Offsets in errors from later parsing refer to the decompressed bytes.
pub fn decompress_if_gzip(data: &[u8], limit: u64) -> Result<Cow<'_, [u8]>> {
    if !is_gzip(data) {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = Vec::new();
    gunzip(data, &mut out, limit)?;
    Ok(Cow::Owned(out))
}

/// Decompresses gzip `input` (one or more members) into `out` a chunk at a time, in bounded
/// memory, refusing to produce more than `limit` bytes; returns the number of bytes produced.
///
/// Nothing is flushed: `out` is left to its owner.
pub fn gunzip(input: impl Read, out: &mut dyn Write, limit: u64) -> Result<u64> {
    Compression::Gzip.decompress(input, out, limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gunzip_streams_members_and_keeps_to_the_limit() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut two = gz(&data);
        two.extend(gz(b"tail"));
        let mut out = Vec::new();
        let n = gunzip(two.as_slice(), &mut out, 1 << 20).unwrap();
        assert_eq!(n, data.len() as u64 + 4);
        assert_eq!(&out[..data.len()], &data[..]);
        assert!(gunzip(two.as_slice(), &mut Vec::new(), 1000).is_err());
        assert_eq!(
            decompress_if_gzip(b"QEVM", 10).unwrap(),
            Cow::Borrowed(b"QEVM")
        );
    }
}
