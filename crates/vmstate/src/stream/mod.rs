//! QEMU migration streams: the container, RAM, and device sections decoded through the
//! stream's own description.
//!
//! [`read`] turns a complete stream (QEVM version 3) into a [`Stream`]; [`write()`] turns a
//! [`Stream`] back into bytes, identical to the input when nothing was changed. The model keeps
//! everything needed for that: every header field, the bytes of every device section (decoded
//! into a [`Field`] tree where the stream's description allows it, raw otherwise) and the
//! trailer text. RAM is the exception: page contents stay in the input and the model records
//! only where they are ([`RamRun`]), so [`write()`] takes the input again as the source of page
//! bytes.
//!
//! Streams of any size are read and written in bounded memory: the model grows with records
//! and runs, never with pages; [`read_with_progress`] tells its caller how far it has got, so
//! that a caller reading from a file mapping can release what lies behind; [`write_to`] hands
//! its output on in pieces; [`gunzip`] decompresses a chunk at a time. Input that cannot be
//! mapped is read as it arrives by [`read_one_pass`], into the same model, handing on each
//! byte it has read; [`write_held`] writes what it held back.
//!
//! Reading order and the rules applied are those of QEMU's loader (`migration/savevm.c`,
//! `migration/ram.c`) and, for device payloads, of QEMU's `scripts/analyze-migration.py`.

mod budget;
mod config;
mod container;
mod description;
mod gzip;
mod iterative;
mod onepass;
mod ram;
mod vmstate;
mod writer;

use serde::Serialize;

pub use container::{read, read_in_file, read_with_progress};
pub(crate) use container::{TYPE_CONFIGURATION, TYPE_EOF, TYPE_FOOTER, TYPE_VMDESCRIPTION};
pub use description::{
    render_like_qemu, set_configuration_name_size, set_field_size, Description, DeviceDescription,
    FieldDescription, VmsdDescription,
};
pub use gzip::{decompress_if_gzip, gunzip, is_gzip};
pub use iterative::{read as read_iterative, IterativeFormat, IterativePayload};
pub use onepass::{expect_input_end, one_pass_refusal, read_one_pass, Held, OnePass, HELD_LIMIT};
pub use ram::{
    apply_xbzrle, inflate_page, read_page_record, visit_page_records, RamRecord, RamRecordKind,
};
pub(crate) use ram::{FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_ZERO};
pub(crate) use writer::{section_header, write_seekable, PlacedBlock};
pub use writer::{
    write, write_held, write_spans, write_to, write_with, RamLayout, SpanWrite, WriteOptions,
};

pub use crate::hex::hex;
use crate::hex::serialize_hex;

/// Decodes a struct through a description known in advance (see [`crate::vmsd`]): its
/// subsections are optional.
pub(crate) fn decode_known_struct(
    r: &mut crate::wire::Reader<'_>,
    desc: &VmsdDescription,
) -> crate::Result<StructValue> {
    vmstate::decode_struct_as(r, desc, vmstate::Subsections::Optional)
}

/// Writes a decoded struct back, byte for byte.
pub(crate) fn encode_known_struct(
    w: &mut crate::wire::Writer,
    value: &StructValue,
) -> crate::Result<()> {
    vmstate::encode_struct(w, value)
}

use crate::note::Note;

/// The stream magic, `QEVM`.
pub const MAGIC: u32 = 0x5145_564d;
/// The only stream version read and written.
pub const VERSION: u32 = 3;

/// A range of bytes of the input: `offset` is absolute, counted from the start of the
/// (decompressed) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

impl Span {
    /// The offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }
}

