//! Writing a [`Stream`] back to bytes.
//!
//! The output is produced in order and handed to an [`std::io::Write`] in pieces of about
//! [`FLUSH_AT`] bytes, so writing a stream of any size takes a bounded amount of memory; page
//! contents go from the source to the output run by run. What is copied from the source
//! unchanged is handed on as a span of the source ([`SpanWrite`]), for an output that can copy
//! it without the bytes being read (a file from the input file, in the kernel).

use std::io::{Seek, Write};

use super::config::{listed_capabilities, with_capability};
use super::container::{
    TYPE_COMMAND, TYPE_CONFIGURATION, TYPE_EOF, TYPE_FOOTER, TYPE_VMDESCRIPTION,
};
use super::description::set_configuration_capabilities;
use super::ram::{
    FLAG_COMPRESS_PAGE, FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_MULTIFD_FLUSH, FLAG_PAGE,
    FLAG_XBZRLE, FLAG_ZERO, XBZRLE_ENCODING,
};
use super::vmstate::encode_struct;
use super::{
    BlockList, Command, MappedRam, RamBlock, RamItem, RamRun, Record, RunKind, Section,
    SectionBody, SectionKind, Span, Stream, MAGIC,
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
/// model gives back that input byte for byte. A run of PAGE or of ZERO records is checked
/// against `source` by its first record and the length of its span only (the reader makes
/// every later record continue at the next page): `source` must be that input, not another.
pub fn write(stream: &Stream, source: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(source.len());
    write_to(stream, source, &mut out, &mut |_| {})?;
    Ok(out)
}

/// [`write()`] to `out`, in pieces, returning the number of bytes written.
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
    write_with(stream, source, out, &WriteOptions::default(), progress)
}

/// How a written stream carries its RAM pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RamLayout {
    /// As the stream was read.
    #[default]
    AsRead,
    /// In page records: a mapped-ram stream's pages become PAGE records after its block
    /// list, and the configuration section no longer lists the `mapped-ram` capability.
    Records,
    /// QEMU's mapped-ram: each block's bitmap and pages at fixed offsets after its block
    /// list entry, no page records, and the capability listed. Page records are placed
    /// there by [`crate::extract::write_mapped_ram`], in a file, as QEMU writes it.
    MappedRam,
}

impl RamLayout {
    /// Whether `stream` written in this layout is a mapped-ram stream.
    pub fn writes_mapped_ram(self, stream: &Stream) -> bool {
        match self {
            RamLayout::AsRead => stream.has_mapped_ram(),
            RamLayout::Records => false,
            RamLayout::MappedRam => true,
        }
    }
}

/// What [`write_with`] is asked to do besides writing the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The RAM layout of the output.
    pub ram_layout: RamLayout,
    /// Where the output starts in its file (after a libvirt image's header and XML):
    /// mapped-ram headers give file offsets.
    pub file_offset: u64,
}

/// What the writer wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Bytes written.
    pub len: u64,
    /// Mapped-ram blocks whose bitmap and pages are still holes: the model carried their
    /// pages as page records.
    pub unplaced: Vec<PlacedBlock>,
}

/// Where a mapped-ram block's bitmap and pages went in the output, in offsets of the
/// output stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlacedBlock {
    /// The block's name.
    pub name: String,
    /// Its used length.
    pub used_length: u64,
    /// Its bitmap.
    pub bitmap: Span,
    /// Where its page 0 is.
    pub pages_offset: u64,
}

fn output_error(e: std::io::Error, offset: u64) -> Error {
    Error::output(e, offset, "output")
}

/// QEMU aligns each mapped-ram block's pages to 1 MiB of the file
/// (`MAPPED_RAM_FILE_OFFSET_ALIGNMENT`).
const MAPPED_RAM_ALIGNMENT: u64 = 1 << 20;
/// A mapped-ram block header: version (be32), page size, bitmap and pages offsets (be64).
const MAPPED_RAM_HEADER_LEN: u64 = 28;

/// An output that is told which of its bytes are bytes of the source unchanged, so that it
/// may copy them from where the source lies rather than from memory: from the input file to
/// the output file in the kernel, without the pages of the source being touched.
pub trait SpanWrite: Write {
    /// Writes `bytes`, which are bytes `span` of the source (stream offsets), unchanged. The
    /// default writes `bytes`; an output that copies `span` itself need never read them.
    fn write_source_span(&mut self, span: Span, bytes: &[u8]) -> std::io::Result<()> {
        let _ = span;
        self.write_all(bytes)
    }
}

