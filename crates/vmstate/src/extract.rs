//! Guest RAM out of a stream, in one pass and bounded memory: every page record is handed to
//! a [`PageTarget`] as it is read (the last copy of a page wins, as on a destination), and
//! what the stream did not carry is counted, never invented.
//!
//! Targets decide the layout: one file per RAM block, one image by guest-physical address,
//! an ELF core, or the pages of a mapped-ram stream ([`write_mapped_ram`]). The pass keeps
//! two bits per page carried (carried, holds data), so a zero page sent after a data page is
//! written as zeros and all others are left as holes.

use std::io;

use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::memory::ram_blocks;
use crate::pages::PageBits;
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

fn output(e: io::Error, offset: u64) -> Error {
    Error::output(e, offset, "ram")
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
    let mut carried: Vec<PageBits> = blocks.iter().map(|_| PageBits::default()).collect();
    let mut data: Vec<PageBits> = blocks.iter().map(|_| PageBits::default()).collect();
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

/// What [`write_mapped_ram`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappedRamWritten {
    /// Bytes the stream spans in the file.
    pub len: u64,
    /// What the input carried of each block whose page records were placed (none when the
    /// input was mapped-ram already). Mapped-ram cannot tell a page the input did not carry
    /// from a zero page: `absent_pages` say how many became zero pages.
    pub placed: Vec<BlockPages>,
}

/// Writes `stream` (its pages in `source`) to `file` as a QEMU mapped-ram stream, from
/// the file's current position on, the way `migrate file:` with the `mapped-ram`
/// capability writes it: every RAM block's bitmap and pages at fixed offsets, holes for
/// pages that hold no data. Leaves the file positioned after the stream.
///
/// A stream that is mapped-ram already is laid out again for its place in `file`. One in
/// page records has its pages placed after the rest is written: the last copy of each page
/// wins, as on a destination, and the bitmap marks the pages that hold data.
pub fn write_mapped_ram<F: io::Read + io::Write + io::Seek>(
    stream: &Stream,
    source: &[u8],
    file: &mut F,
    progress: &mut dyn FnMut(u64),
) -> Result<MappedRamWritten> {
    let start = file.stream_position().map_err(|e| output(e, 0))?;
    let options = stream::WriteOptions {
        ram_layout: stream::RamLayout::MappedRam,
        file_offset: start,
    };
    // Page records are read in the second pass, which alone tells `progress`: offsets it
    // is given never go back.
    let placing = !stream.has_mapped_ram();
    let mut quiet = |_| {};
    let first: &mut dyn FnMut(u64) = if placing { &mut quiet } else { &mut *progress };
    let written = stream::write_seekable(stream, source, file, &options, first)?;
    let mut placed = Vec::new();
    if !written.unplaced.is_empty() {
        let page_size = stream.page_size.bytes.max(1);
        let data = written
            .unplaced
            .iter()
            .map(|_| PageBits::default())
            .collect();
        let mut target = PlacedPages {
            out: Combined::new(vec![&mut *file]),
            start,
            page_size,
            data,
            blocks: &written.unplaced,
            last: 0,
        };
        placed = extract_ram(stream, source, &mut target, progress)?;
        let bitmaps = std::mem::take(&mut target.data);
        // Only the chunks with a set bit are written: the rest of each bitmap stays a hole.
        for (block, data) in written.unplaced.iter().zip(&bitmaps) {
            for (at, mut bytes) in data.bitmap_pieces() {
                let room = block.bitmap.len.saturating_sub(at);
                bytes.truncate(usize::try_from(room).unwrap_or(usize::MAX));
                let offset = block.bitmap.offset.saturating_add(at);
                target.put(offset, &bytes).map_err(|e| output(e, offset))?;
            }
        }
        target.out.flush().map_err(|e| output(e, written.len))?;
    }
    let end = start.saturating_add(written.len);
    file.seek(io::SeekFrom::Start(end))
        .map_err(|e| output(e, written.len))?;
    Ok(MappedRamWritten {
        len: written.len,
        placed,
    })
}

/// Writes to positions of files, held back while they follow one another so that runs of
/// pages reach a file in large writes rather than a page at a time.
pub struct Combined<F> {
    files: Vec<F>,
    /// The file, and where the held bytes start in it.
    held: Option<(usize, u64)>,
    buf: Vec<u8>,
}

