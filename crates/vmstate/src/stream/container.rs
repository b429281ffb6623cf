//! The stream container: header, configuration, commands, sections, EOF and trailer.

use std::collections::HashMap;

use super::config::read_configuration;
use super::description::{self, Description};
use super::iterative::{self, IterativeFormat};
use super::ram::{read_ram_record, RamContext, RamRecordKind};
use super::vmstate::decode_struct;
use super::{
    Command, Configuration, Packaged, PageSize, PageSizeSource, RamItem, RamPayload, RamRun,
    Record, RunKind, Section, SectionBody, SectionKind, Span, Stream, Trailer, MAGIC, VERSION,
};
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Endian, Reader};

/// Section type bytes.
pub(crate) const TYPE_EOF: u8 = 0x00;
pub(crate) const TYPE_VMDESCRIPTION: u8 = 0x06;
pub(crate) const TYPE_CONFIGURATION: u8 = 0x07;
pub(crate) const TYPE_COMMAND: u8 = 0x08;
pub(crate) const TYPE_FOOTER: u8 = 0x7e;

/// The first word of a multifd data channel (`MULTIFD_MAGIC`).
const MULTIFD_MAGIC: u32 = 0x1122_3344;
/// The largest nested stream a PACKAGED command may announce (QEMU's limit).
const MAX_PACKAGED_SIZE: u32 = 1 << 24;
/// The page size of x86 targets, used when the stream does not say.
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// The commands, by number: name and the payload lengths allowed (`None`: variable).
const COMMANDS: &[(&str, Option<&[u16]>)] = &[
    ("INVALID", Some(&[])),
    ("OPEN_RETURN_PATH", Some(&[0])),
    ("PING", Some(&[4])),
    ("POSTCOPY_ADVISE", Some(&[0, 16])),
    ("POSTCOPY_LISTEN", Some(&[0])),
    ("POSTCOPY_RUN", Some(&[0])),
    ("POSTCOPY_RAM_DISCARD", None),
    ("PACKAGED", Some(&[4])),
    ("ENABLE_COLO", Some(&[0])),
    ("POSTCOPY_RESUME", Some(&[0])),
    ("RECV_BITMAP", None),
    ("SWITCHOVER_START", Some(&[0])),
];
const CMD_POSTCOPY_ADVISE: u16 = 3;
const CMD_POSTCOPY_RAM_DISCARD: u16 = 6;
const CMD_PACKAGED: u16 = 7;
const CMD_RECV_BITMAP: u16 = 10;

/// Reads a complete migration stream (already decompressed).
///
/// Errors name the byte offset where the stream stops making sense; a stream that ends
/// before the bytes it announces is always an error, never a shorter stream.
pub fn read(data: &[u8]) -> Result<Stream> {
    read_with_progress(data, &mut |_| {})
}

/// [`read`], telling `progress` how far it has got.
///
/// `progress` receives absolute offsets of `data`, never decreasing: after every top-level
/// record, after every RAM record, and `data.len()` at the end. Everything before the offset
/// it was given has been read and is not looked at again except the trailer, found first from
/// the end, so a caller whose `data` is a file mapping may release the pages before that
/// offset and keep its resident memory bounded on a stream of any size. The model itself
/// grows with the number of records and runs, never with the number of pages.
pub fn read_with_progress(data: &[u8], progress: &mut dyn FnMut(u64)) -> Result<Stream> {
    read_in_file(data, 0, progress)
}

/// [`read_with_progress`] for a stream that starts `file_offset` bytes into its file (a
/// libvirt save image's stream follows its header and XML). Only mapped-ram streams care:
/// their block headers locate bitmaps and pages by file offset, which the model turns into
/// offsets of `data` like every other.
pub fn read_in_file(
    data: &[u8],
    file_offset: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Stream> {
    let _budget = super::budget::Budget::start(data.len());
    let mut r = Reader::new(data);
    let version = read_header(&mut r)?;
    let mut ctx = Context::new(progress, file_offset);
    ctx.learn_description(data, 0)?;
    let mut records = Vec::new();
    let eof_offset = read_records(&mut r, &mut ctx, true, &mut records)?;
    let eof_offset = eof_offset.unwrap_or(r.offset());
    let trailer = read_trailer(&mut r, &mut ctx)?;
    (ctx.progress)(r.offset());
    Ok(ctx.finish(version, records, eof_offset, trailer))
}

/// Reads the stream header (magic and version), recognising the files that are not a bare
/// stream; returns the version.
pub(super) fn read_header(r: &mut Reader) -> Result<u32> {
    let head = r.lookahead(16, "header.magic")?;
    let magic = r.u32(Endian::Big, "header.magic")?;
    if magic == MULTIFD_MAGIC {
        return Err(Error::new(
            ErrorKind::Unsupported {
                what: "a multifd data channel (its pages belong to the main stream's migration)"
                    .to_owned(),
            },
            0,
            "header.magic",
        ));
    }
    if let Some(what) = known_container(head) {
        return Err(Error::new(
            ErrorKind::Unsupported {
                what: what.to_owned(),
            },
            0,
            "header.magic",
        ));
    }
    if magic != MAGIC {
        return Err(Error::new(
            ErrorKind::BadMagic { found: magic },
            0,
            "header.magic",
        ));
    }
    let version = r.u32(Endian::Big, "header.version")?;
    if version != VERSION {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion { version },
            4,
            "header.version",
        ));
    }
    Ok(version)
}

