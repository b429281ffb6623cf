//! RAM records (`ram`, version 4): one record at a time.
//!
//! [`read_ram_record`] parses exactly one record from a [`Reader`] and returns where its data
//! is, without copying page contents; grouping records into runs and checking them against the
//! block list is the caller's business. Keeping the two apart lets the record parser be fed
//! from any source of bytes.

use serde::Serialize;

use super::{
    BlockList, Command, MappedRam, RamBlock, RamItem, RamRun, Record, RunKind, Section,
    SectionBody, Span, Stream,
};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{slice, Endian, Reader};

/// Obsolete whole-page flag (before 2009); rejected.
pub(crate) const FLAG_FULL: u64 = 0x01;
/// A zero page, followed by its fill byte.
pub(crate) const FLAG_ZERO: u64 = 0x02;
/// The block list.
pub(crate) const FLAG_MEM_SIZE: u64 = 0x04;
/// A whole page.
pub(crate) const FLAG_PAGE: u64 = 0x08;
/// End of the section's RAM data.
pub(crate) const FLAG_EOS: u64 = 0x10;
/// Same block as the previous page record (no block name follows).
pub(crate) const FLAG_CONTINUE: u64 = 0x20;
/// A delta-encoded page.
pub(crate) const FLAG_XBZRLE: u64 = 0x40;
/// RDMA control.
pub(crate) const FLAG_HOOK: u64 = 0x80;
/// A zlib-compressed page (removed in QEMU 9.1).
pub(crate) const FLAG_COMPRESS_PAGE: u64 = 0x100;
/// A multifd synchronisation point.
pub(crate) const FLAG_MULTIFD_FLUSH: u64 = 0x200;

/// The XBZRLE encoding byte QEMU writes (`ENCODING_FLAG_XBZRLE`).
pub(crate) const XBZRLE_ENCODING: u8 = 0x01;

/// What the reader of RAM records must know from outside the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RamContext {
    /// The target page size: the low bits of each record word are flags.
    pub page_size: u64,
    /// Postcopy was advised: block list entries may carry a page size. The value is the
    /// advice's OR of all block page sizes, or 0 when the advice had no payload.
    pub postcopy_page_sizes: Option<u64>,
    /// The x-ignore-shared capability is on: block list entries carry `mr_addr`.
    pub ignore_shared: bool,
    /// The mapped-ram capability is on: each block list entry carries a header, and the
    /// block's page bitmap and pages sit at fixed offsets of the file after it.
    pub mapped_ram: bool,
    /// Where the stream starts in its file: mapped-ram headers give file offsets.
    pub file_offset: u64,
}

/// One RAM record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamRecord {
    /// Offset of the record's first byte.
    pub offset: u64,
    /// Bytes the record occupies.
    pub len: u64,
    /// The page offset within the block (for MEM_SIZE: the total RAM size).
    pub page: u64,
    /// Whether the record carries the CONTINUE flag.
    pub continues: bool,
    /// The block name the record carries (page records without CONTINUE).
    pub block: Option<String>,
    /// What the record is.
    pub kind: RamRecordKind,
}

/// The type of a RAM record, with its payload's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RamRecordKind {
    /// MEM_SIZE and the block list.
    BlockList(BlockList),
    /// A zero page.
    Zero {
        /// Its fill byte.
        fill: u8,
    },
    /// A whole page.
    Page {
        /// Where the page bytes are.
        data: Span,
    },
    /// A delta-encoded page.
    Xbzrle {
        /// Where the encoded bytes are.
        data: Span,
    },
    /// A zlib-compressed page (`RAM_SAVE_FLAG_COMPRESS_PAGE`, QEMU before 9.1).
    Compressed {
        /// Where the zlib stream is.
        data: Span,
    },
    /// End of section.
    Eos,
    /// Multifd synchronisation point.
    MultifdFlush,
}

