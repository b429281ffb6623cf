//! Typed device state inside a stream: the `virtio` field of each virtio device section,
//! decoded into a [`VirtioDevice`], and written back into the stream model after a change.
//!
//! This layer joins two lower ones: the stream model finds the field and its bytes, the
//! `virtio` decoder gives them meaning. Writing back encodes the typed state (never the old
//! bytes), puts the new bytes in the field, and, when their length changed, rewrites the
//! field's size in the stream's JSON description so that the description keeps matching.

use std::fmt;
use std::str::FromStr;

use crate::element::LayoutChoice;
use crate::error::{Error, ErrorKind, Result};
use crate::stream::{self, Command, Field, Record, Section, SectionBody, Stream, Value};
use crate::virtio::{Assumptions, DeviceKind, Framing, VirtioDevice};
use crate::wire::{Reader, Writer};

/// A device property stated on the command line because the stream does not carry it:
/// `SECTION:PROPERTY=VALUE`, such as `0000:00:01.0/virtio-blk:num-queues=2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assumption {
    /// The section's idstr.
    pub section: String,
    /// The property and its value.
    pub property: Property,
}

/// The device properties that can be assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property {
    /// `num-queues=N`.
    NumQueues(u32),
    /// `packed=on|off`.
    Packed(bool),
}

impl FromStr for Assumption {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let usage = || {
            format!(
                "'{text}' is not SECTION:PROPERTY=VALUE (num-queues=N or packed=on|off), \
                 e.g. 0000:00:01.0/virtio-blk:num-queues=2"
            )
        };
        let (section, setting) = text.rsplit_once(':').ok_or_else(usage)?;
        let (property, value) = setting.split_once('=').ok_or_else(usage)?;
        let property = match (property, value) {
            ("num-queues", n) => Property::NumQueues(n.parse().map_err(|_| usage())?),
            ("packed", "on" | "true" | "1") => Property::Packed(true),
            ("packed", "off" | "false" | "0") => Property::Packed(false),
            _ => return Err(usage()),
        };
        if section.is_empty() {
            return Err(usage());
        }
        Ok(Assumption {
            section: section.to_owned(),
            property,
        })
    }
}

impl fmt::Display for Assumption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.property {
            Property::NumQueues(n) => write!(f, "{}:num-queues={n}", self.section),
            Property::Packed(p) => {
                write!(
                    f,
                    "{}:packed={}",
                    self.section,
                    if p { "on" } else { "off" }
                )
            }
        }
    }
}

/// How to decode the virtio devices of a stream.
#[derive(Debug, Clone, Default)]
pub struct DecodeOptions {
    /// Host layout of in-flight elements (`--from-layout`); detected by default.
    pub layout: LayoutChoice,
    /// Properties stated for particular sections (`--assume`).
    pub assumptions: Vec<Assumption>,
}

impl DecodeOptions {
    fn for_section(&self, idstr: &str) -> Assumptions {
        let mut assume = Assumptions {
            layout: self.layout,
            ..Assumptions::default()
        };
        for a in self.assumptions.iter().filter(|a| a.section == idstr) {
            match a.property {
                Property::NumQueues(n) => assume.num_queues = Some(n),
                Property::Packed(p) => assume.packed = Some(p),
            }
        }
        assume
    }

    /// Fails when an assumption names a section that holds no virtio device, so that a typo
    /// does not pass unnoticed.
    fn check_sections(&self, found: &[VirtioSection]) -> Result<()> {
        match self
            .assumptions
            .iter()
            .find(|a| !found.iter().any(|s| s.idstr == a.section))
        {
            None => Ok(()),
            Some(a) => Err(Error::new(
                ErrorKind::InvalidValue {
                    value: 0,
                    expected: "a section that holds a virtio device",
                },
                0,
                format!("--assume {a}"),
            )),
        }
    }
}

/// One virtio device of a stream, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioSection {
    /// The section's idstr, such as `0000:00:01.0/virtio-blk`.
    pub idstr: String,
    /// The section's instance id.
    pub instance_id: u32,
    /// The section's id.
    pub section_id: u32,
    /// Where the `virtio` field starts.
    pub field_offset: u64,
    /// Bytes of the field in the stream.
    pub field_size: u64,
    /// The decoded state.
    pub device: VirtioDevice,
}

