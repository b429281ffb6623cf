//! What devices saved about each request in flight against the request itself: real streams
//! with their rings and request headers (`tests/fixtures/rings/`) check clean, and each rule
//! is broken once through a byte edit of the guest page or an edit of the saved field.

mod memory_checks;
mod stream_checks;
mod support;

use memory_checks::{
    check_bytes, decoded, device, edited, edited_device, edited_scsi, rings, rules,
};
use stream_checks::page_byte;
use vmstate::check::{Report, Rule};
use vmstate::element::Segment;
use vmstate::virtio::{DeviceState, VirtioDevice};

/// `data` with `bytes` written into guest memory at `gpa` (a page the stream carries).
fn poke(data: &[u8], gpa: u64, bytes: &[u8]) -> Vec<u8> {
    let at = page_byte(data, gpa);
    let mut out = data.to_vec();
    out[at..at + bytes.len()].copy_from_slice(bytes);
    out
}

fn blk_rules(data: &[u8]) -> Vec<(Rule, String)> {
    rules(device(&check_bytes(data), "virtio-blk"))
}

fn scsi_rules(data: &[u8]) -> Vec<(Rule, String)> {
    rules(device(&check_bytes(data), "virtio-scsi"))
}

fn has(found: &[(Rule, String)], rule: Rule, path: &str) -> bool {
    found.contains(&(rule, path.to_owned()))
}

fn blk_requests(device: &mut VirtioDevice) -> &mut Vec<vmstate::virtio::BlkRequest> {
    match &mut device.device {
        DeviceState::Blk(blk) => &mut blk.requests,
        _ => panic!("not virtio-blk"),
    }
}

/// Guest-physical address of virtio-blk request `k`'s header.
fn blk_header(data: &[u8], k: usize) -> u64 {
    let (found, _) = decoded(data);
    let DeviceState::Blk(blk) = &found[0].device.device else {
        panic!()
    };
    blk.requests[k].element.device_readable[0].addr
}

/// Guest-physical address of the first SCSI disk's request `k`'s header.
fn scsi_header(data: &[u8], k: usize) -> u64 {
    let (_, scsi) = decoded(data);
    scsi[0].requests.requests[k].element.element.device_readable[0].addr
}

const SCSI: &str = "scsi_requests[0].requests[0]";

#[test]
fn the_rings_fixtures_check_their_requests_clean() {
    for (name, kind, line) in [
        (
            "blk-inflight-split",
            "virtio-blk",
            "8 header(s) in guest memory",
        ),
        (
            "blk-inflight-mq2",
            "virtio-blk",
            "2 header(s) in guest memory",
        ),
        (
            "blk-inflight-packed",
            "virtio-blk",
            "2 header(s) in guest memory",
        ),
        (
            "scsi-inflight",
            "virtio-scsi",
            "2 against the guest's header",
        ),
        (
            "serial-throttled",
            "virtio-console",
            "each belongs to its port's transmit queue",
        ),
    ] {
        let report: Report = check_bytes(&rings(name));
        assert!(report.is_clean(), "{name}: {report:#?}");
        let d = device(&report, kind);
        assert!(d.not_checked.is_empty(), "{name}: {:?}", d.not_checked);
        for wanted in [line, "device-writable buffers do not overlap"] {
            assert!(
                d.checked.iter().any(|c| c.contains(wanted)),
                "{name}: {wanted}: {:?}",
                d.checked
            );
        }
    }
}

#[test]
fn blk_a_request_type_no_specification_defines() {
    let data = rings("blk-inflight-split");
    let bad = poke(&data, blk_header(&data, 0), &0x77u32.to_le_bytes());
    assert_eq!(
        blk_rules(&bad),
        [(Rule::BlkRequestType, "requests[0].header.type".to_owned())]
    );
}

#[test]
fn blk_a_sector_past_the_capacity() {
    let data = rings("blk-inflight-split");
    // Each request writes 512 sectors; the disk has 32768.
    let at = blk_header(&data, 3) + 8;
    let past = poke(&data, at, &(32768u64 - 8).to_le_bytes());
    assert_eq!(
        blk_rules(&past),
        [(Rule::BlkSectorRange, "requests[3].header.sector".to_owned())]
    );
    let last = poke(&data, at, &(32768u64 - 512).to_le_bytes());
    assert_eq!(blk_rules(&last), []);
    let huge = poke(&data, at, &u64::MAX.to_le_bytes());
    assert_eq!(
        blk_rules(&huge),
        [(Rule::BlkSectorRange, "requests[3].header.sector".to_owned())]
    );
}

#[test]
fn blk_data_not_whole_sectors() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        blk_requests(d)[2].element.device_readable[1].len -= 1;
    });
    let found = blk_rules(&data);
    assert!(
        has(&found, Rule::BlkDataLength, "requests[2].out"),
        "{found:?}"
    );
}