/// Reads one RAM record.
pub(crate) fn read_ram_record(r: &mut Reader, ctx: &RamContext) -> Result<RamRecord> {
    let offset = r.offset();
    let word = r.u64(Endian::Big, "ram.word")?;
    let flag_mask = ctx.page_size.saturating_sub(1);
    let flags = word & flag_mask;
    let page = word & !flag_mask;
    let continues = flags & FLAG_CONTINUE != 0;
    let bad = |reason: String| Error::new(ErrorKind::BadRamRecord { reason }, offset, "ram.word");
    let unsupported = |what: &str| {
        Error::new(
            ErrorKind::Unsupported {
                what: what.to_owned(),
            },
            offset,
            "ram.word",
        )
    };
    // QEMU dispatches on the exact value without CONTINUE: one type flag per record.
    let kind_flag = flags & !FLAG_CONTINUE;
    let needs_block = matches!(
        kind_flag,
        FLAG_ZERO | FLAG_PAGE | FLAG_XBZRLE | FLAG_COMPRESS_PAGE
    );
    // QEMU writes these words bare; anything more could not be written back as read.
    let stray_bits = match kind_flag {
        FLAG_MEM_SIZE => continues,
        FLAG_EOS | FLAG_MULTIFD_FLUSH => continues || page != 0,
        _ => false,
    };
    if stray_bits {
        return Err(bad(format!(
            "record word {word:#x} has bits that its type does not take"
        )));
    }
    let block = if needs_block && !continues {
        let name_offset = r.offset();
        let name = r.counted_bytes("ram.block")?;
        if name.is_empty() {
            return Err(Error::new(ErrorKind::EmptyString, name_offset, "ram.block"));
        }
        Some(utf8(name, name_offset, "ram.block")?)
    } else {
        None
    };
    let kind = match kind_flag {
        FLAG_MEM_SIZE => RamRecordKind::BlockList(read_block_list(r, ctx, offset, page)?),
        FLAG_ZERO => RamRecordKind::Zero {
            fill: r.u8("ram.fill")?,
        },
        FLAG_PAGE => {
            let data = span_of(r, ctx.page_size, "ram.page")?;
            RamRecordKind::Page { data }
        }
        FLAG_XBZRLE => {
            let encoding = r.u8("ram.xbzrle.encoding")?;
            if encoding != XBZRLE_ENCODING {
                return Err(r.error(
                    ErrorKind::InvalidValue {
                        value: u64::from(encoding),
                        expected: "the XBZRLE encoding byte 0x01",
                    },
                    "ram.xbzrle.encoding",
                ));
            }
            let len_offset = r.offset();
            let len = r.u16(Endian::Big, "ram.xbzrle.len")?;
            if u64::from(len) > ctx.page_size {
                return Err(Error::new(
                    ErrorKind::CountTooLarge {
                        value: u64::from(len),
                        max: ctx.page_size,
                    },
                    len_offset,
                    "ram.xbzrle.len",
                ));
            }
            let data_offset = r.offset();
            let encoded = r.bytes(usize::from(len), "ram.xbzrle.data")?;
            check_xbzrle(encoded, ctx.page_size, data_offset)?;
            RamRecordKind::Xbzrle {
                data: Span {
                    offset: data_offset,
                    len: u64::from(len),
                },
            }
        }
        FLAG_EOS => RamRecordKind::Eos,
        FLAG_MULTIFD_FLUSH => RamRecordKind::MultifdFlush,
        FLAG_HOOK => return Err(unsupported("RAM_SAVE_FLAG_HOOK (RDMA control records)")),
        FLAG_COMPRESS_PAGE => {
            let len_offset = r.offset();
            let len = r.u32(Endian::Big, "ram.compressed.len")?;
            let bound = compress_bound(ctx.page_size);
            if u64::from(len) > bound {
                return Err(Error::new(
                    ErrorKind::CountTooLarge {
                        value: u64::from(len),
                        max: bound,
                    },
                    len_offset,
                    "ram.compressed.len",
                ));
            }
            let data_offset = r.offset();
            let data = r.bytes(len as usize, "ram.compressed.data")?;
            inflate_page(data, data_offset, None, ctx.page_size)?;
            RamRecordKind::Compressed {
                data: Span {
                    offset: data_offset,
                    len: u64::from(len),
                },
            }
        }
        FLAG_FULL => return Err(bad("obsolete RAM_SAVE_FLAG_FULL".to_owned())),
        other => return Err(bad(format!("unknown flags {other:#x}"))),
    };
    Ok(RamRecord {
        offset,
        len: r.offset().saturating_sub(offset),
        page,
        continues,
        block,
        kind,
    })
}

