//! The `virtio` fields of real devices, cut out of QEMU streams (tests/fixtures/virtio/):
//! they decode, agree with the ground truth QEMU reported before saving, and encode back to
//! the same bytes.

mod support;

use std::io::Read;

use vmstate::element::{Layout, LayoutChoice, Segment};
use vmstate::hex::HexBytes;
use vmstate::virtio::net::MacAddr;
use vmstate::virtio::scsi::{DiskData, DiskPart, ScsiRequests};
use vmstate::virtio::{
    Assumptions, BalloonSubsection, CoreState, DeviceKind, DeviceState, MacTable, NdescsOrder,
    NetQueuePairs, VirtioDevice,
};
use vmstate::wire::{Reader, Writer};
use vmstate::ErrorKind;

fn blob(name: &str) -> Vec<u8> {
    let file = std::fs::File::open(support::fixture(&format!("virtio/{name}.bin.gz"))).unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn kind_of(name: &str) -> DeviceKind {
    DeviceKind::from_vmsd_name(
        name.rsplit('-')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("-")
            .as_str(),
    )
}

fn decode_with(
    bytes: &[u8],
    kind: DeviceKind,
    assume: &Assumptions,
) -> vmstate::Result<VirtioDevice> {
    let mut r = Reader::new(bytes);
    let device = VirtioDevice::decode(&mut r, kind, assume)?;
    assert!(r.is_empty());
    Ok(device)
}

fn decode(name: &str) -> (Vec<u8>, VirtioDevice) {
    let bytes = blob(name);
    let device = decode_with(&bytes, kind_of(name), &Assumptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (bytes, device)
}

fn encode(device: &VirtioDevice) -> Vec<u8> {
    let mut w = Writer::new();
    device.encode(&mut w).unwrap();
    w.into_bytes()
}

const ALL: &[&str] = &[
    "qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk",
    "qemu7.2-blk-inflight-mq2--0000_00_01.0-virtio-blk",
    "qemu7.2-blk-inflight-packed--0000_00_01.0-virtio-blk",
    "qemu10.0-noos-q35-alldev--0000_00_01.0-virtio-blk",
    "qemu7.2-noos-pc-i440fx-2.6-legacy--0000_00_02.0-virtio-blk",
    "qemu7.2-booted-pc-legacy-idle--0000_00_02.0-virtio-blk",
    "qemu7.2-booted-q35-idle--0000_00_01.0-virtio-blk",
    "qemu7.2-scsi-inflight--0000_00_01.0-virtio-scsi",
    "qemu10.0-noos-q35-alldev--0000_00_06.0-virtio-rng",
    "qemu10.0-noos-q35-alldev--0000_00_02.0-virtio-net",
    "qemu10.0-booted-q35-idle--0000_00_02.0-virtio-net",
    "qemu7.2-booted-pc-legacy-idle--0000_00_03.0-virtio-net",
    "qemu7.2-serial-throttled--0000_00_01.0-virtio-console",
    "qemu10.0-booted-q35-idle--0000_00_05.0-virtio-balloon",
    "qemu7.2-booted-pc-legacy-idle--0000_00_06.0-virtio-balloon",
];

#[test]
fn every_fixture_decodes_and_encodes_to_the_same_bytes() {
    for name in ALL {
        let (bytes, device) = decode(name);
        assert!(encode(&device) == bytes, "{name}");
    }
}

#[test]
fn kinds_are_told_from_the_vmsd_name() {
    assert_eq!(kind_of("x--0000_00_01.0-virtio-blk"), DeviceKind::Blk);
    assert_eq!(kind_of("x--0000_00_01.0-virtio-net"), DeviceKind::Net);
    assert_eq!(
        kind_of("x--0000_00_01.0-virtio-console"),
        DeviceKind::Serial
    );
    assert_eq!(
        kind_of("x--0000_00_01.0-virtio-balloon"),
        DeviceKind::Balloon
    );
    assert_eq!(
        kind_of("x--0000_00_01.0-virtio-gpu"),
        DeviceKind::Other("virtio-gpu".into())
    );
}

/// Ground truth: QMP x-query-virtio-queue-status and -element on the source QEMU
/// (corpus MANIFEST, qemu7.2-blk-inflight-split): queue 0, 256 entries, descriptor table at
/// 0x2318000, last_avail_idx 9, eight requests held (heads 7 down to 0, newest first).
#[test]
fn split_ring_requests_match_the_ground_truth() {
    let (_, device) = decode("qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk");
    assert_eq!(device.queues.len(), 1);
    let q = device.queues[0];
    assert_eq!(
        (q.num, q.desc, q.last_avail_idx, q.vector),
        (256, 0x2318000, 9, Some(1))
    );
    let DeviceState::Blk(blk) = &device.device else {
        panic!("not blk")
    };
    assert_eq!(blk.framing.layout, Layout::Stable);
    assert!(!blk.framing.queue_index);
    assert_eq!(blk.framing.ndescs, NdescsOrder::Absent);
    let heads: Vec<u32> = blk.requests.iter().map(|r| r.element.index).collect();
    assert_eq!(heads, [7, 6, 5, 4, 3, 2, 1, 0]);
    let first = &blk.requests[0].element;
    assert_eq!(
        first.device_readable,
        [
            Segment {
                addr: 0x232cd00,
                len: 16
            },
            Segment {
                addr: 0x1c42000,
                len: 122_880
            },
            Segment {
                addr: 0x7ee0000,
                len: 131_072
            },
            Segment {
                addr: 0x1620000,
                len: 8192
            },
        ]
    );
    assert_eq!(
        first.device_writable,
        [Segment {
            addr: 0x232cd10,
            len: 1
        }]
    );
    assert!(device
        .inferred
        .iter()
        .any(|i| i.subject == "virtio.rq.element"));
    assert!(!device.offers_packed_rings());
}

/// Ground truth (qemu7.2-blk-inflight-mq2): two queues; queue 0 descriptor table 0x230e000
/// (37322752), avail 37326848, used 37327424, last_avail_idx 2, one request of head 0 with 65
/// device-readable segments; queue 1 table 37330944, avail 37335040, used 37335616,
/// last_avail_idx 1, one request of head 0 with 7 readable segments and a 1-byte status.
#[test]
fn multi_queue_requests_carry_their_queue() {
    let (_, device) = decode("qemu7.2-blk-inflight-mq2--0000_00_01.0-virtio-blk");
    let descs: Vec<(u64, u16)> = device
        .queues
        .iter()
        .map(|q| (q.desc, q.last_avail_idx))
        .collect();
    assert_eq!(descs, [(37_322_752, 2), (37_330_944, 1)]);
    let rings: Vec<(u64, u64)> = (0..2)
        .map(|i| device.ring_addresses(i).map(|r| (r.avail, r.used)).unwrap())
        .collect();
    assert_eq!(rings, [(37_326_848, 37_327_424), (37_335_040, 37_335_616)]);
    let DeviceState::Blk(blk) = &device.device else {
        panic!("not blk")
    };
    assert!(blk.framing.queue_index);
    let mut by_queue: Vec<(Option<u32>, u32, usize, usize)> = blk
        .requests
        .iter()
        .map(|r| {
            (
                r.queue,
                r.element.index,
                r.element.device_readable.len(),
                r.element.device_writable.len(),
            )
        })
        .collect();
    by_queue.sort();
    assert_eq!(by_queue, [(Some(0), 0, 65, 1), (Some(1), 0, 7, 1)]);
    let q1 = blk.requests.iter().find(|r| r.queue == Some(1)).unwrap();
    assert_eq!(
        q1.element.device_writable,
        [Segment {
            addr: 37_470_480,
            len: 1
        }]
    );
    assert_eq!(
        q1.element.device_readable[0],
        Segment {
            addr: 37_470_464,
            len: 16
        }
    );
}

/// Ground truth (qemu7.2-blk-inflight-packed): packed ring, inuse 2, last_avail_idx 3; QEMU
/// wrote each request's ndescs before its element.
#[test]
fn packed_ring_requests_carry_ndescs_before_the_element() {
    let (bytes, device) = decode("qemu7.2-blk-inflight-packed--0000_00_01.0-virtio-blk");
    assert!(device.offers_packed_rings());
    assert_eq!(device.queues[0].last_avail_idx, 3);
    let DeviceState::Blk(blk) = &device.device else {
        panic!("not blk")
    };
    assert_eq!(blk.framing.ndescs, NdescsOrder::BeforeElement);
    assert_eq!(blk.requests.len(), 2);
    assert!(blk.requests.iter().all(|r| r.ndescs.is_some()));
    let packed = device
        .subsections
        .iter()
        .find_map(|s| match &s.state {
            CoreState::PackedVirtqueues(q) => Some(q[0]),
            _ => None,
        })
        .unwrap();
    assert_eq!((packed.last_avail_idx, packed.inuse), (3, 2));

    // Moving ndescs after the element (the order QEMU's loader reads) is detected back.
    let mut framing = blk.framing;
    framing.ndescs = NdescsOrder::AfterElement;
    let mut w = Writer::new();
    device.encode_with(&mut w, Some(framing)).unwrap();
    assert_eq!(w.as_bytes().len(), bytes.len());
    let moved = decode_with(w.as_bytes(), DeviceKind::Blk, &Assumptions::default()).unwrap();
    let DeviceState::Blk(moved_blk) = &moved.device else {
        panic!("not blk")
    };
    assert_eq!(moved_blk.framing.ndescs, NdescsOrder::AfterElement);
    assert_eq!(moved_blk.requests, blk.requests);
}

#[test]
fn elements_converted_to_any_layout_are_detected_and_read_back() {
    let (_, device) = decode("qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk");
    let DeviceState::Blk(blk) = &device.device else {
        panic!("not blk")
    };
    for layout in Layout::ALL {
        let mut framing = blk.framing;
        framing.layout = layout;
        let mut w = Writer::new();
        device.encode_with(&mut w, Some(framing)).unwrap();
        let back = decode_with(w.as_bytes(), DeviceKind::Blk, &Assumptions::default())
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        let DeviceState::Blk(back_blk) = &back.device else {
            panic!("not blk")
        };
        assert_eq!(back_blk.framing.layout, layout);
        assert_eq!(back_blk.requests, blk.requests, "{layout}");
    }
}

#[test]
fn a_wrong_assumption_is_an_error_not_a_wrong_decode() {
    let bytes = blob("qemu7.2-blk-inflight-split--0000_00_01.0-virtio-blk");
    for assume in [
        Assumptions {
            num_queues: Some(2),
            ..Default::default()
        },
        Assumptions {
            packed: Some(true),
            ..Default::default()
        },
        Assumptions {
            layout: LayoutChoice::Fixed(Layout::I386),
            ..Default::default()
        },
    ] {
        assert!(
            decode_with(&bytes, DeviceKind::Blk, &assume).is_err(),
            "{assume:?}"
        );
    }
}

#[test]
fn devices_not_decoded_yet_are_kept_whole_with_a_note() {
    let bytes = blob("qemu10.0-noos-q35-alldev--0000_00_02.0-virtio-net");
    let device = decode_with(
        &bytes,
        DeviceKind::Other("virtio-unknown".into()),
        &Assumptions::default(),
    )
    .unwrap();
    let DeviceState::Opaque { bytes: rest } = &device.device else {
        panic!("decoded?")
    };
    assert!(!rest.0.is_empty() && rest.0.len() < bytes.len());
    assert_eq!(device.notes.len(), 1);
    assert!(device.notes[0].message.contains("not decoded"));
    // The core subsections after the undecoded state are read, not swallowed: the same
    // as when the device is decoded as what it is.
    let (_, as_net) = decode("qemu10.0-noos-q35-alldev--0000_00_02.0-virtio-net");
    assert!(!device.subsections.is_empty());
    assert_eq!(device.subsections, as_net.subsections);
    let mut w = Writer::new();
    device.encode(&mut w).unwrap();
    assert_eq!(w.into_bytes(), bytes);
}

/// A cut field fails to decode, except where the cut falls exactly before a core subsection:
/// subsections are optional, so only the field's size in the stream's description (checked
/// by the stream layer) tells such a cut from a device that sent fewer of them.
#[test]
fn truncations_are_errors_unless_at_a_subsection_boundary() {
    for name in ALL {
        let (bytes, full) = decode(name);
        let boundaries: Vec<usize> = full.subsections.iter().map(|s| s.offset as usize).collect();
        // Densely through the transport and common fields, sparsely through the long tail
        // (each cut re-runs every framing trial).
        let (dense, sparse) = if support::extended_tier() {
            (3, 1021)
        } else {
            (61, 9973)
        };
        let cuts = (0..bytes.len().min(4096))
            .step_by(dense)
            .chain((4096..bytes.len()).step_by(sparse))
            .chain(boundaries.iter().copied());
        for cut in cuts {
            let result = decode_with(&bytes[..cut], kind_of(name), &Assumptions::default());
            match (&full.device, result) {
                // An opaque device ends wherever its bytes end.
                (DeviceState::Opaque { .. }, Ok(_)) if cut > 400 => {}
                (_, Ok(device)) => {
                    // Or before one of the device's own optional subsections.
                    let fewer_own = own_subsections(&device) < own_subsections(&full);
                    assert!(
                        boundaries.contains(&cut) || fewer_own,
                        "{name} cut at {cut} decoded"
                    );
                    assert!(device.subsections.len() < full.subsections.len());
                }
                (_, Err(_)) => assert!(
                    !boundaries.contains(&cut) || cut == 0 || drops_packed_rings(&full, cut),
                    "{name} at {cut}"
                ),
            }
        }
    }
}

/// True when cutting `full`'s bytes at `cut` drops its `virtio/packed_virtqueues` subsection
/// while its requests carry an `ndescs` word: the device then offers no packed rings, so no
/// reading of the requests agrees with the rest of the field, and the cut is an error.
fn drops_packed_rings(full: &VirtioDevice, cut: usize) -> bool {
    let carries_ndescs = match &full.device {
        DeviceState::Blk(blk) => {
            !blk.requests.is_empty() && blk.framing.ndescs != NdescsOrder::Absent
        }
        _ => false,
    };
    carries_ndescs
        && full
            .subsections
            .iter()
            .any(|s| s.state.name() == "virtio/packed_virtqueues" && s.offset as usize >= cut)
}

/// Subsections of the device's own VMState (virtio-net's RSS, virtio-balloon's).
fn own_subsections(device: &VirtioDevice) -> usize {
    match &device.device {
        DeviceState::Net(net) => net.subsections.len(),
        DeviceState::Balloon(balloon) => balloon.subsections.len(),
        _ => 0,
    }
}

#[test]
fn bad_common_fields_are_named() {
    let bytes = blob("qemu10.0-noos-q35-alldev--0000_00_06.0-virtio-rng");
    // queue_sel sits after the PCI part (4 + 256 + 16 + 2*16 + 1 + 2) and status/isr.
    let at = 4 + 256 + 16 + 32 + 1 + 2 + 2;
    let mut bad = bytes.clone();
    bad[at..at + 2].copy_from_slice(&1024u16.to_be_bytes());
    let err = decode_with(&bad, DeviceKind::Rng, &Assumptions::default()).unwrap_err();
    assert_eq!((err.path(), err.offset()), ("queue_sel", at as u64));

    let mut bad = bytes.clone();
    let config_len_at = at + 2 + 4;
    bad[config_len_at..config_len_at + 4].copy_from_slice(&(-1i32).to_be_bytes());
    let err = decode_with(&bad, DeviceKind::Rng, &Assumptions::default()).unwrap_err();
    assert_eq!(err.path(), "config_len");

    let mut bad = bytes.clone();
    let num_queues_at = config_len_at + 4;
    bad[num_queues_at..num_queues_at + 4].copy_from_slice(&1025u32.to_be_bytes());
    let err = decode_with(&bad, DeviceKind::Rng, &Assumptions::default()).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::CountTooLarge { value: 1025, .. }
    ));
}

