//! The CONFIGURATION section (0x07): QEMU's `configuration` VMState, version 1.
//!
//! Its layout is fixed by QEMU rather than described per stream (older streams do not describe
//! it at all), so it is decoded here directly: `be32 len`, the machine name, then the
//! subsections QEMU defines, found with the same peek rule as every other subsection.

use super::vmstate::read_subsections;
use super::{Configuration, Field, Span, StructValue, Subsection, Value};
use crate::error::{Error, ErrorKind, Result};
use crate::wire::{Endian, Reader};

/// The VMState name of the configuration section, and the prefix of its subsections.
const NAME: &str = "configuration";

/// Reads the configuration section whose type byte (already consumed) was at `start`.
/// The configuration section's subsections.
const SUBSECTIONS: &[&str] = &[
    "configuration/target-page-bits",
    "configuration/capabilities",
    "configuration/uuid",
];

pub(crate) fn read_configuration(r: &mut Reader, start: u64) -> Result<Configuration> {
    let len_offset = r.offset();
    let len = r.u32(Endian::Big, "configuration.len")?;
    let name_len = r.check_count(u64::from(len), 1, "configuration.name")?;
    let name_offset = r.offset();
    let name = r.bytes(name_len, "configuration.name")?;
    let machine = std::str::from_utf8(name)
        .map_err(|_| Error::new(ErrorKind::NotUtf8, name_offset, "configuration.name"))?
        .to_owned();
    let fields = vec![
        Field {
            name: "len".to_owned(),
            type_name: "uint32".to_owned(),
            index: None,
            offset: len_offset,
            size: 4,
            value: Value::Unsigned(u64::from(len)),
        },
        Field {
            name: "name".to_owned(),
            type_name: "buffer".to_owned(),
            index: None,
            offset: name_offset,
            size: u64::from(len),
            value: Value::Raw(name.to_vec()),
        },
    ];
    let subsections = read_subsections(
        r,
        NAME,
        |name| SUBSECTIONS.contains(&name),
        |name, r| match name {
            "configuration/target-page-bits" => fixed(r, &[("target_page_bits", "uint32", 4)]),
            "configuration/capabilities" => capabilities(r),
            _ => fixed(r, &[("uuid", "buffer", 16)]),
        },
    )
    .map_err(|e| e.within(NAME))?;
    Ok(Configuration {
        span: Span {
            offset: start,
            len: r.offset().saturating_sub(start),
        },
        machine,
        state: StructValue {
            vmsd_name: Some(NAME.to_owned()),
            fields,
            subsections,
        },
    })
}

impl Configuration {
    /// The target page size announced by `configuration/target-page-bits`, when present.
    pub fn target_page_bits(&self) -> Option<u64> {
        let sub = self.state.subsection("configuration/target-page-bits")?;
        match sub.state.field("target_page_bits")?.value {
            Value::Unsigned(bits) => Some(bits),
            _ => None,
        }
    }

    /// The capabilities listed by `configuration/capabilities`.
    pub fn capabilities(&self) -> Vec<&str> {
        listed_capabilities(&self.state)
    }
}

/// The capabilities `configuration/capabilities` lists in the configuration `state`.
pub(crate) fn listed_capabilities(state: &StructValue) -> Vec<&str> {
    let Some(sub) = state.subsection("configuration/capabilities") else {
        return Vec::new();
    };
    sub.state
        .fields
        .iter()
        .filter_map(|f| match &f.value {
            Value::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn fixed(r: &mut Reader, layout: &[(&str, &str, usize)]) -> Result<StructValue> {
    let mut fields = Vec::with_capacity(layout.len());
    for &(name, type_name, size) in layout {
        let offset = r.offset();
        let value = if type_name == "uint32" {
            Value::Unsigned(u64::from(r.u32(Endian::Big, name)?))
        } else {
            Value::Raw(r.bytes(size, name)?.to_vec())
        };
        fields.push(Field {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            index: None,
            offset,
            size: size as u64,
            value,
        });
    }
    Ok(StructValue {
        vmsd_name: None,
        fields,
        subsections: Vec::new(),
    })
}

fn capabilities(r: &mut Reader) -> Result<StructValue> {
    let count_offset = r.offset();
    let count = r.u32(Endian::Big, "caps_count")?;
    // Each capability is at least its length byte.
    let count = r.check_count(u64::from(count), 1, "caps_count")?;
    let mut fields = Vec::with_capacity(count.saturating_add(1));
    fields.push(Field {
        name: "caps_count".to_owned(),
        type_name: "uint32".to_owned(),
        index: None,
        offset: count_offset,
        size: 4,
        value: Value::Unsigned(count as u64),
    });
    for index in 0..count {
        let offset = r.offset();
        let bytes = r.counted_bytes("capabilities")?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::new(ErrorKind::NotUtf8, offset, "capabilities"))?;
        fields.push(Field {
            name: "capabilities".to_owned(),
            type_name: "capability".to_owned(),
            index: Some(index as u64),
            offset,
            size: r.offset().saturating_sub(offset),
            value: Value::Text(text.to_owned()),
        });
    }
    Ok(StructValue {
        vmsd_name: None,
        fields,
        subsections: Vec::new(),
    })
}

/// The configuration section `state` with `capability` listed (`on`) or not, as QEMU
/// would send it: the `configuration/capabilities` subsection is sent only while it lists
/// one, after `configuration/target-page-bits` and before `configuration/uuid`.
pub(crate) fn with_capability(state: &StructValue, capability: &str, on: bool) -> StructValue {
    let subsection = "configuration/capabilities";
    let mut listed: Vec<String> = listed_capabilities(state)
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut state = state.clone();
    listed.retain(|c| c != capability);
    if on {
        listed.push(capability.to_owned());
    }
    let place = state.subsections.iter().position(|s| s.name == subsection);
    state.subsections.retain(|s| s.name != subsection);
    if listed.is_empty() {
        return state;
    }
    let mut fields = vec![Field {
        name: "caps_count".to_owned(),
        type_name: "uint32".to_owned(),
        index: None,
        offset: 0,
        size: 4,
        value: Value::Unsigned(listed.len() as u64),
    }];
    fields.extend(listed.into_iter().enumerate().map(|(index, text)| Field {
        name: "capabilities".to_owned(),
        type_name: "capability".to_owned(),
        index: Some(index as u64),
        offset: 0,
        size: (text.len() as u64).saturating_add(1),
        value: Value::Text(text),
    }));
    let at = place.unwrap_or_else(|| {
        state
            .subsections
            .iter()
            .position(|s| s.name == "configuration/uuid")
            .unwrap_or(state.subsections.len())
    });
    state.subsections.insert(
        at.min(state.subsections.len()),
        Subsection {
            offset: 0,
            name: subsection.to_owned(),
            version: 1,
            state: StructValue {
                vmsd_name: None,
                fields,
                subsections: Vec::new(),
            },
        },
    );
    state
}
