//! A migration stream in QEMU's format, written from a VMM's guest memory and devices.

use std::io::Write;

use serde_json::json;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, ErrorKind, Result};
use crate::memory::placed_block_name;
use crate::stream::{
    section_header, SectionKind, FLAG_CONTINUE, FLAG_EOS, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_ZERO,
    MAGIC, TYPE_CONFIGURATION, TYPE_EOF, TYPE_FOOTER, TYPE_VMDESCRIPTION, VERSION,
};
use crate::virtio::VirtioDevice;
use crate::wire::{Endian, Writer};

/// Page size of the streams written: 4 KiB, `target-page-bits` 12.
const PAGE_SIZE: u64 = 4096;
/// The machine type written in the configuration section. No QEMU machine is this one, so
/// a QEMU destination refuses the stream by name rather than loading it into another board.
pub const MACHINE: &str = "rust-vmm";
/// Section id of the RAM sections.
const RAM_SECTION: u32 = 1;
/// RAM's section version, as QEMU writes it.
const RAM_VERSION: u32 = 4;
/// virtio-blk's section version, as QEMU writes it.
const BLK_VERSION: u32 = 2;
/// Bytes gathered before they are handed to the output.
const FLUSH_AT: usize = 1 << 20;

/// Writes a stream piece by piece: the header and RAM block list when created, then RAM
/// passes (all pages, or the pages dirtied since the last pass), then the device sections,
/// then the end and the description.
///
/// Every guest memory region becomes a RAM block named `ram@0x<address>`, so that readers
/// place it without knowing the VMM.
pub struct StreamWriter<W: Write> {
    out: W,
    buf: Writer,
    /// (block name, guest address, length) of every region.
    blocks: Vec<(String, u64, u64)>,
    ram_open: bool,
    next_section: u32,
    described: Vec<serde_json::Value>,
    written: u64,
}