/// Ground truth (qemu7.2-booted-pc-legacy-idle, a legacy virtio-blk): QEMU reported the
/// rings of queue 0 at desc 37699584, avail 37703680, used 37707776, 256 entries, index 17.
/// A legacy device saves only the descriptor table; the others are computed as QEMU does.
#[test]
fn legacy_ring_addresses_are_computed_as_qemu_does() {
    let (_, device) = decode("qemu7.2-booted-pc-legacy-idle--0000_00_02.0-virtio-blk");
    assert!(device.ring_addresses(0).is_none());
    let q = device.queues[0];
    assert_eq!((q.desc, q.num, q.last_avail_idx), (37_699_584, 256, 17));
    assert_eq!(device.ring_areas(0), Some((37_703_680, 37_707_776)));
    let json = serde_json::to_value(&device).unwrap();
    assert_eq!(json["queues"][0]["avail"], 37_703_680);
    assert_eq!(json["queues"][0]["used"], 37_707_776);
    assert_eq!(json["device"], "virtio-blk");
}

#[test]
fn json_shows_each_request_once_with_its_queue() {
    let (_, device) = decode("qemu7.2-blk-inflight-mq2--0000_00_01.0-virtio-blk");
    let json = serde_json::to_value(&device).unwrap();
    let requests = json["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    for r in requests {
        assert!(r["queue"].is_u64() && r["index"].is_u64());
        assert!(r["out"].is_array() && r["in"].is_array());
    }
    assert_eq!(json["queues"][1]["avail"], 37_335_040);
    let virtqueues = json["subsections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "virtio/virtqueues")
        .unwrap();
    assert_eq!(virtqueues["queues"].as_array().unwrap().len(), 2);
    assert_eq!(virtqueues["other_non_zero_slots"], 0);
}

/// Ground truth (qemu10.0-booted-q35-idle): the guest brought eth0 up with the MAC given on
/// the command line, joined the all-hosts multicast group (one MAC table entry) and
/// negotiated VIRTIO_NET_F_CTRL_GUEST_OFFLOADS (bit 2 of 0x30af8024), so the offloads word
/// is there; one queue pair, so no queue-pair fields.
#[test]
fn net_device_state_reads_as_qemu_wrote_it() {
    let (_, device) = decode("qemu10.0-booted-q35-idle--0000_00_02.0-virtio-net");
    let DeviceState::Net(net) = &device.device else {
        panic!("not net")
    };
    assert_eq!(net.mac.0, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!((net.status, net.promisc, net.mergeable_rx_bufs), (1, 0, 1));
    assert_eq!(net.mac_table_in_use, 1);
    assert_eq!(
        net.mac_table,
        MacTable::Entries(vec![MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01])])
    );
    assert_eq!(net.vlans.0.len(), 512);
    assert!(net.queue_pairs.is_none());
    assert_eq!(net.curr_guest_offloads, Some(0));
    assert!(device
        .inferred
        .iter()
        .any(|i| i.subject == "virtio.net.queue_pairs"));
    let json = serde_json::to_value(&device).unwrap();
    assert_eq!(json["net"]["mac"], "52:54:00:12:34:56");
    assert_eq!(json["net"]["mac_table"]["entries"][0], "01:00:5e:00:00:01");

    // No driver, no features: no offloads word.
    let (_, device) = decode("qemu10.0-noos-q35-alldev--0000_00_02.0-virtio-net");
    let DeviceState::Net(net) = &device.device else {
        panic!("not net")
    };
    assert_eq!(net.curr_guest_offloads, None);
}

