//! Checks that need nothing but the decoded fields: bounds, counts, indices, vectors and
//! agreement between fields that say the same thing twice.

use std::collections::HashSet;

use super::{DeviceReport, Finding, Rule};
use crate::devices::VirtioSection;
use crate::element::{Layout, VIRTQUEUE_MAX_SIZE};
use crate::note::Note;
use crate::virtio::{CoreState, DeviceState, NdescsOrder, VirtioDevice, NO_VECTOR};

/// The largest device config space there is reason to accept: every virtio device's is far
/// smaller, and QEMU discards what its own device does not have.
const MAX_CONFIG_LEN: usize = 256;

/// Feature bits the virtio transport defines (bits 24 to 49 are the transport's).
const TRANSPORT_FEATURES: &[u32] = &[24, 27, 28, 29, 30, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41];

/// Runs every field check on one device.
pub fn check_fields(section: &VirtioSection) -> DeviceReport {
    let d = &section.device;
    let mut findings = Vec::new();
    let mut checked = Vec::new();
    let mut notes = d.notes.clone();

    check_queues(d, &mut findings, &mut checked);
    check_vectors(d, &mut findings, &mut checked);
    check_config(d, &mut findings, &mut checked);
    check_subsections(d, &mut findings, &mut checked);
    check_requests(d, &mut findings, &mut checked, &mut notes);
    note_features(d, &mut notes);

    DeviceReport {
        section: section.idstr.clone(),
        checked,
        not_checked: Vec::new(),
        findings,
        notes,
    }
}

/// Queue selector, queue count and each queue's size and index.
fn check_queues(d: &VirtioDevice, findings: &mut Vec<Finding>, checked: &mut Vec<String>) {
    let count = d.queues.len();
    if usize::from(d.queue_sel) >= count.max(1) {
        findings.push(Finding::new(
            Rule::QueueSelOutOfRange,
            "queue_sel",
            format!(
                "queue_sel {} selects a queue past the {count} the device saved",
                d.queue_sel
            ),
        ));
    }
    if let Some(expected) = expected_queue_count(d) {
        if count != expected {
            findings.push(Finding::new(
                Rule::QueueCount,
                "queues",
                format!(
                    "{count} queue(s) saved; a {} has {expected}",
                    d.kind.vmsd_name()
                ),
            ));
        }
    }
    let packed = d.offers_packed_rings();
    for (index, q) in d.queues.iter().enumerate() {
        let path = |field: &str| format!("queues[{index}].{field}");
        if q.num == 0 {
            findings.push(Finding::new(
                Rule::RingSizeZero,
                path("num"),
                "a saved queue has ring size 0 (QEMU saves only queues with a size)",
            ));
        } else if q.num as usize > VIRTQUEUE_MAX_SIZE {
            findings.push(Finding::new(
                Rule::RingSizeTooLarge,
                path("num"),
                format!("ring size {} is over {VIRTQUEUE_MAX_SIZE}", q.num),
            ));
        } else if !packed && !q.num.is_power_of_two() {
            findings.push(Finding::new(
                Rule::RingSizeNotPowerOfTwo,
                path("num"),
                format!("split ring size {} is not a power of two", q.num),
            ));
        }
        if q.desc == 0 && q.last_avail_idx != 0 {
            findings.push(Finding::new(
                Rule::IndexWithoutRing,
                path("last_avail_idx"),
                format!(
                    "last_avail_idx {} on a queue with no descriptor table (desc 0); QEMU \
                     refuses to load this",
                    q.last_avail_idx
                ),
            ));
        }
    }
    checked.push(format!(
        "queue_sel and {count} queue(s): ring sizes, indices without rings"
    ));
}

/// The number of queues a device of this kind always has, when the stream is enough to
/// know it.
fn expected_queue_count(d: &VirtioDevice) -> Option<usize> {
    match d.kind.vmsd_name() {
        "virtio-rng" => Some(1),
        _ => None,
    }
}

/// Config and queue vectors against the MSI-X table size.
fn check_vectors(d: &VirtioDevice, findings: &mut Vec<Finding>, checked: &mut Vec<String>) {
    let Some(msix) = &d.transport.msix else {
        return;
    };
    let table = d.transport.shape.msix_vectors;
    let mut check = |vector: u16, path: String| {
        if vector != NO_VECTOR && vector >= table {
            findings.push(Finding::new(
                Rule::VectorOutOfRange,
                path,
                format!("vector {vector} is past the MSI-X table of {table} entries"),
            ));
        }
    };
    check(
        msix.config_vector,
        "transport.msix.config_vector".to_owned(),
    );
    for (index, q) in d.queues.iter().enumerate() {
        if let Some(vector) = q.vector {
            check(vector, format!("queues[{index}].vector"));
        }
    }
    checked.push(format!("MSI-X vectors against a table of {table}"));
}

