//! The stream's JSON description (QEMU's "vmdesc"), as typed values.
//!
//! QEMU writes it after EOF, describing every FULL section it wrote: the fields in order with
//! their type and the number of bytes actually written, nested structs and the subsections
//! that were sent. Nothing in QEMU reads it back; it exists for analysis tools, and it is what
//! makes device payloads (which carry no lengths) decodable without knowing every device.

use serde_json::Value as Json;

use crate::error::{Error, ErrorKind, Result};

/// The whole description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// The target page size (`page_size`), when present.
    pub page_size: Option<u64>,
    /// The configuration section's description (newer QEMU only).
    pub configuration: Option<VmsdDescription>,
    /// One entry per FULL section, in stream order.
    pub devices: Vec<DeviceDescription>,
}

/// The description of one FULL section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceDescription {
    /// The section's idstr.
    pub name: String,
    /// The section's instance id.
    pub instance_id: u32,
    /// Its fields and subsections.
    pub vmsd: VmsdDescription,
    /// Why the entry cannot be read through, when it cannot (its section is then delimited
    /// by its footer and kept as bytes, and the other sections still use the description).
    pub problem: Option<String>,
}

/// The description of one VMState struct: fields, then subsections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VmsdDescription {
    /// The VMState name (absent for old-style handlers).
    pub vmsd_name: Option<String>,
    /// The version written.
    pub version: Option<u64>,
    /// The fields in order.
    pub fields: Vec<FieldDescription>,
    /// The subsections that were sent, in order.
    pub subsections: Vec<VmsdDescription>,
}

/// The description of one field (or one element of a non-compressed array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// The field's name.
    pub name: String,
    /// The VMStateInfo name, or `struct`/`vstruct`.
    pub type_name: String,
    /// Bytes written for one element.
    pub size: u64,
    /// A compressed array: this many elements of this description.
    pub array_len: Option<u64>,
    /// An element of a non-compressed array: its index.
    pub index: Option<u64>,
    /// For struct fields: the nested struct's description.
    pub nested: Option<Box<VmsdDescription>>,
}

/// Parses the JSON text of a trailer whose first byte is at `offset`.
pub(crate) fn parse(json: &[u8], offset: u64) -> Result<Description> {
    let bad = |reason: String| {
        Error::new(
            ErrorKind::BadDescription { reason },
            offset,
            "vmdescription",
        )
    };
    let root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let page_size = match root.get("page_size") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|p| p.is_power_of_two())
                .ok_or_else(|| bad(format!("page_size {v} is not a power of two")))?,
        ),
    };
    let configuration = match root.get("configuration") {
        None => None,
        Some(c) => Some(vmsd(c, "configuration").map_err(&bad)?),
    };
    let devices = root
        .get("devices")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("no \"devices\" list".to_owned()))?
        .iter()
        .map(|d| device(d).map_err(&bad))
        .collect::<Result<Vec<_>>>()?;
    Ok(Description {
        page_size,
        configuration,
        devices,
    })
}

type Parsed<T> = std::result::Result<T, String>;

fn device(json: &Json) -> Parsed<DeviceDescription> {
    let name = string(json, "name", "device")?;
    let instance_id = json
        .get("instance_id")
        .and_then(Json::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("device {name:?} has no 32-bit instance_id"))?;
    let (vmsd, problem) = match vmsd(json, &name) {
        Ok(vmsd) => (vmsd, None),
        Err(reason) => (VmsdDescription::default(), Some(reason)),
    };
    Ok(DeviceDescription {
        name,
        instance_id,
        vmsd,
        problem,
    })
}

fn vmsd(json: &Json, context: &str) -> Parsed<VmsdDescription> {
    let vmsd_name = json
        .get("vmsd_name")
        .and_then(Json::as_str)
        .map(str::to_owned);
    let fields = json
        .get("fields")
        .and_then(Json::as_array)
        .ok_or_else(|| format!("{context:?} has no \"fields\" list"))?
        .iter()
        .map(|f| field(f, context))
        .collect::<Parsed<Vec<_>>>()?;
    let subsections = match json.get("subsections") {
        None => Vec::new(),
        Some(list) => list
            .as_array()
            .ok_or_else(|| format!("{context:?}: \"subsections\" is not a list"))?
            .iter()
            .map(|s| vmsd(s, context))
            .collect::<Parsed<Vec<_>>>()?,
    };
    Ok(VmsdDescription {
        vmsd_name,
        version: json.get("version").and_then(Json::as_u64),
        fields,
        subsections,
    })
}

fn field(json: &Json, context: &str) -> Parsed<FieldDescription> {
    let name = string(json, "name", context)?;
    let type_name = string(json, "type", &name)?;
    let size = json
        .get("size")
        .and_then(Json::as_u64)
        .ok_or_else(|| format!("{context:?}: field {name:?} has no size"))?;
    let nested = match json.get("struct") {
        Some(s) if type_name == "struct" || type_name == "vstruct" => {
            Some(Box::new(vmsd(s, &name)?))
        }
        _ => None,
    };
    if (type_name == "struct" || type_name == "vstruct") && nested.is_none() {
        return Err(format!(
            "{context:?}: struct field {name:?} has no \"struct\""
        ));
    }
    Ok(FieldDescription {
        name,
        type_name,
        size,
        array_len: json.get("array_len").and_then(Json::as_u64),
        index: json.get("index").and_then(Json::as_u64),
        nested,
    })
}

