//! Writing a [`Stream`] back to bytes.
//!
//! The output is produced in order and handed to an [`std::io::Write`] in pieces of about
//! [`FLUSH_AT`] bytes, so writing a stream of any size takes a bounded amount of memory; page
//! contents go from the source to the output run by run.

use std::io::Write;

use super::container::{
    TYPE_COMMAND, TYPE_CONFIGURATION, TYPE_EOF, TYPE_FOOTER, TYPE_VMDESCRIPTION,
};
use super::ram::{
    FLAG_COMPRESS_PAGE, FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_MULTIFD_FLUSH, FLAG_PAGE,
    FLAG_XBZRLE, FLAG_ZERO, XBZRLE_ENCODING,
};
use super::vmstate::encode_struct;
use super::{
    BlockList, Command, RamItem, RamRun, Record, RunKind, Section, SectionBody, Span, Stream, MAGIC,
};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Writer};

/// How many bytes gather before they are handed to the output: few enough to stay far below
/// any memory budget, enough that writes stay few.
const FLUSH_AT: usize = 1 << 20;

/// Writes `stream` as a migration stream.
///
/// Everything comes from the model except RAM page contents, which the model only locates:
/// they are copied from `source`, the input the stream was read from. Writing an unchanged
/// model gives back that input byte for byte.
pub fn write(stream: &Stream, source: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(source.len());
    write_to(stream, source, &mut out, &mut |_| {})?;
    Ok(out)
}

/// [`write`] to `out`, in pieces, returning the number of bytes written.
///
/// `progress` receives offsets of `source` up to which page contents have been copied, never
/// decreasing, so that a caller whose `source` is a file mapping may release what lies
/// before. Nothing is flushed: `out` is left to its owner.
pub fn write_to(
    stream: &Stream,
    source: &[u8],
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut w = Sink::to(out);
    w.buf.u32(Endian::Big, MAGIC);
    w.buf.u32(Endian::Big, stream.version);
    let mut output = Output {
        source,
        page_size: stream.page_size.bytes,
        progress,
    };
    output.records(&mut w, &stream.records)?;
    w.buf.u8(TYPE_EOF);
    if let Some(trailer) = &stream.trailer {
        w.buf.u8(TYPE_VMDESCRIPTION);
        let len = u64::try_from(trailer.json.len()).unwrap_or(u64::MAX);
        w.buf.uint(4, Endian::Big, len, "vmdescription.length")?;
        w.buf.bytes(&trailer.json);
    }
    w.finish()
}

/// Where the writer puts bytes: a buffer, handed on to the output whenever it is full, or
/// kept whole for a PACKAGED command, whose length precedes it.
struct Sink<'o> {
    buf: Writer,
    out: Option<&'o mut dyn Write>,
    written: u64,
}

impl<'o> Sink<'o> {
    fn to(out: &'o mut dyn Write) -> Sink<'o> {
        Sink {
            buf: Writer::with_capacity(FLUSH_AT),
            out: Some(out),
            written: 0,
        }
    }

    fn nested() -> Sink<'static> {
        Sink {
            buf: Writer::new(),
            out: None,
            written: 0,
        }
    }

    /// Hands the buffer to the output once it is full; returns whether it did.
    fn spill(&mut self) -> Result<bool> {
        if self.out.is_none() || self.buf.as_bytes().len() < FLUSH_AT {
            return Ok(false);
        }
        self.drain()?;
        Ok(true)
    }

    fn drain(&mut self) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        let full = std::mem::replace(&mut self.buf, Writer::with_capacity(FLUSH_AT));
        out.write_all(full.as_bytes()).map_err(|e| {
            Error::new(
                ErrorKind::Output {
                    reason: e.to_string(),
                },
                self.written,
                "output",
            )
        })?;
        self.written = self.written.saturating_add(full.offset());
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.drain()?;
        Ok(self.written)
    }
}

struct Output<'a> {
    source: &'a [u8],
    page_size: u64,
    progress: &'a mut dyn FnMut(u64),
}