/// A plain [`Write`] as a [`SpanWrite`]: spans of the source are written as bytes.
struct Plain<'o>(&'o mut dyn Write);

impl Write for Plain<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl SpanWrite for Plain<'_> {}

/// [`write_to`] with `options`: another RAM layout than the model's, or a stream placed
/// further into its file. Returns the number of bytes written.
///
/// Page records are made mapped-ram only by [`crate::extract::write_mapped_ram`], which
/// places the pages in a file after the rest is written; here that is an error.
pub fn write_with(
    stream: &Stream,
    source: &[u8],
    out: &mut dyn Write,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    write_spans(stream, source, &mut Plain(out), options, progress)
}

/// [`write_with`] to an output that is handed what it copies from the source unchanged as
/// spans of the source, at least [`FLUSH_AT`] bytes each ([`SpanWrite::write_source_span`]):
/// an unchanged stream is, apart from its small records, spans of the source.
pub fn write_spans(
    stream: &Stream,
    source: &[u8],
    out: &mut dyn SpanWrite,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    if options.ram_layout == RamLayout::MappedRam && !stream.has_mapped_ram() {
        return Err(Error::new(
            ErrorKind::Unsupported {
                what: "page records written as mapped-ram to an output that cannot seek (their \
                       pages are placed after the rest: extract::write_mapped_ram)"
                    .to_owned(),
            },
            0,
            "ram",
        ));
    }
    write_any(stream, Whole(source), Out::Stream(out), options, progress).map(|w| w.len)
}

/// Writes what follows the bytes a one-pass read handed on ([`super::read_one_pass`]): the
/// model's records from the first held one, EOF and the description, with page contents from
/// the held bytes. Written after the bytes handed on, unchanged, it gives the stream [`write()`]
/// gives. Returns the number of bytes written.
pub fn write_held(stream: &Stream, held: &super::Held, out: &mut dyn Write) -> Result<u64> {
    let source = Held(held);
    let options = WriteOptions::default();
    write_any(
        stream,
        source,
        Out::Stream(&mut Plain(out)),
        &options,
        &mut |_| {},
    )
    .map(|w| w.len)
}

/// Where page contents come from: the whole input, or its held end.
#[derive(Clone, Copy)]
enum Source<'a> {
    Whole(&'a [u8]),
    Held(&'a super::Held),
}
use Source::{Held, Whole};

impl<'a> Source<'a> {
    /// The `len` bytes at stream offset `offset`.
    fn bytes(self, offset: u64, len: u64) -> Result<&'a [u8]> {
        let (bytes, base) = match self {
            Whole(bytes) => (bytes, 0),
            Held(held) => (held.bytes.as_slice(), held.offset),
        };
        offset
            .checked_sub(base)
            .and_then(|at| crate::wire::slice(bytes, at, len))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnexpectedEof {
                        needed: len,
                        available: base
                            .saturating_add(bytes.len() as u64)
                            .saturating_sub(offset),
                    },
                    offset,
                    "ram.page (source)",
                )
            })
    }
}

/// An output the writer can leave holes in, by seeking past them.
pub(crate) trait SeekWrite: Write + Seek {}

impl<T: Write + Seek> SeekWrite for T {}

/// [`write_with`] to a file: holes are sought over (a file keeps them sparse), and blocks
/// that become mapped-ram are returned to be filled.
pub(crate) fn write_seekable(
    stream: &Stream,
    source: &[u8],
    out: &mut dyn SeekWrite,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    write_any(stream, Whole(source), Out::File(out), options, progress)
}

