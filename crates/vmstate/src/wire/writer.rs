//! A writer that mirrors [`Reader`](super::Reader).

use super::Endian;
use crate::error::{Error, ErrorKind, Result};

/// Appends fixed-width integers, counted strings and buffers to a growable buffer.
///
/// The writer's operations are the inverses of the reader's: what one writes, the other reads
/// back field for field. Writing fails only where a value cannot be represented (a counted
/// string longer than 255 bytes); the error names the field and the output offset.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// An empty writer that has room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// Offset of the next byte to be written.
    pub fn offset(&self) -> u64 {
        self.buf.len() as u64
    }

    /// The bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Gives up the bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Forgets the bytes written, keeping the room they took: offsets start at 0 again.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len().saturating_add(n), 0);
    }

    /// Appends one byte.
    pub fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    /// Appends one signed byte.
    pub fn i8(&mut self, value: i8) {
        self.bytes(&value.to_ne_bytes());
    }

    /// Appends a 16-bit unsigned integer.
    pub fn u16(&mut self, endian: Endian, value: u16) {
        match endian {
            Endian::Little => self.bytes(&value.to_le_bytes()),
            Endian::Big => self.bytes(&value.to_be_bytes()),
        }
    }

    /// Appends a 32-bit unsigned integer.
    pub fn u32(&mut self, endian: Endian, value: u32) {
        match endian {
            Endian::Little => self.bytes(&value.to_le_bytes()),
            Endian::Big => self.bytes(&value.to_be_bytes()),
        }
    }

    /// Appends a 64-bit unsigned integer.
    pub fn u64(&mut self, endian: Endian, value: u64) {
        match endian {
            Endian::Little => self.bytes(&value.to_le_bytes()),
            Endian::Big => self.bytes(&value.to_be_bytes()),
        }
    }

    /// Appends a 16-bit signed integer.
    pub fn i16(&mut self, endian: Endian, value: i16) {
        self.u16(endian, u16::from_ne_bytes(value.to_ne_bytes()));
    }

    /// Appends a 32-bit signed integer.
    pub fn i32(&mut self, endian: Endian, value: i32) {
        self.u32(endian, u32::from_ne_bytes(value.to_ne_bytes()));
    }

    /// Appends a 64-bit signed integer.
    pub fn i64(&mut self, endian: Endian, value: i64) {
        self.u64(endian, u64::from_ne_bytes(value.to_ne_bytes()));
    }

    /// Appends an unsigned integer of `width` bytes (1, 2, 4 or 8); fails when `value` does
    /// not fit that width.
    pub fn uint(&mut self, width: usize, endian: Endian, value: u64, field: &str) -> Result<()> {
        let too_wide = |bits: u32| {
            Error::new(
                ErrorKind::ValueTooWide { value, bits },
                self.offset(),
                field,
            )
        };
        match width {
            1 => self.u8(u8::try_from(value).map_err(|_| too_wide(8))?),
            2 => self.u16(endian, u16::try_from(value).map_err(|_| too_wide(16))?),
            4 => self.u32(endian, u32::try_from(value).map_err(|_| too_wide(32))?),
            8 => self.u64(endian, value),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidValue {
                        value: other as u64,
                        expected: "an integer width of 1, 2, 4 or 8 bytes",
                    },
                    self.offset(),
                    field,
                ))
            }
        }
        Ok(())
    }

    /// Appends a counted string: a one-byte length, then the bytes.
    pub fn counted_bytes(&mut self, data: &[u8], field: &str) -> Result<()> {
        let len = u8::try_from(data.len()).map_err(|_| {
            Error::new(
                ErrorKind::ValueTooWide {
                    value: data.len() as u64,
                    bits: 8,
                },
                self.offset(),
                field,
            )
        })?;
        self.u8(len);
        self.bytes(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Reader;

    #[test]
    fn writer_and_reader_agree() {
        let mut w = Writer::new();
        w.u8(0xab);
        w.i8(-3);
        w.u16(Endian::Big, 0x1234);
        w.u32(Endian::Little, 0xdead_beef);
        w.u64(Endian::Big, u64::MAX - 1);
        w.i16(Endian::Little, -2);
        w.i32(Endian::Big, i32::MIN);
        w.i64(Endian::Little, -5);
        w.counted_bytes(b"pc.ram", "idstr").unwrap();
        w.zeros(3);
        w.uint(2, Endian::Little, 0x0102, "u").unwrap();
        let bytes = w.into_bytes();

        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 0xab);
        assert_eq!(r.i8("b").unwrap(), -3);
        assert_eq!(r.u16(Endian::Big, "c").unwrap(), 0x1234);
        assert_eq!(r.u32(Endian::Little, "d").unwrap(), 0xdead_beef);
        assert_eq!(r.u64(Endian::Big, "e").unwrap(), u64::MAX - 1);
        assert_eq!(r.i16(Endian::Little, "f").unwrap(), -2);
        assert_eq!(r.i32(Endian::Big, "g").unwrap(), i32::MIN);
        assert_eq!(r.i64(Endian::Little, "h").unwrap(), -5);
        assert_eq!(r.counted_bytes("idstr").unwrap(), b"pc.ram");
        assert_eq!(r.bytes(3, "z").unwrap(), &[0, 0, 0]);
        assert_eq!(r.uint(2, Endian::Little, "u").unwrap(), 0x0102);
        r.expect_end("all").unwrap();
    }

    #[test]
    fn counted_string_over_255_bytes_is_refused() {
        let mut w = Writer::new();
        w.u8(0);
        let err = w.counted_bytes(&[b'x'; 256], "idstr").unwrap_err();
        assert_eq!(err.offset(), 1);
        assert_eq!(err.path(), "idstr");
        assert_eq!(w.offset(), 1);
    }

    #[test]
    fn uint_refuses_values_wider_than_the_field() {
        let mut w = Writer::new();
        let err = w.uint(4, Endian::Big, 1 << 32, "len").unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::ValueTooWide {
                value: 1 << 32,
                bits: 32
            }
        );
    }
}
