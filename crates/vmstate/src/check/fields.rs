//! Checks that need nothing but the decoded fields: bounds, counts, indices, vectors and
//! agreement between fields that say the same thing twice.

use std::collections::HashSet;

use super::{DeviceReport, Finding, Rule, SavedElement};
use crate::devices::{ScsiDiskSection, VirtioSection};
use crate::element::{Layout, VIRTQUEUE_MAX_SIZE};
use crate::note::Note;
use crate::virtio::{
    CoreState, DeviceKind, DeviceState, Framing, NdescsOrder, PackedQueueState, VirtioDevice,
    NO_VECTOR,
};

/// The largest device config space there is reason to accept: every virtio device's is far
/// smaller, and QEMU discards what its own device does not have.
const MAX_CONFIG_LEN: usize = 256;

/// Entries of virtio-net's MAC filter table (`MAC_TABLE_ENTRIES`).
const MAC_TABLE_ENTRIES: u32 = 64;

/// Feature bits the virtio transport defines (bits 24 to 49 are the transport's).
const TRANSPORT_FEATURES: &[u32] = &[24, 27, 28, 29, 30, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41];

/// Runs every field check on one device; `saved` are the elements it saved (see
/// `saved_elements`), `scsi` the SCSI disk sections of the stream.
pub(super) fn check_fields(
    section: &VirtioSection,
    saved: &Option<Vec<SavedElement<'_>>>,
    scsi: &[ScsiDiskSection],
) -> DeviceReport {
    let d = &section.device;
    let mut findings = Vec::new();
    let mut checked = Vec::new();
    let mut notes = d.notes.clone();

    check_queues(d, &mut findings, &mut checked);
    check_vectors(d, &mut findings, &mut checked);
    check_config(d, &mut findings, &mut checked);
    check_subsections(d, &mut findings, &mut checked);
    if let Some(saved) = saved {
        check_elements(d, saved, &mut findings, &mut checked);
    }
    check_device(section, scsi, &mut findings, &mut checked);
    note_framing(section, scsi, &mut notes);
    note_features(d, &mut notes);
    note_subsection_names(d, &mut notes);

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
    let expected = expected_queue_counts(d);
    if !expected.is_empty() && !expected.contains(&count) {
        let counts: Vec<String> = expected.iter().map(usize::to_string).collect();
        findings.push(Finding::new(
            Rule::QueueCount,
            "queues",
            format!(
                "{count} queue(s) saved; a {} has {}",
                d.kind.vmsd_name(),
                counts.join(" or ")
            ),
        ));
    }
    let packed = d.uses_packed_rings();
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
        if packed && u32::from(q.last_avail_idx) >= q.num.max(1) {
            findings.push(Finding::new(
                Rule::PackedIndexOutOfRange,
                path("last_avail_idx"),
                format!(
                    "packed-ring index {} is past the ring of {} descriptors",
                    q.last_avail_idx, q.num
                ),
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

/// The numbers of queues a device of this kind can have saved, when the stream is enough to
/// know them (empty when it is not).
fn expected_queue_counts(d: &VirtioDevice) -> Vec<usize> {
    /// `VIRTIO_NET_F_MQ`: the driver uses more than one queue pair.
    const NET_F_MQ: u64 = 1 << 22;
    match &d.device {
        // A control pair, then a receive and a transmit queue per port (port 0 included).
        DeviceState::Serial(serial) => usize::try_from(serial.max_ports())
            .ok()
            .and_then(|n| n.checked_add(1)?.checked_mul(2))
            .into_iter()
            .collect(),
        // A receive and a transmit queue per queue pair, then the control queue. Until the
        // driver negotiates multiqueue QEMU keeps one pair and the control queue.
        DeviceState::Net(net) => {
            let pairs = net.queue_pairs.as_ref().map_or(1, |p| usize::from(p.max));
            let all = pairs.saturating_mul(2).saturating_add(1);
            if pairs > 1 && d.guest_features() & NET_F_MQ == 0 {
                vec![all, 3]
            } else {
                vec![all]
            }
        }
        _ if d.kind.vmsd_name() == "virtio-rng" => vec![1],
        _ => Vec::new(),
    }
}

/// Config and queue vectors against the MSI-X table size.
fn check_vectors(d: &VirtioDevice, findings: &mut Vec<Finding>, checked: &mut Vec<String>) {
    let Some(pci) = d.transport.pci() else {
        return;
    };
    let Some(msix) = &pci.msix else {
        return;
    };
    let table = pci.shape().msix_vectors;
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
            CoreState::PackedVirtqueues(ref queues) => {
                check_packed_subsection(d, queues, findings, checked);
            }
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

/// `virtio/packed_virtqueues`, which QEMU sends when the device *offers* packed rings. What
/// its values mean follows what the driver negotiated: with `VIRTIO_F_RING_PACKED` they are
/// packed-ring positions, bounded by the ring; without it (firmware drives split rings on a
/// `packed=on` device) they are the split ring's free-running indices, which pass the ring
/// size as soon as the driver has made more requests than the ring has entries. The
/// loader takes `last_avail_idx` from here in both cases; for a split ring it recomputes
/// `used_idx` and `inuse` from the used ring in guest memory, so only their distance is
/// bounded.
fn check_packed_subsection(
    d: &VirtioDevice,
    queues: &[PackedQueueState],
    findings: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) {
    let packed = d.uses_packed_rings();
    for (index, (state, q)) in queues.iter().zip(&d.queues).enumerate() {
        let num = q.num.max(1);
        let at =
            |field: &str| format!("subsections[virtio/packed_virtqueues].queues[{index}].{field}");
        if packed {
            for (field, value) in [
                ("last_avail_idx", u32::from(state.last_avail_idx)),
                ("used_idx", u32::from(state.used_idx)),
            ] {
                if value >= num {
                    findings.push(Finding::new(
                        Rule::PackedIndexOutOfRange,
                        at(field),
                        format!("packed-ring {field} {value} is past the ring of {num}"),
                    ));
                }
            }
        } else {
            let outstanding = state.last_avail_idx.wrapping_sub(state.used_idx);
            if u32::from(outstanding) > num {
                findings.push(Finding::new(
                    Rule::InUseOverRingSize,
                    at("used_idx"),
                    format!(
                        "split-ring last_avail_idx {} - used_idx {} is {outstanding}, more than \
                         the ring of {num} holds",
                        state.last_avail_idx, state.used_idx
                    ),
                ));
            }
        }
        if state.last_avail_idx != q.last_avail_idx {
            findings.push(Finding::new(
                Rule::PackedIndicesDisagree,
                at("last_avail_idx"),
                format!(
                    "last_avail_idx {} disagrees with the {} saved with the queue (QEMU loads \
                     the subsection's)",
                    state.last_avail_idx, q.last_avail_idx
                ),
            ));
        }
        if state.inuse > num {
            findings.push(Finding::new(
                Rule::InUseOverRingSize,
                at("inuse"),
                format!("{} in use on a ring of {num}", state.inuse),
            ));
        }
    }
    checked.push(if packed {
        "virtio/packed_virtqueues: packed-ring indices within their rings (RING_PACKED negotiated)"
            .to_owned()
    } else {
        "virtio/packed_virtqueues: split-ring indices, as the driver did not negotiate \
         RING_PACKED (the device only offers it)"
            .to_owned()
    });
}

/// In-flight elements: their queue, head index and uniqueness.
fn check_elements(
    d: &VirtioDevice,
    saved: &[SavedElement<'_>],
    findings: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) {
    let packed = d.uses_packed_rings();
    let mut heads = HashSet::new();
    for element in saved {
        let queue = element.queue;
        let Some(q) = d.queues.get(queue) else {
            findings.push(Finding::new(
                Rule::RequestQueueOutOfRange,
                format!("{}.queue", element.path),
                format!(
                    "queue {queue}, but the device saved {} queue(s)",
                    d.queues.len()
                ),
            ));
            continue;
        };
        let head = element.element.index;
        if !packed && head >= q.num {
            findings.push(Finding::new(
                Rule::HeadOutOfRange,
                format!("{}.index", element.path),
                format!(
                    "head index {head} is past the end of queue {queue}'s ring of {}",
                    q.num
                ),
            ));
        }
        if !heads.insert((queue, head)) {
            findings.push(Finding::new(
                Rule::DuplicateHead,
                format!("{}.index", element.path),
                format!("head {head} of queue {queue} is in flight twice"),
            ));
        }
    }
    if !saved.is_empty() {
        checked.push(format!(
            "{} in-flight element(s): queue, head index, duplicate heads",
            saved.len()
        ));
    }
}

/// Fields of a particular device's own state.
fn check_device(
    section: &VirtioSection,
    scsi: &[ScsiDiskSection],
    findings: &mut Vec<Finding>,
    checked: &mut Vec<String>,
) {
    let d = &section.device;
    match &d.device {
        DeviceState::Net(net) => {
            if net.mac_table_in_use > MAC_TABLE_ENTRIES {
                findings.push(Finding::new(
                    Rule::NetMacTable,
                    "net.mac_table_in_use",
                    format!(
                        "MAC table in_use {} is over its {MAC_TABLE_ENTRIES} entries                          (CVE-2013-4148/4149 class; QEMU discards the table)",
                        net.mac_table_in_use
                    ),
                ));
            }
            if let Some(pairs) = &net.queue_pairs {
                if pairs.curr == 0 || pairs.curr > pairs.max {
                    findings.push(Finding::new(
                        Rule::NetQueuePairs,
                        "net.queue_pairs.curr",
                        format!(
                            "{} current queue pair(s) of {} (CVE-2013-4150 class: must be 1 to max)",
                            pairs.curr, pairs.max
                        ),
                    ));
                }
            }
            checked.push("MAC table count, queue pairs".to_owned());
        }
        DeviceState::Serial(serial) => {
            for (k, port) in serial.ports.iter().enumerate() {
                let path = |field: &str| format!("serial.ports[{k}].{field}");
                if port.elem_popped > 1 {
                    findings.push(Finding::new(
                        Rule::SerialElemPopped,
                        path("elem_popped"),
                        format!("elem_popped {}: expected 0 or 1", port.elem_popped),
                    ));
                }
                let in_map = serial
                    .ports_map
                    .get(usize::try_from(port.id / 32).unwrap_or(usize::MAX))
                    .is_some_and(|word| word & (1u32 << (port.id % 32)) != 0);
                if port.id >= serial.max_ports() || !in_map {
                    findings.push(Finding::new(
                        Rule::SerialPort,
                        path("id"),
                        format!(
                            "port {} is not one of the device's {} ports in its ports map",
                            port.id,
                            serial.max_ports()
                        ),
                    ));
                }
                if let Some(popped) = &port.popped {
                    let segments = &popped.element.element.device_readable;
                    match segments.get(usize::try_from(popped.iov_idx).unwrap_or(usize::MAX)) {
                        None => findings.push(Finding::new(
                            Rule::SerialIovPosition,
                            path("popped.iov_idx"),
                            format!(
                                "iov_idx {} is past the element's {} segment(s)",
                                popped.iov_idx,
                                segments.len()
                            ),
                        )),
                        Some(segment) if popped.iov_offset >= segment.len => {
                            findings.push(Finding::new(
                                Rule::SerialIovPosition,
                                path("popped.iov_offset"),
                                format!(
                                    "iov_offset {} is past segment {} of {} bytes",
                                    popped.iov_offset, popped.iov_idx, segment.len
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
            checked.push(format!(
                "{} port(s): ids, elem_popped, iov_idx and iov_offset",
                serial.ports.len()
            ));
        }
        _ if d.kind == DeviceKind::Scsi => {
            let request_queues = d.queues.len().saturating_sub(2);
            let mut count = 0usize;
            for (i, disk) in scsi.iter().enumerate() {
                if disk.hba.as_deref() != Some(section.idstr.as_str()) {
                    continue;
                }
                for (k, request) in disk.requests.requests.iter().enumerate() {
                    count = count.saturating_add(1);
                    if request.queue_number as usize >= request_queues {
                        findings.push(Finding::new(
                            Rule::ScsiQueueNumber,
                            format!("scsi_requests[{i}].requests[{k}].queue_number"),
                            format!(
                                "queue number {} but the device has {request_queues} request                                  queue(s) (QEMU asserts on this)",
                                request.queue_number
                            ),
                        ));
                    }
                }
            }
            checked.push(format!("{count} SCSI request(s): queue numbers"));
        }
        _ => {}
    }
}

/// Facts about how elements were written that are not defects: a legacy host layout, or
/// `ndescs` in the order QEMU's loader cannot read.
fn note_framing(section: &VirtioSection, scsi: &[ScsiDiskSection], notes: &mut Vec<Note>) {
    let mut framings: Vec<Framing> = section.device.framing().into_iter().collect();
    framings.extend(
        scsi.iter()
            .filter(|disk| disk.hba.as_deref() == Some(section.idstr.as_str()))
            .filter(|disk| !disk.requests.requests.is_empty())
            .map(|disk| disk.requests.framing),
    );
    let has_elements = super::saved_elements(section, scsi).is_some_and(|s| !s.is_empty());
    if !has_elements {
        return;
    }
    for framing in framings {
        if framing.layout != Layout::Stable {
            notes.push(Note::about(
                "elements",
                format!(
                    "in-flight elements are in the {} host layout: a QEMU on an x86-64 host \
                     cannot load them; `vmstate convert --to-layout stable` rewrites them",
                    framing.layout
                ),
            ));
        }
        if framing.ndescs == NdescsOrder::BeforeElement {
            notes.push(Note::about(
                "elements",
                "packed-ring elements carry ndescs before the element, as QEMU writes them; \
                 QEMU's own loader reads it after and fails (\"unexpected memory split\"): \
                 `vmstate convert --packed-ndescs-after` writes the order it reads",
            ));
        }
    }
}

/// Subsection names that QEMU wrote and no QEMU reads.
fn note_subsection_names(d: &VirtioDevice, notes: &mut Vec<Note>) {
    if let DeviceState::Balloon(balloon) = &d.device {
        if balloon.has_misspelled_names() {
            notes.push(Note::about(
                "balloon.subsections",
                "the page-poison subsection is named `vitio-balloon-device/page-poison`, as \
                 QEMU 5.1 to 6.1 write it: every QEMU loader stops reading the device's \
                 subsections at that name and misreads the virtio state after it, so no QEMU \
                 loads this stream; `vmstate convert --mend-names` writes the name QEMU 6.2 \
                 and later read (5.1 to 6.1 read neither)",
            ));
        }
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
