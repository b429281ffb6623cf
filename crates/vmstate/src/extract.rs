//! Guest RAM out of a stream, in one pass and bounded memory: every page record is handed to
//! a [`PageTarget`] as it is read (the last copy of a page wins, as on a destination), and
//! what the stream did not carry is counted, never invented.
//!
//! Targets decide the layout: one file per RAM block, one image by guest-physical address,
//! an ELF core. The pass keeps two bits per page (carried, holds data), so a zero page sent
//! after a data page is written as zeros and all others are left as holes.

use std::io;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::memory::ram_blocks;
use crate::stream::{self, RamRecordKind, Stream};
use crate::wire::slice;

/// Where extracted pages go, by RAM block and offset within it.
pub trait PageTarget {
    /// Stores a page's bytes.
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes a page that was written before read as zeros again.
    fn zero(&mut self, block: &str, offset: u64, len: u64) -> io::Result<()>;
    /// Reads back a page written before (an XBZRLE delta applies to it).
    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Called once at the end, for a target that holds writes back.
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the stream carried of one RAM block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockPages {
    /// The block's name.
    pub name: String,
    /// Its size in bytes.
    pub used_length: u64,
    /// Pages whose last copy holds data.
    pub data_pages: u64,
    /// Pages whose last copy is a zero page.
    pub zero_pages: u64,
    /// Pages the stream never carried (a stripped stream, a postcopy stream cut short).
    pub absent_pages: u64,
}

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; usize::try_from(n.div_ceil(64)).unwrap_or(0)])
    }
    fn get(&self, i: u64) -> bool {
        self.0
            .get(usize::try_from(i / 64).unwrap_or(usize::MAX))
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn set(&mut self, i: u64, on: bool) {
        if let Some(w) = self
            .0
            .get_mut(usize::try_from(i / 64).unwrap_or(usize::MAX))
        {
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn output(e: io::Error, offset: u64) -> Error {
    Error::new(
        ErrorKind::Output {
            reason: e.to_string(),
        },
        offset,
        "ram",
    )
}

/// Hands every page of `stream` (its bytes in `source`) to `target`; returns what each block
/// holds. `progress` is told the offset of `source` reached after each run of pages.
pub fn extract_ram(
    stream: &Stream,
    source: &[u8],
    target: &mut dyn PageTarget,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<BlockPages>> {
    let page_size = stream.page_size.bytes;
    if page_size == 0 {
        return Err(Error::new(
            ErrorKind::InvalidValue {
                value: 0,
                expected: "a page size",
            },
            0,
            "page_size",
        ));
    }
    let blocks = ram_blocks(stream);
    let mut carried: Vec<Bits> = blocks
        .iter()
        .map(|(_, len)| Bits::new(len.div_ceil(page_size)))
        .collect();
    let mut data: Vec<Bits> = blocks
        .iter()
        .map(|(_, len)| Bits::new(len.div_ceil(page_size)))
        .collect();
    let mut scratch = vec![0u8; usize::try_from(page_size).unwrap_or(4096)];
    stream::visit_page_records(
        stream,
        source,
        &mut |block, record| {
            let Some(b) = blocks.iter().position(|(name, _)| name == block) else {
                return Ok(());
            };
            let block_len = blocks.get(b).map_or(0, |(_, len)| *len);
            let at = record.page;
            if at >= block_len {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: at,
                        expected: "a page inside its RAM block",
                    },
                    record.offset,
                    format!("ram.{block}"),
                ));
            }
            let page = at.checked_div(page_size).unwrap_or(0);
            let (Some(carried), Some(data)) = (carried.get_mut(b), data.get_mut(b)) else {
                return Ok(());
            };
            let written = data.get(page);
            match &record.kind {
                RamRecordKind::Zero { .. } => {
                    if written {
                        target
                            .zero(block, at, page_size)
                            .map_err(|e| output(e, record.offset))?;
                    }
                    data.set(page, false);
                }
                RamRecordKind::Page { data: span } => {
                    let bytes = slice(source, span.offset, span.len).ok_or_else(|| {
                        Error::new(
                            ErrorKind::UnexpectedEof {
                                needed: span.len,
                                available: 0,
                            },
                            span.offset,
                            "ram.page",
                        )
                    })?;
                    target
                        .write(block, at, bytes)
                        .map_err(|e| output(e, record.offset))?;
                    data.set(page, true);
                }
                RamRecordKind::Compressed { data: span } => {
                    scratch.iter_mut().for_each(|x| *x = 0);
                    if let Some(compressed) = slice(source, span.offset, span.len) {
                        stream::inflate_page(
                            compressed,
                            span.offset,
                            Some(&mut scratch),
                            page_size,
                        )?;
                    }
                    target
                        .write(block, at, &scratch)
                        .map_err(|e| output(e, record.offset))?;
                    data.set(page, true);
                }
                RamRecordKind::Xbzrle { data: span } => {
                    scratch.iter_mut().for_each(|x| *x = 0);
                    if written {
                        target
                            .read(block, at, &mut scratch)
                            .map_err(|e| output(e, record.offset))?;
                    }
                    if let Some(encoded) = slice(source, span.offset, span.len) {
                        stream::apply_xbzrle(encoded, span.offset, &mut scratch)?;
                    }
                    target
                        .write(block, at, &scratch)
                        .map_err(|e| output(e, record.offset))?;
                    data.set(page, true);
                }
                _ => return Ok(()),
            }
            carried.set(page, true);
            Ok(())
        },
        progress,
    )?;
    target
        .finish()
        .map_err(|e| output(e, source.len() as u64))?;
    Ok(blocks
        .iter()
        .zip(carried.iter().zip(&data))
        .map(|((name, len), (carried, data))| {
            let pages = len.div_ceil(page_size);
            let carried = carried.count();
            let data = data.count();
            BlockPages {
                name: name.clone(),
                used_length: *len,
                data_pages: data,
                zero_pages: carried.saturating_sub(data),
                absent_pages: pages.saturating_sub(carried),
            }
        })
        .collect())
}