/// What the reader learns along the way and needs later.
pub(super) struct Context<'p> {
    /// Told how far the reader has got.
    pub(super) progress: &'p mut dyn FnMut(u64),
    /// The description found at the end of the input, before reading from the start.
    description: Option<Description>,
    /// Where that description's trailer starts, to be confirmed when the reader gets there.
    trailer_offset: Option<u64>,
    /// Which description entries FULL sections have used.
    used_devices: Vec<bool>,
    /// Whether sections have footers, once the first section tells.
    footers: Option<bool>,
    /// Header fields of the sections that START opened, by section id.
    open_sections: HashMap<u32, (String, u32, u32)>,
    /// The page size, once the first RAM section needs it.
    page_size: Option<PageSize>,
    /// Capabilities from the configuration section.
    capabilities: Vec<String>,
    /// Target page bits from the configuration section.
    target_page_bits: Option<u64>,
    /// Postcopy advice: the OR of block page sizes (0 when not given).
    postcopy_page_sizes: Option<u64>,
    /// RAM blocks by name, with their used length.
    ram_blocks: HashMap<String, u64>,
    /// The block of the last page record, for CONTINUE.
    last_block: Option<String>,
    /// Its used length, once looked up: CONTINUE records, nearly all of them, need no
    /// lookup by name.
    last_block_used: Option<u64>,
    /// Whether a MULTIFD_FLUSH note was given.
    multifd_noted: bool,
    /// Whether a page record has been read (with `page_size`).
    pages_read: bool,
    /// Where the stream starts in its file.
    file_offset: u64,
    notes: Vec<Note>,
}