fn write_any(
    stream: &Stream,
    source: Source,
    out: Out,
    options: &WriteOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<Written> {
    let from_mapped = stream.has_mapped_ram();
    let to_mapped = options.ram_layout.writes_mapped_ram(stream);
    let mut w = Sink::to(out);
    let records = match source {
        Whole(_) => {
            w.buf.u32(Endian::Big, MAGIC);
            w.buf.u32(Endian::Big, stream.version);
            &stream.records[..]
        }
        Held(held) => stream.records.get(held.first_record..).unwrap_or_default(),
    };
    let mut output = Output {
        source,
        page_size: stream.page_size.bytes,
        progress,
        configuration: (to_mapped != from_mapped)
            .then(|| stream.configuration())
            .flatten()
            .map(|config| with_capability(&config.state, "mapped-ram", to_mapped)),
        to_mapped,
        file_offset: options.file_offset,
        unplaced: Vec::new(),
    };
    output.records(&mut w, records)?;
    w.buf.u8(TYPE_EOF);
    if let Some(trailer) = &stream.trailer {
        // The description lists the configuration's subsections: it follows the edit.
        let edited = output
            .configuration
            .as_ref()
            .map(|state| {
                set_configuration_capabilities(&trailer.json, &listed_capabilities(state))
                    .map_err(|e| e.within("vmdescription"))
            })
            .transpose()?;
        let json = edited.as_deref().unwrap_or(&trailer.json);
        w.buf.u8(TYPE_VMDESCRIPTION);
        let len = u64::try_from(json.len()).unwrap_or(u64::MAX);
        w.buf.uint(4, Endian::Big, len, "vmdescription.length")?;
        w.buf.bytes(json);
    }
    let unplaced = std::mem::take(&mut output.unplaced);
    Ok(Written {
        len: w.finish()?,
        unplaced,
    })
}

/// Where a sink's full buffers go.
enum Out<'o> {
    Stream(&'o mut dyn SpanWrite),
    File(&'o mut dyn SeekWrite),
}

impl Out<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stream(out) => out.write_all(bytes),
            Out::File(out) => out.write_all(bytes),
        }
    }

    fn write_source_span(&mut self, span: Span, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stream(out) => out.write_source_span(span, bytes),
            Out::File(out) => out.write_all(bytes),
        }
    }
}

/// Where the writer puts bytes: a buffer, handed on to the output whenever it is full, or
/// kept whole for a PACKAGED command, whose length precedes it.
struct Sink<'o> {
    buf: Writer,
    out: Option<Out<'o>>,
    written: u64,
}

