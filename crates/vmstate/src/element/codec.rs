//! Decoding and encoding one element in a given layout.

use super::layout::{Geometry, Layout, VIRTQUEUE_MAX_SIZE};
use super::{Element, Segment};
use crate::error::{Error, ErrorKind, Result};
use crate::note::Note;
use crate::wire::{Reader, Writer};

/// Bytes of one array of 1024 guest addresses.
const ADDRESS_ARRAY_SIZE: usize = VIRTQUEUE_MAX_SIZE * 8;

/// An element decoded from bytes, with what the decoder noticed on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The element.
    pub element: Element,
    /// Facts about the bytes that are not defects: stale data in unused slots, host pointers
    /// in `iov_base`, non-zero padding. The stable encoder writes zeros in all of these.
    pub notes: Vec<Note>,
}

/// Reads one element of `layout` from `reader`, consuming exactly `layout.size()` bytes.
///
/// Fails when the input ends early, when `out_num` or `in_num` exceeds 1024 or their sum
/// does, and when a segment's `addr + len` overflows 64 bits; each error names the field and
/// its offset. Nothing is allocated before the counts have been checked.
pub fn decode(reader: &mut Reader<'_>, layout: Layout) -> Result<Decoded> {
    let g = layout.geometry();
    let mut notes = Vec::new();
    let start = reader.offset();

    let index = reader.u32(g.endian, "index")?;
    let out_num_offset = reader.offset();
    let out_num = reader.u32(g.endian, "out_num")?;
    let in_num_offset = reader.offset();
    let in_num = reader.u32(g.endian, "in_num")?;
    let (out_num, in_num) = check_counts(
        u64::from(out_num),
        u64::from(in_num),
        out_num_offset,
        in_num_offset,
    )?;

    let padding = reader.sub_reader(g.in_addr.saturating_sub(12), "padding")?;
    note_non_zero(&padding, "padding", "padding after in_num", &mut notes);

    let in_addrs = read_addresses(reader, in_num, &g, "in_addr", &mut notes)?;
    let out_addrs = read_addresses(reader, out_num, &g, "out_addr", &mut notes)?;
    let device_writable = read_iovecs(reader, &in_addrs, &g, "in_sg", &mut notes)?;
    let device_readable = read_iovecs(reader, &out_addrs, &g, "out_sg", &mut notes)?;

    // The arrays end exactly at the struct's size in every layout; this catches a geometry
    // table that says otherwise rather than reading the next field of the stream.
    let consumed = reader.offset().saturating_sub(start);
    if consumed != g.size as u64 {
        return Err(Error::new(
            ErrorKind::InvalidValue {
                value: consumed,
                expected: "the layout's size",
            },
            start,
            "element",
        ));
    }

    Ok(Decoded {
        element: Element {
            index,
            device_readable,
            device_writable,
        },
        notes,
    })
}

/// Writes `element` in `layout`: the counts, the addresses and lengths in their slots, and
/// zeros everywhere else (padding, unused slots, every `iov_base`), so that the output for a
/// given element and layout is always the same bytes.
///
/// Fails when a count exceeds 1024 or the two together do, when `addr + len` overflows, or
/// when a length does not fit the layout's 32-bit `size_t`.
pub fn encode(element: &Element, layout: Layout, writer: &mut Writer) -> Result<()> {
    let g = layout.geometry();
    let start = writer.offset();
    check_counts(
        element.device_readable.len() as u64,
        element.device_writable.len() as u64,
        start.saturating_add(g.out_num as u64),
        start.saturating_add(g.in_num as u64),
    )?;
    for (segments, name, array_offset) in [
        (&element.device_writable, "in_sg", g.in_sg),
        (&element.device_readable, "out_sg", g.out_sg),
    ] {
        for (k, segment) in segments.iter().enumerate() {
            let len_offset = k
                .saturating_mul(g.iovec_size)
                .saturating_add(array_offset)
                .saturating_add(g.word_size) as u64;
            check_segment(
                segment,
                || format!("{name}[{k}].iov_len"),
                start.saturating_add(len_offset),
            )?;
        }
    }

    writer.u32(g.endian, element.index);
    // Both counts are at most 1024 (checked above), so they fit in 32 bits.
    writer.u32(g.endian, element.device_readable.len() as u32);
    writer.u32(g.endian, element.device_writable.len() as u32);
    writer.zeros(g.in_addr.saturating_sub(12));
    for segments in [&element.device_writable, &element.device_readable] {
        for segment in segments {
            writer.u64(g.endian, segment.addr);
        }
        writer.zeros(ADDRESS_ARRAY_SIZE.saturating_sub(segments.len().saturating_mul(8)));
    }
    for (segments, name) in [
        (&element.device_writable, "in_sg"),
        (&element.device_readable, "out_sg"),
    ] {
        for (k, segment) in segments.iter().enumerate() {
            writer.zeros(g.word_size);
            writer
                .uint(g.word_size, g.endian, segment.len, "")
                .map_err(|e| {
                    Error::new(e.kind().clone(), e.offset(), format!("{name}[{k}].iov_len"))
                })?;
        }
        writer.zeros(
            g.iovec_size
                .saturating_mul(VIRTQUEUE_MAX_SIZE.saturating_sub(segments.len())),
        );
    }
    Ok(())
}

