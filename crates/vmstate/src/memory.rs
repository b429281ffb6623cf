//! Guest memory rebuilt from a stream's RAM section, at guest-physical addresses.
//!
//! The RAM section carries RAM blocks (`pc.ram`, ROMs...) by name and offset, not by
//! guest-physical address: where a block appears in the guest's address space is the
//! machine's business. [`RamMap`] says it: derived from the board (see [`crate::machine`]) and
//! its RAM blocks, or given explicitly. [`GuestRam`] then holds the pages at their
//! addresses in memory that implements `vm-memory`'s `GuestMemory` (anonymous, so pages the
//! stream does not fill cost nothing), and remembers which pages the stream carried: a page
//! that a stripped stream left out is *unknown*, not zero, and reading it says so.

use std::cell::RefCell;

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use crate::devices::VirtioSection;
use crate::error::{Error, ErrorKind, Result};
use crate::machine::Board;
use crate::pages::PageTable;
use crate::stream::{self, RamItem, RamRecordKind, SectionBody, Stream};
use crate::virtio::{DeviceState, MemRegion, MemState};
use crate::wire::slice;
use crate::wire::Endian;

/// One piece of a RAM block placed in the guest-physical address space.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MapRegion {
    /// The RAM block's name.
    pub block: String,
    /// Offset within the block of the region's first byte.
    pub block_offset: u64,
    /// Guest-physical address of that byte.
    pub gpa: u64,
    /// Bytes in the region.
    pub len: u64,
}

/// Where RAM blocks sit in guest-physical memory, and how that was decided.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RamMap {
    /// The regions, in no particular order; they must not overlap.
    pub regions: Vec<MapRegion>,
    /// How the map was chosen, in words (reports show it).
    pub how: String,
}

impl RamMap {
    /// The RAM block and offset within it of guest-physical `gpa`, if it is RAM.
    pub fn block_offset(&self, gpa: u64) -> Option<(&str, u64)> {
        self.regions.iter().find_map(|r| {
            let within = gpa.checked_sub(r.gpa)?;
            (within < r.len).then(|| (r.block.as_str(), r.block_offset.saturating_add(within)))
        })
    }

    /// Parses an explicit map: comma-separated `BLOCK@GPA` (the whole block) or
    /// `BLOCK+OFFSET:LEN@GPA` (part of it); numbers in decimal or `0x` hex.
    pub fn parse(text: &str, blocks: &[(String, u64)]) -> Result<RamMap> {
        let mut regions = Vec::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let bad = || map_error(format!("'{part}' is not BLOCK@GPA or BLOCK+OFFSET:LEN@GPA"));
            let (what, gpa) = part.rsplit_once('@').ok_or_else(bad)?;
            let gpa = number(gpa).ok_or_else(bad)?;
            let (block, block_offset, len) = match what.rsplit_once('+') {
                Some((block, range)) => {
                    let (offset, len) = range.split_once(':').ok_or_else(bad)?;
                    (
                        block,
                        number(offset).ok_or_else(bad)?,
                        Some(number(len).ok_or_else(bad)?),
                    )
                }
                None => (what, 0, None),
            };
            let size = blocks
                .iter()
                .find(|(name, _)| name == block)
                .map(|(_, size)| *size)
                .ok_or_else(|| map_error(format!("the stream has no RAM block {block}")))?;
            let len = len.unwrap_or(size.saturating_sub(block_offset));
            if block_offset.checked_add(len).map_or(true, |end| end > size) {
                return Err(map_error(format!(
                    "{part} runs past the end of {block} ({size} bytes)"
                )));
            }
            regions.push(MapRegion {
                block: block.to_owned(),
                block_offset,
                gpa,
                len,
            });
        }
        Ok(RamMap {
            regions,
            how: format!("given: {text}"),
        })
    }
}

fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn map_error(reason: String) -> Error {
    Error::new(ErrorKind::BadRamMap { reason }, 0, "ram map")
}

/// Why guest memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// The range is not (entirely) guest RAM under the map.
    OutsideRam,
    /// The range is RAM, but the stream did not carry all of its pages.
    Unknown,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::OutsideRam => f.write_str("not guest RAM"),
            ReadError::Unknown => f.write_str("not in the stream (its pages were left out)"),
        }
    }
}

