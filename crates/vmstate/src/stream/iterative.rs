//! The iterative (live) sections other than RAM: their records read to their end marker.
//!
//! A START, PART, END or FULL section of an iterative handler carries records whose framing
//! only the handler knows; like device payloads they carry no length, so each format is read
//! record by record until its own end marker, with every count checked against the bytes
//! that remain. The model keeps what the records add up to and the payload's place; the
//! writer copies the payload from the input, as it does RAM pages.
//!
//! * `s390-storage_attributes` (`hw/s390x/s390-stattrib.c`): be64 words whose low 12 bits
//!   are flags: MORE (0x02, then be64 count and that many attribute bytes for the pages
//!   from the word's address), DONE (0x08), ERROR (0x04) and EOS (0x01), which ends the
//!   payload.
//! * `spapr/htab` (`hw/ppc/spapr.c`): a be32 header: the hash table's size as a shift, or
//!   -1 (no hash table: a radix guest), each of which is the whole payload; or 0, followed by
//!   chunks (be32 index, be16 valid, be16 invalid, 16 bytes per valid entry) up to an
//!   all-zero chunk.
//! * `block` (`migration/block.c`, block migration): be64 words of a sector number and
//!   flags (low 9 bits): DEVICE_BLOCK (0x01, then a counted device name and, unless
//!   ZERO_BLOCK (0x08), 1 MiB of data), PROGRESS (0x04) and EOS (0x02), which ends it.
//! * `dirty-bitmap` (`migration/block-dirty-bitmap.c`): a flags byte per record, then the
//!   node (0x08) and bitmap (0x04) names when flagged, then START's (0x10) be32 granularity
//!   and flags byte, or BITS' (0x40) first sector, sector count and, unless ZEROES (0x02),
//!   a be64-counted buffer; COMPLETE (0x20) has no body and EOS (0x01) ends the payload.

use serde::Serialize;

use super::Span;
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Reader};

/// Which iterative handler a section belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IterativeFormat {
    /// `s390-storage_attributes`.
    StorageAttributes,
    /// `spapr/htab`.
    Htab,
    /// `block`.
    Block,
    /// `dirty-bitmap`.
    DirtyBitmap,
}

impl IterativeFormat {
    /// The handler a section idstr names, if this crate reads it.
    pub fn of_idstr(idstr: &str) -> Option<Self> {
        match idstr {
            "s390-storage_attributes" => Some(IterativeFormat::StorageAttributes),
            "spapr/htab" => Some(IterativeFormat::Htab),
            "block" => Some(IterativeFormat::Block),
            "dirty-bitmap" => Some(IterativeFormat::DirtyBitmap),
            _ => None,
        }
    }
}

/// One section's payload of an iterative handler other than RAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IterativePayload {
    /// The handler.
    pub format: IterativeFormat,
    /// Where the payload is (the writer copies it from there).
    pub span: Span,
    /// Records read, the end marker included.
    pub records: u64,
    /// Bytes of data the records carry (attributes, hash table entries, disk blocks,
    /// bitmap bits), headers excluded.
    pub data_bytes: u64,
    /// What the payload says, in a few words.
    pub summary: String,
}

/// Reads the payload of a section of `format` up to and including its end marker.
pub fn read(r: &mut Reader, format: IterativeFormat) -> Result<IterativePayload> {
    let start = r.offset();
    let mut tally = Tally::default();
    let summary = match format {
        IterativeFormat::StorageAttributes => storage_attributes(r, &mut tally)?,
        IterativeFormat::Htab => htab(r, &mut tally)?,
        IterativeFormat::Block => block(r, &mut tally)?,
        IterativeFormat::DirtyBitmap => dirty_bitmap(r, &mut tally)?,
    };
    Ok(IterativePayload {
        format,
        span: Span {
            offset: start,
            len: r.offset().saturating_sub(start),
        },
        records: tally.records,
        data_bytes: tally.data,
        summary,
    })
}

#[derive(Default)]
struct Tally {
    records: u64,
    data: u64,
}

impl Tally {
    fn record(&mut self, data: u64) {
        self.records = self.records.saturating_add(1);
        self.data = self.data.saturating_add(data);
    }
}

fn bad(r: &Reader, field: &str, value: u64, expected: &'static str) -> Error {
    r.error(ErrorKind::InvalidValue { value, expected }, field)
}

/// Skips `len` bytes of data, checked against what remains.
fn data(r: &mut Reader, len: u64, field: &str) -> Result<u64> {
    let n = r.check_count(len, 1, field)?;
    r.skip(n, field)?;
    Ok(len)
}

