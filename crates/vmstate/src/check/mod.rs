//! Checking decoded device state: findings (defects of the state) and notes (facts that are
//! not defects).
//!
//! Decoding accepts whatever QEMU's own loader would parse; checking then says what is wrong
//! with it. The checks read typed state only, never bytes, so the same checks serve every
//! stream a decoder understands. A report lists, per device, what was checked and every
//! finding with the section, the field path (as in `dump --json`) and the values involved.

mod fields;
mod requests;
mod rings;

use fields::check_fields;

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::devices::{ScsiDiskSection, VirtioSection};
use crate::element::Element;
use crate::memory::GuestBytes;
use crate::note::Note;
use crate::virtio::{DeviceKind, DeviceState, InFlight};

/// Which rule a finding breaks. Each variant is one class of defect, so that callers and
/// tests can match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Rule {
    /// `queue_sel` selects a queue the device does not have.
    QueueSelOutOfRange,
    /// The device saved more or fewer queues than a device of its kind has.
    QueueCount,
    /// A ring size is over 1024 (`VIRTQUEUE_MAX_SIZE`).
    RingSizeTooLarge,
    /// A split ring's size is not a power of two.
    RingSizeNotPowerOfTwo,
    /// A saved queue has size 0.
    RingSizeZero,
    /// A queue has no descriptor table but a non-zero `last_avail_idx` (QEMU refuses it).
    IndexWithoutRing,
    /// The device config space is larger than any virtio device's.
    ConfigTooLong,
    /// An MSI-X vector is past the end of the MSI-X table.
    VectorOutOfRange,
    /// An in-flight element's head index is past the end of its split ring.
    HeadOutOfRange,
    /// Two in-flight elements of one queue have the same head.
    DuplicateHead,
    /// An in-flight request names a queue the device does not have.
    RequestQueueOutOfRange,
    /// `device_endian` is not 0 (unknown), 1 (little) or 2 (big).
    DeviceEndian,
    /// The low guest feature word disagrees with `virtio/64bit_features`.
    FeaturesDisagree,
    /// A ring area is not aligned as the virtio specification requires (16/2/4).
    RingMisaligned,
    /// A ring area is not guest RAM.
    RingOutsideRam,
    /// Two ring areas of one queue overlap.
    RingsOverlap,
    /// The guest's avail index is more than a ring ahead of `last_avail_idx`.
    AvailIndexInconsistent,
    /// `last_avail_idx - used_idx` is more than the ring holds.
    InUseOverRingSize,
    /// The number of saved elements differs from the number the ring has in use.
    ElementsVsInUse,
    /// A saved head is not among the entries the guest made available and the device has not
    /// returned.
    HeadNotOutstanding,
    /// A descriptor's `next` is past the table.
    NextOutOfRange,
    /// A descriptor chain takes more steps than its table has entries.
    ChainLoop,
    /// An indirect table's length is not a non-zero multiple of 16.
    IndirectTableLength,
    /// An indirect table points to another indirect table.
    IndirectNested,
    /// A descriptor or indirect table is not guest RAM.
    DescriptorOutsideRam,
    /// A device-readable descriptor follows a device-writable one.
    DescriptorOrder,
    /// A saved segment (address, length or direction) differs from the guest's descriptor.
    SegmentMismatch,
    /// No chain with a saved packed-ring element's buffer id is where it must be.
    PackedBufferNotFound,
    /// virtio-net's MAC table count is over the table's size.
    NetMacTable,
    /// virtio-net's current queue pairs are 0 or more than the maximum.
    NetQueuePairs,
    /// virtio-serial's `elem_popped` is not 0 or 1.
    SerialElemPopped,
    /// A virtio-serial port id is past the device's ports or not in its map.
    SerialPort,
    /// virtio-serial's `iov_idx`/`iov_offset` point past the throttled element.
    SerialIovPosition,
    /// A virtio-scsi request names a request queue the device does not have.
    ScsiQueueNumber,
    /// A packed-ring index is past the end of its ring.
    PackedIndexOutOfRange,
    /// A packed queue's `last_avail_idx` differs between the queue fields and
    /// `virtio/packed_virtqueues`, which both hold the same value.
    PackedIndicesDisagree,
    /// Two in-flight requests of one device have device-writable buffers that overlap.
    WritableOverlap,
    /// A virtio-blk request's device-readable buffers are shorter than its header.
    BlkHeaderShort,
    /// A virtio-blk request header has a type no virtio specification defines.
    BlkRequestType,
    /// A virtio-blk request has no usable buffer for its status byte.
    BlkStatusBuffer,
    /// A virtio-blk read or write moves a length that is not a multiple of 512.
    BlkDataLength,
    /// A virtio-blk read or write ends past the capacity in the saved config space.
    BlkSectorRange,
    /// A SCSI request's buffers are shorter than virtio-scsi's request and response, or
    /// carry data both ways.
    ScsiRequestLayout,
    /// A saved SCSI request's command moves data the other way than its buffers.
    ScsiDirection,
    /// A saved SCSI request's LUN disagrees with its disk or with the guest's LUN field.
    ScsiLun,
    /// A saved SCSI request's tag differs from the tag in the guest's request header.
    ScsiTag,
    /// A saved SCSI command block differs from the one in the guest's request header.
    ScsiCdb,
    /// scsi-disk's saved position is not within the blocks of the request's command.
    ScsiDiskPosition,
    /// A throttled virtio-serial port's element is not from the port's transmit queue.
    SerialElementQueue,
}

