//! Reading a stream in one pass, as it arrives: for input that cannot be mapped (a pipe, a
//! socket, a decompressor).
//!
//! QEMU sends the description that device sections are decoded through last, after EOF. Until
//! the first record that needs it, nothing does: the header, the configuration, commands, RAM
//! and the other iterative sections are read record by record from a window of the input, and
//! each byte read is handed on ([`read_one_pass`]'s `passed`) and forgotten. From the first
//! device section (QEMU sends them after the last RAM) or PACKAGED command on, the rest of the
//! input is held in memory, where the description is found at its end as a file's would be,
//! and read by the same reader as a mapped stream.
//!
//! The records are read by the mapped reader's own functions over the window; a record that
//! runs past the window's end is read again once the window holds more (at least twice as
//! much, so a large record is read again only a few times).

use std::io::{ErrorKind as IoErrorKind, Read};

use super::config::read_configuration;
use super::container::{
    add_ram_record, locate_trailer, ram_section_context, read_command, read_footer, read_header,
    read_other_body, read_records, read_section_header, read_trailer, remember_configuration,
    section_kind, Context, TYPE_COMMAND, TYPE_CONFIGURATION,
};
use super::ram::{read_ram_record, RamContext, RamRecordKind};
use super::{RamPayload, Record, SectionBody, Stream};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Reader};

/// Bytes asked of the input at a time: what a widened pipe holds.
const READ_CHUNK: usize = 1 << 20;
/// The largest record read from the window (a PACKAGED command is at most 16 MiB, an
/// iterative section's records are read as one).
const MAX_RECORD: usize = 256 << 20;
/// How many times a record that runs past the window is read again with just what its
/// field needs, before the window is doubled instead.
const EXACT_RETRIES: u32 = 8;
/// The most input held for the device sections at the end.
pub const HELD_LIMIT: usize = 256 << 20;
/// The PACKAGED command, whose nested stream holds device sections.
const CMD_PACKAGED: u16 = 7;

/// A stream read in one pass.
#[derive(Debug)]
pub struct OnePass {
    /// The model, the same a mapped read of the same bytes gives.
    pub stream: Stream,
    /// The end of the input, from the first record that needed the description.
    pub held: Held,
}

/// The stream from the first device section on, kept for writing: the bytes before it were
/// handed on as they were read.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// Where the held bytes start in the stream.
    pub offset: u64,
    /// The bytes, to the end of the stream.
    pub bytes: Vec<u8>,
    /// The first of the model's top-level records that lies in them.
    pub first_record: usize,
}

