//! The layout inside QEMU's opaque `virtio` field, in the schema model.
//!
//! QEMU's `virtio_save()` writes, in order: the transport's configuration, the core registers
//! (status, isr, queue_sel, the low guest features, the config space), each queue with a
//! non-zero size, the device's own legacy state (virtio-blk's and virtio-serial's in-flight
//! requests, as saved elements), the device's VMState, then the `virtio` VMState whose
//! subsections carry everything added since. [`device_layout`] states that layout for one
//! decoded device (counts and sizes as the stream has them); [`generic_layout`] states the
//! layout any device may have, sizes that vary left at 0 as `-dump-vmstate` does.

use super::{Count, Description, Field};
use crate::devices::VirtioSection;
use crate::element::VIRTQUEUE_MAX_SIZE;
use crate::virtio::{
    BalloonState, BalloonSubsection, DeviceState, NdescsOrder, Transport, VirtioDevice,
};

/// The VMState type name QEMU gives the whole blob.
pub const VIRTIO_TYPE: &str = "virtio";

/// Puts the decoded layout of `device` into the `virtio` field of its section's description.
pub(crate) fn expand(desc: &mut Description, device: &VirtioSection) {
    if let Some(field) = desc
        .fields
        .iter_mut()
        .find(|f| f.type_name.as_deref() == Some(VIRTIO_TYPE))
    {
        let mut layout = device_layout(&device.device);
        layout.offset = Some(device.field_offset);
        field.description = Some(Box::new(layout));
    }
}

/// Puts [`generic_layout`] into every `virtio` field of a `-dump-vmstate` description (a
/// field of that name with no size of its own).
pub(crate) fn expand_generic(desc: &mut Description) {
    for field in &mut desc.fields {
        if field.name == VIRTIO_TYPE && field.size == 0 && field.description.is_none() {
            field.type_name = Some(VIRTIO_TYPE.to_owned());
            field.description = Some(Box::new(generic_layout()));
        }
    }
}

fn scalar(name: &str, size: u64) -> Field {
    let type_name = match size {
        1 => "uint8",
        2 => "uint16",
        4 => "uint32",
        8 => "uint64",
        _ => "buffer",
    };
    Field::scalar(name, type_name, size)
}

fn strukt(name: &str, fields: Vec<Field>) -> Description {
    Description {
        name: name.to_owned(),
        fields,
        ..Description::default()
    }
}

fn array(name: &str, num: u64, size: u64) -> Field {
    Field {
        count: Count::Array(num),
        ..scalar(name, size)
    }
}

/// The saved `VirtQueueElement` in the stable format: every field explicit, little-endian,
/// 64-bit, with room for 1024 descriptors of each direction.
pub fn element_layout() -> Description {
    let max = VIRTQUEUE_MAX_SIZE as u64;
    let sg = || strukt("iovec", vec![scalar("base", 8), scalar("len", 8)]);
    strukt(
        "VirtQueueElement",
        vec![
            scalar("index", 4),
            scalar("out_num", 4),
            scalar("in_num", 4),
            scalar("pad", 4),
            array("in_addr", max, 8),
            array("out_addr", max, 8),
            Field::nested("in_sg", Some(max), sg()),
            Field::nested("out_sg", Some(max), sg()),
        ],
    )
}

fn transport_layout(transport: Option<&Transport>) -> Field {
    let fields = match transport {
        Some(Transport::Pci(pci)) => {
            let mut fields = vec![
                scalar("version_id", 4),
                scalar("config", pci.config_space.0.len() as u64),
                array("irq_state", 4, 4),
            ];
            if let Some(msix) = &pci.msix {
                fields.push(scalar("msix.table", msix.table.0.len() as u64));
                fields.push(scalar("msix.pending", msix.pending.0.len() as u64));
                fields.push(scalar("msix.config_vector", 2));
            }
            return Field::nested("transport", None, strukt("virtio-pci", fields));
        }
        Some(Transport::Mmio(_)) => vec![
            scalar("host_features_sel", 4),
            scalar("guest_features_sel", 4),
            scalar("guest_page_shift", 4),
        ],
        Some(Transport::Ccw(ccw)) => {
            let desc = super::from_stream::struct_description(&ccw.state, "virtio-ccw", None);
            return Field::nested("transport", None, desc);
        }
        None => vec![Field {
            name: "config".to_owned(),
            type_name: Some("transport".to_owned()),
            ..Field::default()
        }],
    };
    let name = match transport {
        Some(Transport::Mmio(_)) => "virtio-mmio",
        _ => "virtio transport (virtio-pci, virtio-mmio or virtio-ccw)",
    };
    Field::nested("transport", None, strukt(name, fields))
}