/// Where a page's content is, stored in a [`PageTable`] as one word: 0 nothing to do (the
/// memory's zeros are right, or the page is unknown), `u64::MAX` copied into guest memory,
/// else in the stream at the word minus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Untouched,
    InStream(u64),
    Copied,
}

impl From<u64> for Slot {
    fn from(word: u64) -> Slot {
        match word {
            0 => Slot::Untouched,
            u64::MAX => Slot::Copied,
            n => Slot::InStream(n.saturating_sub(1)),
        }
    }
}

impl From<Slot> for u64 {
    fn from(slot: Slot) -> u64 {
        match slot {
            Slot::Untouched => 0,
            Slot::Copied => u64::MAX,
            // A stream offset is below the length of a slice: it never reaches u64::MAX - 1.
            Slot::InStream(offset) => offset.saturating_add(1),
        }
    }
}

/// Guest RAM as the stream carries it.
///
/// Pages are not copied when the RAM is rebuilt: an index records where each page's latest
/// content lies in the stream, and a page is copied into guest memory the first time it is
/// read. Checking a large guest therefore costs one pass over the record headers and a few
/// pages of memory, not the guest's size.
pub struct GuestRam<'s> {
    memory: GuestMemoryMmap,
    map: RamMap,
    page_size: u64,
    source: &'s [u8],
    /// Per map region, one bit per page: the stream carried the page (data or zero).
    known: Vec<Vec<u64>>,
    /// Per map region, where each page's content is ([`Slot`]): still in the stream, or
    /// copied into `memory`.
    slots: RefCell<Vec<PageTable>>,
    /// Pages the stream carried, zero pages included.
    pub pages_known: u64,
}

impl fmt::Debug for GuestRam<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRam")
            .field("map", &self.map)
            .field("pages_known", &self.pages_known)
            .finish()
    }
}

