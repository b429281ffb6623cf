//! Checks of what a device saved *about* each request in flight against the request itself:
//! the header the guest wrote in the element's first buffers, and the fields a device keeps
//! beside the element (a SCSI request's command block, tag and LUN; scsi-disk's position).
//!
//! QEMU trusts these on load. virtio-blk parses its header again from guest memory, so what
//! matters there is what the header asks for; virtio-scsi re-runs the command block it saved,
//! not the one the guest wrote, so the two must agree. The element's buffers are read as QEMU
//! reads them: the saved segments, in order, not the descriptors.

mod blk;
mod scsi;
mod serial;

use std::collections::HashMap;

use super::rings::RingMemory;
use super::{DeviceReport, Finding, Rule, SavedElement};
use crate::devices::{ScsiDiskSection, VirtioSection};
use crate::element::Segment;
use crate::memory::ReadError;
use crate::virtio::{DeviceKind, DeviceState};

/// The heads (split rings) or buffer ids (packed rings) each queue has outstanding: made
/// available by the guest, taken by the device, not yet returned. Only queues whose rings
/// could be read are present.
pub(crate) type Outstanding = HashMap<usize, Vec<u64>>;

/// Runs every request check of one device. `ram` is `None` when the stream's memory is not
/// at hand: the checks of saved fields alone are still made.
pub(super) fn check_requests(
    section: &VirtioSection,
    saved: &Option<Vec<SavedElement<'_>>>,
    scsi: &[ScsiDiskSection],
    ram: Option<(&RingMemory<'_>, &Outstanding)>,
    report: &mut DeviceReport,
) {
    let Some(saved) = saved else {
        return;
    };
    if saved.is_empty() {
        return;
    }
    check_writable_overlap(saved, report);
    match &section.device.device {
        DeviceState::Blk(_) => blk::check(section, saved, ram.map(|(ram, _)| ram), report),
        DeviceState::Serial(serial) => serial::check(serial, saved, ram.map(|(_, o)| o), report),
        _ if section.device.kind == DeviceKind::Scsi => {
            scsi::check(section, scsi, ram.map(|(ram, _)| ram), report)
        }
        _ => {}
    }
}

/// The guest-physical ranges the request checks of `section` read: each saved element's
/// request header (with a virtio-blk discard's first range).
pub(super) fn header_ranges(
    section: &VirtioSection,
    saved: &Option<Vec<SavedElement<'_>>>,
    ram: &RingMemory<'_>,
) -> Vec<(u64, u64)> {
    let d = &section.device;
    let is_scsi = d.kind == DeviceKind::Scsi;
    let mut ranges = Vec::new();
    for e in saved.iter().flatten() {
        let out = &e.element.device_readable;
        let len = match &d.device {
            DeviceState::Blk(_) => blk::read_len(ram, out),
            _ if is_scsi => scsi::request_len(d),
            _ => continue,
        };
        ranges.extend(prefix(out, len).0);
    }
    ranges
}

/// The ranges that hold the first `len` bytes of `segments`, and how many bytes they hold
/// (less than `len` when the segments are shorter).
fn prefix(segments: &[Segment], len: u64) -> (Vec<(u64, u64)>, u64) {
    let mut ranges = Vec::new();
    let mut covered = 0u64;
    for segment in segments {
        if covered >= len {
            break;
        }
        let take = segment.len.min(len.saturating_sub(covered));
        if take > 0 {
            ranges.push((segment.addr, take));
        }
        covered = covered.saturating_add(take);
    }
    (ranges, covered)
}

/// What reading a request header found.
enum Header {
    /// The header's bytes.
    Read(Vec<u8>),
    /// The buffers hold only this many bytes.
    Short(u64),
}

/// Reads the first `len` bytes of `segments` from guest memory, as the device reads its
/// request header.
fn read_header(ram: &RingMemory<'_>, segments: &[Segment], len: u64) -> Result<Header, ReadError> {
    let (ranges, covered) = prefix(segments, len);
    if covered < len {
        return Ok(Header::Short(covered));
    }
    let mut bytes = Vec::new();
    for (addr, take) in ranges {
        let start = bytes.len();
        // `take` is at most `len`, a header of a few dozen bytes.
        bytes.resize(start.saturating_add(usize::try_from(take).unwrap_or(0)), 0);
        if let Some(buf) = bytes.get_mut(start..) {
            ram.read(addr, buf)?;
        }
    }
    Ok(Header::Read(bytes))
}

/// The `N` bytes of `bytes` at `at`, when they are there.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Total length of `segments`.
fn total(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.len))
}

/// Two in-flight requests whose device-writable buffers overlap: the device would write both
/// into the same guest memory, and what the guest finds there depends on which ends last.
fn check_writable_overlap(saved: &[SavedElement<'_>], report: &mut DeviceReport) {
    let mut buffers: Vec<(u64, u64, usize, usize)> = Vec::new();
    for (owner, element) in saved.iter().enumerate() {
        for (j, s) in element.element.device_writable.iter().enumerate() {
            if s.len > 0 {
                buffers.push((s.addr, s.addr.saturating_add(s.len), owner, j));
            }
        }
    }
    buffers.sort_unstable();
    let mut reported: Vec<(usize, usize)> = Vec::new();
    // The buffer reaching furthest among those seen, so that one sweep finds every owner
    // pair that overlaps somewhere.
    let mut furthest: Option<(u64, u64, usize, usize)> = None;
    for &buffer @ (start, end, owner, j) in &buffers {
        if let Some((f_start, f_end, f_owner, f_j)) = furthest {
            let pair = (f_owner.min(owner), f_owner.max(owner));
            if start < f_end && f_owner != owner && !reported.contains(&pair) {
                reported.push(pair);
                let (Some(a), Some(b)) = (saved.get(f_owner), saved.get(owner)) else {
                    continue;
                };
                report.findings.push(Finding::new(
                    Rule::WritableOverlap,
                    format!("{}.in[{j}]", b.path),
                    format!(
                        "device-writable buffer {start:#x}+{} overlaps {}.in[{f_j}] \
                         ({f_start:#x}+{}): two requests in flight would write the same \
                         guest memory",
                        end.saturating_sub(start),
                        a.path,
                        f_end.saturating_sub(f_start)
                    ),
                ));
            }
        }
        if furthest.map_or(true, |(_, f_end, _, _)| f_end < end) {
            furthest = Some(buffer);
        }
    }
    report.checked.push(format!(
        "{} in-flight request(s): device-writable buffers do not overlap",
        saved.len()
    ));
}
