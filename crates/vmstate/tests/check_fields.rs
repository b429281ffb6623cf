//! Every field check against a real stream broken on purpose: the stream is decoded, one
//! field is changed (by path, as `vmstate edit` does, or in the typed state), the stream is
//! written and read again, and the check must report exactly that rule at that field.

mod stream_checks;
mod support;

use stream_checks::read_stream_file;
use vmstate::check::{self, Rule};
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::stream;
use vmstate::virtio::{CoreState, CoreSubsection, QueueState, VirtioDevice};

/// A stream with requests in flight (RAM stripped), or `alldev`: a 10.0 stream with every
/// device (blk, net, scsi, serial, balloon, rng), none of them started.
fn stripped(name: &str) -> Vec<u8> {
    let file = match name {
        "alldev" => "streams/qemu10.0-noos-q35-alldev.mig.gz".to_owned(),
        _ => format!("stripped/qemu7.2-{name}.stripped.mig.gz"),
    };
    read_stream_file(&support::fixture(&file))
}

fn decode(data: &[u8]) -> (stream::Stream, Vec<VirtioSection>) {
    let s = stream::read(data).unwrap();
    let d = devices::decode_virtio(&s, &DecodeOptions::default()).unwrap();
    (s, d)
}

/// Breaks device `index` of stream `name` with `change`, writes the stream, reads it back and
/// returns the findings (rule, path) of that device.
fn break_and_check(
    name: &str,
    device: &str,
    change: impl FnOnce(&mut VirtioDevice),
) -> Vec<(Rule, String)> {
    let data = stripped(name);
    let (mut model, mut found) = decode(&data);
    let section = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == device)
        .unwrap();
    change(&mut section.device);
    devices::store_virtio(&mut model, section, None).unwrap();
    let written = stream::write(&model, &data).unwrap();
    let (_, again) = decode(&written);
    let report = check::check_devices(&again);
    let device = report
        .devices
        .iter()
        .find(|d| d.section.ends_with(device))
        .unwrap();
    device
        .findings
        .iter()
        .map(|f| (f.rule, f.path.clone()))
        .collect()
}

fn set(path: &'static str, value: &'static str) -> impl FnOnce(&mut VirtioDevice) {
    move |d| d.set(path, value).unwrap()
}

fn expect(findings: Vec<(Rule, String)>, rule: Rule, path: &str) {
    assert_eq!(findings, vec![(rule, path.to_owned())]);
}

#[test]
fn every_fixture_checks_clean() {
    for name in [
        "blk-inflight-split",
        "blk-inflight-mq2",
        "blk-inflight-packed",
        "scsi-inflight",
        "serial-throttled",
    ] {
        let (_, found) = decode(&stripped(name));
        let report = check::check_devices(&found);
        assert!(report.is_clean(), "{name}: {:#?}", report);
        assert!(report.devices.iter().all(|d| !d.checked.is_empty()));
    }
}

#[test]
fn queue_sel_past_the_queues() {
    let f = break_and_check("blk-inflight-split", "virtio-blk", set("queue_sel", "5"));
    expect(f, Rule::QueueSelOutOfRange, "queue_sel");
}

#[test]
fn queue_count_of_a_device_with_a_fixed_number() {
    let f = break_and_check("alldev", "virtio-rng", |d| {
        d.queues.push(QueueState {
            align: None,
            num: 8,
            desc: 0,
            last_avail_idx: 0,
            vector: d.queues[0].vector,
        })
    });
    expect(f, Rule::QueueCount, "queues");
}

#[test]
fn ring_size_over_1024() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("queues[0].num", "2048"),
    );
    expect(f, Rule::RingSizeTooLarge, "queues[0].num");
}

#[test]
fn split_ring_size_not_a_power_of_two() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("queues[0].num", "300"),
    );
    expect(f, Rule::RingSizeNotPowerOfTwo, "queues[0].num");
}

#[test]
fn packed_ring_sizes_need_not_be_powers_of_two() {
    let f = break_and_check(
        "blk-inflight-packed",
        "virtio-blk",
        set("queues[0].num", "300"),
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn ring_size_zero() {
    let f = break_and_check("alldev", "virtio-rng", set("queues[0].num", "0"));
    expect(f, Rule::RingSizeZero, "queues[0].num");
}

#[test]
fn last_avail_idx_without_a_ring() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("queues[0].desc", "0"),
    );
    expect(f, Rule::IndexWithoutRing, "queues[0].last_avail_idx");
}