impl<'s> GuestRam<'s> {
    /// Rebuilds guest RAM from the RAM section of `stream` (whose page bytes are in
    /// `source`), placing blocks by `map`. Pages of blocks the map does not place are
    /// skipped; a page sent more than once keeps its last content, as on a destination.
    /// `progress` is told the offset of `source` reached after each run of pages, so that a
    /// caller can release what lies behind.
    pub fn from_stream(
        stream: &Stream,
        source: &'s [u8],
        map: RamMap,
        progress: &mut dyn FnMut(u64),
    ) -> Result<GuestRam<'s>> {
        let page_size = stream.page_size.bytes;
        if page_size == 0 {
            return Err(map_error("the stream's page size is 0".to_owned()));
        }
        let mut ranges: Vec<(GuestAddress, usize)> = Vec::new();
        for region in &map.regions {
            let len = usize::try_from(region.len)
                .map_err(|_| map_error(format!("region of {} bytes", region.len)))?;
            ranges.push((GuestAddress(region.gpa), len));
        }
        ranges.sort_by_key(|r| r.0);
        let memory = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| map_error(format!("cannot set up guest memory: {e}")))?;
        let known = map
            .regions
            .iter()
            .map(|r| {
                let pages = r.len.div_ceil(page_size).div_ceil(64);
                vec![0u64; usize::try_from(pages).unwrap_or(0)]
            })
            .collect();
        let map_regions = map.regions.len();
        let mut ram = GuestRam {
            memory,
            map,
            page_size,
            source,
            known,
            slots: RefCell::new(vec![PageTable::default(); map_regions]),
            pages_known: 0,
        };
        let mut scratch = vec![0u8; usize::try_from(page_size).unwrap_or(4096)];
        stream::visit_page_records(
            stream,
            source,
            &mut |block, record| {
                let Some(page) = ram.locate_page(block, record.page) else {
                    return Ok(());
                };
                match &record.kind {
                    RamRecordKind::Zero { .. } => ram.set_zero(page, &scratch),
                    RamRecordKind::Page { data } => ram.set_source(page, data.offset),
                    RamRecordKind::Compressed { data } => {
                        if let Some(compressed) = slice(source, data.offset, data.len) {
                            stream::inflate_page(
                                compressed,
                                data.offset,
                                Some(&mut scratch),
                                page_size,
                            )?;
                            ram.set_content(page, &scratch);
                        }
                        scratch.iter_mut().for_each(|b| *b = 0);
                    }
                    RamRecordKind::Xbzrle { data } => {
                        // A delta applies to the page's current content: decode it now.
                        scratch.iter_mut().for_each(|b| *b = 0);
                        if ram.is_known(page) {
                            ram.read_page(page, &mut scratch);
                        }
                        if let Some(encoded) = slice(source, data.offset, data.len) {
                            stream::apply_xbzrle(encoded, data.offset, &mut scratch)?;
                            ram.set_content(page, &scratch);
                        }
                        scratch.iter_mut().for_each(|b| *b = 0);
                    }
                    _ => {}
                }
                Ok(())
            },
            progress,
        )?;
        Ok(ram)
    }

    /// The map in use.
    pub fn map(&self) -> &RamMap {
        &self.map
    }

    /// Where block offset `offset` of `block` is, as (region index, offset in region).
    fn locate_block(&self, block: &str, offset: u64) -> Option<(usize, u64)> {
        self.map.regions.iter().enumerate().find_map(|(i, r)| {
            let within = offset.checked_sub(r.block_offset)?;
            (r.block == block && within < r.len).then_some((i, within))
        })
    }

    /// Where guest-physical `gpa` is, as (region index, offset in region).
    fn locate_gpa(&self, gpa: u64) -> Option<(usize, u64)> {
        self.map.regions.iter().enumerate().find_map(|(i, r)| {
            let within = gpa.checked_sub(r.gpa)?;
            (within < r.len).then_some((i, within))
        })
    }

    /// The (region, page index) of block offset `offset` of `block`, if the map places it.
    fn locate_page(&self, block: &str, offset: u64) -> Option<(usize, u64)> {
        let (region, within) = self.locate_block(block, offset)?;
        Some((region, within.checked_div(self.page_size)?))
    }

    fn page_gpa(&self, (region, page): (usize, u64)) -> Option<u64> {
        self.map
            .regions
            .get(region)?
            .gpa
            .checked_add(page.checked_mul(self.page_size)?)
    }

    fn is_known(&self, (region, page): (usize, u64)) -> bool {
        self.pages_known_in(region, page, page)
    }

    /// True when every page from `first` to `last` (inclusive) of map region `region` was
    /// carried by the stream. Tests the bitmap a word (64 pages) at a time: a segment of a
    /// saved element may span 4 GiB, a million pages.
    fn pages_known_in(&self, region: usize, first: u64, last: u64) -> bool {
        let Some(bits) = self.known.get(region) else {
            return false;
        };
        let mut page = first;
        while page <= last {
            let bit = page % 64;
            let Some(word) = usize::try_from(page / 64).ok().and_then(|w| bits.get(w)) else {
                return false;
            };
            // Pages of this word from `bit` on, up to `last`: 1 to 64.
            let span = last
                .saturating_sub(page)
                .min(63u64.saturating_sub(bit))
                .saturating_add(1);
            let mask = u64::MAX
                .checked_shr(u32::try_from(64u64.saturating_sub(span)).unwrap_or(0))
                .unwrap_or(0)
                .checked_shl(u32::try_from(bit).unwrap_or(0))
                .unwrap_or(0);
            if word & mask != mask {
                return false;
            }
            match page.checked_add(span) {
                Some(next) => page = next,
                None => break,
            }
        }
        true
    }

    fn mark_known(&mut self, (region, page): (usize, u64)) {
        let bit = page
            .checked_rem(64)
            .and_then(|b| u32::try_from(b).ok())
            .and_then(|b| 1u64.checked_shl(b))
            .unwrap_or(0);
        let word = page
            .checked_div(64)
            .and_then(|w| usize::try_from(w).ok())
            .and_then(|w| self.known.get_mut(region)?.get_mut(w));
        if let Some(word) = word {
            if *word & bit == 0 {
                self.pages_known = self.pages_known.saturating_add(1);
            }
            *word |= bit;
        }
    }

    fn slot(&self, (region, page): (usize, u64)) -> Slot {
        Slot::from(
            self.slots
                .borrow()
                .get(region)
                .map_or(0, |table| table.get(page)),
        )
    }

    fn set_slot(&self, (region, page): (usize, u64), slot: Slot) {
        if let Some(table) = self.slots.borrow_mut().get_mut(region) {
            table.set(page, slot.into());
        }
    }

    /// The page's latest content is a page of the stream at `offset`.
    fn set_source(&mut self, page: (usize, u64), offset: u64) {
        self.mark_known(page);
        self.set_slot(page, Slot::InStream(offset));
    }

    /// The page's latest content is zeros.
    fn set_zero(&mut self, page: (usize, u64), zeros: &[u8]) {
        self.mark_known(page);
        // Anonymous memory starts zeroed: only a page that was copied needs clearing.
        if self.slot(page) == Slot::Copied {
            if let Some(gpa) = self.page_gpa(page) {
                let _ = self.memory.write_slice(zeros, GuestAddress(gpa));
            }
        }
        self.set_slot(page, Slot::Untouched);
    }

    /// The page's latest content is `content` (a decoded XBZRLE page).
    fn set_content(&mut self, page: (usize, u64), content: &[u8]) {
        self.mark_known(page);
        self.set_slot(page, Slot::Untouched);
        if let Some(gpa) = self.page_gpa(page) {
            if self.memory.write_slice(content, GuestAddress(gpa)).is_ok() {
                self.set_slot(page, Slot::Copied);
            }
        }
    }

    /// Copies a page that is still only in the stream into guest memory.
    fn materialize(&self, page: (usize, u64)) {
        let Slot::InStream(offset) = self.slot(page) else {
            return;
        };
        self.set_slot(page, Slot::Untouched);
        let bytes = slice(self.source, offset, self.page_size);
        if let (Some(bytes), Some(gpa)) = (bytes, self.page_gpa(page)) {
            if self.memory.write_slice(bytes, GuestAddress(gpa)).is_ok() {
                self.set_slot(page, Slot::Copied);
            }
        }
    }

    /// Reads one known page into `buf` (a page long).
    fn read_page(&self, page: (usize, u64), buf: &mut [u8]) {
        self.materialize(page);
        if let Some(gpa) = self.page_gpa(page) {
            let _ = self.memory.read_slice(buf, GuestAddress(gpa));
        }
    }

    /// Whether `[gpa, gpa + len)` lies in guest RAM (and, with `need_known`, in pages the
    /// stream carried); a zero `len` tests the byte at `gpa`. Steps a map region at a time.
    fn check_range(
        &self,
        gpa: u64,
        len: u64,
        need_known: bool,
    ) -> std::result::Result<(), ReadError> {
        let Some(end) = gpa.checked_add(len) else {
            return Err(ReadError::OutsideRam);
        };
        let mut at = gpa;
        loop {
            let (region, within) = self.locate_gpa(at).ok_or(ReadError::OutsideRam)?;
            let region_len = self.map.regions.get(region).map_or(0, |r| r.len);
            // The range's part in this region, as offsets into it: [within, stop).
            let stop = region_len.min(within.saturating_add(end.saturating_sub(at)));
            if need_known {
                let first = within.checked_div(self.page_size).unwrap_or(0);
                let last = stop
                    .saturating_sub(1)
                    .max(within)
                    .checked_div(self.page_size)
                    .unwrap_or(0);
                if !self.pages_known_in(region, first, last) {
                    return Err(ReadError::Unknown);
                }
            }
            let region_end = at.saturating_add(region_len.saturating_sub(within));
            if region_end >= end {
                return Ok(());
            }
            at = region_end;
        }
    }

    fn read_bytes(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), ReadError> {
        self.check_range(gpa, buf.len() as u64, true)?;
        let end = gpa.saturating_add(buf.len() as u64);
        let mut at = gpa;
        while at < end {
            if let Some((region, within)) = self.locate_gpa(at) {
                if let Some(page) = within.checked_div(self.page_size) {
                    self.materialize((region, page));
                }
            }
            at = at
                .checked_div(self.page_size)
                .unwrap_or(u64::MAX)
                .saturating_add(1)
                .saturating_mul(self.page_size);
        }
        self.memory
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| ReadError::OutsideRam)
    }
}

