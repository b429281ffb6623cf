//! A zero-copy reader over a byte slice.

use super::Endian;
use crate::error::{Error, ErrorKind, Result};

/// Reads fixed-width integers, counted strings and buffers from a borrowed byte slice.
///
/// Every read names the field it reads; a failed read returns an [`Error`] carrying that name
/// and the absolute offset of the field, so that nested readers (see [`Reader::sub_reader`])
/// report positions in the outermost input. Buffers are returned as sub-slices of the input:
/// nothing is copied and nothing is allocated by a length that came from the input.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    base: u64,
    /// The input goes on past `data` (a window of input still arriving): what a short peek
    /// would decide is not decided yet.
    open_ended: bool,
}

impl<'a> Reader<'a> {
    /// A reader over `data`, whose first byte is at offset 0.
    pub fn new(data: &'a [u8]) -> Self {
        Reader::at(data, 0)
    }

    /// A reader over `data`, whose first byte lies at absolute offset `base` of a larger input.
    pub fn at(data: &'a [u8], base: u64) -> Self {
        Reader {
            data,
            pos: 0,
            base,
            open_ended: false,
        }
    }

    /// A reader over the part of an input that has arrived, at absolute offset `base`: where
    /// [`Reader::lookahead`] needs bytes beyond it, it fails as a read past the end does, so
    /// that the caller reads again once more has arrived.
    pub fn window(data: &'a [u8], base: u64) -> Self {
        Reader {
            open_ended: true,
            ..Reader::at(data, base)
        }
    }

    /// Absolute offset of the next byte to be read.
    pub fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// Absolute offset just past the reader's last byte.
    pub fn data_len(&self) -> u64 {
        self.base.saturating_add(self.data.len() as u64)
    }