fn output_error(e: std::io::Error, offset: u64) -> Error {
    Error::output(e, offset, "stream")
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream for `memory`: header, configuration and the RAM block list.
    pub fn new<M: GuestMemoryBackend>(out: W, memory: &M) -> Result<Self> {
        let blocks: Vec<(String, u64, u64)> = memory
            .iter()
            .map(|r| {
                let gpa = r.start_addr().0;
                (placed_block_name(gpa), gpa, r.len())
            })
            .collect();
        let mut w = StreamWriter {
            out,
            buf: Writer::with_capacity(FLUSH_AT.saturating_mul(2)),
            blocks,
            ram_open: true,
            next_section: RAM_SECTION.saturating_add(1),
            described: Vec::new(),
            written: 0,
        };
        w.buf.u32(Endian::Big, MAGIC);
        w.buf.u32(Endian::Big, VERSION);
        w.buf.u8(TYPE_CONFIGURATION);
        w.buf.u32(Endian::Big, MACHINE.len() as u32);
        w.buf.bytes(MACHINE.as_bytes());
        crate::subsection::write_subsection_header(
            &mut w.buf,
            "configuration/target-page-bits",
            1,
        )?;
        w.buf.u32(Endian::Big, PAGE_SIZE.trailing_zeros());

        section_header(
            &mut w.buf,
            SectionKind::Start,
            RAM_SECTION,
            "ram",
            0,
            RAM_VERSION,
        )?;
        let total = w
            .blocks
            .iter()
            .fold(0u64, |sum, (_, _, len)| sum.saturating_add(*len));
        w.buf.u64(Endian::Big, total | FLAG_MEM_SIZE);
        for (name, _, len) in &w.blocks {
            w.buf.counted_bytes(name.as_bytes(), "ram.block")?;
            w.buf.u64(Endian::Big, *len);
        }
        w.buf.u64(Endian::Big, FLAG_EOS);
        w.footer(RAM_SECTION);
        w.spill()?;
        Ok(w)
    }

    /// Bytes written so far (handed to the output or waiting to be).
    pub fn position(&self) -> u64 {
        self.written.saturating_add(self.buf.offset())
    }

    fn footer(&mut self, section_id: u32) {
        self.buf.u8(TYPE_FOOTER);
        self.buf.u32(Endian::Big, section_id);
    }

    fn spill(&mut self) -> Result<()> {
        if self.buf.as_bytes().len() < FLUSH_AT {
            return Ok(());
        }
        self.drain()
    }

    fn drain(&mut self) -> Result<()> {
        self.out
            .write_all(self.buf.as_bytes())
            .map_err(|e| output_error(e, self.written))?;
        self.written = self.written.saturating_add(self.buf.offset());
        self.buf.clear();
        Ok(())
    }

    /// Sends one pass of RAM: every page of `memory`, or, with `dirty`, the pages at those
    /// guest addresses (rounded down to their page; addresses outside every region are
    /// refused). Returns the pages sent. Zero pages go as QEMU's one-byte zero records.
    pub fn ram_pass<M: GuestMemoryBackend>(
        &mut self,
        memory: &M,
        dirty: Option<&[u64]>,
    ) -> Result<u64> {
        if !self.ram_open {
            return Err(Error::new(
                ErrorKind::Unsupported {
                    what: "RAM after device state".to_owned(),
                },
                self.position(),
                "ram",
            ));
        }
        section_header(&mut self.buf, SectionKind::Part, RAM_SECTION, "", 0, 0)?;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut sent = 0u64;
        let mut last_block: Option<usize> = None;
        let mut send = |w: &mut Self, block: usize, offset: u64| -> Result<()> {
            let Some((name, gpa, _)) = w.blocks.get(block) else {
                return Ok(());
            };
            memory
                .read_slice(&mut page, GuestAddress(gpa.saturating_add(offset)))
                .map_err(|e| output_error(std::io::Error::other(e.to_string()), w.position()))?;
            let zero = page.iter().all(|&b| b == 0);
            let continues = last_block == Some(block);
            let kind = if zero { FLAG_ZERO } else { FLAG_PAGE };
            let continue_flag = if continues { FLAG_CONTINUE } else { 0 };
            w.buf.u64(Endian::Big, offset | kind | continue_flag);
            if !continues {
                let name = name.clone();
                w.buf.counted_bytes(name.as_bytes(), "ram.block")?;
            }
            if zero {
                w.buf.u8(0);
            } else {
                w.buf.bytes(&page);
            }
            last_block = Some(block);
            sent = sent.saturating_add(1);
            w.spill()
        };
        match dirty {
            None => {
                for block in 0..self.blocks.len() {
                    let len = self.blocks.get(block).map_or(0, |b| b.2);
                    let mut offset = 0;
                    while offset < len {
                        send(self, block, offset)?;
                        offset = offset.saturating_add(PAGE_SIZE);
                    }
                }
            }
            Some(addresses) => {
                for &address in addresses {
                    let found = self.blocks.iter().position(|(_, gpa, len)| {
                        address >= *gpa && address.saturating_sub(*gpa) < *len
                    });
                    let Some(block) = found else {
                        return Err(Error::new(
                            ErrorKind::InvalidValue {
                                value: address,
                                expected: "a dirty page inside guest memory",
                            },
                            self.position(),
                            "ram",
                        ));
                    };
                    let base = self.blocks.get(block).map_or(0, |b| b.1);
                    let offset = address.saturating_sub(base) & !(PAGE_SIZE - 1);
                    send(self, block, offset)?;
                }
            }
        }
        self.buf.u64(Endian::Big, FLAG_EOS);
        self.footer(RAM_SECTION);
        self.spill()?;
        Ok(sent)
    }

    /// Writes one virtio device's section (`idstr` as [`super::BlkSnapshot::idstr`] gives
    /// it). The first device closes RAM.
    pub fn device(&mut self, idstr: &str, device: &VirtioDevice) -> Result<()> {
        if self.ram_open {
            section_header(&mut self.buf, SectionKind::End, RAM_SECTION, "", 0, 0)?;
            self.buf.u64(Endian::Big, FLAG_EOS);
            self.footer(RAM_SECTION);
            self.ram_open = false;
        }
        let mut field = Writer::new();
        device.encode(&mut field).map_err(|e| e.within(idstr))?;
        let field = field.into_bytes();
        let section = self.next_section;
        self.next_section = section.saturating_add(1);
        let vmsd = device.kind.vmsd_name().to_owned();
        section_header(
            &mut self.buf,
            SectionKind::Full,
            section,
            idstr,
            0,
            BLK_VERSION,
        )?;
        self.buf.bytes(&field);
        self.footer(section);
        self.described.push(json!({
            "name": idstr,
            "instance_id": 0,
            "vmsd_name": vmsd,
            "version": BLK_VERSION,
            "fields": [{"name": "virtio", "type": "virtio", "size": field.len()}],
        }));
        self.spill()
    }

    /// Ends the stream and writes its description; returns the output.
    pub fn finish(mut self) -> Result<W> {
        if self.ram_open {
            section_header(&mut self.buf, SectionKind::End, RAM_SECTION, "", 0, 0)?;
            self.buf.u64(Endian::Big, FLAG_EOS);
            self.footer(RAM_SECTION);
        }
        self.buf.u8(TYPE_EOF);
        let description = json!({
            "configuration": {
                "vmsd_name": "configuration",
                "version": 1,
                "fields": [
                    {"name": "len", "type": "uint32", "size": 4},
                    {"name": "name", "type": "buffer", "size": MACHINE.len()},
                ],
                "subsections": [{
                    "vmsd_name": "configuration/target-page-bits",
                    "version": 1,
                    "fields": [{"name": "target_page_bits", "type": "uint32", "size": 4}],
                }],
            },
            "page_size": PAGE_SIZE,
            "devices": self.described,
        });
        let text = description.to_string();
        self.buf.u8(TYPE_VMDESCRIPTION);
        self.buf
            .uint(4, Endian::Big, text.len() as u64, "vmdescription.length")?;
        self.buf.bytes(text.as_bytes());
        self.drain()?;
        self.out
            .flush()
            .map_err(|e| output_error(e, self.written))?;
        Ok(self.out)
    }
}
