//! VMState payloads: decoding through a description, and encoding back.
//!
//! Decoding follows `scripts/analyze-migration.py`: each described field is read as `size`
//! bytes of its type (integers big-endian, signed or unsigned by type name), `struct` fields
//! recurse, compressed arrays (`array_len`) repeat one description, and any type the
//! description cannot describe further (`virtio`, `buffer`, unknown names) is kept as raw bytes
//! with its place. Subsections are detected with QEMU's own peek rule (see
//! [`read_subsections`]), which is stricter than the script's.

use super::description::{FieldDescription, VmsdDescription};
use super::{Field, StructValue, Subsection, Value};
use crate::error::{Error, ErrorKind, Result};
use crate::subsection;
use crate::wire::{Endian, Reader, Writer};

/// Types that analyze-migration.py reads as signed integers.
const SIGNED_TYPES: &[&str] = &[
    "int8",
    "int16",
    "int32",
    "int32 equal",
    "int32 le",
    "int64",
    "int64 equal",
    "uint8 equal",
    "uint16 equal",
];
/// Types that analyze-migration.py reads as unsigned integers.
const UNSIGNED_TYPES: &[&str] = &["uint8", "uint16", "uint32", "uint32 equal", "uint64"];

/// Which of a description's subsections a struct must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subsections {
    /// Each one, once: a stream's own description lists the subsections that were sent.
    AsDescribed,
    /// Any of them: a description known in advance lists the subsections a struct may have.
    Optional,
}

/// Decodes a struct (a device section, a nested struct or a subsection) through `desc`.
pub(crate) fn decode_struct(r: &mut Reader, desc: &VmsdDescription) -> Result<StructValue> {
    decode_struct_as(r, desc, Subsections::AsDescribed)
}

/// Decodes a struct through `desc`, with its subsections required as `mode` says.
pub(crate) fn decode_struct_as(
    r: &mut Reader,
    desc: &VmsdDescription,
    mode: Subsections,
) -> Result<StructValue> {
    let mut fields = Vec::with_capacity(desc.fields.len());
    for field in &desc.fields {
        fields.push(decode_field(r, field, mode).map_err(|e| e.within(&field.name))?);
    }
    let subsections = match &desc.vmsd_name {
        Some(parent) => {
            // Each described subsection is expected once; a repeat is not in the description.
            let unused = std::cell::RefCell::new(desc.subsections.iter().collect::<Vec<_>>());
            let position = |name: &str| {
                unused
                    .borrow()
                    .iter()
                    .position(|s| s.vmsd_name.as_deref() == Some(name))
            };
            let found = read_subsections(
                r,
                parent,
                |name| position(name).is_some(),
                |name, r| {
                    let sub = position(name).map(|p| unused.borrow_mut().remove(p));
                    match sub {
                        Some(sub) => decode_struct_as(r, sub, mode),
                        None => Err(r.error(
                            ErrorKind::MissingSubsection {
                                name: name.to_owned(),
                            },
                            parent,
                        )),
                    }
                },
            )?;
            let unused = unused.into_inner();
            if let Some(missing) = unused.first().filter(|_| mode == Subsections::AsDescribed) {
                return Err(r.error(
                    ErrorKind::MissingSubsection {
                        name: missing.vmsd_name.clone().unwrap_or_default(),
                    },
                    parent,
                ));
            }
            found
        }
        None => Vec::new(),
    };
    Ok(StructValue {
        vmsd_name: desc.vmsd_name.clone(),
        fields,
        subsections,
    })
}

/// Reads the subsections that follow a struct, as QEMU's loader detects them (see
/// [`subsection::next_subsection`]): `is_known` says which names the parent has, and `decode`
/// reads the payload of each one found.
pub(crate) fn read_subsections(
    r: &mut Reader,
    parent: &str,
    is_known: impl Fn(&str) -> bool,
    mut decode: impl FnMut(&str, &mut Reader) -> Result<StructValue>,
) -> Result<Vec<Subsection>> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    while let Some(header) = subsection::next_subsection_if(r, parent, &is_known)? {
        subsection::first_time(&mut seen, &header)?;
        let state = decode(header.name, r).map_err(|e| e.within(header.name))?;
        out.push(Subsection {
            offset: header.offset,
            name: header.name.to_owned(),
            version: header.version,
            state,
        });
    }
    Ok(out)
}

