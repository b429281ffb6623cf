//! The adversarial catalogue: one test per class of hostile input, each named after its bug
//! class (and CVE where QEMU's load path had one), each asserting the specific error or
//! finding. The inputs are real streams and device blobs (tests/fixtures/) with one field
//! or one byte made hostile, or streams built byte by byte.
//!
//! A decoder refuses what no loader can read (an [`ErrorKind`]); what reads but is wrong is
//! a finding of `check` (a [`Rule`]), with guest memory when the class needs the rings.

mod memory_checks;
mod stream_checks;
mod support;

use memory_checks::edited_device as edited;

use std::io::Read;

use stream_checks::{page_byte, read_stream_file};
use vmstate::check::{self, Report, Rule};
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::element::{self, Element, Layout, LayoutChoice, Segment};
use vmstate::memory::{self, GuestBytes, GuestRam};
use vmstate::stream::{self, Stream};
use vmstate::virtio::scsi::ScsiRequests;
use vmstate::virtio::{
    Assumptions, CoreState, CoreSubsection, DeviceKind, DeviceState, MacTable, NetQueuePairs,
    VirtioDevice,
};
use vmstate::wire::{Reader, Writer};
use vmstate::{Error, ErrorKind};

// ---------------------------------------------------------------------------------------
// Inputs and the ways of reading them.

/// A `rings` fixture: requests in flight, ring pages kept.
fn rings(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!(
        "rings/qemu7.2-{name}.rings.mig.gz"
    )))
}

/// A `stripped` fixture: requests in flight, no pages.
fn stripped(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!(
        "stripped/qemu7.2-{name}.stripped.mig.gz"
    )))
}

/// A 10.0 stream with every kind of device, none started.
fn alldev() -> Vec<u8> {
    read_stream_file(&support::fixture("streams/qemu10.0-noos-q35-alldev.mig.gz"))
}

/// The `virtio` field of a real device.
fn blob(name: &str) -> Vec<u8> {
    let file = std::fs::File::open(support::fixture(&format!("virtio/{name}.bin.gz"))).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

const RNG: &str = "qemu10.0-noos-q35-alldev--0000_00_06.0-virtio-rng";
const BLK: &str = "qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk";
const NET: &str = "qemu10.0-booted-q35-idle--0000_00_02.0-virtio-net";

fn decode_blob(bytes: &[u8], kind: DeviceKind) -> vmstate::Result<VirtioDevice> {
    let mut r = Reader::new(bytes);
    let device = VirtioDevice::decode(&mut r, kind, &Assumptions::default())?;
    r.expect_end("virtio")?;
    Ok(device)
}

fn blob_err(bytes: &[u8], kind: DeviceKind) -> Error {
    match decode_blob(bytes, kind) {
        Ok(_) => panic!("a hostile blob must not decode"),
        Err(e) => e,
    }
}

fn encode(device: &VirtioDevice) -> Vec<u8> {
    let mut w = Writer::new();
    device.encode(&mut w).unwrap();
    w.into_bytes()
}

/// Offset in the encoding of `device` of the first byte that `change` alters: where a
/// fixed-size field lies, found without hard-coding the layout of the device.
fn offset_of(device: &VirtioDevice, change: impl FnOnce(&mut VirtioDevice)) -> usize {
    let before = encode(device);
    let mut changed = device.clone();
    change(&mut changed);
    let after = encode(&changed);
    before
        .iter()
        .zip(&after)
        .position(|(a, b)| a != b)
        .expect("the change shows in the encoding")
}

/// Offset of the in-flight element with this index and these counts (stable layout) in
/// `bytes`.
fn element_at(bytes: &[u8], element: &Element) -> usize {
    let g = Layout::Stable.geometry();
    let u32_at = |p: usize| u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap());
    (0..bytes.len() - g.size)
        .find(|&p| {
            u32_at(p + g.index) == element.index
                && u32_at(p + g.out_num) == element.device_readable.len() as u32
                && u32_at(p + g.in_num) == element.device_writable.len() as u32
                && u64::from_le_bytes(
                    bytes[p + g.out_addr..p + g.out_addr + 8]
                        .try_into()
                        .unwrap(),
                ) == element.device_readable.first().map_or(0, |s| s.addr)
        })
        .expect("the element is in the bytes")
}

fn decode(data: &[u8]) -> vmstate::Result<(Stream, Vec<VirtioSection>)> {
    let s = stream::read(data)?;
    let d = devices::decode_virtio(&s, &DecodeOptions::default())?;
    Ok((s, d))
}

/// The error reading and decoding `data` fails with.
fn stream_err(data: &[u8]) -> Error {
    match decode(data) {
        Ok(_) => panic!("a hostile stream must not decode"),
        Err(e) => e,
    }
}

/// Reads, decodes and checks `data`, against its guest memory when `with_memory`.
fn check_bytes(data: &[u8], with_memory: bool) -> Report {
    let (stream, found) = decode(data).unwrap();
    let scsi = devices::decode_scsi_requests(&stream, &found, &DecodeOptions::default()).unwrap();
    if !with_memory {
        return check::check_stream(&found, &scsi, None);
    }
    let map = memory::map_for(&stream, &[], None).unwrap();
    let ram = GuestRam::from_stream(&stream, data, map, &mut |_| {}).unwrap();
    check::check_stream(&found, &scsi, Some(&ram as &dyn GuestBytes))
}

