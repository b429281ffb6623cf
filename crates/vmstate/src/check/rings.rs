//! Checks against guest memory: each queue's rings, its indices, and every in-flight element
//! compared with the descriptors the guest actually wrote.
//!
//! QEMU trusts the elements it loads: it maps their addresses without looking at the
//! descriptor table. Here every element's chain is walked again from its head, with a walker
//! of our own that never takes more steps than the ring has entries, and every segment is
//! compared with the saved one. Reads of pages the stream did not carry (a stripped stream)
//! are not guessed at: the check is listed as not made, with the reason.

use std::collections::HashMap;

use super::requests::Outstanding;
use super::{DeviceReport, Finding, Rule, SavedElement};
use crate::element::Segment;
use crate::memory::{GuestBytes, ReadError};
use crate::virtio::{CoreState, PackedQueueState, VirtioDevice};
use crate::wire::Endian;

/// Guest memory as one device's rings lie in it: its integers read in the device's byte
/// order, everything else as the memory reads it.
pub(super) struct RingMemory<'a> {
    ram: &'a dyn GuestBytes,
    endian: Endian,
}

impl<'a> RingMemory<'a> {
    pub(super) fn new(ram: &'a dyn GuestBytes, endian: Endian) -> Self {
        RingMemory { ram, endian }
    }

    /// The device's byte order.
    pub(super) fn endian(&self) -> Endian {
        self.endian
    }

    fn read_u16(&self, gpa: u64) -> Result<u16, ReadError> {
        self.ram.read_u16(gpa, self.endian)
    }

    fn read_u32(&self, gpa: u64) -> Result<u32, ReadError> {
        self.ram.read_u32(gpa, self.endian)
    }

    fn read_u64(&self, gpa: u64) -> Result<u64, ReadError> {
        self.ram.read_u64(gpa, self.endian)
    }
}

impl<'a> std::ops::Deref for RingMemory<'a> {
    type Target = dyn GuestBytes + 'a;
    fn deref(&self) -> &Self::Target {
        self.ram
    }
}

/// Descriptor flag: the chain continues at `next`.
const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
const DESC_F_INDIRECT: u16 = 4;
/// Bytes of one descriptor, split or packed.
const DESC_SIZE: u64 = 16;

/// One descriptor as the guest wrote it.
#[derive(Debug, Clone, Copy)]
struct Descriptor {
    addr: u64,
    len: u32,
    flags: u16,
    /// `next` (split rings) or the buffer id (packed rings).
    next_or_id: u16,
}

impl Descriptor {
    /// The buffer the descriptor describes, and whether it is device-writable.
    fn segment(&self) -> (Segment, bool) {
        (
            Segment {
                addr: self.addr,
                len: u64::from(self.len),
            },
            self.flags & DESC_F_WRITE != 0,
        )
    }
}

/// Reads the descriptor at `at`: `addr`, `len`, then `flags, next` in a split ring but
/// `id, flags` in a packed one.
fn read_descriptor(ram: &RingMemory<'_>, at: u64, packed: bool) -> Result<Descriptor, ReadError> {
    let word_12 = ram.read_u16(at.saturating_add(12))?;
    let word_14 = ram.read_u16(at.saturating_add(14))?;
    let (flags, next_or_id) = if packed {
        (word_14, word_12)
    } else {
        (word_12, word_14)
    };
    Ok(Descriptor {
        addr: ram.read_u64(at)?,
        len: ram.read_u32(at.saturating_add(8))?,
        flags,
        next_or_id,
    })
}

/// Why a chain could not be walked.
enum WalkError {
    /// A finding: the chain itself is wrong.
    Defect(Rule, String),
    /// Guest memory the walk needs is not in the stream.
    Unknown(String),
}

impl From<(ReadError, String)> for WalkError {
    fn from((error, what): (ReadError, String)) -> Self {
        match error {
            ReadError::Unknown => WalkError::Unknown(format!("{what} is {error}")),
            ReadError::OutsideRam => {
                WalkError::Defect(Rule::DescriptorOutsideRam, format!("{what} is {error}"))
            }
        }
    }
}