impl Stream {
    /// Drops every page record (PAGE, ZERO, XBZRLE), keeping the block lists, the EOS that
    /// ends each RAM section and everything else: the result is device state without guest
    /// memory, still a well-formed stream that loads as one whose RAM was never sent. Returns
    /// the number of page records dropped.
    ///
    /// The JSON description does not describe RAM, so it needs no change.
    pub fn strip_ram(&mut self) -> u64 {
        fn strip(records: &mut [Record]) -> u64 {
            let mut dropped = 0u64;
            for record in records {
                match record {
                    Record::Section(Section {
                        body: SectionBody::Ram(ram),
                        ..
                    }) => ram.items.retain(|item| match item {
                        RamItem::Pages(run) => {
                            dropped = dropped.saturating_add(run.count);
                            false
                        }
                        _ => true,
                    }),
                    Record::Command(Command {
                        packaged: Some(packaged),
                        ..
                    }) => dropped = dropped.saturating_add(strip(&mut packaged.records)),
                    _ => {}
                }
            }
            dropped
        }
        strip(&mut self.records)
    }
}

impl Stream {
    /// Keeps only the page records of the pages `keep(block, offset)` wants, every record of
    /// them (a page sent twice, or as a base and an XBZRLE delta, keeps all its records in
    /// order); everything else is kept byte for byte. `source` holds the stream the model
    /// was read from. Returns the number of page records dropped.
    ///
    /// Runs are split where records are dropped; each kept run names its block again, which
    /// is always valid, rather than continuing one whose last record may be gone.
    /// `progress` is told the offset of `source` reached after each run, so that a caller can
    /// release what lies behind.
    pub fn keep_pages(
        &mut self,
        source: &[u8],
        keep: &mut dyn FnMut(&str, u64) -> bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        fn filter(
            records: &mut [Record],
            source: &[u8],
            page_size: u64,
            keep: &mut dyn FnMut(&str, u64) -> bool,
            progress: &mut dyn FnMut(u64),
        ) -> Result<u64> {
            let mut dropped = 0u64;
            for record in records {
                match record {
                    Record::Section(Section {
                        body: SectionBody::Ram(ram),
                        ..
                    }) => {
                        let mut items = Vec::with_capacity(ram.items.len());
                        for item in std::mem::take(&mut ram.items) {
                            match item {
                                RamItem::Pages(run) => {
                                    let (kept, gone) = split_run(&run, source, page_size, keep)?;
                                    dropped = dropped.saturating_add(gone);
                                    progress(run.span.end());
                                    items.extend(kept.into_iter().map(RamItem::Pages));
                                }
                                other => items.push(other),
                            }
                        }
                        ram.items = items;
                    }
                    Record::Command(Command {
                        packaged: Some(packaged),
                        ..
                    }) => {
                        dropped = dropped.saturating_add(filter(
                            &mut packaged.records,
                            source,
                            page_size,
                            keep,
                            progress,
                        )?)
                    }
                    _ => {}
                }
            }
            Ok(dropped)
        }
        let page_size = self.page_size.bytes;
        filter(&mut self.records, source, page_size, keep, progress)
    }
}

/// The runs that the kept records of `run` form, and how many records were dropped.
fn split_run(
    run: &RamRun,
    source: &[u8],
    page_size: u64,
    keep: &mut dyn FnMut(&str, u64) -> bool,
) -> Result<(Vec<RamRun>, u64)> {
    let bytes = usize::try_from(run.span.offset)
        .ok()
        .zip(usize::try_from(run.span.end()).ok())
        .and_then(|(a, b)| source.get(a..b))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedEof {
                    needed: run.span.len,
                    available: 0,
                },
                run.span.offset,
                "ram.run",
            )
        })?;
    let mut r = Reader::at(bytes, run.span.offset);
    let mut kept: Vec<RamRun> = Vec::new();
    let mut dropped = 0u64;
    let mut open = false;
    for _ in 0..run.count {
        let record = read_page_record(&mut r, page_size)?;
        if !keep(&run.block, record.page) {
            dropped = dropped.saturating_add(1);
            open = false;
            continue;
        }
        let Some(kind) = record.kind.run_kind() else {
            return Err(Error::new(
                ErrorKind::BadRamRecord {
                    reason: "a page run holds a record that is not a page".to_owned(),
                },
                record.offset,
                "ram.run",
            ));
        };
        let extends = open
            && kept.last().is_some_and(|last| {
                last.first_page
                    .checked_add(last.count.saturating_mul(page_size))
                    == Some(record.page)
                    && merge_kinds(last.kind, last.count, kind).is_some()
            });
        match kept.last_mut() {
            Some(last) if extends => {
                if let Some(merged) = merge_kinds(last.kind, last.count, kind) {
                    last.kind = merged;
                }
                last.count = last.count.saturating_add(1);
                last.span.len = last.span.len.saturating_add(record.len);
            }
            _ => kept.push(RamRun {
                block: run.block.clone(),
                kind,
                first_page: record.page,
                count: 1,
                first_continues: false,
                span: Span {
                    offset: record.offset,
                    len: record.len,
                },
            }),
        }
        open = true;
    }
    Ok((kept, dropped))
}