/// Reads the stream in `input` in one pass, handing every byte before the held part to
/// `passed` as soon as it has been read (in pieces, in order).
///
/// It returns once the stream's description has arrived whole, without waiting for the input
/// to end (the channel of a migration may stay open a while after the stream): a caller that
/// wants the input to end there checks it with [`expect_input_end`]. A stream without a
/// description ends with its input.
///
/// `file_offset` is where the stream starts in its file (see [`super::read_in_file`]). A
/// mapped-ram stream (its pages sit at fixed offsets after the block list) is refused. When
/// the configuration does not give the page size, it is the only one the first RAM records
/// read with, 4096 first; a description that then says another is an error, as is a
/// stream with more than [`HELD_LIMIT`] bytes from its first device section on. Errors from
/// `passed` are returned as [`ErrorKind::Output`] errors, errors of `input` as
/// [`ErrorKind::Input`].
pub fn read_one_pass(
    input: &mut dyn Read,
    file_offset: u64,
    passed: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> Result<OnePass> {
    let _budget = super::budget::Budget::start(0);
    let mut window = Window {
        input,
        passed,
        buf: Vec::new(),
        start: 0,
        pos: 0,
        end: 0,
        base: 0,
        done: false,
    };
    let mut progress = |_| {};
    let mut ctx = Context::new(&mut progress, file_offset);
    let version = window.read(read_header)?;
    let mut records = Vec::new();
    loop {
        let start = window.offset();
        let head = window.peek(|r| {
            let byte = r.u8("section_type")?;
            let command = match byte {
                TYPE_COMMAND => Some(r.u16(Endian::Big, "command.number")?),
                _ => None,
            };
            Ok((byte, command))
        })?;
        let record = match head {
            (0x01..=0x03, _) => window.section(&mut ctx, head.0, start)?,
            (TYPE_CONFIGURATION, _) if records.is_empty() => window.read(|r| {
                r.u8("section_type")?;
                let config = read_configuration(r, start)?;
                remember_configuration(&mut ctx, &config);
                Ok(Record::Configuration(config))
            })?,
            (TYPE_COMMAND, Some(number)) if number != CMD_PACKAGED => window.read(|r| {
                r.u8("section_type")?;
                read_command(r, &mut ctx, start, false).map(Record::Command)
            })?,
            // From EOF, a device section or a package on, the description is needed.
            (0x00 | 0x04, _) | (TYPE_COMMAND, Some(_)) => break,
            (byte, _) => {
                return Err(Error::new(
                    ErrorKind::UnknownSectionType { byte },
                    start,
                    "section_type",
                ))
            }
        };
        super::budget::charge(std::mem::size_of::<Record>() as u64, start, "records")?;
        records.push(record);
    }
    let held = window.hold(records.len())?;
    ctx.learn_description(&held.bytes, held.offset)?;
    ctx.confirm_page_size(held.offset)?;
    let mut r = Reader::at(&held.bytes, held.offset);
    let eof_offset = read_records(&mut r, &mut ctx, true, &mut records)?;
    let eof_offset = eof_offset.unwrap_or(r.offset());
    let trailer = read_trailer(&mut r, &mut ctx)?;
    Ok(OnePass {
        stream: ctx.finish(version, records, eof_offset, trailer),
        held,
    })
}

/// The target page sizes QEMU's targets use, the x86 one first.
const PAGE_SIZES: [u64; 6] = [4096, 1024, 2048, 8192, 16384, 65536];
/// Page records read to tell one page size from another.
const PROBE_RECORDS: usize = 64;

/// The page size with which the RAM records ahead read as records of the blocks their block
/// list announces (up to [`PROBE_RECORDS`] of them, or to the section's end), the first of
/// [`PAGE_SIZES`] that does. Only the description at the end of the stream says for sure,
/// and the reader checks it there; until then a 1 KiB-page Arm stream read with 4 KiB pages
/// would fail on its second page.
fn probe_page_size(r: &mut Reader, ram: &RamContext, ctx: &Context) -> Result<Option<u64>> {
    'sizes: for page_size in PAGE_SIZES {
        let context = RamContext { page_size, ..*ram };
        let mut probe = r.clone();
        let mut blocks: Vec<(String, u64)> = Vec::new();
        let mut block = ctx.last_block_length();
        for _ in 0..PROBE_RECORDS {
            let record = match read_ram_record(&mut probe, &context) {
                Ok(record) => record,
                // More input may tell; at the input's end, this size does not read.
                Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof { .. }) && r.is_window() => {
                    return Err(e)
                }
                Err(_) => continue 'sizes,
            };
            if let Some(name) = &record.block {
                block = blocks
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, len)| *len)
                    .or_else(|| ctx.ram_block_length(name));
            }
            match record.kind {
                RamRecordKind::Eos => return Ok(Some(page_size)),
                RamRecordKind::BlockList(list) => {
                    blocks.extend(list.blocks.into_iter().map(|b| (b.name, b.used_length)))
                }
                RamRecordKind::MultifdFlush => {}
                _ => match block {
                    Some(used_length) if record.page < used_length => {}
                    _ => continue 'sizes,
                },
            }
        }
        return Ok(Some(page_size));
    }
    Ok(None)
}

/// Why [`read_one_pass`] would refuse the stream that starts with `head` (its first few KiB,
/// which hold the configuration section): a mapped-ram stream, whose pages are read out of
/// order. `None` when it would read it, or when `head` does not tell (the read then says).
pub fn one_pass_refusal(head: &[u8]) -> Option<&'static str> {
    let mut r = Reader::new(head);
    read_header(&mut r).ok()?;
    let start = r.offset();
    (r.u8("section_type").ok()? == TYPE_CONFIGURATION).then_some(())?;
    let config = read_configuration(&mut r, start).ok()?;
    config
        .capabilities()
        .contains(&"mapped-ram")
        .then_some("a mapped-ram stream keeps its pages at fixed offsets of the file")
}

/// The part of the input between what was handed on and what was not yet read.
struct Window<'i, 'p> {
    input: &'i mut dyn Read,
    passed: &'p mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    buf: Vec<u8>,
    /// `buf[..start]` has been handed on.
    start: usize,
    /// `buf[..pos]` has been read.
    pos: usize,
    /// `buf[..end]` holds input.
    end: usize,
    /// Where `buf[0]` is in the stream.
    base: u64,
    /// The input has ended.
    done: bool,
}

