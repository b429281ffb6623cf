//! What `dump`, `convert` and `edit` share about virtio devices: the options that state what
//! the stream does not say, decoding, and the JSON and text forms of each device.

use std::fmt::Write as _;

use clap::Args;
use serde::Serialize;
use vmstate::devices::{self, Assumption, DecodeOptions, VirtioSection};
use vmstate::element::LayoutChoice;
use vmstate::stream::Stream;
use vmstate::virtio::{DeviceState, NdescsOrder, VirtioDevice};

use crate::outcome::Failure;

/// Options for decoding virtio device state.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// State a device property the stream does not carry, as SECTION:PROPERTY=VALUE with
    /// PROPERTY num-queues=N or packed=on|off, e.g. 0000:00:01.0/virtio-blk:num-queues=2
    /// (repeatable). Needed only when the stream fits several readings.
    #[arg(long = "assume", value_name = "SECTION:PROPERTY=VALUE")]
    assume: Vec<Assumption>,
    /// Host layout of the in-flight elements in the input: auto (detected), stable
    /// (= lp64-le), lp64-be, i386, ilp32-le, ilp32-be.
    #[arg(long, value_name = "NAME", default_value = "auto")]
    from_layout: LayoutChoice,
}

impl DeviceArgs {
    /// True when the user stated anything about the input's devices.
    pub fn any(&self) -> bool {
        !self.assume.is_empty() || self.from_layout != LayoutChoice::Auto
    }

    /// Decodes every virtio device of `stream`; `shown` names the input in errors.
    pub fn decode(&self, stream: &Stream, shown: &str) -> Result<Vec<VirtioSection>, Failure> {
        let options = DecodeOptions {
            layout: self.from_layout,
            assumptions: self.assume.clone(),
        };
        devices::decode_virtio(stream, &options)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))
    }
}

/// One virtio device in `dump --json`.
#[derive(Serialize)]
pub struct VirtioJson<'a> {
    section: &'a str,
    instance_id: u32,
    section_id: u32,
    field_offset: u64,
    field_size: u64,
    virtio: &'a VirtioDevice,
}

impl<'a> From<&'a VirtioSection> for VirtioJson<'a> {
    fn from(s: &'a VirtioSection) -> Self {
        VirtioJson {
            section: &s.idstr,
            instance_id: s.instance_id,
            section_id: s.section_id,
            field_offset: s.field_offset,
            field_size: s.field_size,
            virtio: &s.device,
        }
    }
}

/// The text form of the virtio devices, for `dump`.
pub fn summary(devices: &[VirtioSection], out: &mut String) {
    if devices.is_empty() {
        return;
    }
    let _ = writeln!(out, "virtio devices:");
    for s in devices {
        let d = &s.device;
        let msix = match d.transport.shape.msix_vectors {
            0 => "no MSI-X".to_owned(),
            n => format!("MSI-X {n} vectors"),
        };
        let _ =
            writeln!(
            out,
            "  {} (section {}): virtio-pci{}, {msix}, status {:#04x}, features {:#x}, {} queue(s)",
            s.idstr,
            s.section_id,
            if d.transport.shape.express { " express" } else { "" },
            d.status,
            d.guest_features(),
            d.queues.len()
        );
        let idle = d.queues.iter().filter(|q| q.desc == 0).count();
        for (index, q) in d.queues.iter().enumerate().filter(|(_, q)| q.desc != 0) {
            let rings = match d.ring_areas(index) {
                Some((avail, used)) => format!(" avail {avail:#x} used {used:#x}"),
                None => String::new(),
            };
            let vector = q.vector.map(|v| format!(" vector {v}")).unwrap_or_default();
            let _ = writeln!(
                out,
                "    queue {index}: num {} desc {:#x}{rings} last_avail_idx {}{vector}",
                q.num, q.desc, q.last_avail_idx
            );
        }
        if idle > 0 {
            let _ = writeln!(out, "    ({idle} queue(s) not set up by the driver)");
        }
        match &d.device {
            DeviceState::Blk(blk) if blk.requests.is_empty() => {
                let _ = writeln!(out, "    no requests in flight");
            }
            DeviceState::Blk(blk) => {
                let ndescs = match blk.framing.ndescs {
                    NdescsOrder::Absent => "",
                    NdescsOrder::BeforeElement => ", ndescs before each element",
                    NdescsOrder::AfterElement => ", ndescs after each element",
                };
                let _ = writeln!(
                    out,
                    "    {} request(s) in flight ({} layout{ndescs}):",
                    blk.requests.len(),
                    blk.framing.layout
                );
                for r in &blk.requests {
                    let queue = r.queue.map(|q| format!("queue {q}, ")).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "      {queue}head {}: {} out, {} in",
                        r.element.index,
                        r.element.device_readable.len(),
                        r.element.device_writable.len()
                    );
                }
            }
            // An opaque device's note says what was kept.
            DeviceState::Empty | DeviceState::Opaque { .. } => {}
        }
        for note in &d.notes {
            let _ = writeln!(out, "    note: {note}");
        }
    }
}