impl<F: io::Read + io::Write + io::Seek> Combined<F> {
    /// How many bytes are held back at most.
    const HOLD: usize = 1 << 20;

    /// Writes to `files`, by their index.
    pub fn new(files: Vec<F>) -> Combined<F> {
        Combined {
            files,
            held: None,
            buf: Vec::with_capacity(Self::HOLD),
        }
    }

    /// Writes `data` at `pos` of file `file`, or holds it to write with what follows.
    pub fn write(&mut self, file: usize, pos: u64, data: &[u8]) -> io::Result<()> {
        let follows = self.held.is_some_and(|(f, start)| {
            f == file && start.saturating_add(self.buf.len() as u64) == pos
        });
        if !follows || self.buf.len().saturating_add(data.len()) > Self::HOLD {
            self.flush()?;
            self.held = Some((file, pos));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Reads `buf.len()` bytes at `pos` of file `file`, what is held written first.
    pub fn read(&mut self, file: usize, pos: u64, buf: &mut [u8]) -> io::Result<()> {
        self.flush()?;
        let f = self.file(file)?;
        f.seek(io::SeekFrom::Start(pos))?;
        f.read_exact(buf)
    }

    /// Writes what is held.
    pub fn flush(&mut self) -> io::Result<()> {
        if let Some((file, pos)) = self.held.take() {
            let buf = std::mem::take(&mut self.buf);
            let f = self.file(file)?;
            f.seek(io::SeekFrom::Start(pos))?;
            let written = f.write_all(&buf);
            self.buf = buf;
            written?;
        }
        self.buf.clear();
        Ok(())
    }

    fn file(&mut self, file: usize) -> io::Result<&mut F> {
        self.files
            .get_mut(file)
            .ok_or_else(|| io::Error::other("no file for this block"))
    }
}

/// Pages written into the mapped-ram blocks [`write_mapped_ram`] laid out.
struct PlacedPages<'f, F: io::Read + io::Write + io::Seek> {
    out: Combined<&'f mut F>,
    /// Where the stream starts in the file.
    start: u64,
    page_size: u64,
    blocks: &'f [stream::PlacedBlock],
    /// Per block, the pages that hold data: its bitmap.
    data: Vec<PageBits>,
    /// The block of the last page, looked at first.
    last: usize,
}

impl<F: io::Read + io::Write + io::Seek> PlacedPages<'_, F> {
    fn block(&mut self, name: &str) -> io::Result<usize> {
        let found = match self.blocks.get(self.last) {
            Some(b) if b.name == name => Some(self.last),
            _ => self.blocks.iter().position(|b| b.name == name),
        };
        let index = found.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("RAM block {name} has no place in the mapped-ram layout"),
            )
        })?;
        self.last = index;
        Ok(index)
    }

    /// Where byte `offset` of `block`'s pages is in the file.
    fn place(&mut self, block: &str, offset: u64) -> io::Result<(usize, u64)> {
        let index = self.block(block)?;
        let pages_offset = self.blocks.get(index).map_or(0, |b| b.pages_offset);
        Ok((
            index,
            self.start
                .saturating_add(pages_offset)
                .saturating_add(offset),
        ))
    }

    fn put(&mut self, stream_offset: u64, data: &[u8]) -> io::Result<()> {
        self.out
            .write(0, self.start.saturating_add(stream_offset), data)
    }

    fn mark(&mut self, index: usize, offset: u64, on: bool) {
        if let Some(bits) = self.data.get_mut(index) {
            bits.set(offset.checked_div(self.page_size).unwrap_or(0), on);
        }
    }
}

impl<F: io::Read + io::Write + io::Seek> PageTarget for PlacedPages<'_, F> {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        let (index, at) = self.place(block, offset)?;
        self.out.write(0, at, data)?;
        self.mark(index, offset, true);
        Ok(())
    }

    fn zero(&mut self, block: &str, offset: u64, len: u64) -> io::Result<()> {
        let (index, at) = self.place(block, offset)?;
        self.out
            .write(0, at, &vec![0; usize::try_from(len).unwrap_or(0)])?;
        self.mark(index, offset, false);
        Ok(())
    }

    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (_, at) = self.place(block, offset)?;
        self.out.read(0, at, buf)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