/// Segments of one chain as (segment, device-writable), in chain order.
type Chain = Vec<(Segment, bool)>;

/// Reads an indirect table's descriptors (packed or split format), refusing bad lengths,
/// tables outside RAM and nested tables.
fn read_indirect(
    ram: &RingMemory<'_>,
    table: &Descriptor,
    packed: bool,
    limit: u64,
    tables: &mut Vec<(u64, u64)>,
) -> Result<Chain, WalkError> {
    tables.push((table.addr, u64::from(table.len)));
    if table.len == 0 || u64::from(table.len).checked_rem(DESC_SIZE) != Some(0) {
        return Err(WalkError::Defect(
            Rule::IndirectTableLength,
            format!(
                "indirect table length {} is not a non-zero multiple of 16",
                table.len
            ),
        ));
    }
    let entries = u64::from(table.len).checked_div(DESC_SIZE).unwrap_or(0);
    if !ram.is_ram(table.addr, u64::from(table.len)) {
        return Err(WalkError::Defect(
            Rule::DescriptorOutsideRam,
            format!(
                "indirect table at {:#x} ({} bytes) is not guest RAM",
                table.addr, table.len
            ),
        ));
    }
    let mut chain = Vec::new();
    let mut index = 0u64;
    let mut steps = 0u64;
    loop {
        if steps >= entries.min(limit) {
            return Err(WalkError::Defect(
                Rule::ChainLoop,
                format!("the indirect chain takes more than its {entries} entries"),
            ));
        }
        steps = steps.saturating_add(1);
        let at = table.addr.saturating_add(index.saturating_mul(DESC_SIZE));
        let desc = read_descriptor(ram, at, packed)
            .map_err(|e| WalkError::from((e, format!("indirect descriptor at {at:#x}"))))?;
        if desc.flags & DESC_F_INDIRECT != 0 {
            return Err(WalkError::Defect(
                Rule::IndirectNested,
                format!("indirect descriptor {index} points to another indirect table"),
            ));
        }
        chain.push(desc.segment());
        let next = if packed {
            // Packed tables are read in order to their end.
            index.saturating_add(1)
        } else if desc.flags & DESC_F_NEXT != 0 {
            u64::from(desc.next_or_id)
        } else {
            return Ok(chain);
        };
        if next >= entries {
            if packed {
                return Ok(chain);
            }
            return Err(WalkError::Defect(
                Rule::NextOutOfRange,
                format!(
                    "indirect descriptor {index} continues at {next}, past the table of {entries}"
                ),
            ));
        }
        index = next;
    }
}

/// Walks a split-ring chain from `head` in the descriptor table at `desc` of `num` entries.
fn walk_split(
    ram: &RingMemory<'_>,
    desc: u64,
    num: u64,
    head: u64,
    tables: &mut Vec<(u64, u64)>,
) -> Result<Chain, WalkError> {
    let mut chain = Vec::new();
    let mut index = head;
    let mut steps = 0u64;
    loop {
        if index >= num {
            return Err(WalkError::Defect(
                Rule::NextOutOfRange,
                format!("descriptor index {index} is past the table of {num}"),
            ));
        }
        if steps >= num {
            return Err(WalkError::Defect(
                Rule::ChainLoop,
                format!("the chain from head {head} takes more than {num} steps: it loops"),
            ));
        }
        steps = steps.saturating_add(1);
        let at = desc.saturating_add(index.saturating_mul(DESC_SIZE));
        let d = read_descriptor(ram, at, false)
            .map_err(|e| WalkError::from((e, format!("descriptor {index} at {at:#x}"))))?;
        if d.flags & DESC_F_INDIRECT != 0 {
            chain.extend(read_indirect(ram, &d, false, num, tables)?);
        } else {
            chain.push(d.segment());
        }
        if d.flags & DESC_F_NEXT == 0 {
            return Ok(chain);
        }
        index = u64::from(d.next_or_id);
    }
}