fn check_config(d: &VirtioDevice, findings: &mut Vec<Finding>, checked: &mut Vec<String>) {
    if d.config.0.len() > MAX_CONFIG_LEN {
        findings.push(Finding::new(
            Rule::ConfigTooLong,
            "config",
            format!(
                "config space of {} bytes; no virtio device has more than {MAX_CONFIG_LEN}",
                d.config.0.len()
            ),
        ));
    }
    checked.push(format!("config length {}", d.config.0.len()));
}

/// Values in the core subsections that have a fixed range or repeat another field.
fn check_subsections(d: &VirtioDevice, findings: &mut Vec<Finding>, checked: &mut Vec<String>) {
    for sub in &d.subsections {
        let path = format!("subsections[{}].value", sub.state.name());
        match sub.state {
            CoreState::DeviceEndian(v) if v > 2 => findings.push(Finding::new(
                Rule::DeviceEndian,
                path,
                format!("device_endian {v}: expected 0 (unknown), 1 (little) or 2 (big)"),
            )),
            CoreState::Features64(features)
                if features & 0xffff_ffff != u64::from(d.guest_features_low) =>
            {
                findings.push(Finding::new(
                    Rule::FeaturesDisagree,
                    path,
                    format!(
                        "guest features {features:#x} disagree with the low word {:#x} saved \
                         before the queues",
                        d.guest_features_low
                    ),
                ))
            }
            _ => {}
        }
    }
    checked.push("device_endian, guest features in both places".to_owned());
}

/// In-flight requests: their queue, head index and uniqueness.
fn check_requests(
    d: &VirtioDevice,
    findings: &mut Vec<Finding>,
    checked: &mut Vec<String>,
    notes: &mut Vec<Note>,
) {
    let DeviceState::Blk(blk) = &d.device else {
        return;
    };
    let packed = d.offers_packed_rings();
    let mut heads = HashSet::new();
    for (k, request) in blk.requests.iter().enumerate() {
        let queue = request.queue.unwrap_or(0);
        let Some(q) = d.queues.get(queue as usize) else {
            findings.push(Finding::new(
                Rule::RequestQueueOutOfRange,
                format!("requests[{k}].queue"),
                format!(
                    "queue {queue}, but the device saved {} queue(s)",
                    d.queues.len()
                ),
            ));
            continue;
        };
        let head = request.element.index;
        if !packed && head >= q.num {
            findings.push(Finding::new(
                Rule::HeadOutOfRange,
                format!("requests[{k}].index"),
                format!(
                    "head index {head} is past the end of queue {queue}'s ring of {}",
                    q.num
                ),
            ));
        }
        if !heads.insert((queue, head)) {
            findings.push(Finding::new(
                Rule::DuplicateHead,
                format!("requests[{k}].index"),
                format!("head {head} of queue {queue} is in flight twice"),
            ));
        }
    }
    if blk.requests.is_empty() {
        return;
    }
    checked.push(format!(
        "{} in-flight request(s): queue, head index, duplicate heads",
        blk.requests.len()
    ));
    if blk.framing.layout != Layout::Stable {
        notes.push(Note::about(
            "requests",
            format!(
                "in-flight elements are in the {} host layout: a QEMU on an x86-64 host cannot \
                 load them; `vmstate convert --to-layout stable` rewrites them",
                blk.framing.layout
            ),
        ));
    }
    if blk.framing.ndescs == NdescsOrder::BeforeElement {
        notes.push(Note::about(
            "requests",
            "packed-ring requests carry ndescs before the element, as QEMU writes them; QEMU's \
             own loader reads it after and fails (\"unexpected memory split\"): \
             `vmstate convert --packed-ndescs-after` writes the order it reads",
        ));
    }
}

/// Feature bits of the transport's range that no virtio specification defines.
fn note_features(d: &VirtioDevice, notes: &mut Vec<Note>) {
    let features = d.guest_features();
    let unknown: Vec<u32> = (24..50)
        .filter(|bit| features & (1u64 << bit) != 0 && !TRANSPORT_FEATURES.contains(bit))
        .collect();
    if !unknown.is_empty() {
        notes.push(Note::about(
            "guest_features",
            format!(
                "feature bit(s) {unknown:?} are not defined by the virtio transport; the \
                 device's offered features are not in the stream, so this is not a finding"
            ),
        ));
    }
}