/// The kind of a run of `count` records of `run` followed by one more record of `next`, if
/// one run can hold both (XBZRLE records stay one to a run).
fn merge_kinds(run: RunKind, count: u64, next: RunKind) -> Option<RunKind> {
    match (run, next) {
        (RunKind::Page, RunKind::Page) => Some(RunKind::Page),
        (RunKind::Zero { fill: a }, RunKind::Zero { fill: b }) if a == b => {
            Some(RunKind::Zero { fill: a })
        }
        (RunKind::Page, RunKind::Zero { fill }) => Some(RunKind::Mixed {
            zero_pages: 1,
            fill,
        }),
        (RunKind::Zero { fill: a }, RunKind::Page) => Some(RunKind::Mixed {
            zero_pages: count,
            fill: a,
        }),
        (RunKind::Mixed { zero_pages, fill }, RunKind::Page) => {
            Some(RunKind::Mixed { zero_pages, fill })
        }
        (
            RunKind::Mixed {
                zero_pages,
                fill: a,
            },
            RunKind::Zero { fill: b },
        ) if a == b => Some(RunKind::Mixed {
            zero_pages: zero_pages.saturating_add(1),
            fill: a,
        }),
        _ => None,
    }
}

fn span_of(r: &mut Reader, len: u64, field: &str) -> Result<Span> {
    let offset = r.offset();
    let n = r.check_count(len, 1, field)?;
    r.skip(n, field)?;
    Ok(Span { offset, len })
}

fn utf8(bytes: &[u8], offset: u64, field: &str) -> Result<String> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| Error::new(ErrorKind::NotUtf8, offset, field))
}

fn read_block_list(r: &mut Reader, ctx: &RamContext, start: u64, total: u64) -> Result<BlockList> {
    let mut blocks = Vec::new();
    let mut sum: u64 = 0;
    while sum < total {
        let name_offset = r.offset();
        let name = r.counted_bytes("ram.block_list.name")?;
        if name.is_empty() {
            return Err(Error::new(
                ErrorKind::EmptyString,
                name_offset,
                "ram.block_list.name",
            ));
        }
        let name = utf8(name, name_offset, "ram.block_list.name")?;
        let length_offset = r.offset();
        let used_length = r.u64(Endian::Big, "ram.block_list.used_length")?;
        sum = match sum.checked_add(used_length).filter(|s| *s <= total) {
            Some(s) => s,
            None => {
                return Err(Error::new(
                    ErrorKind::BadRamRecord {
                        reason: format!(
                            "block {name:?} of {used_length:#x} bytes passes the total RAM size {total:#x}"
                        ),
                    },
                    length_offset,
                    "ram.block_list.used_length",
                ))
            }
        };
        let page_size = match ctx.postcopy_page_sizes {
            Some(summary) if block_page_size_follows(r, ctx.page_size, summary)? => {
                Some(r.u64(Endian::Big, "ram.block_list.page_size")?)
            }
            _ => None,
        };
        let mr_addr = if ctx.ignore_shared {
            Some(r.u64(Endian::Big, "ram.block_list.mr_addr")?)
        } else {
            None
        };
        let mapped = if ctx.mapped_ram {
            Some(read_mapped_ram(r, ctx, used_length)?)
        } else {
            None
        };
        blocks.push(RamBlock {
            name,
            used_length,
            page_size,
            mr_addr,
            mapped,
        });
    }
    Ok(BlockList {
        span: Span {
            offset: start,
            len: r.offset().saturating_sub(start),
        },
        total_bytes: total,
        blocks,
        file_offset: ctx.file_offset,
    })
}