fn queue_layout(align: bool, vector: bool) -> Description {
    let mut fields = vec![scalar("vring.num", 4)];
    if align {
        fields.push(scalar("vring.align", 4));
    }
    fields.push(scalar("vring.desc", 8));
    fields.push(scalar("last_avail_idx", 2));
    if vector {
        fields.push(scalar("vector", 2));
    }
    strukt("VirtQueue", fields)
}

/// One saved request of virtio-blk: a 1 marker, the queue (with several queues), ndescs (on
/// packed rings, before or after the element), the element.
fn blk_request(with_queue: bool, ndescs: NdescsOrder) -> Description {
    let mut fields = vec![scalar("marker", 1)];
    if with_queue {
        fields.push(scalar("vq_index", 4));
    }
    if ndescs == NdescsOrder::BeforeElement {
        fields.push(scalar("ndescs", 4));
    }
    fields.push(Field::nested("elem", None, element_layout()));
    if ndescs == NdescsOrder::AfterElement {
        fields.push(scalar("ndescs", 4));
    }
    strukt("VirtIOBlockReq", fields)
}

fn own_state(device: &DeviceState) -> Vec<Field> {
    match device {
        DeviceState::Empty => Vec::new(),
        DeviceState::Blk(blk) => vec![
            Field::nested(
                "rq",
                Some(blk.requests.len() as u64),
                blk_request(blk.framing.queue_index, blk.framing.ndescs),
            ),
            scalar("rq.end", 1),
        ],
        DeviceState::Opaque { bytes } => vec![Field {
            name: "device".to_owned(),
            type_name: Some("device state".to_owned()),
            size: bytes.0.len() as u64,
            ..Field::default()
        }],
        DeviceState::Balloon(balloon) => vec![Field::nested(
            "balloon",
            None,
            Description {
                name: BalloonState::VMSD.to_owned(),
                fields: vec![scalar("num_pages", 4), scalar("actual", 4)],
                subsections: balloon
                    .subsections
                    .iter()
                    .map(|s| Description {
                        name: s.name().to_owned(),
                        version_id: Some(s.version()),
                        fields: match s {
                            BalloonSubsection::FreePageReport { .. } => vec![
                                scalar("free_page_hint_cmd_id", 4),
                                scalar("free_page_hint_status", 4),
                            ],
                            BalloonSubsection::PagePoison { .. } => vec![scalar("poison_val", 4)],
                        },
                        ..Description::default()
                    })
                    .collect(),
                ..Description::default()
            },
        )],
        other => {
            let kind = match other {
                DeviceState::Net(_) => "virtio-net",
                DeviceState::Serial(_) => "virtio-serial",
                _ => "virtio-mem",
            };
            vec![Field {
                name: "device".to_owned(),
                type_name: Some(format!("{kind} state")),
                ..Field::default()
            }]
        }
    }
}

/// The layout of one decoded device's `virtio` field.
pub fn device_layout(device: &VirtioDevice) -> Description {
    let extras = device.transport.queue_extras();
    let mut fields = vec![
        transport_layout(Some(&device.transport)),
        scalar("status", 1),
        scalar("isr", 1),
        scalar("queue_sel", 2),
        scalar("guest_features", 4),
        scalar("config_len", 4),
        scalar("config", device.config.0.len() as u64),
        scalar("num_queues", 4),
        Field::nested(
            "vq",
            Some(device.queues.len() as u64),
            queue_layout(extras.align, extras.vector),
        ),
    ];
    fields.extend(own_state(&device.device));
    Description {
        name: VIRTIO_TYPE.to_owned(),
        fields,
        subsections: device
            .subsections
            .iter()
            .map(|s| Description {
                name: s.state.name().to_owned(),
                version_id: Some(s.version),
                offset: Some(s.offset),
                ..Description::default()
            })
            .collect(),
        ..Description::default()
    }
}

/// The layout any virtio device's `virtio` field may have: sizes and counts that depend on
/// the device are 0, and every core subsection is listed.
pub fn generic_layout() -> Description {
    let mut fields = vec![
        transport_layout(None),
        scalar("status", 1),
        scalar("isr", 1),
        scalar("queue_sel", 2),
        scalar("guest_features", 4),
        scalar("config_len", 4),
        scalar("config", 0),
        scalar("num_queues", 4),
        Field::nested("vq", Some(0), queue_layout(false, false)),
    ];
    fields.push(Field {
        name: "device".to_owned(),
        type_name: Some("device state (virtio-blk, virtio-serial: saved elements)".to_owned()),
        description: Some(Box::new(element_layout())),
        ..Field::default()
    });
    Description {
        name: VIRTIO_TYPE.to_owned(),
        fields,
        subsections: crate::virtio::CORE_SUBSECTIONS
            .iter()
            .map(|name| Description {
                name: (*name).to_owned(),
                ..Description::default()
            })
            .collect(),
        ..Description::default()
    }
}
