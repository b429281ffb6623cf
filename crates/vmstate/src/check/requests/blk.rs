//! virtio-blk: the request header the guest wrote (type, sector) and the status buffer.
//!
//! QEMU saves only the element and parses the header again from guest memory when it
//! restarts the request, so the header decides what I/O the destination does.

use super::{array, read_header, total, Header};
use crate::check::rings::RingMemory;
use crate::check::{DeviceReport, Finding, Rule, SavedElement};
use crate::devices::VirtioSection;
use crate::memory::ReadError;
use crate::note::Note;

/// `struct virtio_blk_outhdr`: type (le32), ioprio (le32), sector (le64).
pub(super) const HEADER_LEN: u64 = 16;

/// virtio-blk addresses the disk in 512-byte sectors, whatever its block size.
const SECTOR: u64 = 512;

/// `struct virtio_blk_discard_write_zeroes`: sector (le64), num_sectors (le32), flags
/// (le32). QEMU reads the first one after the header.
const RANGE_LEN: u64 = 16;

/// `VIRTIO_BLK_T_BARRIER`, a legacy flag ORed into the type.
const T_BARRIER: u32 = 0x8000_0000;

/// The types whose data is a list of ranges: DISCARD, WRITE_ZEROES, SECURE_ERASE.
const RANGE_TYPES: &[u32] = &[11, 13, 14];

/// Request types of the virtio specification, legacy ones included, by value.
const TYPES: &[(u32, &str)] = &[
    (0, "IN"),
    (1, "OUT"),
    (2, "SCSI_CMD"),
    (3, "SCSI_CMD_OUT"),
    (4, "FLUSH"),
    (5, "FLUSH_OUT"),
    (8, "GET_ID"),
    (10, "GET_LIFETIME"),
    (11, "DISCARD"),
    (13, "WRITE_ZEROES"),
    (14, "SECURE_ERASE"),
    (15, "ZONE_APPEND"),
    (16, "ZONE_REPORT"),
    (18, "ZONE_OPEN"),
    (20, "ZONE_CLOSE"),
    (22, "ZONE_FINISH"),
    (24, "ZONE_RESET"),
    (26, "ZONE_RESET_ALL"),
];

/// `VIRTIO_F_ANY_LAYOUT` and `VIRTIO_F_VERSION_1` (which implies it): without either, the
/// status byte must have a descriptor of its own.
const ANY_LAYOUT: u64 = (1 << 27) | (1 << 32);

/// The request's type from its header bytes, without the legacy barrier flag.
fn request_type(header: &[u8], endian: crate::wire::Endian) -> Option<u32> {
    array::<4>(header, 0).map(|b| endian.u32(b) & !T_BARRIER)
}

/// Bytes of the device-readable buffers the checks read: the header, and a discard's first
/// range.
pub(super) fn read_len(ram: &RingMemory<'_>, out: &[crate::element::Segment]) -> u64 {
    match read_header(ram, out, HEADER_LEN) {
        Ok(Header::Read(header))
            if request_type(&header, ram.endian()).is_some_and(|t| RANGE_TYPES.contains(&t)) =>
        {
            HEADER_LEN.saturating_add(RANGE_LEN)
        }
        _ => HEADER_LEN,
    }
}