#[test]
fn blk_a_header_shorter_than_16_bytes() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let out = &mut blk_requests(d)[1].element.device_readable;
        out.truncate(1);
        out[0].len = 8;
    });
    let found = blk_rules(&data);
    assert!(
        has(&found, Rule::BlkHeaderShort, "requests[1].out"),
        "{found:?}"
    );
}

#[test]
fn blk_a_status_buffer_missing_empty_or_shared() {
    let original = rings("blk-inflight-split");
    let none = edited(&original, |d| {
        blk_requests(d)[0].element.device_writable.clear()
    });
    assert!(has(
        &blk_rules(&none),
        Rule::BlkStatusBuffer,
        "requests[0].in"
    ));
    let empty = edited(&original, |d| {
        blk_requests(d)[0].element.device_writable[0].len = 0
    });
    assert!(has(
        &blk_rules(&empty),
        Rule::BlkStatusBuffer,
        "requests[0].in"
    ));
    // A longer status buffer is legal under VIRTIO 1 (which the driver negotiated): a note.
    let shared = edited(&original, |d| {
        blk_requests(d)[0].element.device_writable[0].len = 4
    });
    let report = check_bytes(&shared);
    let blk = device(&report, "virtio-blk");
    assert!(!rules(blk).iter().any(|(r, _)| *r == Rule::BlkStatusBuffer));
    assert!(
        blk.notes
            .iter()
            .any(|n| n.path == "requests[0].in" && n.message.contains("4-byte buffer")),
        "{:?}",
        blk.notes
    );
}

#[test]
fn two_requests_writing_the_same_memory() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let requests = blk_requests(d);
        requests[1].element.device_writable[0] = requests[0].element.device_writable[0];
    });
    let found = blk_rules(&data);
    assert!(
        has(&found, Rule::WritableOverlap, "requests[1].in[0]"),
        "{found:?}"
    );
    let overlap = Segment {
        addr: 0x232c290 - 4,
        len: 8,
    };
    let data = edited(&rings("blk-inflight-split"), |d| {
        blk_requests(d)[5]
            .element
            .device_writable
            .insert(0, overlap);
    });
    let found = blk_rules(&data);
    assert!(
        found.iter().any(|(r, _)| *r == Rule::WritableOverlap),
        "{found:?}"
    );
}

#[test]
fn scsi_a_command_block_the_guest_did_not_write() {
    let data = rings("scsi-inflight");
    // The guest's WRITE(10) LBA, low byte, in its request header (CDB at offset 19).
    let guest = poke(&data, scsi_header(&data, 0) + 19 + 5, &[0x40]);
    assert_eq!(scsi_rules(&guest), [(Rule::ScsiCdb, format!("{SCSI}.cdb"))]);
    // The saved one changed instead: it no longer matches scsi-disk's position either.
    let saved = edited_scsi(&data, "requests[0].cdb", "2a000000004000020000000000000000");
    assert_eq!(
        scsi_rules(&saved),
        [
            (Rule::ScsiDiskPosition, format!("{SCSI}.disk.sector")),
            (Rule::ScsiCdb, format!("{SCSI}.cdb"))
        ]
    );
}

#[test]
fn scsi_a_saved_read_for_a_write_buffer() {
    let data = edited_scsi(
        &rings("scsi-inflight"),
        "requests[1].cdb",
        "28000000020000020000000000000000",
    );
    let path = "scsi_requests[0].requests[1].cdb";
    assert_eq!(
        scsi_rules(&data),
        [
            (Rule::ScsiDirection, path.to_owned()),
            (Rule::ScsiCdb, path.to_owned())
        ]
    );
}

#[test]
fn scsi_a_tag_or_lun_the_guest_did_not_write() {
    let data = rings("scsi-inflight");
    let header = scsi_header(&data, 0);
    assert_eq!(
        scsi_rules(&edited_scsi(&data, "requests[0].tag", "0x1234")),
        [(Rule::ScsiTag, format!("{SCSI}.tag"))]
    );
    assert_eq!(
        scsi_rules(&poke(&data, header + 8, &[0x99])),
        [(Rule::ScsiTag, format!("{SCSI}.tag"))]
    );
    assert_eq!(
        scsi_rules(&poke(&data, header, &[2])),
        [(Rule::ScsiLun, format!("{SCSI}.lun"))]
    );
    assert_eq!(
        scsi_rules(&poke(&data, header + 1, &[3])),
        [(Rule::ScsiLun, format!("{SCSI}.lun"))]
    );
    // A saved LUN of 1: neither the disk (LUN 0) nor the guest's field names it.
    assert_eq!(
        scsi_rules(&edited_scsi(&data, "requests[0].lun", "1")),
        [
            (Rule::ScsiLun, format!("{SCSI}.lun")),
            (Rule::ScsiLun, format!("{SCSI}.lun"))
        ]
    );
}