/// The findings (rule, path) of the device whose idstr ends with `device`.
fn findings(report: &Report, device: &str) -> Vec<(Rule, String)> {
    report
        .devices
        .iter()
        .find(|d| d.section.ends_with(device))
        .unwrap()
        .findings
        .iter()
        .map(|f| (f.rule, f.path.clone()))
        .collect()
}

/// Breaks virtio-blk of `rings/blk-inflight-split` with `change` and returns its findings,
/// checked with guest memory.
fn blk_findings(change: impl FnOnce(&mut VirtioDevice)) -> Vec<(Rule, String)> {
    let data = edited(&rings("blk-inflight-split"), "virtio-blk", change);
    findings(&check_bytes(&data, true), "virtio-blk")
}

fn set(path: &'static str, value: &'static str) -> impl FnOnce(&mut VirtioDevice) {
    move |d| d.set(path, value).unwrap()
}

fn has(found: &[(Rule, String)], rule: Rule, path: &str) -> bool {
    found.contains(&(rule, path.to_owned()))
}

#[track_caller]
fn assert_has(found: &[(Rule, String)], rule: Rule, path: &str) {
    assert!(
        has(found, rule, path),
        "{rule:?} at {path}: {:?}",
        &found[..found.len().min(8)]
    );
}

fn blk(device: &mut VirtioDevice) -> &mut Vec<vmstate::virtio::BlkRequest> {
    let DeviceState::Blk(blk) = &mut device.device else {
        panic!("not virtio-blk")
    };
    &mut blk.requests
}

/// Device state that the stream does not delimit is read by trial (ports map sizes, queue
/// pairs present or not): when every reading fails, the error is that of the reading that got
/// furthest. The hostile field's own error is `kind` at `at`; a reading that skipped the field
/// fails past it.
#[track_caller]
fn assert_refused_at(err: &Error, kind: ErrorKind, at: usize) {
    assert!(
        (err.kind() == &kind && err.offset() == at as u64) || err.offset() > at as u64,
        "expected {kind:?} at {at}: {err}"
    );
}

/// Descriptor table of queue 0 of virtio-blk in `rings/blk-inflight-split`; requests[0] has
/// head 7, requests[1] head 6, requests[2] head 5.
const SPLIT_DESC: u64 = 0x2318000;

/// `rings/blk-inflight-split` with `bytes` written at guest-physical `gpa`.
fn poked(gpa: u64, bytes: &[u8]) -> Vec<u8> {
    let mut data = rings("blk-inflight-split");
    let at = page_byte(&data, gpa);
    data[at..at + bytes.len()].copy_from_slice(bytes);
    data
}

/// The stream header: magic and version 3.
const HEADER: &[u8] = b"QEVM\0\0\0\x03";

fn built(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------
// virtio core: queue counts, indices, sizes (CVE-2013-4151, CVE-2013-6399, CVE-2014-0182).

/// CVE-2013-4151: a queue count past VIRTIO_QUEUE_MAX indexed `vq[]`.
#[test]
fn cve_2013_4151_queue_count_over_1024() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let at = offset_of(&device, |d| d.queue_sel = 0x0100) + 2 + 4 + 4 + device.config.0.len();
    for count in [1025u32, 1 << 16, 1 << 31, u32::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&count.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Rng);
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: u64::from(count),
                max: 1024
            },
            "{count}"
        );
        assert_eq!((err.path(), err.offset()), ("num_queues", at as u64));
    }
}

/// A queue count QEMU's loader takes but the device kind never has (virtio-rng has one).
#[test]
fn queue_count_not_the_device_kinds() {
    let data = edited(&alldev(), "virtio-rng", |d| {
        let q = d.queues[0];
        d.queues.push(q)
    });
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-rng"),
        [(Rule::QueueCount, "queues".to_owned())]
    );
}

/// CVE-2013-6399: `queue_sel` from the stream later indexed `vq[]`.
#[test]
fn cve_2013_6399_queue_sel_past_virtio_queue_max() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let at = offset_of(&device, |d| d.queue_sel = 0x0100);
    for sel in [1024u16, 1 << 15, u16::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 2].copy_from_slice(&sel.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Rng);
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: u64::from(sel),
                max: 1023
            }
        );
        assert_eq!((err.path(), err.offset()), ("queue_sel", at as u64));
    }
}

/// `queue_sel` below VIRTIO_QUEUE_MAX but past the queues the device has.
#[test]
fn queue_sel_past_the_devices_queues() {
    let data = edited(
        &stripped("blk-inflight-split"),
        "virtio-blk",
        set("queue_sel", "5"),
    );
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-blk"),
        [(Rule::QueueSelOutOfRange, "queue_sel".to_owned())]
    );
}

/// CVE-2014-0182: `config_len` from the stream sized a read into the fixed config buffer. A
/// length the input cannot hold is refused before anything is sized by it.
#[test]
fn cve_2014_0182_config_len_huge() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let at = offset_of(&device, |d| d.queue_sel = 0x0100) + 2 + 4;
    for len in [1u32 << 16, (1 << 31) - 1, 0x7fff_fff0] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&len.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Rng);
        assert!(
            matches!(err.kind(), ErrorKind::UnexpectedEof { needed, .. } if *needed == u64::from(len)),
            "{err}"
        );
        assert_eq!(err.path(), "config");
    }
}