/// Reads a block's mapped-ram header (version be32, page size, bitmap offset and pages
/// offset be64 each), checks that its bitmap and pages lie in the input,
/// counts the pages the bitmap marks, and moves `r` to where the stream goes on: after the
/// block's pages (QEMU seeks there).
fn read_mapped_ram(r: &mut Reader, ctx: &RamContext, used_length: u64) -> Result<MappedRam> {
    let at = r.offset();
    let version = r.u32(Endian::Big, "ram.block_list.mapped_ram.version")?;
    if version != 1 {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion { version },
            at,
            "ram.block_list.mapped_ram.version",
        ));
    }
    let page_size = r.u64(Endian::Big, "ram.block_list.mapped_ram.page_size")?;
    if page_size != ctx.page_size {
        return Err(Error::new(
            ErrorKind::InvalidValue {
                value: page_size,
                expected: "the stream's target page size",
            },
            at.saturating_add(4),
            "ram.block_list.mapped_ram.page_size",
        ));
    }
    let bitmap_in_file = r.u64(Endian::Big, "ram.block_list.mapped_ram.bitmap_offset")?;
    let pages_in_file = r.u64(Endian::Big, "ram.block_list.mapped_ram.pages_offset")?;
    let header_end = r.offset();
    // QEMU marks a block it does not write (x-ignore-shared) with both offsets 0.
    if bitmap_in_file == 0 && pages_in_file == 0 {
        return Ok(MappedRam {
            bitmap: Span { offset: 0, len: 0 },
            pages_offset: 0,
            pages_written: 0,
        });
    }
    // Offsets before the stream's start become ones no check lets through.
    let bitmap_offset = bitmap_in_file.saturating_sub(ctx.file_offset);
    let pages_offset = pages_in_file.saturating_sub(ctx.file_offset);
    let pages = used_length.div_ceil(page_size);
    let bitmap_len = pages.div_ceil(64).saturating_mul(8);
    let bitmap_end = bitmap_offset.saturating_add(bitmap_len);
    let pages_end = pages_offset.saturating_add(used_length);
    let inside = r.data_len();
    let bad = |value: u64, field: &str, expected: &'static str, offset: u64| {
        Error::new(ErrorKind::InvalidValue { value, expected }, offset, field)
    };
    if bitmap_offset < header_end || bitmap_end > inside {
        return Err(bad(
            bitmap_in_file,
            "ram.block_list.mapped_ram.bitmap_offset",
            "a bitmap after the header and inside the file",
            at.saturating_add(12),
        ));
    }
    if pages_offset < bitmap_end || pages_end > inside {
        return Err(bad(
            pages_in_file,
            "ram.block_list.mapped_ram.pages_offset",
            "pages after the bitmap and inside the file",
            at.saturating_add(20),
        ));
    }
    let bitmap = Span {
        offset: bitmap_offset,
        len: bitmap_len,
    };
    let pages_written = r
        .absolute(bitmap.offset, bitmap.len)
        .map(|bytes| bytes.iter().map(|b| u64::from(b.count_ones())).sum())
        .unwrap_or(0);
    r.skip(
        usize::try_from(pages_end.saturating_sub(header_end)).unwrap_or(usize::MAX),
        "ram.block_list.mapped_ram.pages",
    )?;
    Ok(MappedRam {
        bitmap,
        pages_offset,
        pages_written,
    })
}

/// Decides whether a block list entry carries its own page size.
///
/// QEMU writes it only with postcopy and only for blocks whose page size differs from the
/// host's, which a reader cannot know. What follows instead is the next block's name (whose
/// length byte makes a huge 64-bit value) or the EOS/MULTIFD_FLUSH word (smaller than any page
/// size), so a power of two above the target page size, within the advised page sizes, can
/// only be a page size.
fn block_page_size_follows(r: &Reader, target_page_size: u64, advised: u64) -> Result<bool> {
    let Ok(next) = <[u8; 8]>::try_from(r.lookahead(8, "ram.block_list.page_size")?) else {
        return Ok(false);
    };
    let value = u64::from_be_bytes(next);
    Ok(value.is_power_of_two()
        && value > target_page_size
        && value < (1 << 48)
        && (advised == 0 || advised & value != 0))
}