impl<'p> Context<'p> {
    pub(super) fn new(progress: &'p mut dyn FnMut(u64), file_offset: u64) -> Context<'p> {
        Context {
            progress,
            description: None,
            trailer_offset: None,
            used_devices: Vec::new(),
            footers: None,
            open_sections: HashMap::new(),
            page_size: None,
            capabilities: Vec::new(),
            target_page_bits: None,
            postcopy_page_sizes: None,
            ram_blocks: HashMap::new(),
            last_block: None,
            last_block_used: None,
            multifd_noted: false,
            pages_read: false,
            file_offset,
            notes: Vec::new(),
        }
    }

    /// Finds the description at the end of `data` (whose first byte is at stream offset
    /// `base`), as the loader of device sections needs it. A description that does not parse
    /// is noted first among the notes and not used.
    pub(super) fn learn_description(&mut self, data: &[u8], base: u64) -> Result<()> {
        let Some((offset, json)) = locate_trailer(data, base)? else {
            return Ok(());
        };
        let json_offset = offset.saturating_add(5);
        self.trailer_offset = Some(offset);
        match description::parse(json, json_offset) {
            Ok(d) => {
                self.used_devices = vec![false; d.devices.len()];
                self.description = Some(d);
            }
            Err(e) => self.notes.insert(
                0,
                Note::new(
                    json_offset,
                    "vmdescription",
                    format!("the description is not used: {}", e.kind()),
                ),
            ),
        }
        Ok(())
    }

    /// Confirms that the page size page records were read with, before the description was
    /// known, is the one the description gives; takes the description as its source.
    pub(super) fn confirm_page_size(&mut self, offset: u64) -> Result<()> {
        let Some(described) = self.description.as_ref().and_then(|d| d.page_size) else {
            return Ok(());
        };
        let used = self.page_size.filter(|_| self.pages_read);
        if let Some(used) = used.filter(|used| used.bytes != described) {
            return Err(Error::new(
                ErrorKind::BadDescription {
                    reason: format!(
                        "page size {described}, but the RAM records before it were read with \
                         {} ({}): a stream whose page size only its description gives is read \
                         from a file, where the description is found first",
                        used.bytes,
                        match used.source {
                            PageSizeSource::TargetPageBits => "configuration/target-page-bits",
                            PageSizeSource::RamRecords =>
                                "the only size its first records read with",
                            _ => "the x86 default, as the configuration does not say",
                        }
                    ),
                },
                offset,
                "vmdescription.page_size",
            ));
        }
        self.page_size = Some(PageSize {
            bytes: described,
            source: PageSizeSource::Description,
        });
        Ok(())
    }

    /// The page size page records are read with when neither the configuration nor (yet)
    /// a description gives it, before any page record was read: the one a reader may still
    /// choose from what the records look like.
    pub(super) fn unsettled_page_size(&self) -> Option<u64> {
        let size = self.page_size.unwrap_or_else(|| self.resolve_page_size());
        (size.source == PageSizeSource::DefaultX86 && !self.pages_read).then_some(size.bytes)
    }

    /// The used length of the RAM block `name` of the block lists read so far.
    pub(super) fn ram_block_length(&self, name: &str) -> Option<u64> {
        self.ram_blocks.get(name).copied()
    }

    /// The used length of the block the last page record was of.
    pub(super) fn last_block_length(&self) -> Option<u64> {
        self.ram_block_length(self.last_block.as_deref()?)
    }

    /// Reads page records with `bytes` per page, chosen from what they look like.
    pub(super) fn settle_page_size(&mut self, bytes: u64) {
        self.page_size = Some(PageSize {
            bytes,
            source: PageSizeSource::RamRecords,
        });
    }

    /// The model, from what was read.
    pub(super) fn finish(
        self,
        version: u32,
        records: Vec<Record>,
        eof_offset: u64,
        trailer: Option<Trailer>,
    ) -> Stream {
        let page_size = self.page_size.unwrap_or_else(|| self.resolve_page_size());
        Stream {
            version,
            footers: self.footers,
            page_size,
            records,
            eof_offset,
            trailer,
            notes: self.notes,
        }
    }

    fn resolve_page_size(&self) -> PageSize {
        if let Some(bytes) = self.description.as_ref().and_then(|d| d.page_size) {
            return PageSize {
                bytes,
                source: PageSizeSource::Description,
            };
        }
        if let Some(bytes) = self
            .target_page_bits
            .and_then(|bits| u32::try_from(bits).ok())
            .and_then(|bits| 1u64.checked_shl(bits))
        {
            return PageSize {
                bytes,
                source: PageSizeSource::TargetPageBits,
            };
        }
        PageSize {
            bytes: DEFAULT_PAGE_SIZE,
            source: PageSizeSource::DefaultX86,
        }
    }

    /// The next unused description entry for a FULL section.
    fn take_device(&mut self, idstr: &str, instance_id: u32) -> Option<usize> {
        let devices = &self.description.as_ref()?.devices;
        let index = devices.iter().enumerate().position(|(i, d)| {
            d.name == idstr
                && d.instance_id == instance_id
                && !self.used_devices.get(i).copied().unwrap_or(true)
        })?;
        if let Some(used) = self.used_devices.get_mut(index) {
            *used = true;
        }
        Some(index)
    }
}

/// Files that hold a migration stream inside a container of their own, named by their magic.
fn known_container(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"QFI\xfb") {
        Some(
            "a qcow2 disk image (magic QFI\\xfb), not a migration stream: the VM state of its \
             internal snapshots (savevm) is read through `envelope::Qcow2Image`",
        )
    } else if crate::envelope::Envelope::is_libvirt(data) {
        Some(
            "a libvirt save image (virsh save / managed save), not a bare migration stream: \
             its header and domain XML come first (`envelope::Envelope::identify` finds the \
             stream after them)",
        )
    } else {
        None
    }
}

/// Finds the JSON trailer from the end of the input, as analyze-migration.py does: the last
/// NUL byte, the first `{` after it, and 0x06 + be32 length just before that.
///
/// Returns the offset of the 0x06 byte and the JSON text. A trailer whose length passes the
/// end of the input is a truncated stream: that is an error naming the JSON's offset.
pub(super) fn locate_trailer(data: &[u8], base: u64) -> Result<Option<(u64, &[u8])>> {
    let Some(nul) = data.iter().rposition(|&b| b == 0) else {
        return Ok(None);
    };
    // The JSON holds no NUL, so the last one is the EOF byte or one of the length's bytes,
    // and the length's bytes may themselves be a `{` (0x7b): of the braces after the NUL,
    // the JSON's is the first with EOF, 0x06 and a length right before it.
    let mut braces = data
        .iter()
        .enumerate()
        .skip(nul)
        .take(8)
        .filter(|(_, &b)| b == b'{')
        .map(|(at, _)| at);
    let Some((start, brace, len)) = braces.find_map(|brace| {
        let start = brace.checked_sub(6)?;
        let header = data.get(start..brace)?;
        let (&[TYPE_EOF, TYPE_VMDESCRIPTION], len) = (header.get(..2)?, header.get(2..)?) else {
            return None;
        };
        let len = u32::from_be_bytes(<[u8; 4]>::try_from(len).ok()?) as usize;
        Some((start, brace, len))
    }) else {
        return Ok(None);
    };
    let available = data.len().saturating_sub(brace);
    if len > available {
        return Err(Error::new(
            ErrorKind::UnexpectedEof {
                needed: len as u64,
                available: available as u64,
            },
            base.saturating_add(brace as u64),
            "vmdescription.json",
        ));
    }
    let json = data.get(brace..brace.saturating_add(len)).unwrap_or(&[]);
    Ok(Some((
        base.saturating_add(start as u64).saturating_add(1),
        json,
    )))
}