/// Offset of a device's own part: where a device read as not decoded keeps its bytes.
fn device_part_offset(bytes: &[u8]) -> usize {
    let device = decode_with(
        bytes,
        DeviceKind::Other("probe".into()),
        &Assumptions::default(),
    )
    .unwrap();
    let DeviceState::Opaque { .. } = &device.device else {
        panic!("probe")
    };
    device.notes[0].offset.unwrap() as usize
}

/// CVE-2013-4148/4149: an `in_use` over 64 is not a table. QEMU skips `in_use × 6` bytes;
/// the decoder keeps them raw and sizes nothing by the count before checking the input
/// holds them. A count the input cannot hold is an error, not an allocation.
#[test]
fn an_oversized_mac_table_is_skipped_as_qemu_does_and_round_trips() {
    let bytes = blob("qemu10.0-booted-q35-idle--0000_00_02.0-virtio-net");
    let part = device_part_offset(&bytes);
    let in_use_at = part + 6 + 4 + 4 + 2 + 1 + 1;
    assert_eq!(&bytes[in_use_at..in_use_at + 4], &1u32.to_be_bytes());

    // 70 entries: 64 + 6 more, 420 bytes instead of 6.
    let mut big = bytes[..in_use_at].to_vec();
    big.extend_from_slice(&70u32.to_be_bytes());
    big.extend(std::iter::repeat(0xab).take(70 * 6));
    big.extend_from_slice(&bytes[in_use_at + 4 + 6..]);
    let device = decode_with(&big, DeviceKind::Net, &Assumptions::default()).unwrap();
    let DeviceState::Net(net) = &device.device else {
        panic!("not net")
    };
    assert!(matches!(&net.mac_table, MacTable::Discarded(b) if b.0.len() == 420));
    assert!(encode(&device) == big);

    let mut huge = bytes.clone();
    huge[in_use_at..in_use_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let err = decode_with(&huge, DeviceKind::Net, &Assumptions::default()).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::UnexpectedEof { .. }),
        "{err}"
    );
}

