//! VMState descriptions known in advance, for state that a stream does not describe.
//!
//! A stream's JSON description covers its device sections, but not what QEMU writes inside
//! the opaque `virtio` field: there, nested VMState structs (virtio-ccw's subchannel, for
//! one) appear without a word about their shape. This module states such structs once, as
//! QEMU's sources define them, in the same model as a stream's own description, so that the
//! one description-driven decoder reads both. A known description lists the subsections a
//! struct *may* have; which of them a stream carries is read from its bytes.

use crate::error::Result;
use crate::stream::{FieldDescription, StructValue, VmsdDescription};
use crate::wire::{Reader, Writer};

/// A VMState struct: its name, its fields in order, and the subsections it may have.
#[derive(Debug)]
pub struct Vmsd {
    /// The VMState name (subsections of the struct are named after it).
    pub name: &'static str,
    /// The fields in order.
    pub fields: &'static [FieldSpec],
    /// Subsections the struct may carry after its fields.
    pub subsections: &'static [&'static Vmsd],
}

/// One field of a [`Vmsd`].
#[derive(Debug)]
pub struct FieldSpec {
    /// The field's name in QEMU's source.
    pub name: &'static str,
    /// What it holds.
    pub kind: Kind,
}

/// The kinds of field the known descriptions use.
#[derive(Debug)]
pub enum Kind {
    /// An unsigned big-endian integer of this many bytes (1, 2, 4 or 8).
    Uint(u8),
    /// A signed big-endian integer of this many bytes.
    Int(u8),
    /// A bool: one byte, 0 or 1.
    Bool,
    /// Bytes with no further structure (`VMSTATE_UINT8_ARRAY`, `VMSTATE_BUFFER`).
    Bytes(u32),
    /// An array of unsigned integers: count, then width in bytes.
    UintArray(u32, u8),
    /// A nested struct (`VMSTATE_STRUCT`, `VMSTATE_STRUCT_POINTER`, `VMSTATE_WITH_TMP`).
    Struct(&'static Vmsd),
    /// A fixed array of nested structs (`VMSTATE_STRUCT_ARRAY`).
    StructArray(u32, &'static Vmsd),
}

/// Shorthand for a field of a known description.
pub const fn field(name: &'static str, kind: Kind) -> FieldSpec {
    FieldSpec { name, kind }
}

impl Vmsd {
    /// The struct as a description of the model every decoder reads.
    pub fn description(&self) -> VmsdDescription {
        VmsdDescription {
            vmsd_name: Some(self.name.to_owned()),
            version: None,
            fields: self.fields.iter().map(FieldSpec::description).collect(),
            subsections: self.subsections.iter().map(|s| s.description()).collect(),
        }
    }

    /// Reads one instance of the struct, its subsections included, as QEMU's loader does.
    pub fn decode(&self, r: &mut Reader<'_>) -> Result<StructValue> {
        crate::stream::decode_known_struct(r, &self.description())
    }
}

impl FieldSpec {
    fn description(&self) -> FieldDescription {
        let scalar = |type_name: &str, size: u64| FieldDescription {
            name: self.name.to_owned(),
            type_name: type_name.to_owned(),
            size,
            array_len: None,
            index: None,
            nested: None,
        };
        let uint_type = |width: u8| match width {
            1 => "uint8",
            2 => "uint16",
            4 => "uint32",
            _ => "uint64",
        };
        match self.kind {
            Kind::Uint(width) => scalar(uint_type(width), u64::from(width)),
            Kind::Int(width) => scalar(
                match width {
                    1 => "int8",
                    2 => "int16",
                    4 => "int32",
                    _ => "int64",
                },
                u64::from(width),
            ),
            Kind::Bool => scalar("bool", 1),
            Kind::Bytes(len) => scalar("buffer", u64::from(len)),
            Kind::UintArray(count, width) => FieldDescription {
                array_len: Some(u64::from(count)),
                ..scalar(uint_type(width), u64::from(width))
            },
            Kind::Struct(vmsd) => FieldDescription {
                nested: Some(Box::new(vmsd.description())),
                ..scalar("struct", 0)
            },
            Kind::StructArray(count, vmsd) => FieldDescription {
                array_len: Some(u64::from(count)),
                nested: Some(Box::new(vmsd.description())),
                ..scalar("struct", 0)
            },
        }
    }
}

/// Writes a struct read through a known description back, byte for byte.
pub fn encode(w: &mut Writer, value: &StructValue) -> Result<()> {
    crate::stream::encode_known_struct(w, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    static INNER: Vmsd = Vmsd {
        name: "inner",
        fields: &[field("a", Kind::Uint(2)), field("b", Kind::Bool)],
        subsections: &[&INNER_EXTRA],
    };
    static INNER_EXTRA: Vmsd = Vmsd {
        name: "inner/extra",
        fields: &[field("c", Kind::Uint(4))],
        subsections: &[],
    };
    static OUTER: Vmsd = Vmsd {
        name: "outer",
        fields: &[
            field("x", Kind::Int(4)),
            field("inner", Kind::Struct(&INNER)),
            field("list", Kind::StructArray(2, &INNER)),
            field("words", Kind::UintArray(2, 4)),
            field("raw", Kind::Bytes(3)),
        ],
        subsections: &[],
    };

    #[test]
    fn optional_subsections_are_read_where_present_and_written_back() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0xfe, 0x12, 0x34, 1];
        // inner/extra after the first struct only.
        bytes.extend_from_slice(&[0x05, 11]);
        bytes.extend_from_slice(b"inner/extra");
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 9]);
        bytes.extend_from_slice(&[0, 1, 0, 0, 2, 1]);
        bytes.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 8, 0xa, 0xb, 0xc]);
        let mut r = Reader::new(&bytes);
        let value = OUTER.decode(&mut r).unwrap();
        assert_eq!(r.remaining(), 0);
        let inner = value.field("inner").unwrap();
        let crate::stream::Value::Struct(inner) = &inner.value else {
            panic!("not a struct")
        };
        assert_eq!(inner.subsections.len(), 1);
        let mut w = Writer::new();
        encode(&mut w, &value).unwrap();
        assert_eq!(w.into_bytes(), bytes);
    }

    #[test]
    fn a_subsection_the_struct_does_not_have_is_an_error() {
        let mut bytes = vec![0, 1, 0];
        bytes.extend_from_slice(&[0x05, 11]);
        bytes.extend_from_slice(b"inner/other");
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        assert!(INNER.decode(&mut Reader::new(&bytes)).is_err());
    }
}