/// Walks a split-ring chain from `head`; the error is the chain's defect in words.
pub(super) fn walk_split_chain(
    ram: &RingMemory<'_>,
    desc: u64,
    num: u64,
    head: u64,
) -> Result<Chain, String> {
    walk_split(ram, desc, num, head, &mut Vec::new()).map_err(|e| match e {
        WalkError::Defect(rule, message) => format!("{}: {message}", rule.name()),
        WalkError::Unknown(message) => message,
    })
}

/// Compares a walked chain with the saved element; returns the findings.
fn compare(saved: &SavedElement<'_>, chain: &Chain, findings: &mut Vec<Finding>) {
    let path = &saved.path;
    if let Some(pos) = chain
        .windows(2)
        .position(|w| matches!(w, [(_, true), (_, false)]))
    {
        findings.push(Finding::new(
            Rule::DescriptorOrder,
            path.clone(),
            format!(
                "descriptor {} of the chain is device-readable after a device-writable one",
                pos.saturating_add(1)
            ),
        ));
    }
    let walked_out: Vec<Segment> = chain.iter().filter(|(_, w)| !w).map(|(s, _)| *s).collect();
    let walked_in: Vec<Segment> = chain.iter().filter(|(_, w)| *w).map(|(s, _)| *s).collect();
    for (list, saved_list, walked) in [
        ("out", &saved.element.device_readable, &walked_out),
        ("in", &saved.element.device_writable, &walked_in),
    ] {
        if saved_list.len() != walked.len() {
            findings.push(Finding::new(
                Rule::SegmentMismatch,
                format!("{path}.{list}"),
                format!(
                    "{} {list} segment(s) saved, the descriptors have {}",
                    saved_list.len(),
                    walked.len()
                ),
            ));
            continue;
        }
        for (j, (s, w)) in saved_list.iter().zip(walked.iter()).enumerate() {
            if s != w {
                findings.push(Finding::new(
                    Rule::SegmentMismatch,
                    format!("{path}.{list}[{j}]"),
                    format!(
                        "saved {:#x}+{}, the descriptor says {:#x}+{}",
                        s.addr, s.len, w.addr, w.len
                    ),
                ));
            }
        }
    }
}