fn storage_attributes(r: &mut Reader, tally: &mut Tally) -> Result<String> {
    const EOS: u64 = 0x01;
    const MORE: u64 = 0x02;
    const ERROR: u64 = 0x04;
    const DONE: u64 = 0x08;
    // s390x pages are 4 KiB: the flags sit in the low 12 bits of each word.
    const FLAG_MASK: u64 = 0xfff;
    let mut done = false;
    loop {
        let word = r.u64(Endian::Big, "stattr.word")?;
        match word & FLAG_MASK {
            MORE => {
                let count = r.u64(Endian::Big, "stattr.count")?;
                tally.record(data(r, count, "stattr.attributes")?);
            }
            DONE => {
                done = true;
                tally.record(0);
            }
            EOS => {
                tally.record(0);
                break;
            }
            ERROR => {
                return Err(bad(
                    r,
                    "stattr.word",
                    word,
                    "no ERROR flag (the source could not read the storage attributes)",
                ))
            }
            _ => {
                return Err(bad(
                    r,
                    "stattr.word",
                    word,
                    "flags MORE (0x02), DONE (0x08) or EOS (0x01)",
                ))
            }
        }
    }
    Ok(format!(
        "{} attribute byte(s){}",
        tally.data,
        if done { ", done" } else { "" }
    ))
}

fn htab(r: &mut Reader, tally: &mut Tally) -> Result<String> {
    const HPTE_SIZE: u64 = 16;
    let header = r.i32(Endian::Big, "htab.header")?;
    tally.record(0);
    match header {
        -1 => return Ok("no hash page table (radix guest)".to_owned()),
        0 => {}
        shift if (18..=46).contains(&shift) => {
            return Ok(format!("hash page table of 2^{shift} bytes"));
        }
        other => {
            return Err(bad(
                r,
                "htab.header",
                u64::from(other.unsigned_abs()),
                "a table size shift from 18 to 46, -1 (no table) or 0 (entries follow)",
            ))
        }
    }
    let (mut valid, mut invalid) = (0u64, 0u64);
    loop {
        let index = r.u32(Endian::Big, "htab.index")?;
        let n_valid = r.u16(Endian::Big, "htab.n_valid")?;
        let n_invalid = r.u16(Endian::Big, "htab.n_invalid")?;
        if (index, n_valid, n_invalid) == (0, 0, 0) {
            tally.record(0);
            break;
        }
        let bytes = u64::from(n_valid).saturating_mul(HPTE_SIZE);
        tally.record(data(r, bytes, "htab.entries")?);
        valid = valid.saturating_add(u64::from(n_valid));
        invalid = invalid.saturating_add(u64::from(n_invalid));
    }
    Ok(format!(
        "{valid} valid and {invalid} invalidated hash table entries"
    ))
}

fn block(r: &mut Reader, tally: &mut Tally) -> Result<String> {
    const DEVICE_BLOCK: u64 = 0x01;
    const EOS: u64 = 0x02;
    const PROGRESS: u64 = 0x04;
    const ZERO_BLOCK: u64 = 0x08;
    const FLAG_MASK: u64 = 0x1ff;
    const BLOCK_SIZE: u64 = 1 << 20;
    let (mut blocks, mut zero_blocks) = (0u64, 0u64);
    let mut devices: Vec<String> = Vec::new();
    loop {
        let word = r.u64(Endian::Big, "block.word")?;
        let flags = word & FLAG_MASK;
        if flags & DEVICE_BLOCK != 0 {
            let name = r.counted_bytes("block.device")?;
            let name = String::from_utf8_lossy(name).into_owned();
            if !name.is_empty() && !devices.contains(&name) && devices.len() < 64 {
                devices.push(name);
            }
            if flags & ZERO_BLOCK != 0 {
                zero_blocks = zero_blocks.saturating_add(1);
                tally.record(0);
            } else {
                blocks = blocks.saturating_add(1);
                tally.record(data(r, BLOCK_SIZE, "block.data")?);
            }
        } else if flags & PROGRESS != 0 || flags & EOS != 0 {
            tally.record(0);
        } else {
            return Err(bad(
                r,
                "block.word",
                word,
                "flags DEVICE_BLOCK (0x01), PROGRESS (0x04) or EOS (0x02)",
            ));
        }
        if flags & EOS != 0 {
            break;
        }
    }
    Ok(format!(
        "{blocks} block(s) of 1 MiB and {zero_blocks} zero block(s){}",
        if devices.is_empty() {
            String::new()
        } else {
            format!(" of {}", devices.join(", "))
        }
    ))
}