impl<'o> Sink<'o> {
    fn to(out: Out<'o>) -> Sink<'o> {
        Sink {
            // Room for a full buffer and the largest piece added before it is spilled (a
            // copied span of up to 1 MiB, or a page).
            buf: Writer::with_capacity(FLUSH_AT.saturating_mul(2)),
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
        // One buffer for the whole output: it grows once past FLUSH_AT (by the last piece
        // added before a spill) and is reused, never reallocated per flush.
        out.write_all(self.buf.as_bytes())
            .map_err(|e| output_error(e, self.written))?;
        self.written = self.written.saturating_add(self.buf.offset());
        self.buf.clear();
        Ok(())
    }

    /// Adds `bytes`, bytes `span` of the source, to the output: a piece as large as a whole
    /// buffer is handed to the output as it is, as a span of the source, after what the
    /// buffer holds, rather than copied into it.
    fn copy(&mut self, span: Span, bytes: &[u8]) -> Result<()> {
        if bytes.len() < FLUSH_AT || self.out.is_none() {
            self.buf.bytes(bytes);
            return Ok(());
        }
        self.drain()?;
        if let Some(out) = self.out.as_mut() {
            out.write_source_span(span, bytes)
                .map_err(|e| output_error(e, self.written))?;
        }
        self.written = self.written.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// Offset in the output of the next byte written, for a sink that has an output.
    fn position(&self) -> Result<u64> {
        match self.out {
            Some(_) => Ok(self.written.saturating_add(self.buf.offset())),
            None => Err(Error::new(
                ErrorKind::Unsupported {
                    what: "mapped-ram blocks inside a PACKAGED command".to_owned(),
                },
                self.buf.offset(),
                "ram.block_list",
            )),
        }
    }

    /// Writes `len` zero bytes: a hole in a file, zeros in pieces in a stream. Something is
    /// always written after a hole (a mapped-ram block's pages are followed by the rest of
    /// the stream), so a file gets its length.
    fn zeros(&mut self, len: u64) -> Result<()> {
        if let Some(Out::File(_)) = &self.out {
            self.drain()?;
            let at = self.written;
            if let Some(Out::File(file)) = self.out.as_mut() {
                let by = i64::try_from(len)
                    .map_err(|_| output_error(std::io::ErrorKind::InvalidInput.into(), at))?;
                file.seek(std::io::SeekFrom::Current(by))
                    .map_err(|e| output_error(e, at))?;
            }
            self.written = at.saturating_add(len);
            return Ok(());
        }
        let mut left = len;
        while left > 0 {
            let piece = left.min(FLUSH_AT as u64);
            self.buf.zeros(usize::try_from(piece).unwrap_or(0));
            left = left.saturating_sub(piece);
            self.spill()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<u64> {
        self.drain()?;
        Ok(self.written)
    }
}

/// Where a page record's data lies in its payload (after the record's word and block name).
struct RecordShape {
    /// Bytes of the payload's own header before the data: the fill byte of a ZERO record,
    /// the length of an XBZRLE or compressed one.
    data_skip: u64,
    /// Bytes of data: the page, the encoded or compressed page, none for a ZERO record.
    data_len: u64,
    /// Bytes of the whole payload.
    payload_len: u64,
}

impl RecordShape {
    fn new(data_skip: u64, data_len: u64, payload_len: u64) -> RecordShape {
        RecordShape {
            data_skip,
            data_len,
            payload_len,
        }
    }

    /// Where the data is of the record at `offset` whose word and block name take
    /// `header_len` bytes.
    fn data_offset(&self, offset: u64, header_len: u64) -> u64 {
        offset
            .saturating_add(header_len)
            .saturating_add(self.data_skip)
    }
}

struct Output<'a> {
    source: Source<'a>,
    page_size: u64,
    progress: &'a mut dyn FnMut(u64),
    /// The configuration section's state when the `mapped-ram` capability joins or leaves
    /// its list.
    configuration: Option<super::StructValue>,
    /// Whether the output is a mapped-ram stream.
    to_mapped: bool,
    file_offset: u64,
    unplaced: Vec<PlacedBlock>,
}

impl<'a> Output<'a> {
    fn records(&mut self, w: &mut Sink, records: &[Record]) -> Result<()> {
        for record in records {
            match record {
                Record::Configuration(config) => {
                    w.buf.u8(TYPE_CONFIGURATION);
                    let state = self.configuration.as_ref().unwrap_or(&config.state);
                    encode_struct(&mut w.buf, state).map_err(|e| e.within("configuration"))?;
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
        section_header(
            &mut w.buf,
            section.kind,
            section.section_id,
            &section.idstr,
            section.instance_id,
            section.version_id,
        )
        .map_err(|e| e.within(&path))?;
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
        let from_mapped = |list: &BlockList| list.blocks.iter().any(|b| b.mapped.is_some());
        match item {
            // With mapped-ram the list holds each block's bitmap and pages, in the source.
            RamItem::BlockList(list)
                if self.to_mapped && from_mapped(list) && list.file_offset == self.file_offset =>
            {
                self.copy_span(w, list.span)
            }
            RamItem::BlockList(list) if self.to_mapped => self.mapped_block_list(w, list),
            RamItem::BlockList(list) if from_mapped(list) => self.mapped_pages_as_records(w, list),
            RamItem::BlockList(list) => block_list(&mut w.buf, list),
            // The pages of a stream made mapped-ram are placed after writing.
            RamItem::Pages(_) if self.to_mapped => Ok(()),
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
    ///
    /// A run whose records, written from the model, come out as the source has them (every
    /// run of an unchanged stream) is copied from the source as one span: its headers are
    /// compared, not its pages, and the pages go to the output in large pieces.
    fn run(&mut self, w: &mut Sink, run: &RamRun) -> Result<()> {
        let as_source = match self.uniform_run_as_source(run)? {
            Some(as_source) => as_source,
            None => self.run_records(None, run)?,
        };
        if as_source {
            return self.copy_span(w, run.span);
        }
        self.run_records(Some(w), run).map(|_| ())
    }

    /// Whether a run of PAGE or of ZERO records comes out as the source has it, told without
    /// reading past its first record: every record after a run's first continues its block
    /// at the next page (the reader and the filter make runs so), so when the first record's
    /// header is the source's and the span holds exactly the records that follow it, so is
    /// every other header. `None` for the other kinds, and for a span that does not hold its
    /// records, which the walk reports.
    fn uniform_run_as_source(&self, run: &RamRun) -> Result<Option<bool>> {
        let Some(later_len) = super::ram::continuing_record_len(run.kind, self.page_size) else {
            return Ok(None);
        };
        let mut header = Writer::with_capacity(300);
        let shape = self.record_header(&mut header, run, 0, run.kind)?;
        let first_len = self
            .source_header_len(run.span.offset)?
            .saturating_add(shape.payload_len);
        let span_len = run
            .count
            .checked_sub(1)
            .and_then(|later| later.checked_mul(later_len))
            .and_then(|later| later.checked_add(first_len));
        if span_len != Some(run.span.len) {
            return Ok(None);
        }
        Ok(Some(self.header_as_source(
            &header,
            &shape,
            run.span.offset,
        )?))
    }

    /// Writes the header of record `index` of `run`, of kind `kind`, to `header` as the model
    /// has it: its word, its block name unless it continues, and its payload's own header.
    fn record_header(
        &self,
        header: &mut Writer,
        run: &RamRun,
        index: u64,
        kind: RunKind,
    ) -> Result<RecordShape> {
        let continues = index > 0 || run.first_continues;
        let page = index
            .checked_mul(self.page_size)
            .and_then(|at| at.checked_add(run.first_page))
            .unwrap_or(u64::MAX);
        let type_flag = match kind {
            RunKind::Zero { .. } => FLAG_ZERO,
            RunKind::Page | RunKind::Mixed { .. } => FLAG_PAGE,
            RunKind::Xbzrle { .. } => FLAG_XBZRLE,
            RunKind::Compressed { .. } => FLAG_COMPRESS_PAGE,
        };
        header.clear();
        header.u64(
            Endian::Big,
            page | type_flag | if continues { FLAG_CONTINUE } else { 0 },
        );
        if !continues {
            header.counted_bytes(run.block.as_bytes(), "ram.block")?;
        }
        Ok(match kind {
            RunKind::Zero { fill } => {
                header.u8(fill);
                RecordShape::new(1, 0, 1)
            }
            RunKind::Page | RunKind::Mixed { .. } => {
                RecordShape::new(0, self.page_size, self.page_size)
            }
            RunKind::Compressed { compressed_len } => {
                header.u32(Endian::Big, compressed_len);
                let len = u64::from(compressed_len);
                RecordShape::new(4, len, len.saturating_add(4))
            }
            RunKind::Xbzrle { encoded_len } => {
                header.u8(XBZRLE_ENCODING);
                header.u16(Endian::Big, encoded_len);
                let len = u64::from(encoded_len);
                RecordShape::new(3, len, len.saturating_add(3))
            }
        })
    }

    /// Whether `header`, made for the source record at `source_offset` of shape `shape`,
    /// stands where the source's does, as the source has it, right before the same data.
    fn header_as_source(
        &self,
        header: &Writer,
        shape: &RecordShape,
        source_offset: u64,
    ) -> Result<bool> {
        let data_offset = shape.data_offset(source_offset, self.source_header_len(source_offset)?);
        let written_len = header.offset();
        let at = data_offset.saturating_sub(written_len);
        Ok(at == source_offset
            && self.source_bytes(at, written_len).ok() == Some(header.as_bytes()))
    }

    /// Walks a run's records, writing them to `w` when given; returns whether every record's
    /// header (word, block name, fill byte or payload length) is as the source has it.
    fn run_records(&mut self, mut w: Option<&mut Sink>, run: &RamRun) -> Result<bool> {
        let mut source_offset = run.span.offset;
        let mut zero_pages = 0u64;
        let mut as_source = true;
        let mut header = Writer::with_capacity(300);
        for index in 0..run.count {
            let kind = match run.kind {
                RunKind::Mixed { fill, .. } => self.mixed_record_kind(source_offset, fill)?,
                kind => kind,
            };
            if let RunKind::Zero { .. } = kind {
                zero_pages = zero_pages.saturating_add(1);
            }
            let shape = self.record_header(&mut header, run, index, kind)?;
            let header_len = self.source_header_len(source_offset)?;
            let data_offset = shape.data_offset(source_offset, header_len);
            let data = self.source_bytes(data_offset, shape.data_len)?;
            match w.as_deref_mut() {
                Some(w) => {
                    w.buf.bytes(header.as_bytes());
                    w.buf.bytes(data);
                }
                None => {
                    as_source =
                        as_source && self.header_as_source(&header, &shape, source_offset)?;
                }
            }
            source_offset = source_offset
                .saturating_add(header_len)
                .saturating_add(shape.payload_len);
            if let Some(w) = w.as_deref_mut() {
                if w.spill()? {
                    (self.progress)(source_offset);
                }
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
        Ok(as_source)
    }

    /// Writes a block list in QEMU's mapped-ram layout at the place it lands in the output:
    /// each entry's header, its bitmap right after, its pages at the next 1 MiB of the
    /// file. Bitmaps and pages come from the source's mapped blocks; blocks that had page
    /// records get zeros and are listed in `unplaced`.
    fn mapped_block_list(&mut self, w: &mut Sink, list: &BlockList) -> Result<()> {
        let overflow = |offset| {
            Error::new(
                ErrorKind::InvalidValue {
                    value: offset,
                    expected: "a mapped-ram layout inside 64-bit file offsets",
                },
                offset,
                "ram.block_list.mapped_ram",
            )
        };
        w.buf.u64(Endian::Big, list.total_bytes | FLAG_MEM_SIZE);
        for block in &list.blocks {
            block_entry(&mut w.buf, block)?;
            let header_at = w.position()?;
            w.buf.u32(Endian::Big, 1);
            w.buf.u64(Endian::Big, self.page_size);
            // A block QEMU did not write (x-ignore-shared) stays marked so.
            if block
                .mapped
                .as_ref()
                .is_some_and(|m| m.bitmap.len == 0 && m.pages_offset == 0)
            {
                w.buf.u64(Endian::Big, 0);
                w.buf.u64(Endian::Big, 0);
                continue;
            }
            let pages = block.used_length.div_ceil(self.page_size.max(1));
            let bitmap = Span {
                offset: header_at.saturating_add(MAPPED_RAM_HEADER_LEN),
                len: pages.div_ceil(64).saturating_mul(8),
            };
            let in_file = |offset: u64| offset.checked_add(self.file_offset);
            let pages_in_file = in_file(bitmap.end())
                .and_then(|end| end.checked_next_multiple_of(MAPPED_RAM_ALIGNMENT))
                .filter(|p| p.checked_add(block.used_length).is_some())
                .ok_or_else(|| overflow(bitmap.end()))?;
            let pages_offset = pages_in_file.saturating_sub(self.file_offset);
            w.buf.u64(
                Endian::Big,
                in_file(bitmap.offset).ok_or_else(|| overflow(bitmap.offset))?,
            );
            w.buf.u64(Endian::Big, pages_in_file);
            let gap = pages_offset.saturating_sub(bitmap.end());
            match &block.mapped {
                Some(source) => {
                    self.copy_span(w, source.bitmap)?;
                    w.zeros(gap)?;
                    self.copy_marked_pages(w, block.used_length, source)?;
                }
                None => {
                    w.zeros(bitmap.len.saturating_add(gap))?;
                    w.zeros(block.used_length)?;
                    self.unplaced.push(PlacedBlock {
                        name: block.name.clone(),
                        used_length: block.used_length,
                        bitmap,
                        pages_offset,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes a mapped block's pages region: the pages its bitmap marks, copied from the
    /// source in runs, and holes for the others, which read as zeros whatever the source
    /// held there.
    fn copy_marked_pages(
        &mut self,
        w: &mut Sink,
        used_length: u64,
        source: &MappedRam,
    ) -> Result<()> {
        let page_size = self.page_size.max(1);
        let bitmap = self.source.bytes(source.bitmap.offset, source.bitmap.len)?;
        let marked = |n: u64| {
            bitmap
                .get(usize::try_from(n / 8).unwrap_or(usize::MAX))
                .is_some_and(|byte| byte & (1 << (n % 8)) != 0)
        };
        let pages = used_length.div_ceil(page_size);
        let mut n = 0;
        while n < pages {
            let set = marked(n);
            let mut end = n.saturating_add(1);
            while end < pages && marked(end) == set {
                end = end.saturating_add(1);
            }
            let at = n.saturating_mul(page_size);
            let len = end
                .saturating_mul(page_size)
                .min(used_length)
                .saturating_sub(at);
            if set {
                self.copy_span(
                    w,
                    Span {
                        offset: source.pages_offset.saturating_add(at),
                        len,
                    },
                )?;
            } else {
                w.zeros(len)?;
            }
            n = end;
        }
        Ok(())
    }

    /// Writes a mapped-ram block list as an ordinary one followed by a PAGE record for
    /// every page its bitmaps mark, block by block.
    fn mapped_pages_as_records(&mut self, w: &mut Sink, list: &BlockList) -> Result<()> {
        block_list(&mut w.buf, list)?;
        for block in &list.blocks {
            let Some(mapped) = &block.mapped else {
                continue;
            };
            let bitmap = self.source.bytes(mapped.bitmap.offset, mapped.bitmap.len)?;
            let pages = block.used_length.div_ceil(self.page_size.max(1));
            let mut named = false;
            for n in 0..pages {
                let marked = bitmap
                    .get(usize::try_from(n / 8).unwrap_or(usize::MAX))
                    .is_some_and(|byte| byte & (1 << (n % 8)) != 0);
                if !marked {
                    continue;
                }
                let at = n.saturating_mul(self.page_size);
                let continues = if named { FLAG_CONTINUE } else { 0 };
                w.buf.u64(Endian::Big, at | FLAG_PAGE | continues);
                if !named {
                    w.buf.counted_bytes(block.name.as_bytes(), "ram.block")?;
                    named = true;
                }
                let data = mapped.pages_offset.saturating_add(at);
                w.buf.bytes(self.source_bytes(data, self.page_size)?);
                if w.spill()? {
                    (self.progress)(data);
                }
            }
        }
        Ok(())
    }

    /// Copies bytes of the source in pieces, handing each full buffer to the output; pieces
    /// of a whole buffer's size go to the output straight from the source. A span of at
    /// least a piece is cut into pieces of one to two, so that none of it is copied into the
    /// buffer (or read, by an output that copies spans itself).
    fn copy_span(&mut self, w: &mut Sink, span: Span) -> Result<()> {
        const PIECE: u64 = FLUSH_AT as u64;
        let mut at = span.offset;
        while at < span.end() {
            let left = span.end().saturating_sub(at);
            let len = if left < PIECE.saturating_mul(2) {
                left
            } else {
                PIECE
            };
            let piece = Span { offset: at, len };
            w.copy(piece, self.source_bytes(at, len)?)?;
            at = at.saturating_add(len);
            w.spill()?;
            // Everything before `at` is in the output or its buffer: the source behind it
            // may be released, however it got there.
            (self.progress)(at);
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

    fn source_bytes(&self, offset: u64, len: u64) -> Result<&'a [u8]> {
        self.source.bytes(offset, len)
    }
}

/// Writes a section's header: its kind and id, and for a kind with a full header its idstr,
/// instance and version.
pub(crate) fn section_header(
    w: &mut Writer,
    kind: SectionKind,
    section_id: u32,
    idstr: &str,
    instance_id: u32,
    version_id: u32,
) -> Result<()> {
    w.u8(kind.byte());
    w.u32(Endian::Big, section_id);
    if kind.has_full_header() {
        w.counted_bytes(idstr.as_bytes(), "section.idstr")?;
        w.u32(Endian::Big, instance_id);
        w.u32(Endian::Big, version_id);
    }
    Ok(())
}

fn block_list(w: &mut Writer, list: &BlockList) -> Result<()> {
    w.u64(Endian::Big, list.total_bytes | FLAG_MEM_SIZE);
    for block in &list.blocks {
        block_entry(w, block)?;
    }
    Ok(())
}

/// A block list entry up to where a mapped-ram header would follow.
fn block_entry(w: &mut Writer, block: &RamBlock) -> Result<()> {
    w.counted_bytes(block.name.as_bytes(), "ram.block_list.name")?;
    w.u64(Endian::Big, block.used_length);
    if let Some(page_size) = block.page_size {
        w.u64(Endian::Big, page_size);
    }
    if let Some(mr_addr) = block.mr_addr {
        w.u64(Endian::Big, mr_addr);
    }
    Ok(())
}