/// A complete migration stream.
#[derive(Debug, Clone, Serialize)]
pub struct Stream {
    /// The file version from the header (always [`VERSION`]).
    pub version: u32,
    /// Whether START/PART/END/FULL sections carry footers (0x7e + section id). Detected from
    /// the first section; `None` when the stream has no section at all.
    pub footers: Option<bool>,
    /// The target page size used to read RAM records, and where it came from.
    pub page_size: PageSize,
    /// Everything between the header and the EOF byte, in stream order.
    pub records: Vec<Record>,
    /// Offset of the EOF byte (0x00) that ends the device stream.
    pub eof_offset: u64,
    /// The JSON description after EOF, when the stream has one.
    pub trailer: Option<Trailer>,
    /// Facts worth telling that are not defects.
    pub notes: Vec<Note>,
}

/// The target page size and its origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PageSize {
    /// Bytes per target page.
    pub bytes: u64,
    /// Where the value came from.
    pub source: PageSizeSource,
}

/// Where the target page size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageSizeSource {
    /// The `page_size` key of the stream's JSON description.
    Description,
    /// The `configuration/target-page-bits` subsection.
    TargetPageBits,
    /// Neither is present: 4096, the x86 target page size.
    DefaultX86,
    /// Read in one pass, with neither known yet: the only size among those QEMU's targets
    /// use with which the first RAM records read (a 32-bit Arm machine's 1 KiB pages).
    RamRecords,
}

/// One top-level (or packaged) record of the stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// The CONFIGURATION section (0x07).
    Configuration(Configuration),
    /// A COMMAND record (0x08).
    Command(Command),
    /// A START, PART, END or FULL section.
    Section(Section),
}

/// The CONFIGURATION section: machine type and optional subsections.
#[derive(Debug, Clone, Serialize)]
pub struct Configuration {
    /// Bytes of the whole section, from the 0x07 byte.
    pub span: Span,
    /// The machine type name, e.g. `pc-q35-10.0`.
    pub machine: String,
    /// The section decoded as a VMState struct (`len`, `name`, then the subsections).
    pub state: StructValue,
}

/// A COMMAND record.
#[derive(Debug, Clone, Serialize)]
pub struct Command {
    /// Bytes of the record, from the 0x08 byte to the end of its payload (for PACKAGED, not
    /// counting the packaged bytes).
    pub span: Span,
    /// The command number.
    pub number: u16,
    /// The command's name, e.g. `SWITCHOVER_START`.
    pub name: &'static str,
    /// The payload bytes.
    #[serde(serialize_with = "serialize_hex")]
    pub payload: Vec<u8>,
    /// For PACKAGED: the records of the nested stream that follows the command.
    pub packaged: Option<Packaged>,
}

/// The nested stream carried by a PACKAGED command.
#[derive(Debug, Clone, Serialize)]
pub struct Packaged {
    /// The nested bytes.
    pub span: Span,
    /// Its records.
    pub records: Vec<Record>,
    /// Offset of the EOF byte that ends the nested stream, when it has one.
    pub eof_offset: Option<u64>,
}

/// The kind of a device section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// 0x01: the first section of an iterative device (RAM).
    Start,
    /// 0x02: a middle section of an iterative device.
    Part,
    /// 0x03: the last section of an iterative device.
    End,
    /// 0x04: the single section of a non-iterative device.
    Full,
}

impl SectionKind {
    /// The section type byte.
    pub fn byte(self) -> u8 {
        match self {
            SectionKind::Start => 0x01,
            SectionKind::Part => 0x02,
            SectionKind::End => 0x03,
            SectionKind::Full => 0x04,
        }
    }

    /// The kind's name, in capitals as QEMU calls it.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Start => "START",
            SectionKind::Part => "PART",
            SectionKind::End => "END",
            SectionKind::Full => "FULL",
        }
    }

    /// True for START and FULL, whose header carries idstr, instance and version.
    pub fn has_full_header(self) -> bool {
        matches!(self, SectionKind::Start | SectionKind::Full)
    }
}

/// A START, PART, END or FULL section.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// What kind of section.
    pub kind: SectionKind,
    /// Bytes of the whole section, header and footer included.
    pub span: Span,
    /// The section id from the header.
    pub section_id: u32,
    /// The section's name (for PART/END: the name its START carried).
    pub idstr: String,
    /// The instance id (for PART/END: the one its START carried).
    pub instance_id: u32,
    /// The version id (for PART/END: the one its START carried).
    pub version_id: u32,
    /// The payload.
    pub body: SectionBody,
    /// Offset of the footer, when the section has one.
    pub footer_offset: Option<u64>,
}