/// Checks an XBZRLE payload the way QEMU's decoder does: pairs of (unchanged run, literal
/// run) lengths in one- or two-byte ULEB128, a zero unchanged run only first, literal runs
/// non-empty, and nothing past the page.
/// Bytes of each record after the first of a run of `kind`, when they are all alike: every
/// record after a run's first continues its block at the next page (the reader and the
/// filter make runs so), with no block name, so a ZERO record is its word and fill byte and a
/// PAGE record its word and page. `None` for mixed runs, and for XBZRLE and compressed
/// records, each as long as its payload says.
pub(crate) fn continuing_record_len(kind: RunKind, page_size: u64) -> Option<u64> {
    match kind {
        RunKind::Zero { .. } => Some(9),
        RunKind::Page => page_size.checked_add(8),
        RunKind::Mixed { .. } | RunKind::Xbzrle { .. } | RunKind::Compressed { .. } => None,
    }
}

impl RamRecordKind {
    /// The kind of page run a page record starts (`None` for records that are not pages).
    pub(crate) fn run_kind(&self) -> Option<RunKind> {
        Some(match self {
            RamRecordKind::Zero { fill } => RunKind::Zero { fill: *fill },
            RamRecordKind::Page { .. } => RunKind::Page,
            RamRecordKind::Xbzrle { data } => RunKind::Xbzrle {
                encoded_len: u16::try_from(data.len).unwrap_or(u16::MAX),
            },
            RamRecordKind::Compressed { data } => RunKind::Compressed {
                compressed_len: u32::try_from(data.len).unwrap_or(u32::MAX),
            },
            _ => return None,
        })
    }
}

/// The most bytes zlib's `compressBound` allows for one page, as QEMU's loader checks.
fn compress_bound(page_size: u64) -> u64 {
    page_size
        .saturating_add(page_size >> 12)
        .saturating_add(page_size >> 14)
        .saturating_add(page_size >> 25)
        .saturating_add(13)
}

/// Inflates one compressed page record (a whole zlib stream) into `page`, or only checks
/// that it inflates to exactly one page when `page` is `None`. `base` is the data's offset.
pub fn inflate_page(data: &[u8], base: u64, page: Option<&mut [u8]>, page_size: u64) -> Result<()> {
    let bad = |reason: String| {
        Error::new(
            ErrorKind::BadRamRecord { reason },
            base,
            "ram.compressed.data",
        )
    };
    let size = usize::try_from(page_size).map_err(|_| bad("page size".to_owned()))?;
    let mut scratch;
    let out: &mut [u8] = match page {
        Some(page) => page,
        None => {
            scratch = vec![0u8; size];
            &mut scratch
        }
    };
    // One byte of room past the page tells a stream that inflates to more.
    let mut spare = [0u8; 1];
    let mut inflater = flate2::Decompress::new(true);
    let status = inflater
        .decompress(data, out, flate2::FlushDecompress::Finish)
        .map_err(|e| bad(format!("not a zlib stream: {e}")))?;
    let produced = inflater.total_out();
    let more = match status {
        flate2::Status::StreamEnd => false,
        _ => {
            let consumed = usize::try_from(inflater.total_in()).unwrap_or(data.len());
            let rest = data.get(consumed..).unwrap_or(&[]);
            !matches!(
                inflater.decompress(rest, &mut spare, flate2::FlushDecompress::Finish),
                Ok(flate2::Status::StreamEnd) if inflater.total_out() == produced
            )
        }
    };
    if produced != page_size || more {
        return Err(bad(format!(
            "the zlib stream does not inflate to exactly one page of {page_size} bytes"
        )));
    }
    Ok(())
}

fn check_xbzrle(encoded: &[u8], page_size: u64, base: u64) -> Result<()> {
    xbzrle(encoded, page_size, base, None)
}

/// Applies an XBZRLE payload (whose first byte is at offset `base` of the input) on top of
/// `page`, the page's current content, after checking it as the reader checks every XBZRLE record.
pub fn apply_xbzrle(encoded: &[u8], base: u64, page: &mut [u8]) -> Result<()> {
    xbzrle(encoded, page.len() as u64, base, Some(page))
}