/// `config_len` is a signed 32-bit field: 2^31 and up are negative lengths.
#[test]
fn config_len_negative_as_signed() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let at = offset_of(&device, |d| d.queue_sel = 0x0100) + 2 + 4;
    for len in [1u32 << 31, u32::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&len.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Rng);
        assert!(
            matches!(err.kind(), ErrorKind::InvalidValue { .. }),
            "{err}"
        );
        assert_eq!((err.path(), err.offset()), ("config_len", at as u64));
    }
}

/// A config space that reads (the input holds it) but is longer than any virtio device's.
#[test]
fn config_longer_than_any_device() {
    let data = edited(&stripped("blk-inflight-split"), "virtio-blk", |d| {
        d.config.0.resize(4096, 0)
    });
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-blk"),
        [(Rule::ConfigTooLong, "config".to_owned())]
    );
}

#[test]
fn vring_size_zero() {
    let data = edited(&alldev(), "virtio-rng", set("queues[0].num", "0"));
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-rng"),
        [(Rule::RingSizeZero, "queues[0].num".to_owned())]
    );
}

#[test]
fn vring_size_not_a_power_of_two() {
    let data = edited(&alldev(), "virtio-rng", set("queues[0].num", "1000"));
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-rng"),
        [(Rule::RingSizeNotPowerOfTwo, "queues[0].num".to_owned())]
    );
}

#[test]
fn vring_size_over_1024() {
    for num in ["2048", "65535", "2147483648", "4294967295"] {
        let data = edited(&alldev(), "virtio-rng", set("queues[0].num", num));
        let found = findings(&check_bytes(&data, false), "virtio-rng");
        assert_has(&found, Rule::RingSizeTooLarge, "queues[0].num");
    }
}

/// QEMU refuses a queue with no descriptor table whose `last_avail_idx` is set.
#[test]
fn desc_zero_with_last_avail_idx_set() {
    let data = edited(&alldev(), "virtio-rng", |d| {
        d.queues[0].desc = 0;
        d.queues[0].last_avail_idx = 1;
    });
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-rng"),
        [(
            Rule::IndexWithoutRing,
            "queues[0].last_avail_idx".to_owned()
        )]
    );
}

#[test]
fn msix_vector_past_the_table() {
    let data = edited(
        &stripped("blk-inflight-split"),
        "virtio-blk",
        set("queues[0].vector", "64"),
    );
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-blk"),
        [(Rule::VectorOutOfRange, "queues[0].vector".to_owned())]
    );
}

#[test]
fn device_endian_not_0_1_or_2() {
    let data = edited(&stripped("blk-inflight-split"), "virtio-blk", |d| {
        d.subsections.insert(
            0,
            CoreSubsection {
                offset: 0,
                version: 1,
                state: CoreState::DeviceEndian(0xff),
            },
        )
    });
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-blk"),
        [(
            Rule::DeviceEndian,
            "subsections[virtio/device_endian].value".to_owned()
        )]
    );
}

#[test]
fn guest_features_saved_twice_disagree() {
    let data = edited(
        &stripped("blk-inflight-split"),
        "virtio-blk",
        set(
            "subsections[virtio/64bit_features].value",
            "0xffffffffffffffff",
        ),
    );
    assert_eq!(
        findings(&check_bytes(&data, false), "virtio-blk"),
        [(
            Rule::FeaturesDisagree,
            "subsections[virtio/64bit_features].value".to_owned()
        )]
    );
}

// ---------------------------------------------------------------------------------------
// Rings in guest memory.

#[test]
fn ring_misaligned() {
    let found = blk_findings(set("queues[0].desc", "0x2318001"));
    assert_has(&found, Rule::RingMisaligned, "queues[0].desc");
}

#[test]
fn ring_outside_ram() {
    for addr in ["0x10000000", "0xfffffffffffff000"] {
        let found = blk_findings(set("queues[0].desc", addr));
        assert_has(&found, Rule::RingOutsideRam, "queues[0].desc");
    }
}

/// A ring at the top of the address space: its end passes 2^64.
#[test]
fn ring_address_overflow() {
    let found = blk_findings(set("queues[0].avail", "0xfffffffffffffffe"));
    assert_has(&found, Rule::RingOutsideRam, "queues[0].avail");
}

#[test]
fn rings_overlap() {
    let found = blk_findings(set("queues[0].avail", "0x2318010"));
    assert_has(&found, Rule::RingsOverlap, "queues[0].avail");
}

#[test]
fn last_avail_idx_far_ahead() {
    let found = blk_findings(set("queues[0].last_avail_idx", "32768"));
    assert_has(
        &found,
        Rule::AvailIndexInconsistent,
        "queues[0].last_avail_idx",
    );
}

/// CVE-2016-5403 made QEMU refuse `last_avail_idx - used_idx` over the ring size on load.
#[test]
fn cve_2016_5403_in_use_over_the_ring_size() {
    let found = blk_findings(set("queues[0].last_avail_idx", "300"));
    assert_has(&found, Rule::InUseOverRingSize, "queues[0].last_avail_idx");
}