#[test]
fn config_longer_than_any_device() {
    let f = break_and_check("blk-inflight-split", "virtio-blk", |d| {
        d.config.0.resize(300, 0)
    });
    expect(f, Rule::ConfigTooLong, "config");
}

#[test]
fn vectors_past_the_msix_table() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("queues[0].vector", "2"),
    );
    expect(f, Rule::VectorOutOfRange, "queues[0].vector");
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("transport.msix.config_vector", "7"),
    );
    expect(f, Rule::VectorOutOfRange, "transport.msix.config_vector");
    // 0xffff means "no vector" and is always fine.
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("queues[0].vector", "0xffff"),
    );
    assert!(f.is_empty());
}

#[test]
fn head_index_past_the_ring() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("requests[3].index", "256"),
    );
    expect(f, Rule::HeadOutOfRange, "requests[3].index");
}

#[test]
fn duplicate_heads() {
    // requests[0] has head 7.
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("requests[2].index", "7"),
    );
    expect(f, Rule::DuplicateHead, "requests[2].index");
    // The same head on two different queues is no duplicate.
    let f = break_and_check("blk-inflight-mq2", "virtio-blk", |d| {
        d.set("requests[0].index", "3").unwrap();
        d.set("requests[1].index", "3").unwrap();
    });
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn request_on_a_queue_the_device_does_not_have() {
    let f = break_and_check(
        "blk-inflight-mq2",
        "virtio-blk",
        set("requests[0].queue", "2"),
    );
    expect(f, Rule::RequestQueueOutOfRange, "requests[0].queue");
}

#[test]
fn device_endian_out_of_range() {
    let f = break_and_check("blk-inflight-split", "virtio-blk", |d| {
        d.subsections.insert(
            0,
            CoreSubsection {
                offset: 0,
                version: 1,
                state: CoreState::DeviceEndian(7),
            },
        )
    });
    expect(
        f,
        Rule::DeviceEndian,
        "subsections[virtio/device_endian].value",
    );
}

#[test]
fn guest_features_saved_twice_disagree() {
    let f = break_and_check(
        "blk-inflight-split",
        "virtio-blk",
        set("subsections[virtio/64bit_features].value", "0x100000001"),
    );
    expect(
        f,
        Rule::FeaturesDisagree,
        "subsections[virtio/64bit_features].value",
    );
}

#[test]
fn legacy_layouts_and_the_packed_order_are_notes_not_findings() {
    let data = stripped("blk-inflight-packed");
    let (_, found) = decode(&data);
    let report = check::check_devices(&found);
    assert!(report.is_clean());
    let blk = report
        .devices
        .iter()
        .find(|d| d.section.ends_with("virtio-blk"))
        .unwrap();
    assert!(blk
        .notes
        .iter()
        .any(|n| n.message.contains("--packed-ndescs-after")));
}

/// Like `break_and_check`, for any device of any fixture stream, with the SCSI disks decoded
/// too; returns every device's findings.
fn break_scsi_and_check(
    name: &str,
    change: impl FnOnce(&mut Vec<devices::ScsiDiskSection>),
) -> Vec<(Rule, String)> {
    let data = stripped(name);
    let mut model = stream::read(&data).unwrap();
    let options = DecodeOptions::default();
    let found = devices::decode_virtio(&model, &options).unwrap();
    let mut scsi = devices::decode_scsi_requests(&model, &found, &options).unwrap();
    change(&mut scsi);
    for disk in &scsi {
        devices::store_scsi_requests(&mut model, disk, None).unwrap();
    }
    let written = stream::write(&model, &data).unwrap();
    let again = stream::read(&written).unwrap();
    let found = devices::decode_virtio(&again, &options).unwrap();
    let scsi = devices::decode_scsi_requests(&again, &found, &options).unwrap();
    check::check_stream(&found, &scsi, None)
        .devices
        .iter()
        .flat_map(|d| d.findings.iter().map(|f| (f.rule, f.path.clone())))
        .collect()
}

#[test]
fn scsi_request_on_a_queue_the_device_does_not_have() {
    let f = break_scsi_and_check("scsi-inflight", |scsi| {
        vmstate::virtio::set_scsi(&mut scsi[0].requests, "requests[1].queue_number", "1").unwrap()
    });
    assert!(
        f.contains(&(
            Rule::ScsiQueueNumber,
            "scsi_requests[0].requests[1].queue_number".to_owned()
        )),
        "{f:?}"
    );
}