    /// The `len` bytes at absolute offset `offset`, wherever the reader stands, when they lie
    /// within its data.
    pub fn absolute(&self, offset: u64, len: u64) -> Option<&'a [u8]> {
        let start = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.data
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes not yet read, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.data.get(self.pos..).unwrap_or(&[])
    }

    /// Where the non-zero bytes among those not yet read begin and end: the absolute offsets
    /// (like [`Reader::offset`]) of the first and of the last, or `None` when all are zero.
    pub fn non_zero_span(&self) -> Option<(u64, u64)> {
        let rest = self.rest();
        let first = non_zero_index(rest, false)?;
        let last = non_zero_index(rest, true).unwrap_or(first);
        let absolute = |i: usize| self.offset().saturating_add(i as u64);
        Some((absolute(first), absolute(last)))
    }

    /// Up to `n` next bytes without consuming them (fewer when the input ends sooner).
    pub fn peek(&self, n: usize) -> &'a [u8] {
        let rest = self.rest();
        rest.get(..n).unwrap_or(rest)
    }

    /// Whether this is a [`Reader::window`] of input still arriving.
    pub fn is_window(&self) -> bool {
        self.open_ended
    }

    /// Up to `n` next bytes without consuming them, for a decision that looks ahead: fewer
    /// only where the input really ends; in a [`Reader::window`] that holds fewer, an
    /// [`ErrorKind::UnexpectedEof`] error.
    pub fn lookahead(&self, n: usize, field: &str) -> Result<&'a [u8]> {
        let ahead = self.peek(n);
        if ahead.len() < n && self.open_ended {
            return Err(self.eof(n, field));
        }
        Ok(ahead)
    }

    /// An error of `kind` for `field` at the current offset.
    pub fn error(&self, kind: ErrorKind, field: &str) -> Error {
        Error::new(kind, self.offset(), field)
    }

    /// Takes the next `n` bytes as a borrowed slice.
    pub fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.data.get(self.pos..end).map(|s| (s, end))) {
            Some((slice, end)) => {
                self.pos = end;
                Ok(slice)
            }
            None => Err(self.eof(n, field)),
        }
    }

    /// The error for `n` bytes of `field` that the input does not hold.
    fn eof(&self, n: usize, field: &str) -> Error {
        self.error(
            ErrorKind::UnexpectedEof {
                needed: n as u64,
                available: self.remaining() as u64,
            },
            field,
        )
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        // Every integer read comes through here: one bounds test, not a slice and a copy.
        match self.rest().first_chunk::<N>() {
            Some(chunk) => {
                self.pos = self.pos.saturating_add(N);
                Ok(*chunk)
            }
            None => Err(self.eof(N, field)),
        }
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, field: &str) -> Result<()> {
        self.bytes(n, field).map(|_| ())
    }

    /// Splits off the next `n` bytes as a reader of their own, which reports offsets in this
    /// reader's terms.
    pub fn sub_reader(&mut self, n: usize, field: &str) -> Result<Reader<'a>> {
        let base = self.offset();
        Ok(Reader::at(self.bytes(n, field)?, base))
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(u8::from_ne_bytes(self.array(field)?))
    }

    /// Reads one signed byte.
    pub fn i8(&mut self, field: &str) -> Result<i8> {
        Ok(i8::from_ne_bytes(self.array(field)?))
    }

    /// Reads a 16-bit unsigned integer.
    pub fn u16(&mut self, endian: Endian, field: &str) -> Result<u16> {
        Ok(endian.u16(self.array(field)?))
    }

    /// Reads a 32-bit unsigned integer.
    pub fn u32(&mut self, endian: Endian, field: &str) -> Result<u32> {
        Ok(endian.u32(self.array(field)?))
    }

    /// Reads a 64-bit unsigned integer.
    pub fn u64(&mut self, endian: Endian, field: &str) -> Result<u64> {
        Ok(endian.u64(self.array(field)?))
    }

    /// Reads a 16-bit signed integer.
    pub fn i16(&mut self, endian: Endian, field: &str) -> Result<i16> {
        Ok(i16::from_ne_bytes(self.u16(endian, field)?.to_ne_bytes()))
    }

    /// Reads a 32-bit signed integer.
    pub fn i32(&mut self, endian: Endian, field: &str) -> Result<i32> {
        Ok(i32::from_ne_bytes(self.u32(endian, field)?.to_ne_bytes()))
    }

    /// Reads a 64-bit signed integer.
    pub fn i64(&mut self, endian: Endian, field: &str) -> Result<i64> {
        Ok(i64::from_ne_bytes(self.u64(endian, field)?.to_ne_bytes()))
    }

    /// Reads an unsigned integer of `width` bytes (1, 2, 4 or 8), widened to 64 bits.
    pub fn uint(&mut self, width: usize, endian: Endian, field: &str) -> Result<u64> {
        match width {
            1 => self.u8(field).map(u64::from),
            2 => self.u16(endian, field).map(u64::from),
            4 => self.u32(endian, field).map(u64::from),
            8 => self.u64(endian, field),
            other => Err(self.error(
                ErrorKind::InvalidValue {
                    value: other as u64,
                    expected: "an integer width of 1, 2, 4 or 8 bytes",
                },
                field,
            )),
        }
    }

    /// Reads a counted string: a one-byte length, then that many bytes.
    pub fn counted_bytes(&mut self, field: &str) -> Result<&'a [u8]> {
        let start = self.pos;
        let len = self.u8(field)?;
        match self.bytes(usize::from(len), field) {
            Ok(s) => Ok(s),
            Err(e) => {
                // Report the string from its length byte, where the caller can find it.
                self.pos = start;
                Err(Error::new(e.kind().clone(), self.offset(), field))
            }
        }
    }

    /// Checks that a count read from the input can describe items of `item_size` bytes
    /// without running past the input, and returns it as a `usize` fit for an allocation.
    ///
    /// Call this before sizing any buffer or vector by a count that came from the input.
    pub fn check_count(&self, count: u64, item_size: u64, field: &str) -> Result<usize> {
        let needed = count.checked_mul(item_size);
        let available = self.remaining() as u64;
        match needed {
            Some(needed) if needed <= available => usize::try_from(count).map_err(|_| {
                self.error(
                    ErrorKind::CountTooLarge {
                        value: count,
                        max: usize::MAX as u64,
                    },
                    field,
                )
            }),
            _ => Err(self.error(
                ErrorKind::UnexpectedEof {
                    needed: needed.unwrap_or(u64::MAX),
                    available,
                },
                field,
            )),
        }
    }

    /// Fails with [`ErrorKind::TrailingBytes`] unless every byte has been read.
    pub fn expect_end(&self, field: &str) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(self.error(
                ErrorKind::TrailingBytes {
                    count: count as u64,
                },
                field,
            )),
        }
    }
}