#[test]
fn saved_elements_not_the_number_in_use() {
    let found = blk_findings(|d| {
        blk(d).pop();
    });
    assert_eq!(found, [(Rule::ElementsVsInUse, "queues[0]".to_owned())]);
}

// ---------------------------------------------------------------------------------------
// In-flight elements (CVE-2013-4535, 4536, 4542).

/// CVE-2013-4535: virtio-blk loaded raw elements with unchecked `in_num`.
#[test]
fn cve_2013_4535_blk_element_in_num_over_1024() {
    let bytes = blob(BLK);
    let device = decode_blob(&bytes, DeviceKind::Blk).unwrap();
    let DeviceState::Blk(state) = &device.device else {
        panic!()
    };
    let at = element_at(&bytes, &state.requests[0].element) + Layout::Stable.geometry().in_num;
    // With the layout and the framing stated (`--from-layout stable`, one queue, split
    // rings), the one reading fails at the count itself.
    let pinned = Assumptions {
        layout: LayoutChoice::Fixed(Layout::Stable),
        num_queues: Some(1),
        packed: Some(false),
        ..Assumptions::default()
    };
    for count in [1025u32, 1 << 16, u32::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&count.to_le_bytes());
        let err = VirtioDevice::decode(&mut Reader::new(&bad), DeviceKind::Blk, &pinned)
            .expect_err("a hostile element must not decode");
        assert_eq!(
            err.kind(),
            &ErrorKind::CountTooLarge {
                value: u64::from(count),
                max: 1024
            }
        );
        assert_eq!(
            (err.path(), err.offset()),
            ("virtio.rq[0].element.in_num", at as u64)
        );
        // Detected: no reading decodes.
        blob_err(&bad, DeviceKind::Blk);
    }
}

/// CVE-2013-4536: virtio-serial loaded a port's raw element with unchecked counts.
#[test]
fn cve_2013_4536_serial_element_out_num_over_1024() {
    let data = stripped("serial-throttled");
    let (_, found) = decode(&data).unwrap();
    let serial = &found[0];
    let DeviceState::Serial(state) = &serial.device.device else {
        panic!()
    };
    let popped = state.ports.iter().find_map(|p| p.popped.as_ref()).unwrap();
    let field = serial.field_offset as usize;
    let bytes = &data[field..field + serial.field_size as usize];
    let at = field + element_at(bytes, &popped.element.element) + Layout::Stable.geometry().out_num;
    let mut bad = data.clone();
    bad[at..at + 4].copy_from_slice(&2000u32.to_le_bytes());
    // Detected: no layout reads the element.
    stream_err(&bad);
    // Stated (`--from-layout stable`): the ports map still has two readings (the config's
    // `max_nr_ports` big- and little-endian), and the error is that of the reading that got
    // furthest: the count itself, or a reading past the element that fails later.
    let stream = stream::read(&bad).unwrap();
    let options = DecodeOptions {
        layout: LayoutChoice::Fixed(Layout::Stable),
        ..DecodeOptions::default()
    };
    let Err(err) = devices::decode_virtio(&stream, &options) else {
        panic!("a hostile element must not decode")
    };
    assert_refused_at(
        &err,
        ErrorKind::CountTooLarge {
            value: 2000,
            max: 1024,
        },
        at,
    );
}

/// CVE-2013-4542: virtio-scsi's `load_request` read a raw element with unchecked counts.
#[test]
fn cve_2013_4542_scsi_element_counts_over_1024() {
    let data = stripped("scsi-inflight");
    let (stream, found) = decode(&data).unwrap();
    let scsi = devices::decode_scsi_requests(&stream, &found, &DecodeOptions::default()).unwrap();
    let disk = &scsi[0];
    let field = disk.field_offset as usize;
    let bytes = &data[field..field + disk.field_size as usize];
    let at = field
        + element_at(bytes, &disk.requests.requests[0].element.element)
        + Layout::Stable.geometry().in_num;
    let mut bad = data.clone();
    bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let stream = stream::read(&bad).unwrap();
    let found = devices::decode_virtio(&stream, &DecodeOptions::default()).unwrap();
    let err = devices::decode_scsi_requests(&stream, &found, &DecodeOptions::default())
        .expect_err("a hostile SCSI request must not decode");
    assert!(
        matches!(err.kind(), ErrorKind::CountTooLarge { value, max: 1024 } if *value == u64::from(u32::MAX)),
        "{err}"
    );
}

/// `out_num` and `in_num` each within 1024 but together over it.
#[test]
fn element_counts_sum_over_1024() {
    let mut blob = vec![0u8; Layout::Stable.size()];
    let g = Layout::Stable.geometry();
    blob[g.out_num..g.out_num + 4].copy_from_slice(&600u32.to_le_bytes());
    blob[g.in_num..g.in_num + 4].copy_from_slice(&600u32.to_le_bytes());
    let err = element::decode(&mut Reader::new(&blob), Layout::Stable).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::CountSumTooLarge {
            first: 600,
            second: 600,
            max: 1024
        }
    );
}

/// A segment whose address plus length passes 2^64.
#[test]
fn element_segment_address_overflow() {
    let element = Element {
        index: 0,
        device_readable: vec![Segment {
            addr: u64::MAX - 31,
            len: 16,
        }],
        device_writable: vec![],
    };
    let mut w = Writer::new();
    element::encode(&element, Layout::Stable, &mut w).unwrap();
    let mut blob = w.into_bytes();
    let g = Layout::Stable.geometry();
    blob[g.out_sg + 8..g.out_sg + 16].copy_from_slice(&64u64.to_le_bytes());
    let err = element::decode(&mut Reader::new(&blob), Layout::Stable).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::AddressOverflow {
            addr: u64::MAX - 31,
            len: 64
        }
    );
}