fn decode_field(r: &mut Reader, desc: &FieldDescription, mode: Subsections) -> Result<Field> {
    let offset = r.offset();
    let value = match desc.array_len {
        Some(count) if desc.nested.is_none() && packs_as_uints(desc) => {
            let width = usize::try_from(desc.size).unwrap_or(0);
            let count = r.check_count(count, desc.size.max(1), &desc.name)?;
            super::budget::charge((count as u64).saturating_mul(8), offset, &desc.name)?;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                values.push(be_unsigned(r.bytes(width, &desc.name)?));
            }
            Value::Uints(values)
        }
        Some(count) => {
            let count = r.check_count(count, desc.size.max(1), &desc.name)?;
            // The count is bounded by the bytes left, but an element of the model is many
            // times its bytes: reserve a little and let the model budget bound the growth.
            let mut elements = Vec::with_capacity(count.min(1 << 12));
            for index in 0..count {
                let mut element = decode_element(r, desc, mode)?;
                element.index = Some(index as u64);
                elements.push(element);
            }
            Value::Array(elements)
        }
        None => return decode_element(r, desc, mode),
    };
    Ok(Field {
        name: desc.name.clone(),
        type_name: desc.type_name.clone(),
        index: None,
        offset,
        size: r.offset().saturating_sub(offset),
        value,
    })
}

fn decode_element(r: &mut Reader, desc: &FieldDescription, mode: Subsections) -> Result<Field> {
    let offset = r.offset();
    let name = desc.name.as_str();
    let value = if let Some(nested) = &desc.nested {
        Value::Struct(decode_struct_as(r, nested, mode)?)
    } else if desc.type_name == "capability" {
        let bytes = r.counted_bytes(name)?;
        match std::str::from_utf8(bytes) {
            Ok(text) => Value::Text(text.to_owned()),
            Err(_) => return Err(Error::new(ErrorKind::NotUtf8, offset, name)),
        }
    } else {
        let size = usize::try_from(desc.size).map_err(|_| {
            r.error(
                ErrorKind::CountTooLarge {
                    value: desc.size,
                    max: usize::MAX as u64,
                },
                name,
            )
        })?;
        let bytes = r.bytes(size, name)?;
        let type_name = desc.type_name.as_str();
        if type_name == "bool" && matches!(bytes, [0] | [1]) {
            Value::Bool(bytes == [1])
        } else if UNSIGNED_TYPES.contains(&type_name) && matches!(size, 1 | 2 | 4 | 8) {
            Value::Unsigned(be_unsigned(bytes))
        } else if SIGNED_TYPES.contains(&type_name) && matches!(size, 1 | 2 | 4 | 8) {
            Value::Signed(be_signed(bytes))
        } else {
            Value::Raw(bytes.to_vec())
        }
    };
    let heap = match &value {
        Value::Raw(bytes) => bytes.len(),
        Value::Text(text) => text.len(),
        _ => 0,
    };
    let cost = std::mem::size_of::<Field>()
        .saturating_add(desc.name.len())
        .saturating_add(desc.type_name.len())
        .saturating_add(heap);
    super::budget::charge(cost as u64, offset, name)?;
    Ok(Field {
        name: desc.name.clone(),
        type_name: desc.type_name.clone(),
        index: desc.index,
        offset,
        size: r.offset().saturating_sub(offset),
        value,
    })
}

/// Whether elements of a compressed array are unsigned integers of a width the model packs.
fn packs_as_uints(desc: &FieldDescription) -> bool {
    UNSIGNED_TYPES.contains(&desc.type_name.as_str()) && matches!(desc.size, 1 | 2 | 4 | 8)
}

fn be_unsigned(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0u64, |acc, &b| acc.wrapping_shl(8) | u64::from(b))
}

fn be_signed(bytes: &[u8]) -> i64 {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut wide = [if negative { 0xff } else { 0 }; 8];
    let start = 8usize.saturating_sub(bytes.len());
    if let Some(tail) = wide.get_mut(start..) {
        if tail.len() == bytes.len() {
            tail.copy_from_slice(bytes);
        }
    }
    i64::from_be_bytes(wide)
}