/// Ground truth (qemu7.2-serial-throttled, MANIFEST and elements.txt): port 1 was throttled
/// holding head 3 of queue 5 (its transmit queue), one 4096-byte buffer at 0x2845000, not
/// consumed yet.
#[test]
fn a_throttled_serial_port_keeps_its_element() {
    let (_, device) = decode("qemu7.2-serial-throttled--0000_00_01.0-virtio-console");
    let DeviceState::Serial(serial) = &device.device else {
        panic!("not serial")
    };
    assert_eq!(serial.max_nr_ports, 31);
    assert_eq!(serial.ports_map, [3]);
    assert_eq!(serial.ports.len(), 1);
    let port = &serial.ports[0];
    assert_eq!(
        (
            port.id,
            port.guest_connected,
            port.host_connected,
            port.elem_popped
        ),
        (1, 1, 1, 1)
    );
    let popped = port.popped.as_ref().unwrap();
    assert_eq!((popped.iov_idx, popped.iov_offset), (0, 0));
    assert_eq!(popped.element.queue, Some(5));
    assert_eq!(popped.element.element.index, 3);
    assert_eq!(
        popped.element.element.device_readable,
        [Segment {
            addr: 0x2845000,
            len: 4096
        }]
    );
    assert!(popped.element.element.device_writable.is_empty());
    assert_eq!(serial.framing.layout, Layout::Stable);
    assert!(device
        .inferred
        .iter()
        .any(|i| i.subject == "virtio.ports_map"));

    // Every other layout writes the same state and reads back to it.
    for layout in Layout::ALL {
        let mut framing = serial.framing;
        framing.layout = layout;
        let mut w = Writer::new();
        device.encode_with(&mut w, Some(framing)).unwrap();
        let again = decode_with(w.as_bytes(), DeviceKind::Serial, &Assumptions::default())
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        let DeviceState::Serial(back) = &again.device else {
            panic!("not serial")
        };
        assert_eq!(back.ports, serial.ports, "{layout}");
        assert_eq!(back.framing.layout, layout);
    }
}