/// The payload of a section.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SectionBody {
    /// RAM records (`ram`, version 4).
    Ram(RamPayload),
    /// A VMState device decoded through the stream's description.
    Device(StructValue),
    /// The records of an iterative handler other than RAM, kept as their place.
    Iterative(IterativePayload),
    /// Payload bytes that could not be decoded, with the reason.
    Opaque {
        /// Where the payload is.
        span: Span,
        /// The payload.
        #[serde(serialize_with = "serialize_hex")]
        bytes: Vec<u8>,
        /// Why it was not decoded.
        reason: String,
    },
}

/// The records of one RAM section, in stream order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RamPayload {
    /// The items of the section.
    pub items: Vec<RamItem>,
}

/// One item of a RAM section: a record, or a run of page records that the model keeps as a
/// count and a byte range.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "item", rename_all = "snake_case")]
pub enum RamItem {
    /// The MEM_SIZE record with its block list.
    BlockList(BlockList),
    /// Consecutive page records of one block.
    Pages(RamRun),
    /// A MULTIFD_FLUSH record.
    MultifdFlush {
        /// Offset of the record.
        offset: u64,
    },
    /// The EOS record that ends the section.
    Eos {
        /// Offset of the record.
        offset: u64,
    },
}

/// The MEM_SIZE record: total RAM size and one entry per RAMBlock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockList {
    /// Bytes of the record.
    pub span: Span,
    /// The total of all blocks' used lengths.
    pub total_bytes: u64,
    /// The blocks, in stream order.
    pub blocks: Vec<RamBlock>,
    /// Where the stream started in its file when it was read. Mapped-ram block headers
    /// give file offsets, the model offsets in the stream: the header says `offset +
    /// file_offset`.
    #[serde(skip_serializing_if = "is_zero")]
    pub file_offset: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One RAMBlock of the block list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RamBlock {
    /// The block's name, e.g. `pc.ram`.
    pub name: String,
    /// Its used length in bytes.
    pub used_length: u64,
    /// The block's page size, present only with postcopy when it differs from the host's.
    pub page_size: Option<u64>,
    /// The block's memory region address, present only with x-ignore-shared.
    pub mr_addr: Option<u64>,
    /// Where its pages are, with the mapped-ram capability (then no page records carry
    /// them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped: Option<MappedRam>,
}

/// A RAM block's pages at fixed offsets of the file (QEMU's mapped-ram): a bitmap of the
/// pages written, one bit per page in little-endian 64-bit words, and the pages, page `n` at
/// `pages_offset + n * page_size`. A page whose bit is clear reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappedRam {
    /// The bitmap's bytes in the stream.
    pub bitmap: Span,
    /// Where page 0 is in the stream.
    pub pages_offset: u64,
    /// Pages the bitmap marks as written.
    pub pages_written: u64,
}

/// The kind of the page records of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunKind {
    /// ZERO records, each followed by its fill byte.
    Zero {
        /// The fill byte (0 from every QEMU since 2.x).
        fill: u8,
    },
    /// PAGE records, each followed by a whole target page.
    Page,
    /// One XBZRLE record: a delta-encoded page.
    Xbzrle {
        /// Length of the encoded data.
        encoded_len: u16,
    },
    /// One COMPRESS_PAGE record: a zlib-compressed page.
    Compressed {
        /// Length of the zlib stream.
        compressed_len: u32,
    },
    /// PAGE and ZERO records interleaved. Which record is which stays in the input, where
    /// the writer reads it back: the model keeps only the counts, so that it does not grow
    /// with the pages of a guest whose memory alternates between used and zero.
    Mixed {
        /// How many of the records are ZERO records.
        zero_pages: u64,
        /// The fill byte of every ZERO record of the run.
        fill: u8,
    },
}