/// Writes a struct's fields, then its subsections.
pub(crate) fn encode_struct(w: &mut Writer, value: &StructValue) -> Result<()> {
    for field in &value.fields {
        encode_field(w, field).map_err(|e| e.within(&field.name))?;
    }
    for sub in &value.subsections {
        subsection::write_subsection_header(w, &sub.name, sub.version)?;
        encode_struct(w, &sub.state).map_err(|e| e.within(&sub.name))?;
    }
    Ok(())
}

fn encode_field(w: &mut Writer, field: &Field) -> Result<()> {
    let width = || {
        usize::try_from(field.size)
            .ok()
            .filter(|s| matches!(s, 1 | 2 | 4 | 8))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidValue {
                        value: field.size,
                        expected: "an integer width of 1, 2, 4 or 8 bytes",
                    },
                    w.offset(),
                    &field.name,
                )
            })
    };
    match &field.value {
        Value::Bool(b) => w.u8(u8::from(*b)),
        Value::Unsigned(v) => w.uint(width()?, Endian::Big, *v, &field.name)?,
        Value::Signed(v) => {
            let width = width()?;
            let bytes = v.to_be_bytes();
            let fits = be_signed(bytes.get(8usize.saturating_sub(width)..).unwrap_or(&[])) == *v;
            if !fits {
                return Err(Error::new(
                    ErrorKind::ValueTooWide {
                        value: u64::from_ne_bytes(v.to_ne_bytes()),
                        bits: u32::try_from(width.saturating_mul(8)).unwrap_or(u32::MAX),
                    },
                    w.offset(),
                    &field.name,
                ));
            }
            w.bytes(bytes.get(8usize.saturating_sub(width)..).unwrap_or(&[]));
        }
        Value::Text(text) => w.counted_bytes(text.as_bytes(), &field.name)?,
        Value::Raw(bytes) => w.bytes(bytes),
        Value::Struct(s) => encode_struct(w, s)?,
        Value::Array(elements) => {
            for element in elements {
                encode_field(w, element)?;
            }
        }
        Value::Uints(values) => {
            let width = u64::try_from(values.len())
                .ok()
                .filter(|&n| n > 0)
                .map_or(Some(1), |n| field.size.checked_div(n))
                .and_then(|w| usize::try_from(w).ok())
                .filter(|w| matches!(w, 1 | 2 | 4 | 8))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidValue {
                            value: field.size,
                            expected: "an integer array of 1, 2, 4 or 8 bytes per element",
                        },
                        w.offset(),
                        &field.name,
                    )
                })?;
            for value in values {
                w.uint(width, Endian::Big, *value, &field.name)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_are_sign_extended_from_their_width() {
        assert_eq!(be_signed(&[0xff, 0xfe]), -2);
        assert_eq!(be_signed(&[0x7f]), 127);
        assert_eq!(be_signed(&[0x80, 0, 0, 0]), i64::from(i32::MIN));
        assert_eq!(be_unsigned(&[0x12, 0x34]), 0x1234);
    }

    #[test]
    fn a_subsection_needs_the_parent_prefix_and_length() {
        // 0x05 followed by a short name is ordinary data of whatever follows.
        let data = [0x05, 0x02, b'a', b'b', 0, 0, 0, 1];
        let mut r = Reader::new(&data);
        let subs = read_subsections(
            &mut r,
            "parent",
            |_| false,
            |_, _| Ok(StructValue::default()),
        )
        .unwrap();
        assert!(subs.is_empty());
        assert_eq!(r.offset(), 0);
        // A prefixed name the parent does not know is an error.
        let mut data = vec![0x05, 10];
        data.extend_from_slice(b"parent/new");
        data.extend_from_slice(&[0, 0, 0, 1]);
        let mut r = Reader::new(&data);
        let err = read_subsections(
            &mut r,
            "parent",
            |_| false,
            |_, _| Ok(StructValue::default()),
        )
        .unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::UnknownSubsection { .. }));
        assert_eq!(err.offset(), 0);
    }
}