impl Rule {
    /// The rule's name as reports show it.
    pub fn name(self) -> &'static str {
        match self {
            Rule::QueueSelOutOfRange => "queue-sel-out-of-range",
            Rule::QueueCount => "queue-count",
            Rule::RingSizeTooLarge => "ring-size-too-large",
            Rule::RingSizeNotPowerOfTwo => "ring-size-not-power-of-two",
            Rule::RingSizeZero => "ring-size-zero",
            Rule::IndexWithoutRing => "index-without-ring",
            Rule::ConfigTooLong => "config-too-long",
            Rule::VectorOutOfRange => "vector-out-of-range",
            Rule::HeadOutOfRange => "head-out-of-range",
            Rule::DuplicateHead => "duplicate-head",
            Rule::RequestQueueOutOfRange => "request-queue-out-of-range",
            Rule::DeviceEndian => "device-endian",
            Rule::FeaturesDisagree => "features-disagree",
            Rule::RingMisaligned => "ring-misaligned",
            Rule::RingOutsideRam => "ring-outside-ram",
            Rule::RingsOverlap => "rings-overlap",
            Rule::AvailIndexInconsistent => "avail-index-inconsistent",
            Rule::InUseOverRingSize => "in-use-over-ring-size",
            Rule::ElementsVsInUse => "elements-vs-in-use",
            Rule::HeadNotOutstanding => "head-not-outstanding",
            Rule::NextOutOfRange => "next-out-of-range",
            Rule::ChainLoop => "chain-loop",
            Rule::IndirectTableLength => "indirect-table-length",
            Rule::IndirectNested => "indirect-nested",
            Rule::DescriptorOutsideRam => "descriptor-outside-ram",
            Rule::DescriptorOrder => "descriptor-order",
            Rule::SegmentMismatch => "segment-mismatch",
            Rule::PackedBufferNotFound => "packed-buffer-not-found",
            Rule::NetMacTable => "net-mac-table",
            Rule::NetQueuePairs => "net-queue-pairs",
            Rule::SerialElemPopped => "serial-elem-popped",
            Rule::SerialPort => "serial-port",
            Rule::SerialIovPosition => "serial-iov-position",
            Rule::ScsiQueueNumber => "scsi-queue-number",
            Rule::PackedIndexOutOfRange => "packed-index-out-of-range",
            Rule::PackedIndicesDisagree => "packed-indices-disagree",
            Rule::WritableOverlap => "writable-overlap",
            Rule::BlkHeaderShort => "blk-header-short",
            Rule::BlkRequestType => "blk-request-type",
            Rule::BlkStatusBuffer => "blk-status-buffer",
            Rule::BlkDataLength => "blk-data-length",
            Rule::BlkSectorRange => "blk-sector-range",
            Rule::ScsiRequestLayout => "scsi-request-layout",
            Rule::ScsiDirection => "scsi-direction",
            Rule::ScsiLun => "scsi-lun",
            Rule::ScsiTag => "scsi-tag",
            Rule::ScsiCdb => "scsi-cdb",
            Rule::ScsiDiskPosition => "scsi-disk-position",
            Rule::SerialElementQueue => "serial-element-queue",
        }
    }
}