/// Checks every queue of one device against guest memory, adding to `report`; returns what
/// each queue whose rings could be read has outstanding.
pub(super) fn check_memory(
    d: &VirtioDevice,
    shared: &HashMap<usize, String>,
    saved: &Option<Vec<SavedElement<'_>>>,
    ram: &RingMemory<'_>,
    report: &mut DeviceReport,
) -> Outstanding {
    let mut outstanding = Outstanding::new();
    let packed_state: Option<&Vec<PackedQueueState>> = d
        .subsections
        .iter()
        .find_map(|s| match &s.state {
            CoreState::PackedVirtqueues(q) => Some(q),
            _ => None,
        })
        .filter(|_| d.uses_packed_rings());
    let mut by_queue: HashMap<usize, Vec<&SavedElement<'_>>> = HashMap::new();
    for e in saved.iter().flatten() {
        by_queue.entry(e.queue).or_default().push(e);
    }
    for (index, q) in d.queues.iter().enumerate() {
        if q.desc == 0 {
            continue;
        }
        if let Some(other) = shared.get(&index) {
            report.not_checked.push(format!(
                "queue {index}: its descriptor table is where {other} has one: a ring cannot \
                 serve both, so the driver left one of them without a reset (firmware does) and \
                 which one the ring in memory is is not known"
            ));
            continue;
        }
        let Some((avail, used)) = d.ring_areas(index) else {
            report.not_checked.push(format!(
                "queue {index}: ring addresses unknown (a legacy ring alignment that is not a power of two)"
            ));
            continue;
        };
        let num = u64::from(q.num);
        let path = |field: &str| format!("queues[{index}].{field}");
        let elements = by_queue.get(&index).map(Vec::as_slice).unwrap_or(&[]);
        let areas = match packed_state {
            Some(_) => [
                ("desc", q.desc, num.saturating_mul(DESC_SIZE), 16),
                ("avail", avail, 4, 4),
                ("used", used, 4, 4),
            ],
            None => [
                ("desc", q.desc, num.saturating_mul(DESC_SIZE), 16),
                ("avail", avail, num.saturating_mul(2).saturating_add(6), 2),
                ("used", used, num.saturating_mul(8).saturating_add(6), 4),
            ],
        };
        let mut rings_ok = true;
        for (name, addr, len, align) in areas {
            if addr.checked_rem(align) != Some(0) {
                rings_ok = false;
                report.findings.push(Finding::new(
                    Rule::RingMisaligned,
                    path(name),
                    format!("{name} area at {addr:#x} is not aligned to {align}"),
                ));
            }
            if !ram.is_ram(addr, len) {
                rings_ok = false;
                report.findings.push(Finding::new(
                    Rule::RingOutsideRam,
                    path(name),
                    format!("{name} area {addr:#x}+{len} is not guest RAM"),
                ));
            }
        }
        for (i, a) in areas.iter().enumerate() {
            for b in areas.iter().skip(i.saturating_add(1)) {
                let overlap = a.1 < b.1.saturating_add(b.2) && b.1 < a.1.saturating_add(a.2);
                if overlap {
                    report.findings.push(Finding::new(
                        Rule::RingsOverlap,
                        path(b.0),
                        format!("the {} and {} areas of queue {index} overlap", a.0, b.0),
                    ));
                }
            }
        }
        if !rings_ok {
            continue;
        }
        let heads = match packed_state.and_then(|p| p.get(index)) {
            Some(state) => check_packed_queue(
                d,
                ram,
                index,
                q.desc,
                num,
                state,
                elements,
                saved.is_some(),
                report,
            ),
            None => check_split_queue(
                d,
                ram,
                index,
                (q.desc, avail, used, num, q.last_avail_idx),
                elements,
                saved.is_some(),
                report,
            ),
        };
        if let Some(heads) = heads {
            outstanding.insert(index, heads);
        }
    }
    outstanding
}