impl Window<'_, '_> {
    /// The stream offset of the next byte to read.
    fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// Runs `parse` over the window and moves past what it read, reading more of the input
    /// and running it again as long as it runs past the window's end.
    fn read<T>(&mut self, parse: impl FnMut(&mut Reader) -> Result<T>) -> Result<T> {
        self.parse(parse, true)
    }

    /// [`Window::read`], staying where it is.
    fn peek<T>(&mut self, parse: impl FnMut(&mut Reader) -> Result<T>) -> Result<T> {
        self.parse(parse, false)
    }

    fn parse<T>(
        &mut self,
        mut parse: impl FnMut(&mut Reader) -> Result<T>,
        advance: bool,
    ) -> Result<T> {
        let mut attempts = 0u32;
        loop {
            let offset = self.offset();
            let window = self.buf.get(self.pos..self.end).unwrap_or_default();
            let mut r = if self.done {
                Reader::at(window, offset)
            } else {
                Reader::window(window, offset)
            };
            let failed = match parse(&mut r) {
                Ok(value) => {
                    if advance {
                        let read = usize::try_from(r.offset().saturating_sub(offset));
                        self.pos = self.pos.saturating_add(read.unwrap_or(0)).min(self.end);
                    }
                    return Ok(value);
                }
                Err(e) if matches!(e.kind(), ErrorKind::UnexpectedEof { .. }) && !self.done => e,
                Err(e) => return Err(e),
            };
            let available = window.len();
            if available >= MAX_RECORD {
                return Err(Error::new(
                    ErrorKind::Unsupported {
                        what: format!(
                            "a record of more than {MAX_RECORD} bytes read in one pass (read \
                             the stream from a file)"
                        ),
                    },
                    offset,
                    failed.path().to_owned(),
                ));
            }
            // Wait for no more than the field that ran out needs, so that what has arrived
            // is read and handed on; a record of many fields that keeps running out is
            // given twice the window at a time, so that it is not read again per field.
            let ErrorKind::UnexpectedEof { needed, .. } = *failed.kind() else {
                return Err(failed);
            };
            let field_end = failed
                .offset()
                .saturating_sub(offset)
                .saturating_add(needed);
            let field_end = usize::try_from(field_end).unwrap_or(usize::MAX);
            attempts = attempts.saturating_add(1);
            let ahead = if attempts <= EXACT_RETRIES {
                field_end.max(available.saturating_add(1))
            } else {
                field_end.max(available.saturating_mul(2))
            };
            self.fill(ahead.min(MAX_RECORD))?;
        }
    }

    /// Reads the input until the window holds `ahead` bytes or the input ends, handing on
    /// what has been read before waiting for more.
    fn fill(&mut self, ahead: usize) -> Result<()> {
        while self.end.saturating_sub(self.pos) < ahead && !self.done {
            self.read_more()?;
        }
        Ok(())
    }