/// One defect of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule broken.
    pub rule: Rule,
    /// The field, as a path of `dump --json` under the device's `virtio` object.
    pub path: String,
    /// What is wrong, with the values.
    pub message: String,
}

impl Finding {
    /// A finding against `path`.
    pub fn new(rule: Rule, path: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            rule,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} [{}]", self.path, self.message, self.rule.name())
    }
}

/// What was checked on one device, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    /// The section's idstr.
    pub section: String,
    /// The checks that were made, in words.
    pub checked: Vec<String>,
    /// Checks that could not be made, with the reason (pages a stripped stream left out,
    /// device state not decoded). Not defects, and never skipped in silence.
    pub not_checked: Vec<String>,
    /// Defects found.
    pub findings: Vec<Finding>,
    /// Facts worth knowing that are not defects.
    pub notes: Vec<Note>,
}

/// The report of a whole stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Report {
    /// One entry per virtio device, in stream order.
    pub devices: Vec<DeviceReport>,
}

impl Report {
    /// Number of findings over all devices.
    pub fn finding_count(&self) -> usize {
        self.devices.iter().map(|d| d.findings.len()).sum()
    }

    /// True when no device has a finding.
    pub fn is_clean(&self) -> bool {
        self.finding_count() == 0
    }
}

/// An in-flight element a device saved, with the queue it belongs to.
pub(crate) struct SavedElement<'a> {
    /// Path of the element in `dump --json`: under the device's `virtio` object, or from the
    /// top for requests kept in SCSI disk sections.
    pub path: String,
    /// The virtqueue it was popped from.
    pub queue: usize,
    /// The element.
    pub element: &'a Element,
    /// Its packed-ring descriptor count, when saved.
    pub ndescs: Option<u32>,
}

impl<'a> SavedElement<'a> {
    fn new(path: String, in_flight: &'a InFlight) -> Self {
        SavedElement {
            path,
            queue: in_flight.queue.unwrap_or(0) as usize,
            element: &in_flight.element,
            ndescs: in_flight.ndescs,
        }
    }
}

/// The elements a device saved, wherever the stream keeps them, or `None` for a device that
/// saves none (its popped requests, if any, are not migrated).
pub(crate) fn saved_elements<'a>(
    section: &'a VirtioSection,
    scsi: &'a [ScsiDiskSection],
) -> Option<Vec<SavedElement<'a>>> {
    match &section.device.device {
        DeviceState::Blk(blk) => Some(
            blk.requests
                .iter()
                .enumerate()
                .map(|(k, r)| SavedElement::new(format!("requests[{k}]"), r))
                .collect(),
        ),
        DeviceState::Serial(serial) => Some(
            serial
                .ports
                .iter()
                .enumerate()
                .filter_map(|(k, port)| {
                    let popped = port.popped.as_ref()?;
                    Some(SavedElement::new(
                        format!("serial.ports[{k}].popped"),
                        &popped.element,
                    ))
                })
                .collect(),
        ),
        _ if section.device.kind == DeviceKind::Scsi => Some(
            scsi.iter()
                .enumerate()
                .filter(|(_, disk)| disk.hba.as_deref() == Some(section.idstr.as_str()))
                .flat_map(|(d, disk)| {
                    disk.requests
                        .requests
                        .iter()
                        .enumerate()
                        .map(move |(k, r)| {
                            SavedElement::new(
                                format!("scsi_requests[{d}].requests[{k}]"),
                                &r.element,
                            )
                        })
                })
                .collect(),
        ),
        _ => None,
    }
}

/// Checks every decoded virtio device of a stream on its fields alone.
pub fn check_devices(devices: &[VirtioSection]) -> Report {
    check_stream(devices, &[], None)
}