#[test]
fn head_index_past_the_ring() {
    for index in ["256", "65535", "4294967295"] {
        let data = edited(
            &stripped("blk-inflight-split"),
            "virtio-blk",
            set("requests[3].index", index),
        );
        let found = findings(&check_bytes(&data, false), "virtio-blk");
        assert_has(&found, Rule::HeadOutOfRange, "requests[3].index");
    }
}

#[test]
fn duplicate_heads() {
    let found = blk_findings(set("requests[2].index", "7"));
    assert_has(&found, Rule::DuplicateHead, "requests[2].index");
}

/// A head the guest never made available (or the device already returned).
#[test]
fn head_not_outstanding() {
    let found = blk_findings(|d| {
        let mut extra = blk(d)[0].clone();
        extra.element.index = 100;
        blk(d).push(extra);
    });
    assert_has(&found, Rule::HeadNotOutstanding, "requests[8].index");
}

#[test]
fn request_on_a_queue_the_device_does_not_have() {
    let data = edited(
        &stripped("blk-inflight-mq2"),
        "virtio-blk",
        set("requests[0].queue", "65535"),
    );
    let found = findings(&check_bytes(&data, false), "virtio-blk");
    assert_has(&found, Rule::RequestQueueOutOfRange, "requests[0].queue");
}

/// A saved segment outside guest RAM: it is not what the guest's descriptor says.
#[test]
fn segment_outside_ram() {
    let found = blk_findings(|d| blk(d)[0].element.device_readable[1].addr = 0xffff_ffff_0000);
    assert_eq!(
        found,
        [(Rule::SegmentMismatch, "requests[0].out[1]".to_owned())]
    );
}

/// A descriptor (in guest memory) pointing outside RAM.
#[test]
fn descriptor_outside_ram() {
    let mut addr = [0u8; 12];
    addr[..8].copy_from_slice(&0xffff_ffff_f000u64.to_le_bytes());
    addr[8..].copy_from_slice(&16u32.to_le_bytes());
    let data = poked(SPLIT_DESC + 7 * 16, &addr);
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::DescriptorOutsideRam, "requests[0].index");
}

#[test]
fn descriptor_next_past_the_table() {
    let data = poked(SPLIT_DESC + 7 * 16 + 12, &[1, 0, 0xff, 0xff]);
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::NextOutOfRange, "requests[0].index");
}

#[test]
fn descriptor_chain_loop() {
    let data = poked(SPLIT_DESC + 7 * 16 + 12, &[1, 0, 7, 0]);
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::ChainLoop, "requests[0].index");
}

#[test]
fn indirect_table_length_not_a_multiple_of_16() {
    let data = poked(SPLIT_DESC + 7 * 16 + 8, &[0xff, 0xff, 0xff, 0xff, 4, 0]);
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::IndirectTableLength, "requests[0].index");
}

/// A device-readable descriptor after a device-writable one.
#[test]
fn descriptor_order_writable_then_readable() {
    // Head 7's first descriptor (the request header, readable) made writable.
    let data = poked(SPLIT_DESC + 7 * 16 + 12, &[3, 0]);
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::DescriptorOrder, "requests[0]");
}

/// A packed-ring element whose buffer id names no chain in the descriptor ring.
#[test]
fn packed_buffer_not_found() {
    let data = edited(
        &rings("blk-inflight-packed"),
        "virtio-blk",
        set("requests[1].index", "77"),
    );
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::PackedBufferNotFound, "requests[1].index");
}

/// A request list is not counted: it runs until a 0 marker. One that runs past what the ring
/// can hold is checked, not trusted (and sizes nothing before its bytes are read).
#[test]
fn unbounded_request_list() {
    let data = edited(&stripped("blk-inflight-split"), "virtio-blk", |d| {
        let first = blk(d)[0].clone();
        blk(d).resize(1100, first);
    });
    let found = findings(&check_bytes(&data, false), "virtio-blk");
    assert_has(&found, Rule::DuplicateHead, "requests[8].index");
    // With guest memory: more elements than the ring has in use.
    let data = edited(&rings("blk-inflight-split"), "virtio-blk", |d| {
        let first = blk(d)[0].clone();
        blk(d).resize(1100, first);
    });
    let found = findings(&check_bytes(&data, true), "virtio-blk");
    assert_has(&found, Rule::ElementsVsInUse, "queues[0]");
}