/// The index of the first (or, `from_back`, the last) non-zero byte of `bytes`.
///
/// Saved elements are mostly zero-filled slots (tens of KiB each) and every one of them is
/// scanned, so the search compares whole blocks with a zero block (one `bcmp` each) and
/// narrows from 4 KiB blocks to 64-byte blocks to the byte, rather than testing each byte.
fn non_zero_index(bytes: &[u8], from_back: bool) -> Option<usize> {
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut start = 0usize;
    let mut window = bytes;
    for size in [ZEROS.len(), 64, 1] {
        let block = |k: usize| {
            let from = k.saturating_mul(size);
            let to = from.saturating_add(size).min(window.len());
            (from, window.get(from..to).unwrap_or_default())
        };
        let holds_data = |(_, b): &(usize, &[u8])| ZEROS.get(..b.len()) != Some(*b);
        let blocks = 0..window.len().div_ceil(size);
        let (from, found) = if from_back {
            blocks.rev().map(block).find(holds_data)?
        } else {
            blocks.map(block).find(holds_data)?
        };
        start = start.saturating_add(from);
        window = found;
    }
    Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_byte_orders() {
        let data = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
        let mut r = Reader::new(&data);
        assert_eq!(r.u16(Endian::Big, "a").unwrap(), 0x0102);
        assert_eq!(r.u16(Endian::Little, "b").unwrap(), 0x0403);
        assert_eq!(r.u32(Endian::Big, "c").unwrap(), 0x05060708);
        assert!(r.is_empty());
        let mut r = Reader::new(&data);
        assert_eq!(r.u64(Endian::Little, "d").unwrap(), 0x0807060504030201);
        let mut r = Reader::new(&data);
        assert_eq!(r.u64(Endian::Big, "d").unwrap(), 0x0102030405060708);
    }

    #[test]
    fn non_zero_span_is_found_across_blocks() {
        let mut data = vec![0u8; 9000];
        let r = Reader::at(&data, 1000);
        assert_eq!(r.non_zero_span(), None);
        data[5] = 1;
        data[8200] = 0x80;
        data[8998] = 2;
        let mut r = Reader::at(&data, 1000);
        assert_eq!(r.non_zero_span(), Some((1005, 9998)));
        r.skip(6, "lead").unwrap();
        assert_eq!(r.non_zero_span(), Some((9200, 9998)));
        r.skip(8200, "middle").unwrap();
        assert_eq!(r.non_zero_span(), Some((9998, 9998)));
        r.skip(793, "tail").unwrap();
        assert_eq!(r.non_zero_span(), None);
        assert_eq!(Reader::at(&[], 7).non_zero_span(), None);
    }

    #[test]
    fn non_zero_index_agrees_with_a_byte_scan() {
        for len in [0usize, 1, 63, 64, 65, 4095, 4096, 4097, 9000] {
            for marks in [
                vec![],
                vec![0],
                vec![len / 2],
                vec![3, len / 3, len.saturating_sub(1)],
            ] {
                let mut data = vec![0u8; len];
                for &m in &marks {
                    if let Some(b) = data.get_mut(m) {
                        *b = 0x10;
                    }
                }
                assert_eq!(
                    non_zero_index(&data, false),
                    data.iter().position(|&b| b != 0),
                    "first, len {len}, marks {marks:?}"
                );
                assert_eq!(
                    non_zero_index(&data, true),
                    data.iter().rposition(|&b| b != 0),
                    "last, len {len}, marks {marks:?}"
                );
            }
        }
    }

    #[test]
    fn signed_reads_keep_the_sign() {
        let data = [0xff, 0xff, 0xff, 0xfe];
        let mut r = Reader::new(&data);
        assert_eq!(r.i32(Endian::Big, "x").unwrap(), -2);
        let mut r = Reader::new(&data);
        assert_eq!(r.i8("x").unwrap(), -1);
        assert_eq!(r.i16(Endian::Little, "y").unwrap(), -1);
        assert_eq!(r.i8("z").unwrap(), -2);
    }

    #[test]
    fn eof_names_field_and_absolute_offset() {
        let data = [0u8; 6];
        let mut outer = Reader::at(&data, 100);
        outer.skip(2, "lead").unwrap();
        let mut inner = outer.sub_reader(4, "inner").unwrap();
        inner.u16(Endian::Big, "x").unwrap();
        let err = inner.u32(Endian::Big, "y").unwrap_err();
        assert_eq!(err.path(), "y");
        assert_eq!(err.offset(), 104);
        assert_eq!(
            err.kind(),
            &ErrorKind::UnexpectedEof {
                needed: 4,
                available: 2
            }
        );
    }

    #[test]
    fn counted_string_truncated_reports_its_start() {
        let data = [0x00, 5, b'a', b'b'];
        let mut r = Reader::new(&data);
        r.u8("pad").unwrap();
        let err = r.counted_bytes("idstr").unwrap_err();
        assert_eq!(err.offset(), 1);
        assert_eq!(r.offset(), 1);
        let data = [3, b'r', b'a', b'm'];
        assert_eq!(Reader::new(&data).counted_bytes("idstr").unwrap(), b"ram");
    }

    #[test]
    fn check_count_refuses_counts_beyond_the_input() {
        let data = [0u8; 16];
        let r = Reader::new(&data);
        assert_eq!(r.check_count(2, 8, "n").unwrap(), 2);
        assert!(r.check_count(3, 8, "n").is_err());
        assert!(r.check_count(u64::MAX, u64::MAX, "n").is_err());
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let data = [0u8; 4];
        let mut r = Reader::new(&data);
        r.skip(1, "a").unwrap();
        assert!(r.bytes(usize::MAX, "b").is_err());
        assert_eq!(r.offset(), 1);
    }

    #[test]
    fn trailing_bytes_are_reported() {
        let data = [1u8, 2];
        let mut r = Reader::new(&data);
        r.u8("a").unwrap();
        let err = r.expect_end("blob").unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::TrailingBytes { count: 1 });
        assert_eq!(err.offset(), 1);
    }
}
