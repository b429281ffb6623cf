//! virtio-scsi: each SCSI request a scsi-disk section keeps (command block, tag, LUN, and
//! scsi-disk's position) against the request header the guest wrote and the element's
//! buffers.
//!
//! On load QEMU rebuilds the request from the *saved* command block, tag and LUN, parses the
//! guest's header again only for its buffer sizes, and asserts that the saved command moves
//! data the way the buffers do. A saved command that differs from the guest's runs anyway.

use super::{array, read_header, total, Header};
use crate::check::rings::RingMemory;
use crate::check::{DeviceReport, Finding, Rule};
use crate::devices::{ScsiDiskSection, VirtioSection};
use crate::memory::ReadError;
use crate::virtio::scsi::{BlockCommand, ScsiRequest};
use crate::virtio::VirtioDevice;
use crate::wire::Endian;

/// `struct virtio_scsi_cmd_req` up to its command block: lun[8], tag (u64), task_attr, prio,
/// crn.
const REQUEST_FIXED: u64 = 19;
/// `struct virtio_scsi_cmd_resp` up to its sense data: sense_len, resid, status_qualifier,
/// status, response.
const RESPONSE_FIXED: u64 = 12;
/// Offsets of `sense_size` and `cdb_size` in the config space, and their defaults.
const SENSE_SIZE_AT: usize = 20;
const CDB_SIZE_AT: usize = 24;
const SENSE_SIZE_DEFAULT: u64 = 96;
const CDB_SIZE_DEFAULT: u64 = 32;
/// Bytes of the command block QEMU saves (`SCSI_CMD_BUF_SIZE`).
const SAVED_CDB: usize = 16;

/// A config-space word, or `default` when the config space does not hold it or holds a
/// value QEMU refuses (`limit` and over).
fn config_word(d: &VirtioDevice, at: usize, default: u64, limit: u64) -> u64 {
    let endian = d.byte_order().map_or(Endian::Little, |(e, _)| e);
    array::<4>(&d.config.0, at)
        .map(|b| u64::from(endian.u32(b)))
        .filter(|&v| v > 0 && v < limit)
        .unwrap_or(default)
}

/// Bytes of the request header the device reads: the fixed part and the command block.
pub(super) fn request_len(d: &VirtioDevice) -> u64 {
    REQUEST_FIXED.saturating_add(config_word(d, CDB_SIZE_AT, CDB_SIZE_DEFAULT, 256))
}

/// Bytes of the response the device writes: the fixed part and the sense data.
fn response_len(d: &VirtioDevice) -> u64 {
    RESPONSE_FIXED.saturating_add(config_word(d, SENSE_SIZE_AT, SENSE_SIZE_DEFAULT, 65536))
}

/// The SCSI address (channel, target, LUN) in a scsi-disk section's idstr
/// (`HBA/CHANNEL:TARGET:LUN/scsi-disk`).
fn address(idstr: &str) -> Option<(u32, u32, u32)> {
    let mut parts = idstr.rsplit('/');
    parts.next()?;
    let mut numbers = parts.next()?.split(':').map(|n| n.parse::<u32>().ok());
    Some((numbers.next()??, numbers.next()??, numbers.next()??))
}

/// The length of a command block, from its operation code's group (`scsi_cdb_length`).
fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// Which way the element's buffers move data beyond the header and the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Buffers {
    None,
    ToDevice,
    FromDevice,
    Both,
}