fn string(json: &Json, key: &str, context: &str) -> Parsed<String> {
    json.get(key)
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{context:?}: no string {key:?}"))
}

/// Sets the `size` of field `field` of the device `name`/`instance_id` in the JSON text of a
/// description, and renders the text again as QEMU writes it.
///
/// Used when a conversion changes how many bytes a field takes (an element written in another
/// layout): the description must keep matching the stream, or readers that trust it (this
/// one, analyze-migration.py) would misread what follows.
pub fn set_field_size(
    json: &[u8],
    name: &str,
    instance_id: u32,
    field: &str,
    size: u64,
) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::new(ErrorKind::BadDescription { reason }, 0, "vmdescription");
    let mut root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let entry = root
        .get_mut("devices")
        .and_then(Json::as_array_mut)
        .and_then(|devices| {
            devices.iter_mut().find(|d| {
                d.get("name").and_then(Json::as_str) == Some(name)
                    && d.get("instance_id").and_then(Json::as_u64) == Some(u64::from(instance_id))
            })
        })
        .and_then(|d| d.get_mut("fields"))
        .and_then(Json::as_array_mut)
        .and_then(|fields| {
            fields
                .iter_mut()
                .find(|f| f.get("name").and_then(Json::as_str) == Some(field))
        })
        .and_then(Json::as_object_mut)
        .ok_or_else(|| {
            bad(format!(
                "no field {field:?} of {name:?} instance {instance_id}"
            ))
        })?;
    entry.insert("size".to_owned(), Json::from(size));
    Ok(render_like_qemu(&root).into_bytes())
}

/// Sets the size of the configuration section's machine name (`name`) in the JSON text of a
/// description, for a stream whose machine type was renamed, and renders the text again as
/// QEMU writes it. A description without the configuration section is given back as it is.
pub fn set_configuration_name_size(json: &[u8], size: u64) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::new(ErrorKind::BadDescription { reason }, 0, "vmdescription");
    let mut root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let Some(fields) = root
        .get_mut("configuration")
        .and_then(|c| c.get_mut("fields"))
        .and_then(Json::as_array_mut)
    else {
        return Ok(json.to_vec());
    };
    let name = fields
        .iter_mut()
        .find(|f| f.get("name").and_then(Json::as_str) == Some("name"))
        .and_then(Json::as_object_mut)
        .ok_or_else(|| bad("the configuration has no \"name\" field".to_owned()))?;
    name.insert("size".to_owned(), Json::from(size));
    Ok(render_like_qemu(&root).into_bytes())
}

/// Describes the configuration section's `configuration/capabilities` subsection in the
/// JSON text of a description as the stream now carries it: listing `capabilities`, or
/// gone when they are none, and renders the text again as QEMU writes it. A description
/// without the configuration section (QEMU before 8.0 wrote none) is given back as it is.
pub fn set_configuration_capabilities(json: &[u8], capabilities: &[&str]) -> Result<Vec<u8>> {
    const NAME: &str = "configuration/capabilities";
    let bad = |reason: String| Error::new(ErrorKind::BadDescription { reason }, 0, "vmdescription");
    let mut root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let Some(config) = root.get_mut("configuration").and_then(Json::as_object_mut) else {
        return Ok(json.to_vec());
    };
    let mut subsections = match config.remove("subsections") {
        Some(Json::Array(list)) => list,
        _ => Vec::new(),
    };
    let named = |s: &Json, name: &str| s.get("vmsd_name").and_then(Json::as_str) == Some(name);
    subsections.retain(|s| !named(s, NAME));
    if let Some(first) = capabilities.first() {
        let mut field = serde_json::Map::new();
        field.insert("name".to_owned(), Json::from("capabilities"));
        field.insert("type".to_owned(), Json::from("capability"));
        if capabilities.len() > 1 {
            field.insert("array_len".to_owned(), Json::from(capabilities.len()));
        }
        field.insert("size".to_owned(), Json::from(first.len().saturating_add(1)));
        let described = serde_json::json!({
            "vmsd_name": NAME,
            "version": 1,
            "fields": [{"name": "caps_count", "type": "uint32", "size": 4}, Json::Object(field)],
        });
        // QEMU sends them in this order: target-page-bits, capabilities, uuid.
        let at = subsections
            .iter()
            .position(|s| named(s, "configuration/uuid"))
            .unwrap_or(subsections.len());
        subsections.insert(at, described);
    }
    if !subsections.is_empty() {
        config.insert("subsections".to_owned(), Json::Array(subsections));
    }
    Ok(render_like_qemu(&root).into_bytes())
}

/// Renders JSON the way QEMU's JSON writer does: keys in their original order, `": "` after
/// a key and `", "` between members, no other white space. Re-rendering a description QEMU
/// wrote gives back its exact bytes.
pub fn render_like_qemu(value: &Json) -> String {
    let mut out = String::new();
    render(value, &mut out);
    out
}

fn render(value: &Json, out: &mut String) {
    match value {
        Json::Object(members) => {
            out.push('{');
            for (k, (key, member)) in members.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                render(member, out);
            }
            out.push('}');
        }
        Json::Array(items) => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(", ");
                }
                render(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