/// Guest memory as the checks read it: bytes at guest-physical addresses, and whether a range
/// is RAM at all.
///
/// Any `vm_memory::GuestMemory` is one (a VMM's own `GuestMemoryMmap`, say), and so is
/// [`GuestRam`], memory rebuilt from a stream, which also knows the pages a stream left out.
pub trait GuestBytes {
    /// Reads guest memory at `gpa` into `buf`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), ReadError>;

    /// True when `[gpa, gpa + len)` is guest RAM.
    fn is_ram(&self, gpa: u64, len: u64) -> bool;

    /// Reads a u16 in byte order `endian` (virtqueues are little-endian for VIRTIO 1
    /// devices, in the guest's byte order for legacy ones).
    fn read_u16(&self, gpa: u64, endian: Endian) -> std::result::Result<u16, ReadError> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(endian.u16(b))
    }

    /// Reads a u32 in byte order `endian`.
    fn read_u32(&self, gpa: u64, endian: Endian) -> std::result::Result<u32, ReadError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(endian.u32(b))
    }

    /// Reads a u64 in byte order `endian`.
    fn read_u64(&self, gpa: u64, endian: Endian) -> std::result::Result<u64, ReadError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(endian.u64(b))
    }
}

impl<M: GuestMemory> GuestBytes for M {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), ReadError> {
        if !self.is_ram(gpa, buf.len() as u64) {
            return Err(ReadError::OutsideRam);
        }
        self.read_slice(buf, GuestAddress(gpa))
            .map_err(|_| ReadError::OutsideRam)
    }

    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        // A zero length asks about the byte at `gpa`, as for [`GuestRam`].
        let count = usize::try_from(len.max(1)).unwrap_or(usize::MAX);
        gpa.checked_add(len).is_some()
            && self.check_range(GuestAddress(gpa), count, Permissions::Read)
    }
}

