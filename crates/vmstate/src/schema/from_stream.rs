//! A stream's schema: the sections it carries, each with the version it was written with and
//! the fields and subsections it holds, read from the decoded payloads (which follow the
//! stream's own description).

use super::{virtio, Count, Description, Field, Origin, Schema, SectionSchema};
use crate::devices::VirtioSection;
use crate::stream::{self, SectionBody, Stream, StructValue, Value};

impl Schema {
    /// What `stream` carries. `devices` are its virtio devices as decoded (see
    /// [`crate::devices::decode_virtio`]): the `virtio` field of each holds the layout that
    /// device has; a `virtio` field of a section not among them stays opaque.
    pub fn from_stream(stream: &Stream, devices: &[VirtioSection]) -> Schema {
        let mut sections = Vec::new();
        if let Some(config) = stream.configuration() {
            sections.push(SectionSchema {
                name: "configuration".to_owned(),
                instance_id: Some(0),
                version_id: 1,
                minimum_version_id: None,
                offset: Some(config.span.offset),
                description: Some(struct_description(&config.state, "configuration", None)),
            });
        }
        for section in stream.sections() {
            if !section.kind.has_full_header() {
                continue;
            }
            let description = match &section.body {
                SectionBody::Device(state) => {
                    let device = devices
                        .iter()
                        .find(|d| d.idstr == section.idstr && d.instance_id == section.instance_id);
                    let name = state.vmsd_name.as_deref().unwrap_or(&section.idstr);
                    let mut desc = struct_description(state, name, None);
                    desc.version_id = Some(section.version_id);
                    if let Some(device) = device {
                        virtio::expand(&mut desc, device);
                    }
                    Some(desc)
                }
                _ => None,
            };
            sections.push(SectionSchema {
                name: section.idstr.clone(),
                instance_id: Some(section.instance_id),
                version_id: section.version_id,
                minimum_version_id: None,
                offset: Some(section.span.offset),
                description,
            });
        }
        Schema {
            origin: Origin::Stream,
            machine: stream.configuration().map(|c| c.machine.clone()),
            sections,
        }
    }
}

/// The description of a decoded struct: its fields as sent, its subsections as sent.
pub(crate) fn struct_description(
    state: &StructValue,
    name: &str,
    offset: Option<u64>,
) -> Description {
    let mut fields: Vec<Field> = Vec::with_capacity(state.fields.len());
    // A non-compressed array arrives as one entry per element (QEMU compresses runs of
    // equal elements into one entry): one field with a count. Up to 10.0 each entry carries
    // its index; QEMU 11 writes the elements of an array of structs whose length another
    // field holds (AHCI's ports, IDE's drives) without one, as a run of entries of one name.
    let mut in_array = false;
    for field in &state.fields {
        let out = field_schema(field);
        let indexed = field.index.is_some();
        if let Some(last) = fields.last_mut().filter(|last| {
            last.name == field.name
                && if indexed {
                    in_array
                } else {
                    repeats_element(last, &out)
                }
        }) {
            // A stream's counts are all known: what it carries was counted.
            let elements = |f: &Field| f.elements().unwrap_or(1);
            last.count = Count::Array(elements(last).saturating_add(elements(&out)));
            continue;
        }
        in_array = field.index.is_some();
        let mut out = out;
        if in_array && out.count == Count::One {
            out.count = Count::Array(1);
        }
        fields.push(out);
    }
    Description {
        name: state.vmsd_name.clone().unwrap_or_else(|| name.to_owned()),
        version_id: None,
        minimum_version_id: None,
        fields,
        subsections: state
            .subsections
            .iter()
            .map(|s| {
                let mut sub = struct_description(&s.state, &s.name, Some(s.offset));
                sub.name.clone_from(&s.name);
                sub.version_id = Some(s.version);
                sub
            })
            .collect(),
        offset: offset.or_else(|| state.fields.first().map(|f| f.offset)),
    }
}

/// Whether `next`, an entry without an index, is one more element of `last`: the same name,
/// type and element size. QEMU gives two fields of one struct the same name only for
/// `unused` buffers, which stay apart.
fn repeats_element(last: &Field, next: &Field) -> bool {
    last.type_name == next.type_name
        && last.size == next.size
        && next.type_name.as_deref() != Some("unused_buffer")
}

fn field_schema(field: &stream::Field) -> Field {
    let mut out = Field {
        name: field.name.clone(),
        type_name: Some(field.type_name.clone()),
        size: field.size,
        offset: Some(field.offset),
        ..Field::default()
    };
    match &field.value {
        Value::Struct(state) => {
            out.description = Some(Box::new(struct_description(state, &field.name, None)));
        }
        Value::Array(elements) => {
            out.count = Count::Array(elements.len() as u64);
            if let Some(first) = elements.first() {
                out.size = first.size;
                if let Value::Struct(state) = &first.value {
                    out.description = Some(Box::new(struct_description(state, &field.name, None)));
                }
            }
        }
        Value::Uints(values) => {
            let count = values.len() as u64;
            out.count = Count::Array(count);
            out.size = field.size.checked_div(count).unwrap_or(0);
        }
        Value::Bool(_) | Value::Unsigned(_) | Value::Signed(_) | Value::Text(_) | Value::Raw(_) => {
        }
    }
    out
}