/// A request list whose 0 marker never comes.
#[test]
fn request_list_without_its_end_marker() {
    let bytes = blob(BLK);
    let device = decode_blob(&bytes, DeviceKind::Blk).unwrap();
    let mut bad = encode(&device);
    // The list ends the device part: drop the final 0 marker and everything after it.
    let end = bad.iter().rposition(|&b| b == 0).unwrap();
    bad.truncate(end);
    let err = blob_err(&bad, DeviceKind::Blk);
    assert!(
        matches!(
            err.kind(),
            ErrorKind::UnexpectedEof { .. }
                | ErrorKind::Undelimited { .. }
                | ErrorKind::InconsistentFraming { .. }
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// virtio-net (CVE-2013-4148, 4149, 4150).

/// Offset of `mac_table.in_use`: after the device's common part, the MAC (6), `tx_waiting`
/// (4), `mergeable_rx_bufs` (4), `status` (2), `promisc` and `allmulti` (1 each).
fn net_in_use_offset(bytes: &[u8]) -> usize {
    // A device of a kind not decoded keeps its own state as bytes, from the note's offset.
    let device = decode_blob(bytes, DeviceKind::Other("probe".into())).unwrap();
    let DeviceState::Opaque { .. } = &device.device else {
        panic!("probe")
    };
    let own_state = device.notes[0].offset.unwrap() as usize;
    let at = own_state + 6 + 4 + 4 + 2 + 1 + 1;
    assert_eq!(&bytes[at..at + 4], &1u32.to_be_bytes());
    at
}

/// CVE-2013-4148: a negative (as signed) `mac_table.in_use` passed the bound. Unsigned here:
/// 2^31 and up is a count of entries the input cannot hold.
#[test]
fn cve_2013_4148_mac_table_in_use_negative_as_signed() {
    let bytes = blob(NET);
    let at = net_in_use_offset(&bytes);
    for count in [1u32 << 31, u32::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&count.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Net);
        assert!(
            matches!(err.kind(), ErrorKind::UnexpectedEof { .. }),
            "{err}"
        );
    }
}

/// CVE-2013-4149: over 64 entries, QEMU allocated `in_use` bytes but read `in_use * 6`. An
/// oversized table is kept as QEMU skips it, its size computed without overflow.
#[test]
fn cve_2013_4149_mac_table_over_64_entries() {
    let bytes = blob(NET);
    let at = net_in_use_offset(&bytes);
    let old = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut big = bytes[..at].to_vec();
    big.extend_from_slice(&65u32.to_be_bytes());
    big.extend(std::iter::repeat_n(0xee, 65 * 6));
    big.extend_from_slice(&bytes[at + 4 + old * 6..]);
    let device = decode_blob(&big, DeviceKind::Net).unwrap();
    let DeviceState::Net(net) = &device.device else {
        panic!()
    };
    assert!(matches!(&net.mac_table, MacTable::Discarded(b) if b.0.len() == 65 * 6));
    // One entry short: the count runs past the input.
    let mut short = big.clone();
    short[at..at + 4].copy_from_slice(&(u32::MAX / 6 + 1).to_be_bytes());
    let err = blob_err(&short, DeviceKind::Net);
    assert!(
        matches!(err.kind(), ErrorKind::UnexpectedEof { .. }),
        "{err}"
    );
}

/// CVE-2013-4150: `curr_queues` past `max_queues` indexed `vqs[]`.
#[test]
fn cve_2013_4150_net_curr_queue_pairs_over_max() {
    let mut device = decode_blob(&blob(NET), DeviceKind::Net).unwrap();
    let pairs = |d: &mut VirtioDevice| match &mut d.device {
        DeviceState::Net(net) => {
            net.queue_pairs.get_or_insert(NetQueuePairs {
                max: 4,
                curr: 3,
                tx_waiting: vec![0, 1],
            });
        }
        _ => panic!("not net"),
    };
    pairs(&mut device);
    let bytes = encode(&device);
    let at = offset_of(&device, |d| {
        if let DeviceState::Net(net) = &mut d.device {
            let pairs = net.queue_pairs.as_mut().unwrap();
            pairs.curr = 2;
            pairs.tx_waiting.pop();
        }
    });
    for curr in [5u16, 1 << 15, u16::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 2].copy_from_slice(&curr.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Net);
        assert_refused_at(
            &err,
            ErrorKind::CountTooLarge {
                value: u64::from(curr),
                max: 4,
            },
            at,
        );
    }
}

// ---------------------------------------------------------------------------------------
// Subsections and versions.

/// A subsection with the parent's name prefix that the parent does not know.
#[test]
fn unknown_subsection() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let sub = device
        .subsections
        .first()
        .expect("the device has subsections");
    let at = sub.offset as usize;
    let mut bad = bytes.clone();
    // Keep the `virtio/` prefix (the peek rule then takes it for a subsection) and change the
    // last letter of the name.
    let name_end = at + 2 + bytes[at + 1] as usize;
    bad[name_end - 1] ^= 0x20;
    let err = blob_err(&bad, DeviceKind::Rng);
    assert!(
        matches!(err.kind(), ErrorKind::UnknownSubsection { parent, .. } if parent == "virtio"),
        "{err}"
    );
}

/// A subsection that comes twice: a loader would keep the last copy while a checker reads
/// the first, so the state would not be one thing.
#[test]
fn repeated_subsection() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let mut twice = device.clone();
    let first = twice.subsections[0].clone();
    twice.subsections.insert(1, first);
    let bad = encode(&twice);
    let err = blob_err(&bad, DeviceKind::Rng);
    assert!(
        matches!(err.kind(), ErrorKind::RepeatedSubsection { name } if *name == device.subsections[0].state.name()),
        "{err}"
    );
}

