//! Writing a [`Stream`] back to bytes.

use super::container::{
    TYPE_COMMAND, TYPE_CONFIGURATION, TYPE_EOF, TYPE_FOOTER, TYPE_VMDESCRIPTION,
};
use super::ram::{
    FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_MULTIFD_FLUSH, FLAG_PAGE, FLAG_XBZRLE, FLAG_ZERO,
    XBZRLE_ENCODING,
};
use super::vmstate::encode_struct;
use super::{
    BlockList, Command, RamItem, RamRun, Record, RunKind, Section, SectionBody, Span, Stream, MAGIC,
};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Writer};

/// Writes `stream` as a migration stream.
///
/// Everything comes from the model except RAM page contents, which the model only locates:
/// they are copied from `source`, the input the stream was read from. Writing an unchanged
/// model gives back that input byte for byte.
pub fn write(stream: &Stream, source: &[u8]) -> Result<Vec<u8>> {
    let mut w = Writer::with_capacity(source.len());
    w.u32(Endian::Big, MAGIC);
    w.u32(Endian::Big, stream.version);
    let out = Output {
        source,
        page_size: stream.page_size.bytes,
    };
    out.records(&mut w, &stream.records)?;
    w.u8(TYPE_EOF);
    if let Some(trailer) = &stream.trailer {
        w.u8(TYPE_VMDESCRIPTION);
        let len = u64::try_from(trailer.json.len()).unwrap_or(u64::MAX);
        w.uint(4, Endian::Big, len, "vmdescription.length")?;
        w.bytes(&trailer.json);
    }
    Ok(w.into_bytes())
}

struct Output<'a> {
    source: &'a [u8],
    page_size: u64,
}

impl Output<'_> {
    fn records(&self, w: &mut Writer, records: &[Record]) -> Result<()> {
        for record in records {
            match record {
                Record::Configuration(config) => {
                    w.u8(TYPE_CONFIGURATION);
                    encode_struct(w, &config.state).map_err(|e| e.within("configuration"))?;
                }
                Record::Command(command) => self.command(w, command)?,
                Record::Section(section) => self.section(w, section)?,
            }
        }
        Ok(())
    }

    fn command(&self, w: &mut Writer, command: &Command) -> Result<()> {
        w.u8(TYPE_COMMAND);
        w.u16(Endian::Big, command.number);
        match &command.packaged {
            Some(packaged) => {
                let mut nested = Writer::new();
                self.records(&mut nested, &packaged.records)?;
                if packaged.eof_offset.is_some() {
                    nested.u8(TYPE_EOF);
                }
                let nested = nested.into_bytes();
                w.u16(Endian::Big, 4);
                w.uint(
                    4,
                    Endian::Big,
                    nested.len() as u64,
                    "command.packaged.length",
                )?;
                w.bytes(&nested);
            }
            None => {
                let len = command.payload.len() as u64;
                w.uint(2, Endian::Big, len, "command.length")?;
                w.bytes(&command.payload);
            }
        }
        Ok(())
    }

    fn section(&self, w: &mut Writer, section: &Section) -> Result<()> {
        let path = format!("section[{}]", section.idstr);
        w.u8(section.kind.byte());
        w.u32(Endian::Big, section.section_id);
        if section.kind.has_full_header() {
            w.counted_bytes(section.idstr.as_bytes(), "section.idstr")
                .map_err(|e| e.within(&path))?;
            w.u32(Endian::Big, section.instance_id);
            w.u32(Endian::Big, section.version_id);
        }
        match &section.body {
            SectionBody::Ram(ram) => {
                for item in &ram.items {
                    self.ram_item(w, item).map_err(|e| e.within(&path))?;
                }
            }
            SectionBody::Device(state) => encode_struct(w, state).map_err(|e| e.within(&path))?,
            SectionBody::Opaque { bytes, .. } => w.bytes(bytes),
        }
        if section.footer_offset.is_some() {
            w.u8(TYPE_FOOTER);
            w.u32(Endian::Big, section.section_id);
        }
        Ok(())
    }

    fn ram_item(&self, w: &mut Writer, item: &RamItem) -> Result<()> {
        match item {
            RamItem::BlockList(list) => block_list(w, list),
            RamItem::Pages(run) => self.run(w, run),
            RamItem::MultifdFlush { .. } => {
                w.u64(Endian::Big, FLAG_MULTIFD_FLUSH);
                Ok(())
            }
            RamItem::Eos { .. } => {
                w.u64(Endian::Big, FLAG_EOS);
                Ok(())
            }
        }
    }

    /// Writes a run's records; page and XBZRLE bytes come from the source at the places the
    /// run's span gives them.
    fn run(&self, w: &mut Writer, run: &RamRun) -> Result<()> {
        let type_flag = match run.kind {
            RunKind::Zero { .. } => FLAG_ZERO,
            RunKind::Page => FLAG_PAGE,
            RunKind::Xbzrle { .. } => FLAG_XBZRLE,
        };
        let mut source_offset = run.span.offset;
        let mut page = run.first_page;
        for index in 0..run.count {
            let continues = index > 0 || run.first_continues;
            let start = w.offset();
            w.u64(
                Endian::Big,
                page | type_flag | if continues { FLAG_CONTINUE } else { 0 },
            );
            if !continues {
                w.counted_bytes(run.block.as_bytes(), "ram.block")?;
            }
            let header = w.offset().saturating_sub(start);
            let payload_offset = source_offset.saturating_add(header);
            let payload_len = match run.kind {
                RunKind::Zero { fill } => {
                    w.u8(fill);
                    1
                }
                RunKind::Page => {
                    w.bytes(self.source_bytes(payload_offset, self.page_size)?);
                    self.page_size
                }
                RunKind::Xbzrle { encoded_len } => {
                    w.u8(XBZRLE_ENCODING);
                    w.u16(Endian::Big, encoded_len);
                    let data_offset = payload_offset.saturating_add(3);
                    w.bytes(self.source_bytes(data_offset, u64::from(encoded_len))?);
                    u64::from(encoded_len).saturating_add(3)
                }
            };
            source_offset = payload_offset.saturating_add(payload_len);
            page = page.saturating_add(self.page_size);
        }
        if source_offset != run.span.end() {
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
