//! Wire primitives: byte order, a zero-copy [`Reader`] and the [`Writer`] that mirrors it.
//!
//! Everything above this module (elements, the stream container, device state) reads and
//! writes through these two types, so that bounds checking and error reporting live in one
//! place.

mod reader;
mod writer;

pub use reader::Reader;
pub use writer::Writer;

/// Byte order of a multi-byte value on the wire.
///
/// QEMU's stream is big-endian throughout, except for data that it copies from host memory
/// (the legacy in-flight element), which has the byte order of the host that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    /// Least significant byte first.
    Little,
    /// Most significant byte first (network order, QEMU's `qemu_put_be*`).
    Big,
}

/// The `len` bytes of `data` at `offset`, when they lie within it: offsets and lengths read
/// from the input, checked once here.
pub(crate) fn slice(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    data.get(start..start.checked_add(usize::try_from(len).ok()?)?)
}

impl Endian {
    /// The 16-bit value of `bytes` in this byte order.
    pub fn u16(self, bytes: [u8; 2]) -> u16 {
        match self {
            Endian::Little => u16::from_le_bytes(bytes),
            Endian::Big => u16::from_be_bytes(bytes),
        }
    }

    /// The 32-bit value of `bytes` in this byte order.
    pub fn u32(self, bytes: [u8; 4]) -> u32 {
        match self {
            Endian::Little => u32::from_le_bytes(bytes),
            Endian::Big => u32::from_be_bytes(bytes),
        }
    }

    /// The 64-bit value of `bytes` in this byte order.
    pub fn u64(self, bytes: [u8; 8]) -> u64 {
        match self {
            Endian::Little => u64::from_le_bytes(bytes),
            Endian::Big => u64::from_be_bytes(bytes),
        }
    }
}
