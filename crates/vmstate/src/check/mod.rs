//! Checking decoded device state: findings (defects of the state) and notes (facts that are
//! not defects).
//!
//! Decoding accepts whatever QEMU's own loader would parse; checking then says what is wrong
//! with it. The checks read typed state only, never bytes, so the same checks serve every
//! stream a decoder understands. A report lists, per device, what was checked and every
//! finding with the section, the field path (as in `dump --json`) and the values involved.

mod fields;
mod rings;

use std::fmt;

use serde::Serialize;

use crate::devices::VirtioSection;
use crate::memory::GuestRam;
use crate::note::Note;

pub use fields::check_fields;
pub use rings::ring_ranges;

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

/// Checks every decoded virtio device of a stream: the field checks, and with guest memory
/// the rings and in-flight elements too.
pub fn check_devices(devices: &[VirtioSection]) -> Report {
    check_stream(devices, None)
}

/// Checks every decoded virtio device, against `ram` when the stream's memory is at hand.
pub fn check_stream(devices: &[VirtioSection], ram: Option<&GuestRam>) -> Report {
    Report {
        devices: devices
            .iter()
            .map(|section| {
                let mut report = check_fields(section);
                match ram {
                    Some(ram) => rings::check_memory(&section.device, ram, &mut report),
                    None => report
                        .not_checked
                        .push("rings and in-flight elements: no guest memory".to_owned()),
                }
                report
            })
            .collect(),
    }
}
