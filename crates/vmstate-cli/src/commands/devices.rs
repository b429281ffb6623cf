//! What `dump`, `convert` and `edit` share about virtio devices: the options that state what
//! the stream does not say, decoding, and the JSON and text forms of each device.

use std::fmt::Write as _;

use clap::Args;
use serde::Serialize;
use vmstate::devices::{self, Assumption, DecodeOptions, ScsiDiskSection, VirtioSection};
use vmstate::element::LayoutChoice;
use vmstate::stream::Stream;
use vmstate::virtio::{
    CoreState, DeviceState, MacTable, NdescsOrder, Transport, TransportExtra, VirtioDevice,
};

use crate::outcome::Failure;

/// Options for decoding virtio device state.
#[derive(Debug, Clone, Default, Args)]
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

    fn options(&self) -> DecodeOptions {
        DecodeOptions {
            layout: self.from_layout,
            assumptions: self.assume.clone(),
        }
    }

    /// Decodes every virtio device of `stream`; `shown` names the input in errors.
    pub fn decode(&self, stream: &Stream, shown: &str) -> Result<Vec<VirtioSection>, Failure> {
        devices::decode_virtio(stream, &self.options())
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))
    }

    /// Decodes the requests of every SCSI disk on one of the virtio-scsi devices in
    /// `virtio`.
    pub fn decode_scsi(
        &self,
        stream: &Stream,
        virtio: &[VirtioSection],
        shown: &str,
    ) -> Result<Vec<ScsiDiskSection>, Failure> {
        devices::decode_scsi_requests(stream, virtio, &self.options())
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

/// One SCSI disk's virtio-scsi requests in `dump --json`.
#[derive(Serialize)]
pub struct ScsiJson<'a> {
    section: &'a str,
    instance_id: u32,
    section_id: u32,
    field: String,
    field_offset: u64,
    field_size: u64,
    hba: Option<&'a str>,
    #[serde(flatten)]
    requests: &'a vmstate::virtio::scsi::ScsiRequests,
}

impl<'a> From<&'a ScsiDiskSection> for ScsiJson<'a> {
    fn from(s: &'a ScsiDiskSection) -> Self {
        ScsiJson {
            section: &s.idstr,
            instance_id: s.instance_id,
            section_id: s.section_id,
            field: s.field_path.join("."),
            field_offset: s.field_offset,
            field_size: s.field_size,
            hba: s.hba.as_deref(),
            requests: &s.requests,
        }
    }
}