/// Reads records up to EOF (top level) or to the end of `r` (a packaged stream, which may
/// also end with EOF), after those already in `records`. Returns the offset of the EOF byte.
pub(super) fn read_records(
    r: &mut Reader,
    ctx: &mut Context,
    top_level: bool,
    records: &mut Vec<Record>,
) -> Result<Option<u64>> {
    loop {
        if !top_level && r.is_empty() {
            return Ok(None);
        }
        let offset = r.offset();
        let byte = r.u8("section_type")?;
        let record = match byte {
            TYPE_EOF => return Ok(Some(offset)),
            0x01..=0x04 => Record::Section(read_section(r, ctx, byte, offset)?),
            TYPE_CONFIGURATION if top_level && records.is_empty() => {
                let config = read_configuration(r, offset)?;
                remember_configuration(ctx, &config);
                Record::Configuration(config)
            }
            TYPE_COMMAND => Record::Command(read_command(r, ctx, offset, !top_level)?),
            other => {
                return Err(Error::new(
                    ErrorKind::UnknownSectionType { byte: other },
                    offset,
                    "section_type",
                ))
            }
        };
        super::budget::charge(std::mem::size_of::<Record>() as u64, offset, "records")?;
        records.push(record);
        if top_level {
            (ctx.progress)(r.offset());
        }
    }
}

pub(super) fn remember_configuration(ctx: &mut Context, config: &Configuration) {
    ctx.target_page_bits = config.target_page_bits();
    ctx.capabilities = config
        .capabilities()
        .into_iter()
        .map(str::to_owned)
        .collect();
}

/// Reads a command record; `in_package` when it is inside a PACKAGED command's stream.
pub(super) fn read_command(
    r: &mut Reader,
    ctx: &mut Context,
    start: u64,
    in_package: bool,
) -> Result<Command> {
    let number_offset = r.offset();
    let number = r.u16(Endian::Big, "command.number")?;
    let length = r.u16(Endian::Big, "command.length")?;
    let Some(&(name, lengths)) = COMMANDS.get(usize::from(number)).filter(|_| number != 0) else {
        return Err(Error::new(
            ErrorKind::UnknownCommand { command: number },
            number_offset,
            "command.number",
        ));
    };
    if let Some(lengths) = lengths {
        if !lengths.contains(&length) {
            return Err(Error::new(
                ErrorKind::CommandLength {
                    command: name,
                    length,
                    expected: if number == CMD_POSTCOPY_ADVISE {
                        "0 or 16"
                    } else if lengths == [4] {
                        "4"
                    } else {
                        "0"
                    },
                },
                number_offset,
                "command.length",
            ));
        }
    }
    let payload_offset = r.offset();
    let payload = r.bytes(usize::from(length), "command.payload")?;
    check_variable_payload(number, name, payload, payload_offset)?;
    let span = Span {
        offset: start,
        len: r.offset().saturating_sub(start),
    };
    if number == CMD_POSTCOPY_ADVISE {
        let summary = payload
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes);
        ctx.postcopy_page_sizes = Some(summary);
    }
    if number == CMD_PACKAGED && in_package {
        // QEMU packages the device state once; a package inside a package would make every
        // walk over the records recurse as deep as the input wants.
        return Err(Error::new(
            ErrorKind::Unsupported {
                what: "a PACKAGED command inside a package".to_owned(),
            },
            number_offset,
            "command.number",
        ));
    }
    let packaged = if number == CMD_PACKAGED {
        let size = payload
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        if size > MAX_PACKAGED_SIZE {
            return Err(Error::new(
                ErrorKind::CountTooLarge {
                    value: u64::from(size),
                    max: u64::from(MAX_PACKAGED_SIZE),
                },
                payload_offset,
                "command.packaged.length",
            ));
        }
        let nested_offset = r.offset();
        let mut nested = r.sub_reader(size as usize, "command.packaged")?;
        let mut records = Vec::new();
        let eof_offset = read_records(&mut nested, ctx, false, &mut records)?;
        if eof_offset.is_some() {
            nested.expect_end("command.packaged")?;
        }
        Some(Packaged {
            span: Span {
                offset: nested_offset,
                len: u64::from(size),
            },
            records,
            eof_offset,
        })
    } else {
        None
    };
    Ok(Command {
        span,
        number,
        name,
        payload: payload.to_vec(),
        packaged,
    })
}

