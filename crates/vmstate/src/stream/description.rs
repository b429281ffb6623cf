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
    let vmsd = vmsd(json, &name)?;
    Ok(DeviceDescription {
        name,
        instance_id,
        vmsd,
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