/// The text form of the SCSI disks' virtio-scsi requests, for `dump`.
pub fn scsi_summary(disks: &[ScsiDiskSection], out: &mut String) {
    if disks.is_empty() {
        return;
    }
    let _ = writeln!(out, "virtio-scsi requests in SCSI disk sections:");
    for d in disks {
        let r = &d.requests;
        let _ = writeln!(
            out,
            "  {} (section {}, field {}, on {}): {} request(s) ({} layout{})",
            d.idstr,
            d.section_id,
            d.field_path.join("."),
            d.hba.as_deref().unwrap_or("?"),
            r.requests.len(),
            r.framing.layout,
            ndescs_text(r.framing.ndescs)
        );
        for q in &r.requests {
            let data = match &q.disk {
                Some(disk) => format!(
                    ", sector {} count {} buflen {}",
                    disk.sector, disk.sector_count, disk.buflen
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "    tag {} lun {} opcode {:#04x}{}: queue {}, head {}: {} out, {} in{data}",
                q.tag,
                q.lun,
                q.cdb.0.first().copied().unwrap_or(0),
                if q.retry { " (retry)" } else { "" },
                q.element.queue.map(|v| v.to_string()).unwrap_or_default(),
                q.element.element.index,
                q.element.element.device_readable.len(),
                q.element.element.device_writable.len()
            );
        }
        for note in &r.notes {
            let _ = writeln!(out, "    note: {note}");
        }
    }
}

/// One phrase on the transport: which one, and what shapes its state.
fn transport_summary(d: &VirtioDevice) -> String {
    match &d.transport {
        Transport::Pci(pci) => format!(
            "virtio-pci{}, {}",
            if pci.shape().express { " express" } else { "" },
            match pci.shape().msix_vectors {
                0 => "no MSI-X".to_owned(),
                n => format!("MSI-X {n} vectors"),
            }
        ),
        Transport::Mmio(_) => {
            let modern = d.subsections.iter().any(|s| {
                matches!(
                    &s.state,
                    CoreState::ExtraState(TransportExtra::Mmio(extra)) if extra.state.is_some()
                )
            });
            format!(
                "virtio-mmio, {} interface",
                if modern { "modern (v2)" } else { "legacy (v1)" }
            )
        }
        Transport::Ccw(ccw) => format!(
            "virtio-ccw {}, revision {}",
            ccw.bus_id().unwrap_or_else(|| "?".to_owned()),
            ccw.revision().map_or("?".to_owned(), |r| r.to_string())
        ),
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
        let _ = writeln!(
            out,
            "  {} (section {}): {}, status {:#04x}, features {:#x}, {} queue(s)",
            s.idstr,
            s.section_id,
            transport_summary(d),
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
                let ndescs = ndescs_text(blk.framing.ndescs);
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
            DeviceState::Net(net) => {
                let pairs = match &net.queue_pairs {
                    Some(p) => format!(", queue pairs {}/{}", p.curr, p.max),
                    None => String::new(),
                };
                let table = match &net.mac_table {
                    MacTable::Entries(e) => format!("{} MAC table entr(y/ies)", e.len()),
                    MacTable::Discarded(_) => format!(
                        "MAC table in_use {} over 64: discarded on load",
                        net.mac_table_in_use
                    ),
                };
                let _ = writeln!(
                    out,
                    "    mac {}, status {:#x}, promisc {}, allmulti {}, {table}{pairs}",
                    serde_json::to_value(net.mac)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    net.status,
                    net.promisc,
                    net.allmulti
                );
            }
            DeviceState::Balloon(b) => {
                let _ = writeln!(
                    out,
                    "    balloon: num_pages {}, actual {}, {} subsection(s)",
                    b.num_pages,
                    b.actual,
                    b.subsections.len()
                );
            }
            DeviceState::Mem(m) => {
                let region = match &m.region {
                    Some(r) => format!(
                        "region {:#x}+{:#x} in blocks of {:#x}, {:#x} plugged, ",
                        r.addr, r.region_size, r.block_size, r.size
                    ),
                    None => "region in the early section, ".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "    mem: {region}usable {:#x}, requested {:#x}",
                    m.usable_region_size, m.requested_size
                );
            }
            DeviceState::Serial(serial) => {
                let _ = writeln!(
                    out,
                    "    {} active port(s), ports map {:x?} ({} layout{}):",
                    serial.ports.len(),
                    serial.ports_map,
                    serial.framing.layout,
                    ndescs_text(serial.framing.ndescs)
                );
                for p in &serial.ports {
                    let popped = match &p.popped {
                        Some(e) => format!(
                            ", throttled element: queue {}, head {}, {} out, {} in, iov_idx {}, \
                             iov_offset {}",
                            e.element.queue.map(|q| q.to_string()).unwrap_or_default(),
                            e.element.element.index,
                            e.element.element.device_readable.len(),
                            e.element.element.device_writable.len(),
                            e.iov_idx,
                            e.iov_offset
                        ),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "      port {}: guest_connected {}, host_connected {}{popped}",
                        p.id, p.guest_connected, p.host_connected
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

fn ndescs_text(order: NdescsOrder) -> &'static str {
    match order {
        NdescsOrder::Absent => "",
        NdescsOrder::BeforeElement => ", ndescs before each element",
        NdescsOrder::AfterElement => ", ndescs after each element",
    }
}