impl Output<'_> {
    fn records(&mut self, w: &mut Sink, records: &[Record]) -> Result<()> {
        for record in records {
            match record {
                Record::Configuration(config) => {
                    w.buf.u8(TYPE_CONFIGURATION);
                    encode_struct(&mut w.buf, &config.state)
                        .map_err(|e| e.within("configuration"))?;
                }
                Record::Command(command) => self.command(w, command)?,
                Record::Section(section) => self.section(w, section)?,
            }
            w.spill()?;
        }
        Ok(())
    }

    fn command(&mut self, w: &mut Sink, command: &Command) -> Result<()> {
        w.buf.u8(TYPE_COMMAND);
        w.buf.u16(Endian::Big, command.number);
        match &command.packaged {
            Some(packaged) => {
                let mut nested = Sink::nested();
                self.records(&mut nested, &packaged.records)?;
                if packaged.eof_offset.is_some() {
                    nested.buf.u8(TYPE_EOF);
                }
                let nested = nested.buf.into_bytes();
                w.buf.u16(Endian::Big, 4);
                w.buf.uint(
                    4,
                    Endian::Big,
                    nested.len() as u64,
                    "command.packaged.length",
                )?;
                w.buf.bytes(&nested);
            }
            None => {
                let len = command.payload.len() as u64;
                w.buf.uint(2, Endian::Big, len, "command.length")?;
                w.buf.bytes(&command.payload);
            }
        }
        Ok(())
    }

    fn section(&mut self, w: &mut Sink, section: &Section) -> Result<()> {
        let path = format!("section[{}]", section.idstr);
        w.buf.u8(section.kind.byte());
        w.buf.u32(Endian::Big, section.section_id);
        if section.kind.has_full_header() {
            w.buf
                .counted_bytes(section.idstr.as_bytes(), "section.idstr")
                .map_err(|e| e.within(&path))?;
            w.buf.u32(Endian::Big, section.instance_id);
            w.buf.u32(Endian::Big, section.version_id);
        }
        match &section.body {
            SectionBody::Ram(ram) => {
                for item in &ram.items {
                    self.ram_item(w, item).map_err(|e| e.within(&path))?;
                }
            }
            SectionBody::Device(state) => {
                encode_struct(&mut w.buf, state).map_err(|e| e.within(&path))?
            }
            SectionBody::Opaque { bytes, .. } => w.buf.bytes(bytes),
            SectionBody::Iterative(payload) => self
                .copy_span(w, payload.span)
                .map_err(|e| e.within(&path))?,
        }
        if section.footer_offset.is_some() {
            w.buf.u8(TYPE_FOOTER);
            w.buf.u32(Endian::Big, section.section_id);
        }
        Ok(())
    }

    fn ram_item(&mut self, w: &mut Sink, item: &RamItem) -> Result<()> {
        match item {
            // With mapped-ram the list holds each block's bitmap and pages, in the source.
            RamItem::BlockList(list) if list.blocks.iter().any(|b| b.mapped.is_some()) => {
                self.copy_span(w, list.span)
            }
            RamItem::BlockList(list) => block_list(&mut w.buf, list),
            RamItem::Pages(run) => self.run(w, run),
            RamItem::MultifdFlush { .. } => {
                w.buf.u64(Endian::Big, FLAG_MULTIFD_FLUSH);
                Ok(())
            }
            RamItem::Eos { .. } => {
                w.buf.u64(Endian::Big, FLAG_EOS);
                Ok(())
            }
        }
    }

    /// Writes a run's records; page and XBZRLE bytes come from the source at the places the
    /// run's span gives them, and so, for a mixed run, does which record is a ZERO record.
    fn run(&mut self, w: &mut Sink, run: &RamRun) -> Result<()> {
        let mut source_offset = run.span.offset;
        let mut page = run.first_page;
        let mut zero_pages = 0u64;
        for index in 0..run.count {
            let continues = index > 0 || run.first_continues;
            let kind = match run.kind {
                RunKind::Mixed { fill, .. } => self.mixed_record_kind(source_offset, fill)?,
                kind => kind,
            };
            let type_flag = match kind {
                RunKind::Zero { .. } => {
                    zero_pages = zero_pages.saturating_add(1);
                    FLAG_ZERO
                }
                RunKind::Page | RunKind::Mixed { .. } => FLAG_PAGE,
                RunKind::Xbzrle { .. } => FLAG_XBZRLE,
                RunKind::Compressed { .. } => FLAG_COMPRESS_PAGE,
            };
            w.buf.u64(
                Endian::Big,
                page | type_flag | if continues { FLAG_CONTINUE } else { 0 },
            );
            if !continues {
                w.buf.counted_bytes(run.block.as_bytes(), "ram.block")?;
            }
            let payload_offset =
                source_offset.saturating_add(self.source_header_len(source_offset)?);
            let payload_len = match kind {
                RunKind::Zero { fill } => {
                    w.buf.u8(fill);
                    1
                }
                RunKind::Page | RunKind::Mixed { .. } => {
                    w.buf
                        .bytes(self.source_bytes(payload_offset, self.page_size)?);
                    self.page_size
                }
                RunKind::Compressed { compressed_len } => {
                    w.buf.u32(Endian::Big, compressed_len);
                    let data_offset = payload_offset.saturating_add(4);
                    w.buf
                        .bytes(self.source_bytes(data_offset, u64::from(compressed_len))?);
                    u64::from(compressed_len).saturating_add(4)
                }
                RunKind::Xbzrle { encoded_len } => {
                    w.buf.u8(XBZRLE_ENCODING);
                    w.buf.u16(Endian::Big, encoded_len);
                    let data_offset = payload_offset.saturating_add(3);
                    w.buf
                        .bytes(self.source_bytes(data_offset, u64::from(encoded_len))?);
                    u64::from(encoded_len).saturating_add(3)
                }
            };
            source_offset = payload_offset.saturating_add(payload_len);
            page = page.saturating_add(self.page_size);
            if w.spill()? {
                (self.progress)(source_offset);
            }
        }
        let zero_expected = run.page_counts().1;
        if source_offset != run.span.end() || zero_pages != zero_expected {
            return Err(Error::new(
                ErrorKind::InvalidValue {
                    value: run.span.len,
                    expected: "a run span that covers exactly its records",
                },
                run.span.offset,
                "ram.run",
            ));
        }
        Ok(())
    }

    /// Copies bytes of the source in pieces, handing each full buffer to the output.
    fn copy_span(&mut self, w: &mut Sink, span: Span) -> Result<()> {
        const PIECE: u64 = 1 << 20;
        let mut at = span.offset;
        while at < span.end() {
            let len = (span.end().saturating_sub(at)).min(PIECE);
            w.buf.bytes(self.source_bytes(at, len)?);
            at = at.saturating_add(len);
            if w.spill()? {
                (self.progress)(at);
            }
        }
        Ok(())
    }

    /// The word (page offset and flags) of the source record at `offset`; 0 past the source,
    /// which no record kind matches.
    fn source_word(&self, offset: u64) -> u64 {
        self.source_bytes(offset, 8)
            .ok()
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0)
    }

    /// Bytes of the header of the source record at `offset`: its word, and the block name
    /// when the record does not continue the previous block. Taken from the source rather
    /// than from what is written, so that a run may be written with another framing than it
    /// was read with (a block name where the source continued, after pages were dropped).
    fn source_header_len(&self, offset: u64) -> Result<u64> {
        if self.source_word(offset) & FLAG_CONTINUE != 0 {
            return Ok(8);
        }
        let name_len = self
            .source_bytes(offset.saturating_add(8), 1)?
            .first()
            .copied()
            .unwrap_or(0);
        Ok(9u64.saturating_add(u64::from(name_len)))
    }

    /// Whether the record of a mixed run at `offset` of the source is a ZERO or a PAGE record.
    fn mixed_record_kind(&self, offset: u64, fill: u8) -> Result<RunKind> {
        let word = self.source_word(offset);
        match word & self.page_size.saturating_sub(1) & !FLAG_CONTINUE {
            FLAG_ZERO => Ok(RunKind::Zero { fill }),
            FLAG_PAGE => Ok(RunKind::Page),
            _ => Err(Error::new(
                ErrorKind::InvalidValue {
                    value: word,
                    expected: "a PAGE or ZERO record of a mixed run in the source",
                },
                offset,
                "ram.run (source)",
            )),
        }
    }

    fn source_bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let span = Span { offset, len };
        usize::try_from(span.offset)
            .ok()
            .zip(usize::try_from(span.end()).ok())
            .and_then(|(start, end)| self.source.get(start..end))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnexpectedEof {
                        needed: len,
                        available: (self.source.len() as u64).saturating_sub(offset),
                    },
                    offset,
                    "ram.page (source)",
                )
            })
    }
}

fn block_list(w: &mut Writer, list: &BlockList) -> Result<()> {
    w.u64(Endian::Big, list.total_bytes | FLAG_MEM_SIZE);
    for block in &list.blocks {
        w.counted_bytes(block.name.as_bytes(), "ram.block_list.name")?;
        w.u64(Endian::Big, block.used_length);
        if let Some(page_size) = block.page_size {
            w.u64(Endian::Big, page_size);
        }
        if let Some(mr_addr) = block.mr_addr {
            w.u64(Endian::Big, mr_addr);
        }
    }
    Ok(())
}