/// Checks every decoded virtio device, with the requests its SCSI disks keep (`scsi`), and
/// against `ram` when the stream's memory is at hand.
pub fn check_stream(
    devices: &[VirtioSection],
    scsi: &[ScsiDiskSection],
    ram: Option<&dyn GuestBytes>,
) -> Report {
    Report {
        devices: devices
            .iter()
            .enumerate()
            .map(|(position, section)| {
                let saved = saved_elements(section, scsi);
                let mut report = check_fields(section, &saved, scsi);
                match ram {
                    Some(ram) => match section.device.byte_order() {
                        Some((endian, _)) => {
                            let memory = rings::RingMemory::new(ram, endian);
                            let outstanding = rings::check_memory(
                                &section.device,
                                &shared_descriptor_tables(devices, position),
                                &saved,
                                &memory,
                                &mut report,
                            );
                            requests::check_requests(
                                section,
                                &saved,
                                scsi,
                                Some((&memory, &outstanding)),
                                &mut report,
                            );
                        }
                        None => {
                            report.not_checked.push(
                                "rings and in-flight elements: the byte order of this legacy \
                                 device's rings is unknown (the machine type names no known \
                                 board)"
                                    .to_owned(),
                            );
                            requests::check_requests(section, &saved, scsi, None, &mut report);
                        }
                    },
                    None => {
                        report
                            .not_checked
                            .push("rings and in-flight elements: no guest memory".to_owned());
                        requests::check_requests(section, &saved, scsi, None, &mut report);
                    }
                }
                report
            })
            .collect(),
    }
}

/// The queues of device `position` whose descriptor table starts where another device's
/// does, with that device's idstr: one guest ring cannot serve two devices, so the driver
/// left the first for the second without resetting it, and the ring is not the first's.
fn shared_descriptor_tables(devices: &[VirtioSection], position: usize) -> HashMap<usize, String> {
    let Some(this) = devices.get(position) else {
        return HashMap::new();
    };
    let mut shared = HashMap::new();
    for (index, q) in this.device.queues.iter().enumerate() {
        if q.desc == 0 {
            continue;
        }
        let other = devices.iter().enumerate().find(|(p, other)| {
            *p != position && other.device.queues.iter().any(|o| o.desc == q.desc)
        });
        if let Some((_, other)) = other {
            shared.insert(index, other.idstr.clone());
        }
    }
    shared
}

/// The guest-physical ranges a check of `section` reads: every set-up queue's ring areas,
/// the indirect tables of its in-flight elements and their request headers (not their data
/// buffers). A stream that keeps the pages of these ranges can still be checked without
/// carrying the guest's data.
pub fn ring_ranges(
    section: &VirtioSection,
    scsi: &[ScsiDiskSection],
    ram: &dyn GuestBytes,
) -> Vec<(u64, u64)> {
    let Some((endian, _)) = section.device.byte_order() else {
        return Vec::new();
    };
    let saved = saved_elements(section, scsi);
    let memory = rings::RingMemory::new(ram, endian);
    let mut ranges = rings::ring_ranges(&section.device, &saved, &memory);
    ranges.extend(requests::header_ranges(section, &saved, &memory));
    ranges
}

/// Walks the split-ring chain at `head` of the descriptor table at `desc` (`num` entries) in
/// `memory`, with the walker the checks use, and returns it as an element; the error says what
/// is wrong with the chain (a loop, an index past the table, memory that is not RAM).
pub fn split_chain_element(
    memory: &dyn GuestBytes,
    endian: crate::wire::Endian,
    desc: u64,
    num: u16,
    head: u16,
) -> std::result::Result<Element, String> {
    let ram = rings::RingMemory::new(memory, endian);
    rings::walk_split_chain(&ram, desc, u64::from(num), u64::from(head)).map(|chain| Element {
        index: u32::from(head),
        device_readable: chain.iter().filter(|(_, w)| !w).map(|(s, _)| *s).collect(),
        device_writable: chain.iter().filter(|(_, w)| *w).map(|(s, _)| *s).collect(),
    })
}