#[test]
fn net_mac_table_over_its_entries() {
    let f = break_and_check("alldev", "virtio-net", |d| {
        let vmstate::virtio::DeviceState::Net(net) = &mut d.device else {
            panic!()
        };
        net.mac_table_in_use = 65;
        net.mac_table =
            vmstate::virtio::MacTable::Discarded(vmstate::virtio::HexBytes(vec![0; 65 * 6]));
    });
    expect(f, Rule::NetMacTable, "net.mac_table_in_use");
}

#[test]
fn serial_elem_popped_and_iov_position() {
    let f = break_and_check(
        "serial-throttled",
        "virtio-console",
        set("serial.ports[0].popped.iov_idx", "3"),
    );
    expect(f, Rule::SerialIovPosition, "serial.ports[0].popped.iov_idx");
    let f = break_and_check(
        "serial-throttled",
        "virtio-console",
        set("serial.ports[0].popped.iov_offset", "4096"),
    );
    expect(
        f,
        Rule::SerialIovPosition,
        "serial.ports[0].popped.iov_offset",
    );
    let f = break_and_check(
        "serial-throttled",
        "virtio-console",
        set("serial.ports[0].elem_popped", "2"),
    );
    expect(f, Rule::SerialElemPopped, "serial.ports[0].elem_popped");
}

/// Gives the net device of the alldev stream `max` queue pairs with `curr` current and the
/// queues of `saved` pairs, through our own writer (the corpus devices have one pair: no
/// queue-pair fields in the stream), with `features` as the guest's, and decodes the result.
fn net_with_queue_pairs(
    max: u16,
    curr: u16,
    saved: u16,
    features: Option<u64>,
) -> vmstate::Result<Vec<VirtioSection>> {
    let data = stripped("alldev");
    let (mut model, mut found) = decode(&data);
    let net = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == "virtio-net")
        .unwrap();
    let vmstate::virtio::DeviceState::Net(state) = &mut net.device.device else {
        panic!()
    };
    state.queue_pairs = Some(vmstate::virtio::NetQueuePairs {
        max,
        curr,
        tx_waiting: vec![0; usize::from(curr.saturating_sub(1))],
    });
    for _ in 1..saved {
        let template = net.device.queues[0];
        net.device.queues.push(template);
        net.device.queues.push(template);
    }
    if let Some(features) = features {
        net.device
            .set("guest_features", &features.to_string())
            .unwrap();
    }
    devices::store_virtio(&mut model, net, None).unwrap();
    let written = stream::write(&model, &data).unwrap();
    let again = stream::read(&written).unwrap();
    let options = DecodeOptions {
        assumptions: vec![format!("0000:00:02.0/virtio-net:num-queues={max}")
            .parse()
            .unwrap()],
        ..DecodeOptions::default()
    };
    devices::decode_virtio(&again, &options)
}

/// Until the driver negotiates multiqueue (`VIRTIO_NET_F_MQ`, bit 22), QEMU keeps one queue
/// pair and the control queue of a multiqueue device: 3 queues saved are what it writes then,
/// not a wrong count; once negotiated, every pair's queues must be there.
#[test]
fn multiqueue_net_before_the_driver_enables_it_saves_one_pair() {
    const MQ: u64 = 1 << 22;
    let queue_count = |found: &[VirtioSection]| {
        let report = check::check_devices(found);
        report
            .devices
            .iter()
            .find(|d| d.section.ends_with("virtio-net"))
            .unwrap()
            .findings
            .iter()
            .filter(|f| f.rule == Rule::QueueCount)
            .count()
    };
    assert_eq!(
        queue_count(&net_with_queue_pairs(4, 1, 1, None).unwrap()),
        0
    );
    assert_eq!(
        queue_count(&net_with_queue_pairs(4, 1, 4, None).unwrap()),
        0
    );
    assert_eq!(
        queue_count(&net_with_queue_pairs(4, 1, 1, Some(MQ)).unwrap()),
        1
    );
    assert_eq!(
        queue_count(&net_with_queue_pairs(4, 1, 4, Some(MQ)).unwrap()),
        0
    );
    assert_eq!(
        queue_count(&net_with_queue_pairs(4, 1, 2, None).unwrap()),
        1
    );
}