/// A subsection version above (or below) the one QEMU writes and this reader loads.
#[test]
fn subsection_version_not_loaded() {
    let bytes = blob(RNG);
    let device = decode_blob(&bytes, DeviceKind::Rng).unwrap();
    let sub = &device.subsections[0];
    let at = sub.offset as usize + 2 + bytes[sub.offset as usize + 1] as usize;
    for version in [0u32, 2, u32::MAX] {
        let mut bad = bytes.clone();
        bad[at..at + 4].copy_from_slice(&version.to_be_bytes());
        let err = blob_err(&bad, DeviceKind::Rng);
        assert!(
            matches!(err.kind(), ErrorKind::InvalidValue { value, .. } if *value == u64::from(version)),
            "{err}"
        );
    }
}

/// A section version above what the stream's description says the section holds.
#[test]
fn section_version_above_the_description() {
    let data = stripped("blk-inflight-split");
    let (stream, found) = decode(&data).unwrap();
    let section = stream
        .sections()
        .into_iter()
        .find(|s| s.idstr == found[0].idstr)
        .unwrap()
        .clone();
    // FULL header: type, id (4), idstr length and idstr, instance id (4), version id (4).
    let at = section.span.offset as usize + 1 + 4 + 1 + section.idstr.len() + 4;
    assert_eq!(
        u32::from_be_bytes(data[at..at + 4].try_into().unwrap()),
        section.version_id
    );
    for version in [section.version_id + 1, u32::MAX, 0] {
        let mut bad = data.clone();
        bad[at..at + 4].copy_from_slice(&version.to_be_bytes());
        let err = stream_err(&bad);
        assert!(
            matches!(err.kind(), ErrorKind::BadDescription { .. }),
            "{version}: {err}"
        );
    }
}

/// The RAM section's version is 4; any other is refused.
#[test]
fn ram_section_version_not_4() {
    for version in [3u32, 5] {
        let data = built(&[
            HEADER,
            b"\x01\0\0\0\x02\x03ram\0\0\0\0",
            &version.to_be_bytes(),
        ]);
        let err = stream::read(&data).unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Unsupported { .. }), "{err}");
        assert!(err.path().ends_with("version_id"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// Stream container.

#[test]
fn stream_version_2_or_4() {
    for version in [2u32, 4, u32::MAX] {
        let data = built(&[b"QEVM", &version.to_be_bytes(), b"\0"]);
        let err = stream::read(&data).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::UnsupportedVersion { version });
    }
}

#[test]
fn bad_magic() {
    let err = stream::read(b"QEVN\0\0\0\x03\0").unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::BadMagic { found: 0x5145_564e });
}

#[test]
fn idstr_of_length_0() {
    let data = built(&[HEADER, b"\x04\0\0\0\x01\x00\0\0\0\0\0\0\0\x01\0"]);
    let err = stream::read(&data).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::EmptyString);
}

/// A description whose length says 2^32-1 bytes: nothing is sized by it.
#[test]
fn description_length_2_pow_32_minus_1() {
    let data = built(&[HEADER, b"\0\x06\xff\xff\xff\xff{}"]);
    let err = stream::read(&data).unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::UnexpectedEof {
            needed: u64::from(u32::MAX),
            available: 2
        }
    );
}

#[test]
fn unknown_section_type() {
    let err = stream::read(&built(&[HEADER, b"\x42"])).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnknownSectionType { byte: 0x42 });
}

/// A PART section for an id no START opened (a load path indexing its section table).
#[test]
fn part_section_of_an_unknown_id() {
    let err = stream::read(&built(&[HEADER, b"\x02\0\0\0\x09"])).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnknownSectionId { section_id: 9 });
}

#[test]
fn section_footer_of_another_section() {
    let data = stripped("serial-throttled");
    let stream = stream::read(&data).unwrap();
    let section = stream
        .sections()
        .into_iter()
        .find(|s| s.idstr == "timer")
        .unwrap()
        .clone();
    let footer = section.span.end() as usize - 5;
    assert_eq!(data[footer], 0x7e);
    let mut bad = data.clone();
    bad[footer + 4] ^= 0x40;
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::FooterMismatch { .. }),
        "{err}"
    );
}

/// A command record whose length is not the command's.
#[test]
fn command_with_a_wrong_length() {
    // QEMU_VM_COMMAND (0x08), MIG_CMD_PING (3) with a 2-byte payload instead of 4.
    let err = stream::read(&built(&[HEADER, b"\x08\0\x03\0\x02\0\0"])).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::CommandLength { .. }),
        "{err}"
    );
    let err = stream::read(&built(&[HEADER, b"\x08\xff\xff\0\0"])).unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnknownCommand { command: 0xffff });
}

/// A RAM page record for an offset past the end of its block.
#[test]
fn ram_page_outside_its_block() {
    let data = rings("blk-inflight-split");
    let mut bad = data.clone();
    // The first PAGE record after the block list: find `pc.ram` with CONTINUE unset.
    let name = b"\x06pc.ram";
    let at = data
        .windows(name.len())
        .enumerate()
        .skip(60)
        .find(|(p, w)| *w == name && data[p - 1] & 0x08 != 0)
        .map(|(p, _)| p - 8)
        .unwrap();
    // Offset 2^40 within pc.ram (128 MiB), keeping the flags.
    let flags = u64::from_be_bytes(bad[at..at + 8].try_into().unwrap()) & 0xfff;
    bad[at..at + 8].copy_from_slice(&((1u64 << 40) | flags).to_be_bytes());
    let err = stream::read(&bad).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadRamRecord { .. }),
        "{err}"
    );
}