impl GuestBytes for GuestRam<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> std::result::Result<(), ReadError> {
        self.read_bytes(gpa, buf)
    }

    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        self.check_range(gpa, len, false).is_ok()
    }
}

/// The RAM blocks of a stream with their sizes, from its block list.
pub fn ram_blocks(stream: &Stream) -> Vec<(String, u64)> {
    stream
        .sections()
        .into_iter()
        .filter_map(|s| match &s.body {
            SectionBody::Ram(payload) => Some(payload),
            _ => None,
        })
        .flat_map(|p| p.items.iter())
        .filter_map(|item| match item {
            RamItem::BlockList(list) => Some(list.blocks.iter()),
            _ => None,
        })
        .flatten()
        .map(|b| (b.name.clone(), b.used_length))
        .collect()
}

/// The map for a stream: explicit when `explicit` is given, else derived from the board
/// (see [`Board`]) and, among `devices`, the memory devices that say where their memory sits
/// (virtio-mem: its region's plugged blocks).
pub fn map_for(
    stream: &Stream,
    devices: &[VirtioSection],
    explicit: Option<&str>,
) -> Result<RamMap> {
    let blocks = ram_blocks(stream);
    if let Some(text) = explicit {
        return RamMap::parse(text, &blocks);
    }
    let machine = stream.configuration().map(|c| c.machine.as_str());
    let mut map = derived_map(machine, &blocks)?;
    for section in devices {
        let DeviceState::Mem(MemState { region, .. }) = &section.device.device else {
            continue;
        };
        // The backend's RAM block is named after the device's bus path: `<path>/<memdev>`.
        let path = section.idstr.rsplit_once('/').map_or("", |(path, _)| path);
        // QEMU 10.0 sends the region in a section of its own, before RAM.
        let early = || {
            let idstr = format!("{path}/virtio-mem-device-early");
            stream.sections().into_iter().find_map(|s| match &s.body {
                SectionBody::Device(state) if s.idstr == idstr => {
                    MemRegion::from_early_section(state)
                }
                _ => None,
            })
        };
        let Some(region) = region.clone().or_else(early) else {
            continue;
        };
        let region = &region;
        let Some((block, _)) = blocks.iter().find(|(name, size)| {
            *size == region.region_size
                && name
                    .strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('/'))
        }) else {
            continue;
        };
        let plugged = plugged_runs(region);
        if !plugged.is_empty() {
            map.how = format!(
                "{}; {} plugged block run(s) of {} ({block}) from {:#x}",
                map.how,
                plugged.len(),
                section.idstr,
                region.addr
            );
        }
        for (offset, len) in plugged {
            map.regions.push(MapRegion {
                block: block.clone(),
                block_offset: offset,
                gpa: region.addr.saturating_add(offset),
                len,
            });
        }
    }
    Ok(map)
}