/// The one XBZRLE walk: checks the payload and, given a page, writes its literal runs.
fn xbzrle(encoded: &[u8], page_size: u64, base: u64, mut page: Option<&mut [u8]>) -> Result<()> {
    let error = |pos: usize, reason: &str| {
        Error::new(
            ErrorKind::BadRamRecord {
                reason: format!("XBZRLE data: {reason}"),
            },
            base.saturating_add(pos as u64),
            "ram.xbzrle.data",
        )
    };
    let mut pos = 0usize;
    let mut decoded = 0u64;
    while pos < encoded.len() {
        let rest = encoded.get(pos..).unwrap_or(&[]);
        if rest.len() < 2 {
            return Err(error(pos, "truncated run length"));
        }
        let (skip, used) = uleb128_small(rest).ok_or_else(|| error(pos, "bad run length"))?;
        if pos != 0 && skip == 0 {
            return Err(error(pos, "empty unchanged run after the first"));
        }
        pos = pos.saturating_add(used);
        decoded = decoded.saturating_add(skip);
        if decoded > page_size {
            return Err(error(pos, "runs pass the end of the page"));
        }
        let rest = encoded.get(pos..).unwrap_or(&[]);
        if rest.len() < 2 {
            return Err(error(pos, "truncated literal run"));
        }
        let (literal, used) = uleb128_small(rest).ok_or_else(|| error(pos, "bad run length"))?;
        if literal == 0 {
            return Err(error(pos, "empty literal run"));
        }
        pos = pos.saturating_add(used);
        let literal_end = pos.saturating_add(usize::try_from(literal).unwrap_or(usize::MAX));
        let target_start = decoded;
        decoded = decoded.saturating_add(literal);
        if decoded > page_size || literal_end > encoded.len() {
            return Err(error(pos, "literal run passes the end of the page or data"));
        }
        if let Some(page) = page.as_deref_mut() {
            let from = encoded.get(pos..literal_end);
            let to = usize::try_from(target_start)
                .ok()
                .zip(usize::try_from(decoded).ok())
                .and_then(|(a, b)| page.get_mut(a..b));
            if let (Some(from), Some(to)) = (from, to) {
                to.copy_from_slice(from);
            }
        }
        pos = literal_end;
    }
    Ok(())
}

/// Hands every page of a mapped-ram block to `visit` as the record it stands for: a PAGE
/// record at the page's bytes in the file when its bit is set, else a ZERO record.
fn visit_mapped_pages(
    block: &RamBlock,
    mapped: &MappedRam,
    page_size: u64,
    source: &[u8],
    visit: &mut dyn FnMut(&str, &RamRecord) -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    // How often the caller hears how far the pages have been read: a block can be all of
    // the guest's memory, and the mapping behind the reader is released as it goes.
    const PROGRESS_EVERY: u64 = 256;
    if mapped.bitmap.len == 0 {
        return Ok(());
    }
    let bitmap = slice(source, mapped.bitmap.offset, mapped.bitmap.len).ok_or_else(|| {
        Error::new(
            ErrorKind::UnexpectedEof {
                needed: mapped.bitmap.len,
                available: 0,
            },
            mapped.bitmap.offset,
            "ram.block_list.mapped_ram.bitmap",
        )
    })?;
    let pages = block.used_length.div_ceil(page_size.max(1));
    for n in 0..pages {
        let set = bitmap
            .get(usize::try_from(n / 8).unwrap_or(usize::MAX))
            .is_some_and(|byte| byte & (1 << (n % 8)) != 0);
        let at = n.saturating_mul(page_size);
        let data = Span {
            offset: mapped.pages_offset.saturating_add(at),
            len: page_size,
        };
        let record = RamRecord {
            offset: if set {
                data.offset
            } else {
                mapped.bitmap.offset
            },
            len: if set { page_size } else { 0 },
            page: at,
            continues: true,
            block: None,
            kind: if set {
                RamRecordKind::Page { data }
            } else {
                RamRecordKind::Zero { fill: 0 }
            },
        };
        visit(&block.name, &record)?;
        if n % PROGRESS_EVERY == PROGRESS_EVERY - 1 {
            progress(data.end());
        }
    }
    Ok(())
}