#[test]
fn scsi_buffers_too_short_for_the_response() {
    let data = edited_scsi(&rings("scsi-inflight"), "requests[0].in[0].len", "100");
    let found = scsi_rules(&data);
    assert!(
        has(&found, Rule::ScsiRequestLayout, &format!("{SCSI}.in")),
        "{found:?}"
    );
}

#[test]
fn scsi_disk_position_outside_the_command() {
    let data = edited_scsi(&rings("scsi-inflight"), "requests[0].disk.sector", "7");
    assert_eq!(
        scsi_rules(&data),
        [(Rule::ScsiDiskPosition, format!("{SCSI}.disk.sector"))]
    );
}

fn serial_port(d: &mut VirtioDevice) -> &mut vmstate::virtio::PoppedElement {
    let DeviceState::Serial(serial) = &mut d.device else {
        panic!("not virtio-serial")
    };
    serial
        .ports
        .iter_mut()
        .find_map(|p| p.popped.as_mut())
        .unwrap()
}

#[test]
fn serial_an_element_that_is_not_a_transmit_buffer() {
    let data = edited_device(&rings("serial-throttled"), "virtio-console", |d| {
        serial_port(d)
            .element
            .element
            .device_writable
            .push(Segment {
                addr: 0x100000,
                len: 64,
            });
    });
    let found = rules(device(&check_bytes(&data), "virtio-console"));
    assert!(
        found
            .iter()
            .any(|(r, p)| *r == Rule::SerialElementQueue && p.ends_with("popped.in")),
        "{found:?}"
    );
}

#[test]
fn serial_an_element_outstanding_on_another_queue() {
    // The control transmit queue (queue 3: 32 entries, avail ring at 0x231f200, 3 used)
    // made to hold head 20 in use in its slot 3, and the throttled element of port 1 given
    // that head, which its own transmit queue does not have outstanding.
    let data = edited_device(&rings("serial-throttled"), "virtio-console", |d| {
        assert_eq!(d.queues[3].last_avail_idx, 3);
        d.queues[3].last_avail_idx = 4;
        let element = &mut serial_port(d).element.element;
        assert_ne!(element.index, 20);
        element.index = 20;
    });
    let data = poke(&data, 0x231f200 + 2, &[4, 0]);
    let data = poke(&data, 0x231f200 + 4 + 3 * 2, &[20, 0]);
    let report = check_bytes(&data);
    let serial = device(&report, "virtio-console");
    let finding = serial
        .findings
        .iter()
        .find(|f| f.rule == Rule::SerialElementQueue)
        .unwrap_or_else(|| panic!("{:?}", rules(serial)));
    assert!(finding.path.ends_with("popped.index"), "{}", finding.path);
    assert!(
        finding
            .message
            .contains("on queue 3, the control transmit queue"),
        "{}",
        finding.message
    );
}

#[test]
fn blk_a_discard_range_past_the_capacity() {
    let data = rings("blk-inflight-split");
    let header = blk_header(&data, 0);
    // Request 0 made a DISCARD whose one range sits in a carried page (the headers' own,
    // past every header), so that the check can read it.
    let range = 0x232cf00;
    let discard = |sector: u64, count: u32| {
        let data = edited(&data, |d| {
            let out = &mut blk_requests(d)[0].element.device_readable;
            out.truncate(1);
            out.push(Segment {
                addr: range,
                len: 16,
            });
        });
        let data = poke(&data, header, &11u32.to_le_bytes());
        let mut bytes = sector.to_le_bytes().to_vec();
        bytes.extend(count.to_le_bytes());
        bytes.extend([0; 4]);
        poke(&data, range, &bytes)
    };
    let found = blk_rules(&discard(32760, 16));
    assert!(
        has(&found, Rule::BlkSectorRange, "requests[0].range.sector"),
        "{found:?}"
    );
    let found = blk_rules(&discard(32752, 16));
    assert!(
        !found
            .iter()
            .any(|(r, _)| *r == Rule::BlkSectorRange || *r == Rule::BlkDataLength),
        "{found:?}"
    );
    // The range is among what `--ram rings` keeps.
    let with_range = discard(0, 1);
    let stream = vmstate::stream::read(&with_range).unwrap();
    let (found, scsi) = decoded(&with_range);
    let map = vmstate::memory::map_for(&stream, &[], None).unwrap();
    let ram =
        vmstate::memory::GuestRam::from_stream(&stream, &with_range, map, &mut |_| {}).unwrap();
    let ranges = vmstate::check::ring_ranges(&found[0], &scsi, &ram);
    assert!(ranges.contains(&(range, 16)), "{ranges:x?}");
}