/// The plugged blocks of a virtio-mem region as (offset, length) runs of consecutive blocks.
fn plugged_runs(region: &MemRegion) -> Vec<(u64, u64)> {
    let blocks = region
        .region_size
        .checked_div(region.block_size)
        .unwrap_or(0);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for block in 0..blocks {
        let word = region
            .bitmap
            .get(usize::try_from(block / 64).unwrap_or(usize::MAX));
        if !word.is_some_and(|w| w & (1u64 << (block % 64)) != 0) {
            continue;
        }
        let offset = block.saturating_mul(region.block_size);
        match runs.last_mut() {
            Some((start, len)) if start.saturating_add(*len) == offset => {
                *len = len.saturating_add(region.block_size)
            }
            _ => runs.push((offset, region.block_size)),
        }
    }
    runs
}

/// Prefix of a RAM block whose name says where it sits: `ram@0x40000000`. Streams written
/// with [`crate::vmm`] name each guest memory region so, since a VMM's memory follows no board.
pub const PLACED_BLOCK_PREFIX: &str = "ram@0x";

/// The name of a RAM block placed at `gpa`.
pub fn placed_block_name(gpa: u64) -> String {
    format!("{PLACED_BLOCK_PREFIX}{gpa:x}")
}

/// The map of a stream whose RAM blocks all say where they sit, if they all do.
fn placed_map(blocks: &[(String, u64)]) -> Option<RamMap> {
    let regions = blocks
        .iter()
        .map(|(name, len)| {
            let hex = name.strip_prefix(PLACED_BLOCK_PREFIX)?;
            Some(MapRegion {
                block: name.clone(),
                block_offset: 0,
                gpa: u64::from_str_radix(hex, 16).ok()?,
                len: *len,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    (!regions.is_empty()).then(|| RamMap {
        regions,
        how: "each RAM block's name gives its guest-physical address".to_owned(),
    })
}

/// The map a board's machine type and RAM blocks give.
pub fn derived_map(machine: Option<&str>, blocks: &[(String, u64)]) -> Result<RamMap> {
    if let Some(map) = placed_map(blocks) {
        return Ok(map);
    }
    let unknown = || {
        let main = blocks
            .iter()
            .max_by_key(|(_, size)| *size)
            .map_or("none".to_owned(), |(name, _)| name.clone());
        map_error(format!(
            "guest memory map unknown for machine {} (largest RAM block: {main}): it must \
             be given as BLOCK@GPA",
            machine.unwrap_or("(none named in the stream)")
        ))
    };
    let board = Board::identify(machine, blocks).ok_or_else(unknown)?;
    let size = blocks
        .iter()
        .find(|(name, _)| name == board.ram_block())
        .map(|(_, size)| *size)
        .ok_or_else(unknown)?;
    let mut map = match machine {
        Some(machine) => board.ram_map(machine, size),
        // Without a machine type pc and q35 differ above 2 GiB only.
        None if board == Board::X86Pc && size > 0x8000_0000 => {
            return Err(map_error(
                "no machine type in the stream and pc.ram over 2 GiB: the map must be given \
                 as BLOCK@GPA"
                    .to_owned(),
            ))
        }
        None => {
            let mut map = board.ram_map("no machine type in the stream", size);
            if board == Board::X86Pc {
                map.how = "no machine type in the stream; pc.ram of at most 2 GiB sits at \
                           address 0 on both pc and q35"
                    .to_owned();
            }
            map
        }
    };
    // The BIOS flash ends at 4 GiB (QEMU maps the whole pc.bios block there).
    if let Some(firmware) = board.firmware_below_4g() {
        if let Some(&(_, len)) = blocks.iter().find(|(name, _)| name == firmware) {
            if let Some(gpa) = (1u64 << 32).checked_sub(len) {
                map.regions.push(MapRegion {
                    block: firmware.to_owned(),
                    block_offset: 0,
                    gpa,
                    len,
                });
                map.how.push_str(&format!("; {firmware} below 4 GiB"));
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_maps_split_at_the_low_memory_limit() {
        let pc_ram = |size: u64| vec![("pc.ram".to_owned(), size)];
        let small = derived_map(Some("pc-q35-7.2"), &pc_ram(128 << 20)).unwrap();
        assert_eq!(small.regions.len(), 1);
        assert_eq!((small.regions[0].gpa, small.regions[0].len), (0, 128 << 20));
        let big = derived_map(Some("pc-q35-7.2"), &pc_ram(4 << 30)).unwrap();
        assert_eq!(big.regions[0].len, 0x8000_0000);
        assert_eq!(
            (big.regions[1].gpa, big.regions[1].block_offset),
            (1 << 32, 0x8000_0000)
        );
        let pc = derived_map(Some("pc-i440fx-7.2"), &pc_ram(4 << 30)).unwrap();
        assert_eq!(pc.regions[0].len, 0xc000_0000);
        assert!(derived_map(None, &pc_ram(4 << 30)).is_err());
        assert!(derived_map(Some("sun4u"), &[("sun4u.ram".to_owned(), 1 << 30)]).is_err());
    }

    /// The range test, page by page: what `check_range` computes a region and a bitmap word
    /// at a time.
    fn range_by_pages(ram: &GuestRam<'_>, gpa: u64, len: u64, need_known: bool) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut at = gpa;
        loop {
            let Some((region, within)) = ram.locate_gpa(at) else {
                return false;
            };
            if need_known && !ram.is_known((region, within / ram.page_size)) {
                return false;
            }
            at = (at / ram.page_size + 1) * ram.page_size;
            if at >= end {
                return true;
            }
        }
    }

    #[test]
    fn range_tests_agree_with_a_page_by_page_walk() {
        let gz =
            include_bytes!("../../../tests/fixtures/rings/qemu7.2-blk-inflight-split.rings.mig.gz");
        let data = crate::stream::decompress_if_gzip(gz, 1 << 30).unwrap();
        let stream = crate::stream::read(&data).unwrap();
        let map = map_for(&stream, &[], None).unwrap();
        let ram = GuestRam::from_stream(&stream, &data, map, &mut |_| {}).unwrap();
        let size: u64 = ram.map.regions.iter().map(|r| r.len).sum();
        let page = ram.page_size;
        let known: Vec<u64> = (0..size / page)
            .filter(|&p| ram.is_known((0, p)))
            .map(|p| p * page)
            .collect();
        assert!(!known.is_empty(), "the fixture carries ring pages");
        let mut starts = vec![0, 1, page - 1, page, size - 1, size, size + 1, u64::MAX];
        for &k in &known {
            starts.extend([k, k + 1, k + page - 1, k.saturating_sub(1), k + page]);
        }
        let lens = [
            0,
            1,
            2,
            page - 1,
            page,
            page + 1,
            63 * page,
            65 * page,
            1 << 32,
            u64::MAX,
        ];
        for &gpa in &starts {
            for &len in &lens {
                for need_known in [false, true] {
                    assert_eq!(
                        ram.check_range(gpa, len, need_known).is_ok(),
                        range_by_pages(&ram, gpa, len, need_known),
                        "gpa {gpa:#x} len {len:#x} need_known {need_known}"
                    );
                }
            }
        }
    }

    #[test]
    fn explicit_maps_parse_and_are_checked() {
        let blocks = vec![("mach-virt.ram".to_owned(), 1u64 << 30)];
        let map = RamMap::parse("mach-virt.ram@0x40000000", &blocks).unwrap();
        assert_eq!(map.regions[0].gpa, 0x4000_0000);
        assert_eq!(map.regions[0].len, 1 << 30);
        let map = RamMap::parse("mach-virt.ram+0x1000:0x2000@0", &blocks).unwrap();
        assert_eq!(
            (map.regions[0].block_offset, map.regions[0].len),
            (0x1000, 0x2000)
        );
        assert!(RamMap::parse("nope@0", &blocks).is_err());
        assert!(RamMap::parse("mach-virt.ram+0:0x80000000@0", &blocks).is_err());
        assert!(RamMap::parse("mach-virt.ram", &blocks).is_err());
    }
}