#[test]
fn net_current_queue_pairs_zero_or_past_the_maximum() {
    let found = net_with_queue_pairs(2, 0, 2, None).unwrap();
    let report = check::check_devices(&found);
    let net = report
        .devices
        .iter()
        .find(|d| d.section.ends_with("virtio-net"))
        .unwrap();
    let rules: Vec<(Rule, String)> = net
        .findings
        .iter()
        .map(|f| (f.rule, f.path.clone()))
        .collect();
    assert_eq!(
        rules,
        [(Rule::NetQueuePairs, "net.queue_pairs.curr".to_owned())]
    );
    // More current than maximum pairs is refused while decoding, as QEMU refuses it
    // (CVE-2013-4150): the count is never used to index the queues.
    let err = net_with_queue_pairs(2, 3, 2, None).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            vmstate::ErrorKind::CountTooLarge { value: 3, max: 2 }
        ),
        "{err}"
    );
    assert!(err.path().ends_with("net.curr_queue_pairs"), "{err}");
}

#[test]
fn serial_port_past_the_device_ports() {
    // Port id 31 of a device with 31 ports (0..30), set in the ports map.
    let f = break_and_check("serial-throttled", "virtio-console", |d| {
        let vmstate::virtio::DeviceState::Serial(serial) = &mut d.device else {
            panic!()
        };
        serial.ports_map[0] |= 1 << 31;
        serial.ports[0].id = 31;
    });
    // Its transmit queue (2 × 31 + 3) is past the device's 64 queues too.
    assert_eq!(
        f,
        [
            (
                Rule::RequestQueueOutOfRange,
                "serial.ports[0].popped.queue".to_owned()
            ),
            (Rule::SerialPort, "serial.ports[0].id".to_owned())
        ]
    );
}

#[test]
fn serial_port_outside_the_ports_map_is_refused_while_decoding() {
    // The map's length is settled by the reading under which every active port is in it: a
    // port outside it leaves no reading, and the error names the field.
    let data = stripped("serial-throttled");
    let (mut model, mut found) = decode(&data);
    let serial = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == "virtio-console")
        .unwrap();
    serial.device.set("serial.ports[0].id", "2").unwrap();
    devices::store_virtio(&mut model, serial, None).unwrap();
    let written = stream::write(&model, &data).unwrap();
    let again = stream::read(&written).unwrap();
    let err = devices::decode_virtio(&again, &DecodeOptions::default()).unwrap_err();
    assert!(err.path().ends_with("ports[0].id"), "{err}");
    assert!(
        matches!(
            err.kind(),
            vmstate::ErrorKind::InvalidValue { value: 2, .. }
        ),
        "{err}"
    );
}

#[test]
fn unknown_transport_feature_bits_are_a_note_not_a_finding() {
    let data = stripped("blk-inflight-split");
    let (mut model, mut found) = decode(&data);
    let blk = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == "virtio-blk")
        .unwrap();
    let features = blk.device.guest_features() | (1 << 45);
    blk.device
        .set("guest_features", &features.to_string())
        .unwrap();
    devices::store_virtio(&mut model, blk, None).unwrap();
    let written = stream::write(&model, &data).unwrap();
    let (_, again) = decode(&written);
    let report = check::check_devices(&again);
    assert!(report.is_clean(), "{report:#?}");
    let blk = report
        .devices
        .iter()
        .find(|d| d.section.ends_with("virtio-blk"))
        .unwrap();
    assert!(
        blk.notes.iter().any(|n| n.message.contains("[45]")),
        "{:?}",
        blk.notes
    );
}

#[test]
fn packed_ring_indices_past_the_ring() {
    let f = break_and_check(
        "blk-inflight-packed",
        "virtio-blk",
        set("queues[0].last_avail_idx", "256"),
    );
    assert!(
        f.contains(&(
            Rule::PackedIndexOutOfRange,
            "queues[0].last_avail_idx".to_owned()
        )),
        "{f:?}"
    );
    let f = break_and_check(
        "blk-inflight-packed",
        "virtio-blk",
        set(
            "subsections[virtio/packed_virtqueues].queues[0].used_idx",
            "300",
        ),
    );
    expect(
        f,
        Rule::PackedIndexOutOfRange,
        "subsections[virtio/packed_virtqueues].queues[0].used_idx",
    );
}