pub(super) fn check(
    section: &VirtioSection,
    scsi: &[ScsiDiskSection],
    ram: Option<&RingMemory<'_>>,
    report: &mut DeviceReport,
) {
    let d = &section.device;
    let (req_len, resp_len) = (request_len(d), response_len(d));
    let mut count = 0usize;
    let mut read = 0usize;
    for (i, disk) in scsi.iter().enumerate() {
        if disk.hba.as_deref() != Some(section.idstr.as_str()) {
            continue;
        }
        let address = address(&disk.idstr);
        for (k, request) in disk.requests.requests.iter().enumerate() {
            count = count.saturating_add(1);
            let path = format!("scsi_requests[{i}].requests[{k}]");
            check_saved(&path, request, address, (req_len, resp_len), report);
            let Some(ram) = ram else {
                continue;
            };
            let segments = &request.element.element.device_readable;
            match read_header(ram, segments, req_len) {
                Ok(Header::Read(header)) => {
                    read = read.saturating_add(1);
                    check_header(&path, request, address, &header, report);
                }
                // Reported by check_saved from the buffer lengths.
                Ok(Header::Short(_)) => {}
                Err(e @ ReadError::Unknown) | Err(e @ ReadError::OutsideRam) => report
                    .not_checked
                    .push(format!("{path}: request header not read: it is {e}")),
            }
        }
    }
    if count > 0 {
        report.checked.push(format!(
            "{count} SCSI request(s): buffers against a {req_len}-byte request and \
             {resp_len}-byte response, command direction, LUN, scsi-disk's position; {read} \
             against the guest's header (LUN, tag, command block)"
        ));
    }
}

/// What needs no guest memory: the buffer sizes, the saved command against the buffers, the
/// saved LUN against the disk, and scsi-disk's position against the saved command.
fn check_saved(
    path: &str,
    request: &ScsiRequest,
    address: Option<(u32, u32, u32)>,
    (req_len, resp_len): (u64, u64),
    report: &mut DeviceReport,
) {
    let element = &request.element.element;
    let (out, inn) = (
        total(&element.device_readable),
        total(&element.device_writable),
    );
    if out < req_len || inn < resp_len {
        report.findings.push(Finding::new(
            Rule::ScsiRequestLayout,
            format!("{path}.{}", if out < req_len { "out" } else { "in" }),
            format!(
                "{out} device-readable and {inn} device-writable byte(s), less than the \
                 {req_len}-byte request and {resp_len}-byte response (QEMU exits: \"invalid SCSI \
                 request migration data\")"
            ),
        ));
        return;
    }
    let buffers = match (out > req_len, inn > resp_len) {
        (false, false) => Buffers::None,
        (true, false) => Buffers::ToDevice,
        (false, true) => Buffers::FromDevice,
        (true, true) => Buffers::Both,
    };
    if buffers == Buffers::Both {
        report.findings.push(Finding::new(
            Rule::ScsiRequestLayout,
            format!("{path}.in"),
            format!(
                "data buffers both ways ({} byte(s) out after the request, {} in after the \
                 response): virtio-scsi has no bidirectional commands (QEMU exits: \"invalid \
                 SCSI request migration data\")",
                out.saturating_sub(req_len),
                inn.saturating_sub(resp_len)
            ),
        ));
    }
    let command = BlockCommand::parse(&request.cdb.0).filter(|c| c.blocks > 0);
    if let Some(command) = command {
        let wanted = if command.to_device {
            Buffers::ToDevice
        } else {
            Buffers::FromDevice
        };
        if buffers != wanted && buffers != Buffers::Both {
            report.findings.push(Finding::new(
                Rule::ScsiDirection,
                format!("{path}.cdb"),
                format!(
                    "the saved command {:#04x} {} data, but the element's buffers {} (QEMU \
                     aborts on load: assertion \"req->sreq->cmd.mode == req->mode\")",
                    request.cdb.0.first().copied().unwrap_or(0),
                    if command.to_device { "writes" } else { "reads" },
                    match buffers {
                        Buffers::ToDevice => "carry data to the device",
                        Buffers::FromDevice => "take data from the device",
                        _ => "carry no data",
                    }
                ),
            ));
        }
        if let Some(part) = &request.disk {
            let end = part.sector.saturating_add(u64::from(part.sector_count));
            let fits = [1u64, 2, 4, 8].iter().any(|per_block| {
                let first = command.lba.saturating_mul(*per_block);
                let last = command
                    .lba
                    .saturating_add(command.blocks)
                    .saturating_mul(*per_block);
                end == last && part.sector >= first
            });
            if !fits {
                report.findings.push(Finding::new(
                    Rule::ScsiDiskPosition,
                    format!("{path}.disk.sector"),
                    format!(
                        "scsi-disk saved sector {} with {} to go (ending at {end}), but the \
                         command moves blocks {}..{} (ending there at no block size from 512 \
                         to 4096 bytes): the restarted request would do other I/O than the \
                         command",
                        part.sector,
                        part.sector_count,
                        command.lba,
                        command.lba.saturating_add(command.blocks)
                    ),
                ));
            }
        }
    }
    if let Some((_, _, lun)) = address {
        if request.lun != lun {
            report.findings.push(Finding::new(
                Rule::ScsiLun,
                format!("{path}.lun"),
                format!(
                    "saved LUN {}, but the request is kept by the disk at LUN {lun} (QEMU turns \
                     it into a command for the target instead)",
                    request.lun
                ),
            ));
        }
    }
}