/// Consecutive page records of one block, at consecutive page offsets, all of one kind.
///
/// The first record names the block unless `first_continues` (CONTINUE flag: same block as
/// the record before); every later record of the run has the CONTINUE flag.
#[derive(Debug, Clone, Serialize)]
pub struct RamRun {
    /// The RAMBlock.
    pub block: String,
    /// The records' kind.
    pub kind: RunKind,
    /// Offset within the block of the first page.
    pub first_page: u64,
    /// Number of records (pages).
    pub count: u64,
    /// Whether the first record has the CONTINUE flag instead of a block name.
    pub first_continues: bool,
    /// The records' bytes in the stream, headers included.
    pub span: Span,
}

impl RamRun {
    /// How many of the run's records are PAGE, ZERO and XBZRLE records, in that order.
    pub fn page_counts(&self) -> (u64, u64, u64) {
        match self.kind {
            RunKind::Zero { .. } => (0, self.count, 0),
            RunKind::Page | RunKind::Compressed { .. } => (self.count, 0, 0),
            RunKind::Xbzrle { .. } => (0, 0, self.count),
            RunKind::Mixed { zero_pages, .. } => {
                (self.count.saturating_sub(zero_pages), zero_pages, 0)
            }
        }
    }
}

/// The decoded payload of a VMState struct: its fields, then its subsections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StructValue {
    /// The VMState name from the description, when it has one.
    pub vmsd_name: Option<String>,
    /// Fields in stream order.
    pub fields: Vec<Field>,
    /// Subsections in stream order.
    pub subsections: Vec<Subsection>,
}

impl StructValue {
    /// The first field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The first subsection called `name`.
    pub fn subsection(&self, name: &str) -> Option<&Subsection> {
        self.subsections.iter().find(|s| s.name == name)
    }
}

/// One subsection (0x05, name, version, payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subsection {
    /// Offset of the 0x05 byte.
    pub offset: u64,
    /// The subsection's name, e.g. `virtio/extra_state`.
    pub name: String,
    /// The version from the stream.
    pub version: u32,
    /// Its payload.
    pub state: StructValue,
}

/// One field of a VMState payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Field {
    /// The field's name from the description.
    pub name: String,
    /// The description's type name (`uint32`, `struct`, `virtio`, ...).
    pub type_name: String,
    /// For an element of a non-compressed array: its index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Absolute offset of the field's first byte.
    pub offset: u64,
    /// Bytes the field occupies in the stream.
    pub size: u64,
    /// The value.
    pub value: Value,
}

/// The value of a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// A boolean stored as one byte of 0 or 1.
    Bool(bool),
    /// An unsigned big-endian integer as wide as the field.
    Unsigned(u64),
    /// A signed big-endian integer as wide as the field.
    Signed(i64),
    /// A counted string (type `capability`).
    Text(String),
    /// Bytes that the description does not describe further (types `buffer`, `virtio`, any
    /// unknown type), with the field's offset and size giving their place.
    Raw(#[serde(serialize_with = "serialize_hex")] Vec<u8>),
    /// A nested VMState struct.
    Struct(StructValue),
    /// A compressed array (`array_len`): one description entry, several elements.
    Array(Vec<Field>),
    /// A compressed array of unsigned big-endian integers, each `field.size / len` bytes
    /// wide: kept as numbers, not one field each (a DMA translation table holds 10^5 of them).
    Uints(Vec<u64>),
}

/// The JSON description (vmdesc) after EOF.
#[derive(Debug, Clone, Serialize)]
pub struct Trailer {
    /// Offset of the 0x06 byte.
    pub offset: u64,
    /// The JSON text exactly as in the stream.
    #[serde(skip)]
    pub json: Vec<u8>,
    /// The description, when the JSON parsed.
    #[serde(skip)]
    pub description: Option<Description>,
}