/// Bounds the two counters as QEMU's loader should: each at most 1024 and, since both come
/// from one descriptor chain of a queue of at most 1024 entries, their sum too.
fn check_counts(
    out_num: u64,
    in_num: u64,
    out_num_offset: u64,
    in_num_offset: u64,
) -> Result<(usize, usize)> {
    let max = VIRTQUEUE_MAX_SIZE as u64;
    for (value, offset, field) in [
        (out_num, out_num_offset, "out_num"),
        (in_num, in_num_offset, "in_num"),
    ] {
        if value > max {
            return Err(Error::new(
                ErrorKind::CountTooLarge { value, max },
                offset,
                field,
            ));
        }
    }
    if out_num.saturating_add(in_num) > max {
        return Err(Error::new(
            ErrorKind::CountSumTooLarge {
                first: out_num,
                second: in_num,
                max,
            },
            out_num_offset,
            "out_num+in_num",
        ));
    }
    // Both are at most 1024 here.
    Ok((out_num as usize, in_num as usize))
}

/// Fails when the segment's range passes the end of the address space.
fn check_segment(segment: &Segment, field: impl Fn() -> String, offset: u64) -> Result<()> {
    match segment.addr.checked_add(segment.len) {
        Some(_) => Ok(()),
        None => Err(Error::new(
            ErrorKind::AddressOverflow {
                addr: segment.addr,
                len: segment.len,
            },
            offset,
            field(),
        )),
    }
}

/// Reads one 1024-slot address array, keeping the first `count` entries.
fn read_addresses(
    reader: &mut Reader<'_>,
    count: usize,
    g: &Geometry,
    field: &str,
    notes: &mut Vec<Note>,
) -> Result<Vec<u64>> {
    let mut array = reader.sub_reader(ADDRESS_ARRAY_SIZE, field)?;
    let mut addrs = Vec::with_capacity(count);
    for _ in 0..count {
        addrs.push(array.u64(g.endian, field)?);
    }
    note_non_zero(&array, field, "unused slots past the count", notes);
    Ok(addrs)
}

/// Reads one 1024-slot iovec array, pairing the first entries' lengths with `addrs`.
fn read_iovecs(
    reader: &mut Reader<'_>,
    addrs: &[u64],
    g: &Geometry,
    field: &str,
    notes: &mut Vec<Note>,
) -> Result<Vec<Segment>> {
    let mut array = reader.sub_reader(g.iovec_size.saturating_mul(VIRTQUEUE_MAX_SIZE), field)?;
    let mut segments = Vec::with_capacity(addrs.len());
    let mut pointers = 0usize;
    let mut first_pointer = None;
    for (k, &addr) in addrs.iter().enumerate() {
        let base_offset = array.offset();
        if array.uint(g.word_size, g.endian, field)? != 0 {
            pointers = pointers.saturating_add(1);
            first_pointer.get_or_insert(base_offset);
        }
        let len_offset = array.offset();
        let len = array.uint(g.word_size, g.endian, field)?;
        let segment = Segment { addr, len };
        check_segment(&segment, || format!("{field}[{k}].iov_len"), len_offset)?;
        segments.push(segment);
    }
    if let Some(offset) = first_pointer {
        notes.push(Note::new(
            offset,
            format!("{field}.iov_base"),
            format!(
                "{pointers} iov_base pointer(s) are not zero: host addresses left by a legacy \
                 writer, ignored"
            ),
        ));
    }
    note_non_zero(&array, field, "unused slots past the count", notes);
    Ok(segments)
}

/// Adds a note when the unread rest of `region` holds any non-zero byte.
fn note_non_zero(region: &Reader<'_>, field: &str, what: &str, notes: &mut Vec<Note>) {
    if let Some((first, last)) = region.non_zero_span() {
        notes.push(Note::new(
            first,
            field,
            format!("{what} hold non-zero bytes (up to offset {last}): stale data, ignored"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Element {
        Element {
            index: 7,
            device_readable: vec![
                Segment {
                    addr: 0x232cd00,
                    len: 16,
                },
                Segment {
                    addr: 0x1c42000,
                    len: 122_880,
                },
            ],
            device_writable: vec![Segment {
                addr: 0x232cd10,
                len: 1,
            }],
        }
    }

    #[test]
    fn round_trips_in_every_layout() {
        for layout in Layout::ALL {
            let mut w = Writer::new();
            encode(&sample(), layout, &mut w).unwrap();
            assert_eq!(w.as_bytes().len(), layout.size(), "{layout}");
            let decoded = decode(&mut Reader::new(w.as_bytes()), layout).unwrap();
            assert_eq!(decoded.element, sample());
            assert!(decoded.notes.is_empty());
        }
    }

    #[test]
    fn counts_are_bounded_before_anything_is_read() {
        let mut bytes = vec![0u8; Layout::Stable.size()];
        bytes[8..12].copy_from_slice(&1025u32.to_le_bytes());
        let err = decode(&mut Reader::new(&bytes), Layout::Stable).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: 1025,
                max: 1024
            }
        );
        assert_eq!((err.path(), err.offset()), ("in_num", 8));
    }

    #[test]
    fn encoder_refuses_lengths_too_wide_for_32_bit_hosts() {
        let mut element = sample();
        element.device_readable[1].len = 1 << 32;
        let mut w = Writer::new();
        encode(&element, Layout::Stable, &mut w).unwrap();
        let err = encode(&element, Layout::I386, &mut Writer::new()).unwrap_err();
        assert_eq!(err.path(), "out_sg[1].iov_len");
        assert_eq!(err.offset(), 24_588 + 8 + 4);
    }
}