#[test]
fn balloon_state_and_its_page_poison_subsection() {
    let (_, device) = decode("qemu10.0-booted-q35-idle--0000_00_05.0-virtio-balloon");
    let DeviceState::Balloon(balloon) = &device.device else {
        panic!("not balloon")
    };
    assert_eq!((balloon.num_pages, balloon.actual), (0, 0));
    assert_eq!(
        balloon.subsections,
        [BalloonSubsection::PagePoison {
            version: 1,
            poison_val: 0,
            misspelled: false
        }]
    );
    let (_, device) = decode("qemu7.2-booted-pc-legacy-idle--0000_00_06.0-virtio-balloon");
    assert!(matches!(&device.device, DeviceState::Balloon(b) if b.subsections.len() == 1));
}

fn scsi_blob() -> Vec<u8> {
    let file = std::fs::File::open(support::fixture(
        "virtio/qemu7.2-scsi-inflight--0000_00_01.0-0_0_0-scsi-disk.requests.bin.gz",
    ))
    .unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn scsi_decode(bytes: &[u8], packed: Option<bool>) -> vmstate::Result<ScsiRequests> {
    ScsiRequests::decode(&mut Reader::new(bytes), packed, &Assumptions::default())
}

fn scsi_encode(requests: &ScsiRequests) -> Vec<u8> {
    let mut w = Writer::new();
    requests.encode_with(&mut w, None).unwrap();
    w.into_bytes()
}

/// Ground truth (qemu7.2-scsi-inflight, elements.txt): two WRITE(10)s held for retry on
/// request queue 0 (virtqueue 2), heads 0 and 1.
#[test]
fn scsi_requests_decode_round_trip_and_refuse_cuts() {
    let bytes = scsi_blob();
    let requests = scsi_decode(&bytes, Some(false)).unwrap();
    assert_eq!(requests.requests.len(), 2);
    assert!(scsi_encode(&requests) == bytes);
    assert!(requests
        .inferred
        .iter()
        .any(|i| i.subject == "requests.queue"));
    // An HBA with packed rings would have written ndescs words: no reading fits.
    assert!(scsi_decode(&bytes, Some(true)).is_err());
    let step = if support::extended_tier() { 97 } else { 4099 };
    for cut in (0..bytes.len()).step_by(step) {
        assert!(
            scsi_decode(&bytes[..cut], Some(false)).is_err(),
            "cut at {cut}"
        );
    }
}

/// Requests of each shape scsi-disk saves: a write's data, a read's returned data, and an
/// emulated command with and without scsi-disk's part.
#[test]
fn scsi_request_shapes_round_trip() {
    let bytes = scsi_blob();
    let base = scsi_decode(&bytes, Some(false)).unwrap();
    let template = base.requests[0].clone();
    let mut write = template.clone();
    write.disk = Some(DiskPart {
        sector: 8,
        sector_count: 1,
        buflen: 4096,
        data: DiskData::ToDevice(HexBytes(vec![0x5a; 512])),
    });
    let mut read = template.clone();
    read.retry = false;
    read.cdb.0[0] = 0x28;
    read.disk = Some(DiskPart {
        sector: 8,
        sector_count: 8,
        buflen: 4096,
        data: DiskData::FromDevice(HexBytes(vec![0xa5; 100])),
    });
    let mut inquiry = template.clone();
    inquiry.cdb.0 = [0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].to_vec();
    inquiry.disk = None;
    for (with_part, requests) in [
        (false, vec![write.clone(), read.clone(), inquiry.clone()]),
        (true, vec![inquiry.clone(), write, read]),
    ] {
        let mut state = base.clone();
        state.requests = requests;
        if with_part {
            state.requests[0].disk = Some(DiskPart {
                sector: 0,
                sector_count: 0,
                buflen: 0,
                data: DiskData::None,
            });
        }
        let encoded = scsi_encode(&state);
        let back = scsi_decode(&encoded, Some(false)).unwrap();
        assert_eq!(back.requests, state.requests, "emulated part {with_part}");
        assert_eq!(back.emulated_saved, with_part);
        assert!(scsi_encode(&back) == encoded);
    }
}

/// A device with more than one queue pair writes max/curr and the other pairs' tx_waiting;
/// the trial finds them, and refuses curr > max as QEMU's loader does.
#[test]
fn net_queue_pairs_are_found_by_trial() {
    let (_, mut device) = decode("qemu10.0-booted-q35-idle--0000_00_02.0-virtio-net");
    let DeviceState::Net(net) = &mut device.device else {
        panic!("not net")
    };
    net.queue_pairs = Some(NetQueuePairs {
        max: 4,
        curr: 3,
        tx_waiting: vec![0, 1],
    });
    let bytes = encode(&device);
    let back = decode_with(&bytes, DeviceKind::Net, &Assumptions::default()).unwrap();
    assert_eq!(back.device, device.device);
    let fact = back
        .inferred
        .iter()
        .find(|i| i.subject == "virtio.net.queue_pairs")
        .unwrap();
    assert!(fact.fact.contains("3 of 4"), "{}", fact.fact);

    let DeviceState::Net(net) = &mut device.device else {
        panic!("not net")
    };
    net.queue_pairs = Some(NetQueuePairs {
        max: 2,
        curr: 3,
        tx_waiting: vec![0, 0],
    });
    let bytes = encode(&device);
    assert!(decode_with(&bytes, DeviceKind::Net, &Assumptions::default()).is_err());
}