/// Decodes the `virtio` field of every virtio device section of `stream`, in stream order.
///
/// Fails at the first device that cannot be decoded, with the section's idstr in the error's
/// path.
pub fn decode_virtio(stream: &Stream, options: &DecodeOptions) -> Result<Vec<VirtioSection>> {
    let mut found = Vec::new();
    for section in stream.sections() {
        let Some((kind, field)) = virtio_field(section) else {
            continue;
        };
        let Value::Raw(bytes) = &field.value else {
            continue;
        };
        let mut reader = Reader::at(bytes, field.offset);
        let device = VirtioDevice::decode(&mut reader, kind, &options.for_section(&section.idstr))
            .map_err(|e| e.within(&section.idstr))?;
        found.push(VirtioSection {
            idstr: section.idstr.clone(),
            instance_id: section.instance_id,
            section_id: section.section_id,
            field_offset: field.offset,
            field_size: field.size,
            device,
        });
    }
    options.check_sections(&found)?;
    Ok(found)
}

/// The kind of virtio device a section holds and its `virtio` field, if it is one.
fn virtio_field(section: &Section) -> Option<(DeviceKind, &Field)> {
    let SectionBody::Device(state) = &section.body else {
        return None;
    };
    let field = state.fields.iter().find(|f| f.type_name == "virtio")?;
    let vmsd = state.vmsd_name.as_deref()?;
    Some((DeviceKind::from_vmsd_name(vmsd), field))
}

/// Encodes `device` (with `framing` replacing its request framing, if given) into the
/// `virtio` field of its section in `stream`, and rewrites the field's size in the
/// description when it changed.
pub fn store_virtio(
    stream: &mut Stream,
    device: &VirtioSection,
    framing: Option<Framing>,
) -> Result<()> {
    let mut writer = Writer::new();
    device
        .device
        .encode_with(&mut writer, framing)
        .map_err(|e| e.within(&device.idstr))?;
    let bytes = writer.into_bytes();
    let new_size = bytes.len() as u64;

    let not_found = || {
        Error::new(
            ErrorKind::InvalidValue {
                value: u64::from(device.section_id),
                expected: "a section of the stream",
            },
            device.field_offset,
            device.idstr.clone(),
        )
    };
    let section = find_section_mut(&mut stream.records, &device.idstr, device.instance_id)
        .ok_or_else(not_found)?;
    let SectionBody::Device(state) = &mut section.body else {
        return Err(not_found());
    };
    let field = state
        .fields
        .iter_mut()
        .find(|f| f.type_name == "virtio")
        .ok_or_else(not_found)?;
    let old_size = field.size;
    let field_name = field.name.clone();
    field.value = Value::Raw(bytes);
    field.size = new_size;

    if new_size != old_size {
        if let Some(trailer) = &mut stream.trailer {
            trailer.json = stream::set_field_size(
                &trailer.json,
                &device.idstr,
                device.instance_id,
                &field_name,
                new_size,
            )?;
        }
    }
    Ok(())
}

/// The section `idstr`/`instance_id`, packaged ones included.
fn find_section_mut<'a>(
    records: &'a mut [Record],
    idstr: &str,
    instance_id: u32,
) -> Option<&'a mut Section> {
    for record in records {
        match record {
            Record::Section(s) if s.idstr == idstr && s.instance_id == instance_id => {
                return Some(s)
            }
            Record::Command(Command {
                packaged: Some(p), ..
            }) => {
                if let Some(s) = find_section_mut(&mut p.records, idstr, instance_id) {
                    return Some(s);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assumptions_parse_with_colons_in_the_section() {
        let a: Assumption = "0000:00:01.0/virtio-blk:num-queues=2".parse().unwrap();
        assert_eq!(a.section, "0000:00:01.0/virtio-blk");
        assert_eq!(a.property, Property::NumQueues(2));
        let a: Assumption = "0000:00:01.0/virtio-blk:packed=on".parse().unwrap();
        assert_eq!(a.property, Property::Packed(true));
        assert_eq!(a.to_string(), "0000:00:01.0/virtio-blk:packed=on");
        for bad in [
            "num-queues=2",
            "x:num-queues=two",
            "x:packed=maybe",
            "x:speed=3",
            ":packed=on",
        ] {
            assert!(bad.parse::<Assumption>().is_err(), "{bad}");
        }
    }
}