/// Hands every page record of `stream`'s RAM sections to `visit`, in stream order, with the
/// name of its block (the bytes of the records are in `source`), and tells `progress` the
/// offset of `source` reached after each run of records. The pages of mapped-ram blocks come
/// as the records they stand for. The one walk over page records that guest memory and
/// extraction share.
pub fn visit_page_records(
    stream: &Stream,
    source: &[u8],
    visit: &mut dyn FnMut(&str, &RamRecord) -> Result<()>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let page_size = stream.page_size.bytes;
    for section in stream.sections() {
        let SectionBody::Ram(payload) = &section.body else {
            continue;
        };
        for item in &payload.items {
            if let RamItem::BlockList(list) = item {
                for block in &list.blocks {
                    if let Some(mapped) = &block.mapped {
                        visit_mapped_pages(block, mapped, page_size, source, visit, progress)?;
                    }
                }
                progress(list.span.end());
                continue;
            }
            let RamItem::Pages(run) = item else {
                continue;
            };
            let bytes = slice(source, run.span.offset, run.span.len).ok_or_else(|| {
                Error::new(
                    ErrorKind::UnexpectedEof {
                        needed: run.span.len,
                        available: (source.len() as u64).saturating_sub(run.span.offset),
                    },
                    run.span.offset,
                    "ram",
                )
            })?;
            let mut reader = Reader::at(bytes, run.span.offset);
            if run.count > 0 {
                let first = read_page_record(&mut reader, page_size)?;
                visit(&run.block, &first)?;
                match uniform_records(run, &first, page_size) {
                    Some(mut later) => later.try_for_each(|record| visit(&run.block, &record))?,
                    None => {
                        for _ in 1..run.count {
                            let record = read_page_record(&mut reader, page_size)?;
                            visit(&run.block, &record)?;
                        }
                    }
                }
            }
            progress(run.span.end());
        }
    }
    Ok(())
}

/// The records after `first` of a run of PAGE or of ZERO records, made from the model rather
/// than read, so that their pages are not touched ([`continuing_record_len`] says why they
/// are alike); `None` for the other kinds, and when the span does not hold exactly those
/// records, for which the records are read.
fn uniform_records(
    run: &RamRun,
    first: &RamRecord,
    page_size: u64,
) -> Option<impl Iterator<Item = RamRecord>> {
    let len = continuing_record_len(run.kind, page_size)?;
    if first.kind.run_kind() != Some(run.kind) {
        return None;
    }
    let later = run.count.checked_sub(1)?;
    let start = first.offset.checked_add(first.len)?;
    let end = later.checked_mul(len).and_then(|l| l.checked_add(start))?;
    let last_page = later.checked_mul(page_size)?.checked_add(first.page)?;
    if end != run.span.end() || last_page.checked_add(page_size).is_none() {
        return None;
    }
    let (base_page, kind) = (first.page, first.kind.clone());
    // Nothing saturates: the last record's offset and page were computed above.
    Some((0..later).map(move |n| {
        let offset = start.saturating_add(n.saturating_mul(len));
        let kind = match &kind {
            RamRecordKind::Page { .. } => RamRecordKind::Page {
                data: Span {
                    offset: offset.saturating_add(8),
                    len: page_size,
                },
            },
            other => other.clone(),
        };
        RamRecord {
            offset,
            len,
            page: base_page.saturating_add(n.saturating_add(1).saturating_mul(page_size)),
            continues: true,
            block: None,
            kind,
        }
    }))
}

/// Reads one page record (ZERO, PAGE or XBZRLE, as the runs of the model hold) with the
/// target page size `page_size`.
pub fn read_page_record(r: &mut Reader, page_size: u64) -> Result<RamRecord> {
    read_ram_record(
        r,
        &RamContext {
            page_size,
            postcopy_page_sizes: None,
            ignore_shared: false,
            mapped_ram: false,
            file_offset: 0,
        },
    )
}

/// Decodes a ULEB128 value of one or two bytes (QEMU accepts no longer encodings).
fn uleb128_small(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    if first & 0x80 == 0 {
        return Some((u64::from(first), 1));
    }
    let second = *bytes.get(1)?;
    if second & 0x80 != 0 {
        return None;
    }
    Some((u64::from(first & 0x7f) | (u64::from(second) << 7), 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xbzrle_payloads_are_checked_like_qemu() {
        // skip 0, 3 literal bytes.
        check_xbzrle(&[0, 3, 1, 2, 3], 4096, 0).unwrap();
        // two-byte skip of 200, 1 literal byte.
        check_xbzrle(&[0xc8, 0x01, 1, 9], 4096, 0).unwrap();
        // empty literal run.
        assert!(check_xbzrle(&[0, 0], 4096, 0).is_err());
        // literal run past the data.
        assert!(check_xbzrle(&[0, 5, 1], 4096, 0).is_err());
        // skip past the page.
        assert!(check_xbzrle(&[0xff, 0x7f, 1, 1], 4096, 0).is_err());
        // three-byte ULEB128.
        assert!(check_xbzrle(&[0x80, 0x80, 0x01, 1, 1], 4096, 0).is_err());
        // zero skip after the first pair.
        assert!(check_xbzrle(&[0, 1, 7, 0, 1, 7], 4096, 0).is_err());
    }
}