fn dirty_bitmap(r: &mut Reader, tally: &mut Tally) -> Result<String> {
    const EOS: u32 = 0x01;
    const ZEROES: u32 = 0x02;
    const BITMAP_NAME: u32 = 0x04;
    const DEVICE_NAME: u32 = 0x08;
    const START: u32 = 0x10;
    const COMPLETE: u32 = 0x20;
    const BITS: u32 = 0x40;
    const EXTRA_FLAGS: u32 = 0x80;
    let (mut bitmaps, mut chunks) = (0u64, 0u64);
    loop {
        let flags = u32::from(r.u8("dirty_bitmap.flags")?);
        if flags & EXTRA_FLAGS != 0 {
            // QEMU reads wider flags after this bit, but writes none.
            return Err(bad(
                r,
                "dirty_bitmap.flags",
                u64::from(flags),
                "one byte of flags without EXTRA_FLAGS (0x80), which QEMU never sets",
            ));
        }
        if flags & DEVICE_NAME != 0 {
            r.counted_bytes("dirty_bitmap.node_name")?;
        }
        if flags & BITMAP_NAME != 0 {
            r.counted_bytes("dirty_bitmap.bitmap_name")?;
        }
        if flags & START != 0 {
            r.u32(Endian::Big, "dirty_bitmap.granularity")?;
            r.u8("dirty_bitmap.bitmap_flags")?;
            bitmaps = bitmaps.saturating_add(1);
            tally.record(0);
        } else if flags & BITS != 0 {
            r.u64(Endian::Big, "dirty_bitmap.first_sector")?;
            r.u32(Endian::Big, "dirty_bitmap.nr_sectors")?;
            chunks = chunks.saturating_add(1);
            if flags & ZEROES != 0 {
                tally.record(0);
            } else {
                let len = r.u64(Endian::Big, "dirty_bitmap.buf_size")?;
                tally.record(data(r, len, "dirty_bitmap.bits")?);
            }
        } else if flags & (COMPLETE | EOS) != 0 {
            tally.record(0);
        } else {
            return Err(bad(
                r,
                "dirty_bitmap.flags",
                u64::from(flags),
                "START, BITS, COMPLETE or EOS",
            ));
        }
        if flags & EOS != 0 {
            break;
        }
    }
    Ok(format!(
        "{bitmaps} bitmap(s) started, {chunks} chunk(s) of bits"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(format: IterativeFormat, bytes: &[u8]) -> Result<IterativePayload> {
        let mut r = Reader::new(bytes);
        let payload = read(&mut r, format)?;
        assert_eq!(payload.span.len, bytes.len() as u64);
        Ok(payload)
    }

    #[test]
    fn storage_attributes_up_to_eos() {
        let mut b = Vec::new();
        b.extend_from_slice(&(0x5000u64 | 0x02).to_be_bytes());
        b.extend_from_slice(&3u64.to_be_bytes());
        b.extend_from_slice(&[1, 2, 3]);
        b.extend_from_slice(&0x08u64.to_be_bytes());
        b.extend_from_slice(&0x01u64.to_be_bytes());
        let p = read_all(IterativeFormat::StorageAttributes, &b).unwrap();
        assert_eq!((p.records, p.data_bytes), (3, 3));
        // A count past the end is an error, not an allocation.
        let mut b = (0x02u64).to_be_bytes().to_vec();
        b.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(read(&mut Reader::new(&b), IterativeFormat::StorageAttributes).is_err());
    }

    #[test]
    fn htab_header_or_chunks() {
        let p = read_all(IterativeFormat::Htab, &21i32.to_be_bytes()).unwrap();
        assert!(p.summary.contains("2^21"));
        let mut b = 0i32.to_be_bytes().to_vec();
        b.extend_from_slice(&[0, 0, 0, 4, 0, 2, 0, 1]);
        b.extend_from_slice(&[0xaa; 32]);
        b.extend_from_slice(&[0; 8]);
        let p = read_all(IterativeFormat::Htab, &b).unwrap();
        assert_eq!(p.data_bytes, 32);
        assert!(read(&mut Reader::new(&7i32.to_be_bytes()), IterativeFormat::Htab).is_err());
    }

    #[test]
    fn block_records() {
        let mut b = Vec::new();
        b.extend_from_slice(&((1u64 << 9) | 0x01 | 0x08).to_be_bytes());
        b.extend_from_slice(&[3, b'h', b'd', b'0']);
        b.extend_from_slice(&0x02u64.to_be_bytes());
        let p = read_all(IterativeFormat::Block, &b).unwrap();
        assert!(p.summary.contains("1 zero block"), "{}", p.summary);
        assert!(read(
            &mut Reader::new(&0x10u64.to_be_bytes()),
            IterativeFormat::Block
        )
        .is_err());
    }

    #[test]
    fn dirty_bitmap_records() {
        let mut b = vec![0x10 | 0x08 | 0x04, 2, b'n', b'0', 2, b'b', b'0'];
        b.extend_from_slice(&65536u32.to_be_bytes());
        b.push(0);
        b.push(0x40);
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(&128u32.to_be_bytes());
        b.extend_from_slice(&2u64.to_be_bytes());
        b.extend_from_slice(&[0xff, 0x0f]);
        b.push(0x20);
        b.push(0x01);
        let p = read_all(IterativeFormat::DirtyBitmap, &b).unwrap();
        assert_eq!(p.data_bytes, 2);
    }
}
