//! Gzip-compressed streams, recognised by their magic.

use std::borrow::Cow;
use std::io::Read;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, ErrorKind, Result};

/// The two bytes every gzip member starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Returns `data` decompressed when it starts with the gzip magic, else `data` itself.
///
/// Refuses to produce more than `limit` bytes, so that a small compressed input cannot
/// exhaust memory. Offsets in errors from later parsing refer to the decompressed bytes.
pub fn decompress_if_gzip(data: &[u8], limit: u64) -> Result<Cow<'_, [u8]>> {
    if !data.starts_with(&GZIP_MAGIC) {
        return Ok(Cow::Borrowed(data));
    }
    let mut out = Vec::new();
    MultiGzDecoder::new(data)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| {
            Error::new(
                ErrorKind::Decompress {
                    reason: e.to_string(),
                },
                0,
                "gzip",
            )
        })?;
    if out.len() as u64 > limit {
        return Err(Error::new(
            ErrorKind::Decompress {
                reason: format!("more than {limit} bytes once decompressed"),
            },
            0,
            "gzip",
        ));
    }
    Ok(Cow::Owned(out))
}
