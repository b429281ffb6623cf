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
use crate::virtio::scsi::ScsiRequests;
use crate::virtio::{Assumptions, DeviceKind, Framing, Inference, TransportKind, VirtioDevice};
use crate::wire::{Endian, Reader, Writer};

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
    /// `transport=pci|mmio|ccw`.
    Transport(TransportKind),
}

impl FromStr for Assumption {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        let usage = || {
            format!(
                "'{text}' is not SECTION:PROPERTY=VALUE (num-queues=N, packed=on|off or \
                 transport=pci|mmio|ccw), e.g. 0000:00:01.0/virtio-blk:num-queues=2"
            )
        };
        let (section, setting) = text.rsplit_once(':').ok_or_else(usage)?;
        let (property, value) = setting.split_once('=').ok_or_else(usage)?;
        let property = match (property, value) {
            ("num-queues", n) => Property::NumQueues(n.parse().map_err(|_| usage())?),
            ("packed", "on" | "true" | "1") => Property::Packed(true),
            ("packed", "off" | "false" | "0") => Property::Packed(false),
            ("transport", name) => {
                Property::Transport(TransportKind::from_name(name).ok_or_else(usage)?)
            }
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
            Property::Transport(t) => write!(f, "{}:transport={}", self.section, t.name()),
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
    fn for_section(&self, idstr: &str, machine_endian: Option<Endian>) -> Assumptions {
        let mut assume = Assumptions {
            layout: self.layout,
            machine_endian,
            ..Assumptions::default()
        };
        for a in self.assumptions.iter().filter(|a| a.section == idstr) {
            match a.property {
                Property::NumQueues(n) => assume.num_queues = Some(n),
                Property::Packed(p) => assume.packed = Some(p),
                Property::Transport(t) => assume.transport = Some(t),
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
                format!("assumption {a}"),
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
    let machine = stream.configuration().map(|c| c.machine.as_str());
    let machine_endian =
        crate::machine::default_endian(machine, &crate::memory::ram_blocks(stream));
    let mut found = Vec::new();
    for section in stream.sections() {
        let Some((kind, field)) = virtio_field(section) else {
            continue;
        };
        let Value::Raw(bytes) = &field.value else {
            continue;
        };
        let assume = options.for_section(&section.idstr, machine_endian);
        let device = decode_device(bytes, field.offset, kind, &section.idstr, &assume)
            .map_err(|e| e.naming_section(&section.idstr).within(&section.idstr))?;
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

/// Decodes one `virtio` field, on the transport its section's idstr names, the one assumed,
/// or the only one under which the bytes read.
fn decode_device(
    bytes: &[u8],
    offset: u64,
    kind: DeviceKind,
    idstr: &str,
    assume: &Assumptions,
) -> Result<VirtioDevice> {
    let decode = |transport: TransportKind| {
        VirtioDevice::decode_on(
            &mut Reader::at(bytes, offset),
            kind.clone(),
            transport,
            assume,
        )
    };
    let named = match assume.transport {
        Some(t) => Some((t, format!("assumed: transport={}", t.name()))),
        None => TransportKind::of_section(idstr),
    };
    let (mut device, transport, how) = match named {
        Some((transport, how)) => (decode(transport)?, transport, how),
        None => {
            let mut fits = Vec::new();
            let mut first_error = None;
            for transport in TransportKind::ALL {
                match decode(transport) {
                    Ok(device) => fits.push((device, transport)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (fits.len(), first_error) {
                (1, _) => {
                    let (device, transport) = fits.remove(0);
                    let how = format!(
                        "the idstr {idstr:?} names no bus; the field reads to its end on \
                         {} only",
                        transport.name()
                    );
                    (device, transport, how)
                }
                (0, Some(e)) => return Err(e),
                _ => {
                    return Err(Error::new(
                        ErrorKind::AmbiguousFraming {
                            readings: fits.iter().map(|(_, t)| t.name().to_owned()).collect(),
                            settle: "SECTION:transport=pci|mmio|ccw".to_owned(),
                        },
                        offset,
                        "transport",
                    ))
                }
            }
        }
    };
    device
        .inferred
        .insert(0, Inference::new("transport", transport.name(), how));
    Ok(device)
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

/// The in-flight requests of one SCSI disk, decoded from its own section.
///
/// virtio-scsi saves its requests in the section of the disk each request is for
/// (`0000:00:03.0/0:0:0/scsi-disk`), in the opaque `requests` field of the disk's
/// `SCSIDevice` struct; the virtio-scsi device they belong to is the one at the same PCI
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiDiskSection {
    /// The disk section's idstr.
    pub idstr: String,
    /// The section's instance id.
    pub instance_id: u32,
    /// The section's id.
    pub section_id: u32,
    /// Names of the fields leading to `requests`, outermost first (`qdev`, `requests`).
    pub field_path: Vec<String>,
    /// Where the `requests` field starts.
    pub field_offset: u64,
    /// Bytes of the field in the stream.
    pub field_size: u64,
    /// The virtio-scsi section the disk hangs off, when the stream has it.
    pub hba: Option<String>,
    /// The decoded requests.
    pub requests: ScsiRequests,
}

/// The description type of the field that holds a SCSI device's requests.
const SCSI_REQUESTS_TYPE: &str = "scsi-requests";

/// Decodes the requests field of every SCSI disk section of `stream` that hangs off one of
/// the virtio-scsi devices in `virtio` (as [`decode_virtio`] found them), in stream order.
///
/// Whether the elements carry `ndescs` follows from whether that virtio-scsi device offers
/// packed rings; its `--assume` options apply.
pub fn decode_scsi_requests(
    stream: &Stream,
    virtio: &[VirtioSection],
    options: &DecodeOptions,
) -> Result<Vec<ScsiDiskSection>> {
    let mut found = Vec::new();
    for section in stream.sections() {
        let SectionBody::Device(state) = &section.body else {
            continue;
        };
        let mut path = Vec::new();
        let Some(field) = find_typed_field(&state.fields, SCSI_REQUESTS_TYPE, &mut path) else {
            continue;
        };
        let Value::Raw(bytes) = &field.value else {
            continue;
        };
        let hba = virtio.iter().find(|v| {
            v.device.kind == DeviceKind::Scsi && same_pci_device(&v.idstr, &section.idstr)
        });
        let Some(hba) = hba else {
            // Another HBA's disk: its requests carry that HBA's state, not virtio-scsi's.
            continue;
        };
        let assume = options.for_section(&hba.idstr, None);
        let mut reader = Reader::at(bytes, field.offset);
        let requests =
            ScsiRequests::decode(&mut reader, Some(hba.device.offers_packed_rings()), &assume)
                .map_err(|e| e.naming_section(&hba.idstr).within(&section.idstr))?;
        found.push(ScsiDiskSection {
            idstr: section.idstr.clone(),
            instance_id: section.instance_id,
            section_id: section.section_id,
            field_path: path,
            field_offset: field.offset,
            field_size: field.size,
            hba: Some(hba.idstr.clone()),
            requests,
        });
    }
    Ok(found)
}

/// True when the SCSI device section `disk` (`PCI/CHANNEL:ID:LUN/NAME`) sits on the PCI
/// device of the virtio section `hba` (`PCI/NAME`).
fn same_pci_device(hba: &str, disk: &str) -> bool {
    let hba_pci = hba.rsplit_once('/').map(|(pci, _)| pci);
    let disk_pci = disk
        .rsplit_once('/')
        .and_then(|(rest, _)| rest.rsplit_once('/'))
        .map(|(pci, _)| pci);
    matches!((hba_pci, disk_pci), (Some(a), Some(b)) if a == b)
}

/// The first field of type `type_name`, searching nested structs; `path` receives the
/// names leading to it.
fn find_typed_field<'a>(
    fields: &'a [Field],
    type_name: &str,
    path: &mut Vec<String>,
) -> Option<&'a Field> {
    for field in fields {
        path.push(field.name.clone());
        if field.type_name == type_name {
            return Some(field);
        }
        if let Value::Struct(inner) = &field.value {
            if let Some(found) = find_typed_field(&inner.fields, type_name, path) {
                return Some(found);
            }
        }
        path.pop();
    }
    None
}

/// Encodes `disk`'s requests (with `framing` replacing their element framing, if given)
/// into its section's `requests` field, and rewrites the sizes of that field and of the
/// structs around it, in the model and in the description, when the length changed.
pub fn store_scsi_requests(
    stream: &mut Stream,
    disk: &ScsiDiskSection,
    framing: Option<Framing>,
) -> Result<()> {
    let mut writer = Writer::new();
    disk.requests
        .encode_with(&mut writer, framing)
        .map_err(|e| e.within(&disk.idstr))?;
    let bytes = writer.into_bytes();
    let new_size = bytes.len() as u64;
    let not_found = || {
        Error::new(
            ErrorKind::InvalidValue {
                value: u64::from(disk.section_id),
                expected: "a section of the stream with a requests field",
            },
            disk.field_offset,
            disk.idstr.clone(),
        )
    };
    let section = find_section_mut(&mut stream.records, &disk.idstr, disk.instance_id)
        .ok_or_else(not_found)?;
    let SectionBody::Device(state) = &mut section.body else {
        return Err(not_found());
    };
    let old_size = set_nested(&mut state.fields, &disk.field_path, bytes).ok_or_else(not_found)?;
    if new_size != old_size {
        if let Some(trailer) = &mut stream.trailer {
            trailer.json = set_nested_size(
                &trailer.json,
                &disk.idstr,
                disk.instance_id,
                &disk.field_path,
                old_size,
                new_size,
            )?;
        }
    }
    Ok(())
}

/// Puts `bytes` into the field at `path` and fixes the sizes of it and of the structs
/// around it; returns the field's old size.
fn set_nested(fields: &mut [Field], path: &[String], bytes: Vec<u8>) -> Option<u64> {
    let (name, rest) = path.split_first()?;
    let field = fields.iter_mut().find(|f| &f.name == name)?;
    if rest.is_empty() {
        let old = field.size;
        field.size = bytes.len() as u64;
        field.value = Value::Raw(bytes);
        return Some(old);
    }
    let new_len = bytes.len() as u64;
    let Value::Struct(inner) = &mut field.value else {
        return None;
    };
    let old = set_nested(&mut inner.fields, rest, bytes)?;
    field.size = field.size.saturating_sub(old).saturating_add(new_len);
    Some(old)
}

/// Rewrites, in the description, the size of the field at `path` of section
/// `idstr`/`instance_id` from `old` to `new` bytes, and the sizes of the structs around it
/// by the same difference.
fn set_nested_size(
    json: &[u8],
    idstr: &str,
    instance_id: u32,
    path: &[String],
    old: u64,
    new: u64,
) -> Result<Vec<u8>> {
    use serde_json::Value as Json;
    let bad = |reason: String| Error::new(ErrorKind::BadDescription { reason }, 0, "vmdescription");
    let mut root: Json = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let fields = root
        .get_mut("devices")
        .and_then(Json::as_array_mut)
        .and_then(|devices| {
            devices.iter_mut().find(|d| {
                d.get("name").and_then(Json::as_str) == Some(idstr)
                    && d.get("instance_id").and_then(Json::as_u64) == Some(u64::from(instance_id))
            })
        })
        .and_then(|d| d.get_mut("fields"))
        .ok_or_else(|| bad(format!("no device {idstr:?} instance {instance_id}")))?;
    fn resize(fields: &mut Json, path: &[String], old: u64, new: u64) -> Option<()> {
        let (name, rest) = path.split_first()?;
        let entry = fields
            .as_array_mut()?
            .iter_mut()
            .find(|f| f.get("name").and_then(Json::as_str) == Some(name.as_str()))?
            .as_object_mut()?;
        let size = entry.get("size").and_then(Json::as_u64).unwrap_or(old);
        entry.insert(
            "size".to_owned(),
            Json::from(size.saturating_sub(old).saturating_add(new)),
        );
        match rest.is_empty() {
            true => Some(()),
            false => resize(entry.get_mut("struct")?.get_mut("fields")?, rest, old, new),
        }
    }
    resize(fields, path, old, new)
        .ok_or_else(|| bad(format!("no field {} in {idstr:?}", path.join("."))))?;
    Ok(stream::render_like_qemu(&root).into_bytes())
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
