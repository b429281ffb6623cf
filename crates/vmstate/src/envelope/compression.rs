//! The compressions a saved VM state comes in: gzip (also bare, from `migrate
//! "exec:gzip > FILE"`), and the ones libvirt's `save_image_format` writes: bzip2, xz, lzop,
//! zstd. Each is read and written in one pass, a chunk at a time, in bounded memory.

use std::io::{Read, Write};

use serde::Serialize;

use super::lzop;
use crate::error::{Error, ErrorKind, Result};

/// Bytes decompressed at a time.
const CHUNK: usize = 1 << 16;

/// The most memory the xz decoder may take: what the header of an xz stream asks for is
/// input, and `xz -9` needs 65 MiB to decompress (libvirt writes `-3`, 5 MiB).
const XZ_MEMORY_LIMIT: u64 = 128 << 20;

/// A compression format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (RFC 1952), one or more members.
    Gzip,
    /// bzip2.
    Bzip2,
    /// xz (LZMA2).
    Xz,
    /// lzop (LZO1X blocks in lzop's file format).
    Lzop,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// Every format, in libvirt's numbering order.
    pub const ALL: [Compression; 5] = [
        Compression::Gzip,
        Compression::Bzip2,
        Compression::Xz,
        Compression::Lzop,
        Compression::Zstd,
    ];

    /// The format's name, as its command-line tool and libvirt's `qemu.conf` call it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Lzop => "lzop",
            Compression::Zstd => "zstd",
        }
    }

    /// The format whose magic `prefix` (the first bytes of an input) starts with.
    pub fn detect(prefix: &[u8]) -> Option<Compression> {
        Compression::ALL
            .into_iter()
            .find(|c| prefix.starts_with(c.magic()))
    }

    fn magic(self) -> &'static [u8] {
        match self {
            Compression::Gzip => &[0x1f, 0x8b],
            Compression::Bzip2 => b"BZh",
            Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z', 0],
            Compression::Lzop => &lzop::MAGIC,
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
        }
    }

    /// A reader of the decompressed bytes of `input`, which fails once it has produced
    /// `limit` bytes and more follow. Its errors say what could not be decompressed.
    pub fn reader<'r>(self, input: impl Read + 'r, limit: u64) -> Result<Decompressed<'r>> {
        let decoder: Box<dyn Read + 'r> = match self {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMORY_LIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| Error::new(self.failed(e.to_string()), 0, self.name()))?;
                Box::new(liblzma::read::XzDecoder::new_stream(input, stream))
            }
            Compression::Lzop => Box::new(lzop::Decoder::new(input)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(input)
                    .map_err(|e| Error::new(self.failed(e.to_string()), 0, self.name()))?,
            ),
        };
        Ok(Decompressed {
            compression: self,
            decoder,
            produced: 0,
            limit,
        })
    }

    /// Decompresses `input` into `out` a chunk at a time, refusing to produce more than
    /// `limit` bytes; returns the number of bytes produced. Errors carry the offset in the
    /// decompressed output where decompression stopped. Nothing is flushed.
    pub fn decompress(self, input: impl Read, out: &mut dyn Write, limit: u64) -> Result<u64> {
        let mut decoder = self.reader(input, limit)?;
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match decoder.read(&mut chunk) {
                Ok(0) => return Ok(decoder.produced),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Decompress {
                            format: self.name(),
                            reason: e.to_string(),
                        },
                        decoder.produced,
                        self.name(),
                    ))
                }
            };
            out.write_all(chunk.get(..n).unwrap_or(&[]))
                .map_err(|e| Error::output(e, decoder.produced, self.name()))?;
        }
    }

    /// A writer that compresses into `out`; [`Compressor::finish`] ends the compressed data.
    pub fn compressor<'w>(self, out: Box<dyn Write + 'w>) -> Result<Compressor<'w>> {
        let inner: Box<dyn Finish + 'w> = match self {
            Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
                out,
                flate2::Compression::default(),
            )),
            Compression::Bzip2 => Box::new(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::default(),
            )),
            // libvirt runs `xz -c -3`.
            Compression::Xz => Box::new(liblzma::write::XzEncoder::new(out, 3)),
            Compression::Lzop => Box::new(lzop::Encoder::new(out)),
            Compression::Zstd => Box::new(
                zstd::stream::write::Encoder::new(out, 0)
                    .map_err(|e| Error::new(self.failed(e.to_string()), 0, self.name()))?,
            ),
        };
        Ok(Compressor { inner })
    }

    fn failed(self, reason: String) -> ErrorKind {
        ErrorKind::Decompress {
            format: self.name(),
            reason,
        }
    }
}

/// The decompressed bytes of an input, read a piece at a time ([`Compression::reader`]).
pub struct Decompressed<'r> {
    compression: Compression,
    decoder: Box<dyn Read + 'r>,
    produced: u64,
    limit: u64,
}

impl Decompressed<'_> {
    /// Bytes produced so far.
    pub fn produced(&self) -> u64 {
        self.produced
    }
}

impl Read for Decompressed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let name = self.compression.name();
        let n = self.decoder.read(buf).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{name} data after {} bytes: {e}", self.produced),
            )
        })?;
        self.produced = self.produced.saturating_add(n as u64);
        if self.produced > self.limit {
            return Err(std::io::Error::other(format!(
                "{name} data decompresses to more than {} bytes",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// A compressing writer of one of the [`Compression`] formats.
pub struct Compressor<'w> {
    inner: Box<dyn Finish + 'w>,
}

impl Write for Compressor<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Compressor<'_> {
    /// Writes the end of the compressed data and flushes the output.
    pub fn finish(self) -> std::io::Result<()> {
        self.inner.finish()
    }
}

/// A writer whose output needs an end written.
trait Finish: Write {
    fn finish(self: Box<Self>) -> std::io::Result<()>;
}

impl<W: Write> Finish for flate2::write::GzEncoder<W> {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write> Finish for bzip2::write::BzEncoder<W> {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write> Finish for liblzma::write::XzEncoder<W> {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write> Finish for zstd::stream::write::Encoder<'_, W> {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).finish()?.flush()
    }
}

impl<W: Write> Finish for lzop::Encoder<W> {
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        (*self).finish()?.flush()
    }
}