impl Stream {
    /// Every section, packaged ones included, in stream order.
    pub fn sections(&self) -> Vec<&Section> {
        fn collect<'a>(records: &'a [Record], out: &mut Vec<&'a Section>) {
            for record in records {
                match record {
                    Record::Section(s) => out.push(s),
                    Record::Command(Command {
                        packaged: Some(p), ..
                    }) => collect(&p.records, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        collect(&self.records, &mut out);
        out
    }

    /// The configuration section, when the stream has one.
    pub fn configuration(&self) -> Option<&Configuration> {
        self.records.iter().find_map(|r| match r {
            Record::Configuration(c) => Some(c),
            _ => None,
        })
    }

    /// Every command, packaged ones included, in stream order.
    pub fn commands(&self) -> Vec<&Command> {
        fn collect<'a>(records: &'a [Record], out: &mut Vec<&'a Command>) {
            for record in records {
                if let Record::Command(c) = record {
                    out.push(c);
                    if let Some(p) = &c.packaged {
                        collect(&p.records, out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        collect(&self.records, &mut out);
        out
    }

    /// True when a RAM block keeps its pages at fixed offsets (QEMU's mapped-ram).
    pub fn has_mapped_ram(&self) -> bool {
        self.sections().into_iter().any(|s| match &s.body {
            SectionBody::Ram(ram) => ram.items.iter().any(|i| match i {
                RamItem::BlockList(list) => list.blocks.iter().any(|b| b.mapped.is_some()),
                _ => false,
            }),
            _ => false,
        })
    }

    /// Per RAMBlock: its length, page counts and where its pages are in the stream.
    pub fn ram_summary(&self) -> Vec<RamBlockSummary> {
        let mut summary: Vec<RamBlockSummary> = Vec::new();
        for section in self.sections() {
            let SectionBody::Ram(ram) = &section.body else {
                continue;
            };
            for item in &ram.items {
                match item {
                    RamItem::BlockList(list) => {
                        for block in &list.blocks {
                            if !summary.iter().any(|s| s.name == block.name) {
                                let mut entry = RamBlockSummary {
                                    name: block.name.clone(),
                                    used_length: block.used_length,
                                    ..RamBlockSummary::default()
                                };
                                if let Some(mapped) = &block.mapped {
                                    let pages =
                                        block.used_length.div_ceil(self.page_size.bytes.max(1));
                                    entry.pages = mapped.pages_written;
                                    entry.zero_pages = pages.saturating_sub(mapped.pages_written);
                                    if mapped.bitmap.len > 0 {
                                        entry.ranges.push(Span {
                                            offset: mapped.pages_offset,
                                            len: block.used_length,
                                        });
                                    }
                                }
                                summary.push(entry);
                            }
                        }
                    }
                    RamItem::Pages(run) => {
                        let Some(entry) = summary.iter_mut().find(|s| s.name == run.block) else {
                            continue;
                        };
                        let (pages, zero, xbzrle) = run.page_counts();
                        entry.pages = entry.pages.saturating_add(pages);
                        entry.zero_pages = entry.zero_pages.saturating_add(zero);
                        entry.xbzrle_pages = entry.xbzrle_pages.saturating_add(xbzrle);
                        match entry.ranges.last_mut() {
                            Some(last) if last.end() == run.span.offset => {
                                last.len = last.len.saturating_add(run.span.len)
                            }
                            _ => entry.ranges.push(run.span),
                        }
                    }
                    RamItem::MultifdFlush { .. } | RamItem::Eos { .. } => {}
                }
            }
        }
        summary
    }
}

/// What the stream holds for one RAMBlock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RamBlockSummary {
    /// The block's name.
    pub name: String,
    /// Its used length from the block list.
    pub used_length: u64,
    /// PAGE records (whole pages in the stream).
    pub pages: u64,
    /// ZERO records.
    pub zero_pages: u64,
    /// XBZRLE records.
    pub xbzrle_pages: u64,
    /// Where the block's page records are in the stream (adjacent runs merged).
    pub ranges: Vec<Span>,
}