/// The saved LUN, tag and command block against the guest's request header.
fn check_header(
    path: &str,
    request: &ScsiRequest,
    address: Option<(u32, u32, u32)>,
    header: &[u8],
    report: &mut DeviceReport,
) {
    let at = request
        .element
        .element
        .device_readable
        .first()
        .map_or(0, |s| s.addr);
    if let Some(lun) = array::<8>(header, 0) {
        let [kind, target, high, low, ..] = lun;
        let guest_lun = ((u32::from(high) << 8) | u32::from(low)) & 0x3fff;
        let mut wrong = Vec::new();
        if kind != 1 {
            wrong.push(format!("its first byte is {kind}, not 1"));
        }
        if let Some((_, disk_target, _)) = address {
            if u32::from(target) != disk_target {
                wrong.push(format!(
                    "it names target {target}, the disk is target {disk_target}"
                ));
            }
        }
        if guest_lun != request.lun {
            wrong.push(format!(
                "it names LUN {guest_lun}, the saved request LUN {}",
                request.lun
            ));
        }
        if !wrong.is_empty() {
            report.findings.push(Finding::new(
                Rule::ScsiLun,
                format!("{path}.lun"),
                format!(
                    "the guest's LUN field {} at {at:#x} does not address the saved request's \
                     disk: {}",
                    crate::hex::hex(&lun),
                    wrong.join("; ")
                ),
            ));
        }
    }
    // QEMU keeps the low 32 bits of the guest's 64-bit tag as its host reads it.
    let little = array::<4>(header, 8).map(u32::from_le_bytes);
    let big = array::<4>(header, 12).map(u32::from_be_bytes);
    if little.is_some_and(|t| t != request.tag) && big.is_some_and(|t| t != request.tag) {
        report.findings.push(Finding::new(
            Rule::ScsiTag,
            format!("{path}.tag"),
            format!(
                "saved tag {:#x}, the guest's header at {at:#x} has tag {:#x} (the device \
                 would answer an abort of the guest's tag for another request, or none)",
                request.tag,
                little.unwrap_or(0)
            ),
        ));
    }
    let saved = &request.cdb.0;
    let Some(len) = saved
        .first()
        .and_then(|&op| cdb_len(op))
        .filter(|&n| n <= SAVED_CDB)
    else {
        return;
    };
    let start = usize::try_from(REQUEST_FIXED).unwrap_or(usize::MAX);
    let guest = header.get(start..start.saturating_add(len));
    if let (Some(saved), Some(guest)) = (saved.get(..len), guest) {
        if saved != guest {
            report.findings.push(Finding::new(
                Rule::ScsiCdb,
                format!("{path}.cdb"),
                format!(
                    "saved command block {}, the guest's header at {at:#x} has {}: QEMU \
                     rebuilds the request from the saved one",
                    crate::hex::hex(saved),
                    crate::hex::hex(guest)
                ),
            ));
        }
    }
}