/// The in-use count against the elements the device saved for the queue.
fn check_in_use(
    d: &VirtioDevice,
    index: usize,
    inuse: u64,
    elements: &[&SavedElement<'_>],
    device_saves: bool,
    report: &mut DeviceReport,
) {
    let saved = elements.len() as u64;
    if device_saves {
        if saved != inuse {
            report.findings.push(Finding::new(
                Rule::ElementsVsInUse,
                format!("queues[{index}]"),
                format!(
                    "{inuse} request(s) in use on the ring, {saved} saved: {}",
                    if saved > inuse {
                        "more elements than the guest has outstanding"
                    } else {
                        "requests the guest submitted would be lost"
                    }
                ),
            ));
        }
    } else if inuse > 0 {
        let expected = d.kind.vmsd_name() == "virtio-balloon" && index == 2 && inuse == 1;
        report.notes.push(crate::note::Note::about(
            format!("queues[{index}]"),
            if expected {
                "1 element in use on the stats queue and none saved: QEMU does not save the \
                 balloon's stats request and rewinds the queue on load (expected)"
                    .to_owned()
            } else {
                format!("{inuse} element(s) in use that this device does not save")
            },
        ));
    }
}

fn check_split_queue(
    d: &VirtioDevice,
    ram: &RingMemory<'_>,
    index: usize,
    (desc, avail, used, num, last_avail_idx): (u64, u64, u64, u64, u16),
    elements: &[&SavedElement<'_>],
    device_saves: bool,
    report: &mut DeviceReport,
) -> Option<Vec<u64>> {
    let path = |field: &str| format!("queues[{index}].{field}");
    let (avail_idx, used_idx) = match (
        ram.read_u16(avail.saturating_add(2)),
        ram.read_u16(used.saturating_add(2)),
    ) {
        (Ok(a), Ok(u)) => (a, u),
        (Err(e), _) | (_, Err(e)) => {
            report.not_checked.push(format!(
                "queue {index}: ring indices not checked: the rings are {e}"
            ));
            return None;
        }
    };
    let heads = u64::from(avail_idx.wrapping_sub(last_avail_idx));
    if heads > num {
        report.findings.push(Finding::new(
            Rule::AvailIndexInconsistent,
            path("last_avail_idx"),
            format!(
                "the guest's avail index {avail_idx} is {heads} entries past last_avail_idx \
                 {last_avail_idx}, more than the ring's {num} (QEMU marks the device broken)"
            ),
        ));
    }
    let inuse = u64::from(last_avail_idx.wrapping_sub(used_idx));
    if inuse > num {
        report.findings.push(Finding::new(
            Rule::InUseOverRingSize,
            path("last_avail_idx"),
            format!(
                "last_avail_idx {last_avail_idx} - used index {used_idx} = {inuse} in use, more \
                 than the ring's {num} (QEMU refuses to load this)"
            ),
        ));
        return None;
    }
    check_in_use(d, index, inuse, elements, device_saves, report);
    report.checked.push(format!(
        "queue {index}: rings in RAM and aligned, avail index {avail_idx}, used index {used_idx}, {inuse} in use"
    ));

    // The heads the guest made available and the device popped without returning.
    let mut window = Vec::new();
    for k in 0..inuse {
        let position = u64::from(last_avail_idx)
            .wrapping_sub(inuse)
            .wrapping_add(k)
            .checked_rem(num)
            .unwrap_or(0);
        match ram.read_u16(
            avail
                .saturating_add(4)
                .saturating_add(position.saturating_mul(2)),
        ) {
            Ok(head) => window.push(u64::from(head)),
            Err(e) => {
                report
                    .not_checked
                    .push(format!("queue {index}: avail ring entries are {e}"));
                return None;
            }
        }
    }
    for saved in elements {
        let head = u64::from(saved.element.index);
        if !window.contains(&head) {
            report.findings.push(Finding::new(
                Rule::HeadNotOutstanding,
                format!("{}.index", saved.path),
                format!(
                    "head {head} is not among the {inuse} the guest made available and the \
                     device has not returned ({window:?})"
                ),
            ));
        }
        match walk_split(ram, desc, num, head, &mut Vec::new()) {
            Ok(chain) => {
                compare(saved, &chain, &mut report.findings);
            }
            Err(WalkError::Defect(rule, message)) => {
                report
                    .findings
                    .push(Finding::new(rule, format!("{}.index", saved.path), message))
            }
            Err(WalkError::Unknown(why)) => report.not_checked.push(format!(
                "{}: chain from head {head} not walked: {why}",
                saved.path
            )),
        }
    }
    if !elements.is_empty() {
        report.checked.push(format!(
            "queue {index}: {} element(s) walked from their heads and compared segment by segment",
            elements.len()
        ));
    }
    Some(window)
}

#[allow(clippy::too_many_arguments)]
fn check_packed_queue(
    d: &VirtioDevice,
    ram: &RingMemory<'_>,
    index: usize,
    desc: u64,
    num: u64,
    state: &PackedQueueState,
    elements: &[&SavedElement<'_>],
    device_saves: bool,
    report: &mut DeviceReport,
) -> Option<Vec<u64>> {
    check_in_use(
        d,
        index,
        u64::from(state.inuse),
        elements,
        device_saves,
        report,
    );
    // The descriptors popped and not yet used lie between used_idx and last_avail_idx.
    let span = u64::from(state.last_avail_idx)
        .wrapping_add(num)
        .wrapping_sub(u64::from(state.used_idx))
        .checked_rem(num)
        .unwrap_or(0);
    let span = if span == 0 && state.inuse > 0 {
        num
    } else {
        span
    };
    let mut chains: Vec<(u16, u64, Chain)> = Vec::new();
    let mut current: Chain = Vec::new();
    let mut descs_in_chain = 0u64;
    for k in 0..span {
        let slot = u64::from(state.used_idx)
            .wrapping_add(k)
            .checked_rem(num)
            .unwrap_or(0);
        let at = desc.saturating_add(slot.saturating_mul(DESC_SIZE));
        let d = match read_descriptor(ram, at, true) {
            Ok(d) => d,
            Err(e) => {
                report
                    .not_checked
                    .push(format!("queue {index}: packed descriptor {slot} is {e}"));
                return None;
            }
        };
        descs_in_chain = descs_in_chain.saturating_add(1);
        if d.flags & DESC_F_INDIRECT != 0 {
            match read_indirect(ram, &d, true, num, &mut Vec::new()) {
                Ok(table) => current.extend(table),
                Err(WalkError::Defect(rule, message)) => {
                    report
                        .findings
                        .push(Finding::new(rule, format!("queues[{index}]"), message));
                    return None;
                }
                Err(WalkError::Unknown(why)) => {
                    report.not_checked.push(format!("queue {index}: {why}"));
                    return None;
                }
            }
        } else {
            current.push(d.segment());
        }
        if d.flags & DESC_F_NEXT == 0 {
            chains.push((d.next_or_id, descs_in_chain, std::mem::take(&mut current)));
            descs_in_chain = 0;
        }
    }
    for saved in elements {
        let id = saved.element.index;
        match chains
            .iter()
            .find(|(chain_id, _, _)| u32::from(*chain_id) == id)
        {
            Some((_, descs, chain)) => {
                compare(saved, chain, &mut report.findings);
                if let Some(ndescs) = saved.ndescs {
                    if u64::from(ndescs) != *descs {
                        report.findings.push(Finding::new(
                            Rule::SegmentMismatch,
                            format!("{}.ndescs", saved.path),
                            format!("ndescs {ndescs} saved, the buffer takes {descs} ring slot(s)"),
                        ));
                    }
                }
            }
            None => report.findings.push(Finding::new(
                Rule::PackedBufferNotFound,
                format!("{}.index", saved.path),
                format!(
                    "no descriptor chain with buffer id {id} lies between used_idx {} and \
                     last_avail_idx {} of the packed ring: the element cannot be matched",
                    state.used_idx, state.last_avail_idx
                ),
            )),
        }
    }
    report.checked.push(format!(
        "queue {index} (packed): {} in use, {} element(s) matched by buffer id and compared",
        state.inuse,
        elements.len()
    ));
    Some(chains.iter().map(|(id, _, _)| u64::from(*id)).collect())
}

/// The guest-physical ranges a check of `d` reads: every set-up queue's ring areas and the
/// indirect tables of its in-flight elements (not their data buffers). A stream that keeps
/// the pages of these ranges can still be checked without carrying the guest's data.
pub(super) fn ring_ranges(
    d: &VirtioDevice,
    saved: &Option<Vec<SavedElement<'_>>>,
    ram: &RingMemory<'_>,
) -> Vec<(u64, u64)> {
    let packed = d.uses_packed_rings();
    let mut ranges = Vec::new();
    for (index, q) in d.queues.iter().enumerate() {
        if q.desc == 0 {
            continue;
        }
        let num = u64::from(q.num);
        ranges.push((q.desc, num.saturating_mul(DESC_SIZE)));
        if let Some((avail, used)) = d.ring_areas(index) {
            if packed {
                ranges.push((avail, 4));
                ranges.push((used, 4));
            } else {
                ranges.push((avail, num.saturating_mul(2).saturating_add(6)));
                ranges.push((used, num.saturating_mul(8).saturating_add(6)));
            }
        }
        for element in saved.iter().flatten().filter(|e| e.queue == index) {
            if packed {
                // The in-flight buffers' indirect tables: scan the whole ring, bounded by it.
                for slot in 0..num {
                    let at = q.desc.saturating_add(slot.saturating_mul(DESC_SIZE));
                    if let Ok(d) = read_descriptor(ram, at, true) {
                        if d.flags & DESC_F_INDIRECT != 0
                            && u32::from(d.next_or_id) == element.element.index
                        {
                            ranges.push((d.addr, u64::from(d.len)));
                        }
                    }
                }
            } else {
                let _ = walk_split(
                    ram,
                    q.desc,
                    num,
                    u64::from(element.element.index),
                    &mut ranges,
                );
            }
        }
    }
    ranges
}