pub(super) fn check(
    section: &VirtioSection,
    saved: &[SavedElement<'_>],
    ram: Option<&RingMemory<'_>>,
    report: &mut DeviceReport,
) {
    let d = &section.device;
    let any_layout = d.guest_features() & ANY_LAYOUT != 0;
    for e in saved {
        check_status(e, any_layout, report);
    }
    let Some(ram) = ram else {
        report
            .checked
            .push(format!("{} request(s): status buffers", saved.len()));
        return;
    };
    let capacity = array::<8>(&d.config.0, 0)
        .map(|b| ram.endian().u64(b))
        .filter(|&c| c > 0);
    if capacity.is_none() {
        report.not_checked.push(
            "request sectors against the capacity: the saved config space holds none".to_owned(),
        );
    }
    let mut read = 0usize;
    for e in saved {
        let path = &e.path;
        let header = match read_header(ram, &e.element.device_readable, HEADER_LEN) {
            Ok(Header::Read(bytes)) => bytes,
            Ok(Header::Short(bytes)) => {
                report.findings.push(short_header(
                    path,
                    bytes,
                    &format!("the {HEADER_LEN}-byte request header"),
                    "virtio-blk missing headers",
                ));
                continue;
            }
            Err(e @ ReadError::Unknown) | Err(e @ ReadError::OutsideRam) => {
                report
                    .not_checked
                    .push(format!("{path}: request header not read: it is {e}"));
                continue;
            }
        };
        read = read.saturating_add(1);
        let (Some(kind), Some(base), Some(sector)) = (
            array::<4>(&header, 0).map(|b| ram.endian().u32(b)),
            request_type(&header, ram.endian()),
            array::<8>(&header, 8).map(|b| ram.endian().u64(b)),
        ) else {
            continue;
        };
        let Some(&(_, name)) = TYPES.iter().find(|(value, _)| *value == base) else {
            report.findings.push(Finding::new(
                Rule::BlkRequestType,
                format!("{path}.header.type"),
                format!(
                    "the guest's request header at {:#x} has type {kind:#x}, which no virtio \
                     specification defines (QEMU completes it as unsupported)",
                    e.element.device_readable.first().map_or(0, |s| s.addr)
                ),
            ));
            continue;
        };
        if RANGE_TYPES.contains(&base) {
            check_range(e, name, ram, capacity, report);
            continue;
        }
        let (data, buffers) = match base {
            0 => (total(&e.element.device_writable).saturating_sub(1), "in"),
            1 => (
                total(&e.element.device_readable).saturating_sub(HEADER_LEN),
                "out",
            ),
            _ => continue,
        };
        if data % SECTOR != 0 {
            report.findings.push(Finding::new(
                Rule::BlkDataLength,
                format!("{path}.{buffers}"),
                format!(
                    "{name} request of {data} data byte(s), not a multiple of {SECTOR} (QEMU \
                     fails it with an I/O error)"
                ),
            ));
        }
        let Some(capacity) = capacity else {
            continue;
        };
        let sectors = data.div_ceil(SECTOR);
        if sector > capacity || sectors > capacity.saturating_sub(sector) {
            report.findings.push(Finding::new(
                Rule::BlkSectorRange,
                format!("{path}.header.sector"),
                format!(
                    "{name} of {sectors} sector(s) at sector {sector} ends past the capacity \
                     of {capacity} sector(s) saved in the config space (QEMU fails it with an \
                     I/O error)"
                ),
            ));
        }
    }
    report.checked.push(format!(
        "{} request(s): status buffers; {read} header(s) in guest memory: type, data length{}",
        saved.len(),
        match capacity {
            Some(c) => format!(", sectors within the capacity of {c}"),
            None => String::new(),
        }
    ));
}

/// A discard's (or write-zeroes') first range, the one QEMU acts on, against the capacity.
fn check_range(
    e: &SavedElement<'_>,
    name: &str,
    ram: &RingMemory<'_>,
    capacity: Option<u64>,
    report: &mut DeviceReport,
) {
    let path = &e.path;
    let wanted = HEADER_LEN.saturating_add(RANGE_LEN);
    let bytes = match read_header(ram, &e.element.device_readable, wanted) {
        Ok(Header::Read(bytes)) => bytes,
        Ok(Header::Short(bytes)) => {
            report.findings.push(short_header(
                path,
                bytes,
                &format!("the header and one {RANGE_LEN}-byte range of a {name} request"),
                "virtio-blk discard/write_zeroes header too short",
            ));
            return;
        }
        Err(error) => {
            report
                .not_checked
                .push(format!("{path}: {name} range not read: it is {error}"));
            return;
        }
    };
    let (Some(sector), Some(count), Some(capacity)) = (
        array::<8>(&bytes, 16).map(|b| ram.endian().u64(b)),
        array::<4>(&bytes, 24).map(|b| u64::from(ram.endian().u32(b))),
        capacity,
    ) else {
        return;
    };
    if sector > capacity || count > capacity.saturating_sub(sector) {
        report.findings.push(Finding::new(
            Rule::BlkSectorRange,
            format!("{path}.range.sector"),
            format!(
                "{name} of {count} sector(s) at sector {sector} ends past the capacity of \
                 {capacity} sector(s) saved in the config space (QEMU fails it with an I/O \
                 error)"
            ),
        ));
    }
}

/// Device-readable buffers of `bytes` bytes, shorter than `needed`: what QEMU says of it.
fn short_header(path: &str, bytes: u64, needed: &str, qemu_says: &str) -> Finding {
    Finding::new(
        Rule::BlkHeaderShort,
        format!("{path}.out"),
        format!(
            "the device-readable buffers hold {bytes} byte(s), less than {needed} (QEMU: \
             \"{qemu_says}\", the device is marked broken)"
        ),
    )
}

/// The status byte is the last byte of the last device-writable buffer.
fn check_status(e: &SavedElement<'_>, any_layout: bool, report: &mut DeviceReport) {
    let path = &e.path;
    match e.element.device_writable.last() {
        None => report.findings.push(Finding::new(
            Rule::BlkStatusBuffer,
            format!("{path}.in"),
            "no device-writable buffer for the status byte (QEMU: \"virtio-blk request inhdr \
             too short\", the device is marked broken)",
        )),
        Some(s) if s.len == 0 => report.findings.push(Finding::new(
            Rule::BlkStatusBuffer,
            format!("{path}.in"),
            "the last device-writable buffer, which takes the status byte, has length 0 \
             (QEMU: \"virtio-blk request inhdr too short\")",
        )),
        Some(s) if s.len > 1 && !any_layout => report.findings.push(Finding::new(
            Rule::BlkStatusBuffer,
            format!("{path}.in"),
            format!(
                "the status byte shares a {}-byte buffer, but the driver negotiated neither \
                 ANY_LAYOUT nor VIRTIO 1, so it must have a buffer of its own",
                s.len
            ),
        )),
        Some(s) if s.len > 1 => report.notes.push(Note::about(
            format!("{path}.in"),
            format!(
                "the status byte is the last of a {}-byte buffer (legal with ANY_LAYOUT; \
                 drivers usually give it a buffer of its own)",
                s.len
            ),
        )),
        Some(_) => {}
    }
}