    /// Hands on what has been read, then reads the input once: what it has, or its end.
    fn read_more(&mut self) -> Result<()> {
        self.pass()?;
        if self.buf.len().saturating_sub(self.end) < READ_CHUNK {
            self.compact();
        }
        if self.buf.len().saturating_sub(self.end) < READ_CHUNK {
            self.buf.resize(self.end.saturating_add(READ_CHUNK), 0);
        }
        let room = self.buf.get_mut(self.end..).unwrap_or_default();
        match self.input.read(room) {
            Ok(0) => self.done = true,
            Ok(n) => {
                self.end = self.end.saturating_add(n);
                super::budget::credit(n as u64);
            }
            Err(e) if e.kind() == IoErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::input(
                    e,
                    self.base.saturating_add(self.end as u64),
                    "input",
                ))
            }
        }
        Ok(())
    }

    /// Hands on what has been read and not yet handed on.
    fn pass(&mut self) -> Result<()> {
        if self.pos > self.start {
            let read = self.buf.get(self.start..self.pos).unwrap_or_default();
            (self.passed)(read).map_err(|e| {
                Error::output(e, self.base.saturating_add(self.start as u64), "output")
            })?;
            self.start = self.pos;
        }
        Ok(())
    }

    /// Moves what has not been read to the front of the buffer (what was read has been
    /// handed on).
    fn compact(&mut self) {
        let from = self.start.min(self.pos);
        if from == 0 {
            return;
        }
        self.buf.copy_within(from..self.end, 0);
        self.base = self.base.saturating_add(from as u64);
        self.start = self.start.saturating_sub(from);
        self.pos = self.pos.saturating_sub(from);
        self.end = self.end.saturating_sub(from);
    }

    /// Reads a START, PART or END section: RAM record by record, any other as a whole.
    fn section(&mut self, ctx: &mut Context, byte: u8, start: u64) -> Result<Record> {
        let kind = section_kind(byte);
        let header = self.read(|r| {
            r.u8("section_type")?;
            read_section_header(r, ctx, kind)
        })?;
        let path = header.path();
        if header.idstr != "ram" {
            let (body, footer) = self.read(|r| {
                let body = read_other_body(r, ctx, &header, start)?;
                let footer = read_footer(r, ctx, header.section_id).map_err(|e| e.within(&path))?;
                Ok((body, footer))
            })?;
            let end = self.offset();
            return Ok(Record::Section(header.section(start, end, body, footer)));
        }
        let ram = self
            .read(|r| ram_section_context(r, ctx, header.version_id))
            .map_err(|e| e.within(&path))?;
        if ram.mapped_ram {
            return Err(Error::new(
                ErrorKind::Unsupported {
                    what: "a mapped-ram stream read in one pass (its pages sit at fixed offsets \
                           of the file, after the block list): read it from a file"
                        .to_owned(),
                },
                start,
                path,
            ));
        }
        let ram = match ctx.unsettled_page_size() {
            Some(default) => {
                let probed = self
                    .peek(|r| probe_page_size(r, &ram, ctx))
                    .map_err(|e| e.within(&path))?;
                match probed.filter(|&size| size != default) {
                    Some(size) => {
                        ctx.settle_page_size(size);
                        RamContext {
                            page_size: size,
                            ..ram
                        }
                    }
                    None => ram,
                }
            }
            None => ram,
        };
        let mut payload = RamPayload::default();
        loop {
            let record = self
                .read(|r| read_ram_record(r, &ram))
                .map_err(|e| e.within(&path))?;
            if add_ram_record(ctx, &ram, &mut payload, record).map_err(|e| e.within(&path))? {
                break;
            }
        }
        let footer = self
            .read(|r| read_footer(r, ctx, header.section_id))
            .map_err(|e| e.within(&path))?;
        let end = self.offset();
        Ok(Record::Section(header.section(
            start,
            end,
            SectionBody::Ram(payload),
            footer,
        )))
    }

    /// Hands on everything read, then reads the rest of the stream and keeps it: up to the
    /// end of its description (QEMU sends nothing after it, and a migration's channel may
    /// stay open a while longer), or of the input when it has none.
    fn hold(&mut self, first_record: usize) -> Result<Held> {
        self.pass()?;
        self.compact();
        let offset = self.offset();
        loop {
            let held = self.buf.get(self.pos..self.end).unwrap_or_default();
            if self.done || ends_with_description(held) {
                break;
            }
            if held.len() > HELD_LIMIT {
                return Err(Error::new(
                    ErrorKind::Unsupported {
                        what: format!(
                            "more than {HELD_LIMIT} bytes after the first device section, read \
                             in one pass (read the stream from a file)"
                        ),
                    },
                    offset,
                    "records",
                ));
            }
            self.read_more()?;
        }
        let mut bytes = std::mem::take(&mut self.buf);
        bytes.truncate(self.end);
        bytes.drain(..self.pos);
        Ok(Held {
            offset,
            bytes,
            first_record,
        })
    }
}

/// Whether `held` ends where a complete description ends.
fn ends_with_description(held: &[u8]) -> bool {
    match locate_trailer(held, 0) {
        Ok(Some((offset, json))) => {
            usize::try_from(offset)
                .ok()
                .and_then(|at| at.checked_add(5))
                .and_then(|at| at.checked_add(json.len()))
                == Some(held.len())
        }
        _ => false,
    }
}

/// Reads what follows a stream read by [`read_one_pass`], which stops at the end of its
/// description without waiting for its input to end: nothing may follow (the mapped reader
/// refuses bytes after the description too). `end` is the stream's length, for the error.
pub fn expect_input_end(input: &mut dyn Read, end: u64) -> Result<()> {
    let mut byte = [0u8; 1];
    loop {
        return match input.read(&mut byte) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::new(
                ErrorKind::TrailingBytes { count: 1 },
                end,
                "vmdescription",
            )),
            Err(e) if e.kind() == IoErrorKind::Interrupted => continue,
            Err(e) => Err(Error::input(e, end, "input")),
        };
    }
}