/// Checks the payloads of the commands whose length varies.
fn check_variable_payload(number: u16, name: &str, payload: &[u8], offset: u64) -> Result<()> {
    let invalid = |reason: &'static str| {
        Error::new(
            ErrorKind::InvalidValue {
                value: payload.len() as u64,
                expected: reason,
            },
            offset,
            format!("command.{name}"),
        )
    };
    match number {
        CMD_POSTCOPY_RAM_DISCARD => {
            // u8 version 0, counted block name, u8 0, then (be64 start, be64 length) pairs.
            let name_len = usize::from(payload.get(1).copied().unwrap_or(0));
            let pairs = payload.len().checked_sub(name_len.saturating_add(3));
            let ok = payload.len() >= 20
                && payload.first() == Some(&0)
                && name_len > 0
                && payload.get(name_len.saturating_add(2)) == Some(&0)
                && pairs.is_some_and(|p| p % 16 == 0);
            if !ok {
                return Err(invalid(
                    "a discard list: version 0, block name, 0, then 16-byte ranges",
                ));
            }
        }
        CMD_RECV_BITMAP => {
            let name_len = usize::from(payload.first().copied().unwrap_or(0));
            if payload.is_empty() || name_len.saturating_add(1) != payload.len() {
                return Err(invalid("a counted block name filling the payload"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The header of a section: what it is and which device it belongs to.
pub(super) struct SectionHeader {
    pub(super) kind: SectionKind,
    pub(super) section_id: u32,
    pub(super) idstr: String,
    pub(super) instance_id: u32,
    pub(super) version_id: u32,
}

impl SectionHeader {
    /// The path errors inside the section are reported under.
    pub(super) fn path(&self) -> String {
        format!("section[{}]", self.idstr)
    }

    /// The section, once its body and footer are read; `end` is the offset after it.
    pub(super) fn section(
        self,
        start: u64,
        end: u64,
        body: SectionBody,
        footer_offset: Option<u64>,
    ) -> Section {
        Section {
            kind: self.kind,
            span: Span {
                offset: start,
                len: end.saturating_sub(start),
            },
            section_id: self.section_id,
            idstr: self.idstr,
            instance_id: self.instance_id,
            version_id: self.version_id,
            body,
            footer_offset,
        }
    }
}

/// The kind of section a section type byte (0x01 to 0x04) starts.
pub(super) fn section_kind(byte: u8) -> SectionKind {
    match byte {
        0x01 => SectionKind::Start,
        0x02 => SectionKind::Part,
        0x03 => SectionKind::End,
        _ => SectionKind::Full,
    }
}

/// Reads a section's header after its type byte. START remembers the header fields its
/// PART and END sections leave out.
pub(super) fn read_section_header(
    r: &mut Reader,
    ctx: &mut Context,
    kind: SectionKind,
) -> Result<SectionHeader> {
    let id_offset = r.offset();
    let section_id = r.u32(Endian::Big, "section.id")?;
    let (idstr, instance_id, version_id) = if kind.has_full_header() {
        let idstr_offset = r.offset();
        let idstr = r.counted_bytes("section.idstr")?;
        if idstr.is_empty() {
            return Err(Error::new(
                ErrorKind::EmptyString,
                idstr_offset,
                "section.idstr",
            ));
        }
        let idstr = std::str::from_utf8(idstr)
            .map_err(|_| Error::new(ErrorKind::NotUtf8, idstr_offset, "section.idstr"))?
            .to_owned();
        let instance_id = r.u32(Endian::Big, "section.instance_id")?;
        let version_id = r.u32(Endian::Big, "section.version_id")?;
        if kind == SectionKind::Start {
            ctx.open_sections
                .insert(section_id, (idstr.clone(), instance_id, version_id));
        }
        (idstr, instance_id, version_id)
    } else {
        ctx.open_sections.get(&section_id).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::UnknownSectionId { section_id },
                id_offset,
                "section.id",
            )
        })?
    };
    Ok(SectionHeader {
        kind,
        section_id,
        idstr,
        instance_id,
        version_id,
    })
}

/// Reads the body of a section that is not RAM: an iterative handler's records, or a
/// device decoded through the description.
pub(super) fn read_other_body(
    r: &mut Reader,
    ctx: &mut Context,
    header: &SectionHeader,
    start: u64,
) -> Result<SectionBody> {
    let path = header.path();
    let idstr = &header.idstr;
    if header.kind != SectionKind::Full {
        let Some(format) = IterativeFormat::of_idstr(idstr) else {
            return Err(Error::new(
                ErrorKind::Unsupported {
                    what: format!(
                        "iterative section {idstr:?} (read: ram, s390-storage_attributes, \
                         spapr/htab, block, dirty-bitmap)"
                    ),
                },
                start,
                path,
            ));
        };
        return iterative::read(r, format)
            .map(SectionBody::Iterative)
            .map_err(|e| e.within(&path));
    }
    read_device(
        r,
        ctx,
        idstr,
        header.instance_id,
        header.version_id,
        header.section_id,
    )
    .map_err(|e| e.within(&path))
}

fn read_section(r: &mut Reader, ctx: &mut Context, byte: u8, start: u64) -> Result<Section> {
    let header = read_section_header(r, ctx, section_kind(byte))?;
    let path = header.path();
    let body = if header.idstr == "ram" {
        SectionBody::Ram(read_ram_section(r, ctx, header.version_id).map_err(|e| e.within(&path))?)
    } else {
        read_other_body(r, ctx, &header, start)?
    };
    let footer_offset = read_footer(r, ctx, header.section_id).map_err(|e| e.within(&path))?;
    Ok(header.section(start, r.offset(), body, footer_offset))
}

/// Reads the footer after a section payload, learning from the first section whether the
/// stream has footers at all.
pub(super) fn read_footer(
    r: &mut Reader,
    ctx: &mut Context,
    section_id: u32,
) -> Result<Option<u64>> {
    let offset = r.offset();
    let present = match ctx.footers {
        Some(present) => present,
        None => {
            let present = r.lookahead(1, "footer")? == [TYPE_FOOTER];
            ctx.footers = Some(present);
            present
        }
    };
    if !present {
        return Ok(None);
    }
    let marker = r.u8("footer")?;
    if marker != TYPE_FOOTER {
        return Err(Error::new(
            ErrorKind::MissingFooter {
                section_id,
                found: marker,
            },
            offset,
            "footer",
        ));
    }
    let found = r.u32(Endian::Big, "footer.section_id")?;
    if found != section_id {
        return Err(Error::new(
            ErrorKind::FooterMismatch {
                expected: section_id,
                found,
            },
            offset,
            "footer",
        ));
    }
    Ok(Some(offset))
}

fn read_device(
    r: &mut Reader,
    ctx: &mut Context,
    idstr: &str,
    instance_id: u32,
    version_id: u32,
    section_id: u32,
) -> Result<SectionBody> {
    let entry = ctx
        .take_device(idstr, instance_id)
        .and_then(|index| ctx.description.as_ref()?.devices.get(index));
    let problem = entry.and_then(|d| d.problem.clone());
    if let Some(entry) = entry.filter(|d| d.problem.is_none()) {
        let desc = entry.vmsd.clone();
        // The payload's layout follows the version it was written with: a section header
        // that names another version than the description describes cannot be read through
        // it (QEMU's loader refuses versions it does not load).
        if let Some(described) = desc.version.filter(|&v| v != u64::from(version_id)) {
            return Err(r.error(
                ErrorKind::BadDescription {
                    reason: format!(
                        "section version {version_id}, the description describes version \
                         {described}"
                    ),
                },
                "version_id",
            ));
        }
        return decode_struct(r, &desc).map(SectionBody::Device);
    }
    let reason = if let Some(problem) = problem {
        format!("the stream's description of it cannot be read through: {problem}")
    } else if ctx.description.is_some() {
        format!("the stream's description has no entry for {idstr:?} instance {instance_id}")
    } else {
        "the stream has no description (vmdesc trailer)".to_owned()
    };
    let span = delimit_by_footer(r, ctx, section_id, &reason)?;
    let bytes = r.bytes(span.len as usize, "payload")?.to_vec();
    Ok(SectionBody::Opaque {
        span,
        bytes,
        reason,
    })
}

/// Finds the end of an undescribed payload: the first footer with this section's id that is
/// followed by something a section can be followed by.
fn delimit_by_footer(r: &Reader, ctx: &Context, section_id: u32, reason: &str) -> Result<Span> {
    if ctx.footers == Some(false) {
        return Err(r.error(
            ErrorKind::Undelimited {
                reason: format!("{reason} and no section footers (or is the stream cut short?)"),
            },
            "payload",
        ));
    }
    let rest = r.rest();
    let mut marker = [TYPE_FOOTER; 5];
    if let Some(id) = marker.get_mut(1..) {
        id.copy_from_slice(&section_id.to_be_bytes());
    }
    // Candidates start with the footer byte: find each one with a byte search rather than
    // comparing a window at every offset.
    let mut from = 0usize;
    let found = loop {
        let Some(i) = rest
            .get(from..)
            .and_then(|tail| tail.iter().position(|&b| b == TYPE_FOOTER))
            .map(|p| p.saturating_add(from))
        else {
            break None;
        };
        let next = rest.get(i.saturating_add(5)).copied();
        let plausible = matches!(next, None | Some(0x00..=0x04 | TYPE_COMMAND));
        if rest.get(i..i.saturating_add(5)) == Some(&marker[..]) && plausible {
            break Some(i);
        }
        from = i.saturating_add(1);
    };
    match found {
        Some(len) => Ok(Span {
            offset: r.offset(),
            len: len as u64,
        }),
        None => Err(r.error(
            ErrorKind::Undelimited {
                reason: format!("{reason} and no footer for section {section_id} follows"),
            },
            "payload",
        )),
    }
}

fn ram_context(ctx: &mut Context) -> Result<RamContext> {
    let page_size = match ctx.page_size {
        Some(p) => p,
        None => {
            let p = ctx.resolve_page_size();
            ctx.page_size = Some(p);
            p
        }
    };
    Ok(RamContext {
        page_size: page_size.bytes,
        postcopy_page_sizes: ctx.postcopy_page_sizes,
        ignore_shared: ctx.capabilities.iter().any(|c| c == "x-ignore-shared"),
        mapped_ram: ctx.capabilities.iter().any(|c| c == "mapped-ram"),
        file_offset: ctx.file_offset,
    })
}

/// The RAM context for reading a RAM section of `version_id`.
pub(super) fn ram_section_context(
    r: &Reader,
    ctx: &mut Context,
    version_id: u32,
) -> Result<RamContext> {
    if version_id != 4 {
        return Err(r.error(
            ErrorKind::Unsupported {
                what: format!("RAM section version {version_id} (only 4 is read)"),
            },
            "version_id",
        ));
    }
    ram_context(ctx)
}

fn read_ram_section(r: &mut Reader, ctx: &mut Context, version_id: u32) -> Result<RamPayload> {
    let ram = ram_section_context(r, ctx, version_id)?;
    let mut payload = RamPayload::default();
    loop {
        let record = read_ram_record(r, &ram)?;
        (ctx.progress)(r.offset());
        if add_ram_record(ctx, &ram, &mut payload, record)? {
            return Ok(payload);
        }
    }
}

/// Adds a RAM record to its section's payload, joining a page record to the run before it
/// when it continues it; returns true at the EOS record that ends the section.
pub(super) fn add_ram_record(
    ctx: &mut Context,
    ram: &RamContext,
    payload: &mut RamPayload,
    record: super::RamRecord,
) -> Result<bool> {
    let items = &mut payload.items;
    let kind = match record.kind {
        RamRecordKind::Eos => {
            items.push(RamItem::Eos {
                offset: record.offset,
            });
            return Ok(true);
        }
        RamRecordKind::MultifdFlush => {
            if !ctx.multifd_noted {
                ctx.multifd_noted = true;
                ctx.notes.push(Note::new(
                    record.offset,
                    "ram",
                    "written with multifd: page data travels on other channels, not in this stream",
                ));
            }
            items.push(RamItem::MultifdFlush {
                offset: record.offset,
            });
            return Ok(false);
        }
        RamRecordKind::BlockList(list) => {
            for block in &list.blocks {
                ctx.ram_blocks.insert(block.name.clone(), block.used_length);
            }
            ctx.last_block_used = None;
            items.push(RamItem::BlockList(list));
            return Ok(false);
        }
        page => match page.run_kind() {
            Some(kind) => kind,
            None => return Ok(false),
        },
    };
    let bad = |reason: String| {
        Error::new(
            ErrorKind::BadRamRecord { reason },
            record.offset,
            "ram.word",
        )
    };
    ctx.pages_read = true;
    // CONTINUE records name no block: they borrow the last one, so nothing is allocated
    // per page.
    if let Some(name) = record.block {
        ctx.last_block = Some(name);
        ctx.last_block_used = None;
    }
    let block = ctx
        .last_block
        .as_deref()
        .ok_or_else(|| bad("CONTINUE with no block before it".to_owned()))?;
    let used_length = match ctx.last_block_used {
        Some(used_length) => used_length,
        None => *ctx
            .ram_blocks
            .get(block)
            .ok_or_else(|| bad(format!("unknown RAM block {block:?}")))?,
    };
    ctx.last_block_used = Some(used_length);
    if record.page >= used_length {
        return Err(bad(format!(
            "page offset {:#x} outside block {block:?} of {used_length:#x} bytes",
            record.page
        )));
    }
    if let Some(RamItem::Pages(run)) = items.last_mut() {
        let next_page = run
            .count
            .checked_mul(ram.page_size)
            .and_then(|d| d.checked_add(run.first_page));
        let merged = merge_kinds(run.kind, run.count, kind);
        if let Some(merged) = merged.filter(|_| {
            record.continues
                && run.block == block
                && next_page == Some(record.page)
                && run.span.end() == record.offset
        }) {
            run.kind = merged;
            run.count = run.count.saturating_add(1);
            run.span.len = run.span.len.saturating_add(record.len);
            return Ok(false);
        }
    }
    super::budget::charge(
        (std::mem::size_of::<RamItem>() as u64).saturating_add(block.len() as u64),
        record.offset,
        "ram.run",
    )?;
    items.push(RamItem::Pages(RamRun {
        block: block.to_owned(),
        kind,
        first_page: record.page,
        count: 1,
        first_continues: record.continues,
        span: Span {
            offset: record.offset,
            len: record.len,
        },
    }));
    Ok(false)
}

/// The kind of a run of `count` records of kind `run` once a record of kind `next` joins it,
/// or `None` when it cannot join.
///
/// ZERO and PAGE records mix freely (a guest's memory alternates between the two, and a run
/// per change would make the model grow with the pages); XBZRLE records, rare and each with
/// its own length, stay one per run.
fn merge_kinds(run: RunKind, count: u64, next: RunKind) -> Option<RunKind> {
    match (run, next) {
        (RunKind::Page, RunKind::Page) => Some(RunKind::Page),
        (RunKind::Zero { fill }, RunKind::Zero { fill: next }) if fill == next => Some(run),
        (RunKind::Page, RunKind::Zero { fill }) => Some(RunKind::Mixed {
            zero_pages: 1,
            fill,
        }),
        (RunKind::Zero { fill }, RunKind::Page) => Some(RunKind::Mixed {
            zero_pages: count,
            fill,
        }),
        (RunKind::Mixed { zero_pages, fill }, RunKind::Zero { fill: next }) if fill == next => {
            Some(RunKind::Mixed {
                zero_pages: zero_pages.saturating_add(1),
                fill,
            })
        }
        (RunKind::Mixed { .. }, RunKind::Page) => Some(run),
        _ => None,
    }
}

pub(super) fn read_trailer(r: &mut Reader, ctx: &mut Context) -> Result<Option<Trailer>> {
    if r.is_empty() {
        ctx.notes.push(Note::new(
            r.offset(),
            "vmdescription",
            "the stream ends at EOF without a description (as after postcopy or a device-only save)",
        ));
        return Ok(None);
    }
    let offset = r.offset();
    let byte = r.u8("vmdescription")?;
    if byte != TYPE_VMDESCRIPTION {
        return Err(Error::new(
            ErrorKind::UnknownSectionType { byte },
            offset,
            "vmdescription",
        ));
    }
    let len = r.u32(Endian::Big, "vmdescription.length")?;
    let len = r.check_count(u64::from(len), 1, "vmdescription.json")?;
    let json = r.bytes(len, "vmdescription.json")?.to_vec();
    r.expect_end("vmdescription")?;
    if ctx.trailer_offset != Some(offset) {
        return Err(Error::new(
            ErrorKind::BadDescription {
                reason: "the trailer is not where the end of the input puts it".to_owned(),
            },
            offset,
            "vmdescription",
        ));
    }
    Ok(Some(Trailer {
        offset,
        json,
        description: ctx.description.take(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(json: &[u8]) -> Vec<u8> {
        let mut data = b"QEVM\0\0\0\x03".to_vec();
        data.push(TYPE_EOF);
        data.push(TYPE_VMDESCRIPTION);
        data.extend_from_slice(&(json.len() as u32).to_be_bytes());
        data.extend_from_slice(json);
        data
    }

    #[test]
    fn a_trailer_whose_length_holds_a_brace_is_found() {
        // 0x7baa bytes: the length's first byte after its NULs is `{`.
        let mut json = br#"{"page_size": 1024, "devices": [], "pad": ""#.to_vec();
        json.resize(0x7baa - 2, b'x');
        json.extend_from_slice(b"\"}");
        let data = with_trailer(&json);
        let (offset, found) = locate_trailer(&data, 0).unwrap().unwrap();
        assert_eq!(offset, 9);
        assert_eq!(found, json.as_slice());
    }
}