/// XBZRLE runs past the end of the page (a decoder writing out of its buffer).
#[test]
fn xbzrle_run_past_the_page() {
    let mut page = vec![0u8; 4096];
    // Unchanged run 4095, literal run 2.
    let encoded = [0xff, 0x1f, 0x02, 0xaa, 0xbb];
    let err = stream::apply_xbzrle(&encoded, 0, &mut page).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::BadRamRecord { .. }),
        "{err}"
    );
}

/// Every 32-bit word of the head of a SCSI disk's request list (the request's counts, the
/// element's counts and the disk part's lengths among them) set to 2^32-1: none makes the
/// list decode into more requests than its bytes hold, and none panics.
#[test]
fn scsi_request_words_set_to_2_pow_32_minus_1() {
    let data = stripped("scsi-inflight");
    let (stream, found) = decode(&data).unwrap();
    let scsi = devices::decode_scsi_requests(&stream, &found, &DecodeOptions::default()).unwrap();
    let field = scsi[0].field_offset as usize;
    let bytes = &data[field..field + scsi[0].field_size as usize];
    let packed = Some(false);
    for at in (0..bytes.len().min(400)).step_by(4) {
        let mut bad = bytes.to_vec();
        bad[at..at + 4].copy_from_slice(&[0xff; 4]);
        if let Ok(requests) =
            ScsiRequests::decode(&mut Reader::new(&bad), packed, &Assumptions::default())
        {
            assert!(requests.requests.len() <= bad.len());
        }
    }
}

/// PACKAGED commands nested inside each other as deep as the input goes: every walk over
/// the records would recurse once per level (a stack overflow at a few hundred thousand
/// levels, 9 bytes each). A package inside a package is refused.
#[test]
fn packaged_command_inside_a_package() {
    let levels: u32 = 200_000;
    let mut body = Vec::new();
    for level in 1..=levels {
        body.extend_from_slice(&[0x08, 0, 7, 0, 4]);
        body.extend_from_slice(&((levels - level) * 9).to_be_bytes());
    }
    let data = built(&[HEADER, &body, b"\0"]);
    let err = stream::read(&data).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unsupported { what } if what.contains("inside a package")),
        "{err}"
    );
    assert_eq!(err.offset(), 8 + 9 + 1);
    // One level, as QEMU writes it, reads.
    let inner = [0x08, 0, 2, 0, 4, 0, 0, 0, 1]; // PING 1
    let mut one = vec![0x08, 0, 7, 0, 4, 0, 0, 0, inner.len() as u8];
    one.extend_from_slice(&inner);
    stream::read(&built(&[HEADER, &one, b"\0"])).unwrap();
}

/// virtio-serial: a throttled port's `iov_idx`/`iov_offset` say how much of its element was
/// sent. QEMU trusts them when it resumes the port (in 2026 still an assert reachable from a
/// crafted element); past the element's buffers they are a finding.
#[test]
fn serial_iov_position_past_the_element() {
    let data = rings("serial-throttled");
    for (path, value) in [
        ("serial.ports[0].popped.iov_idx", "1"),
        ("serial.ports[0].popped.iov_idx", "4294967295"),
        ("serial.ports[0].popped.iov_offset", "4096"),
        ("serial.ports[0].popped.iov_offset", "18446744073709551615"),
    ] {
        let broken = edited(&data, "virtio-console", |d| d.set(path, value).unwrap());
        let found = findings(&check_bytes(&broken, true), "virtio-console");
        assert!(
            found
                .iter()
                .any(|(rule, _)| *rule == Rule::SerialIovPosition),
            "{path} = {value}: {found:?}"
        );
    }
}

/// Requests that parse only with a virtqueue index before each one, in a virtio-blk device
/// that saved one queue. QEMU writes the index exactly when num-queues > 1, so no reading
/// agrees with the device and the field is refused; told `num-queues=2`, it reads. Found by
/// the `virtio` fuzz target: the reading used to be taken anyway (the queue count was only
/// a preference), and once re-encoded, clean, the bytes read back under another layout.
#[test]
fn queue_index_against_the_saved_queue_count() {
    let mut device = decode_blob(&blob(BLK), DeviceKind::Blk).unwrap();
    assert_eq!(device.queues.len(), 1);
    let DeviceState::Blk(state) = &mut device.device else {
        panic!("{BLK} is virtio-blk");
    };
    assert!(!state.requests.is_empty());
    state.framing.queue_index = true;
    for request in &mut state.requests {
        request.queue = Some(0);
    }
    let forged = encode(&device);
    let err = blob_err(&forged, DeviceKind::Blk);
    // The one reading left (no index) would take each index for a packed-ring ndescs word,
    // in a device without packed rings.
    assert!(
        matches!(err.kind(), ErrorKind::InconsistentFraming { .. }),
        "{err}"
    );
    assert_eq!(err.path(), "virtio.rq");
    let assumed = Assumptions {
        num_queues: Some(2),
        ..Assumptions::default()
    };
    let read = VirtioDevice::decode(&mut Reader::new(&forged), DeviceKind::Blk, &assumed).unwrap();
    assert_eq!(read.device, device.device);
}
