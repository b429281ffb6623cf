//! virtio devices inside whole streams: every device decodes, re-encoding from typed state
//! writes the same stream, elements converted to another layout come back, and (extended
//! tier) every device of the corpus agrees with the ground truth QEMU reported before saving.

mod stream_checks;
mod support;
mod virtio_checks;

use std::path::PathBuf;

use serde_json::Value as Json;
use stream_checks::read_stream_file;
use virtio_checks::{check_virtio_stream, in_flight, Found};
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::element::Segment;
use vmstate::stream;
use vmstate::virtio::{DeviceState, InFlight};

/// Every virtio device of a stream and the requests of its SCSI disks.
fn fixture_streams() -> Vec<(String, PathBuf)> {
    let dir = support::fixture("streams");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".mig.gz")?
                .to_owned();
            Some((name, path))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn fixture_streams_decode_and_reencode_identically() {
    let streams = fixture_streams();
    assert!(!streams.is_empty());
    for (name, path) in streams {
        let data = read_stream_file(&path);
        let (_, found) = check_virtio_stream(&name, &data);
        // alldev machines: blk, net, scsi, serial, balloon, rng, and a scsi-hd.
        assert_eq!(found.virtio.len(), 6, "{name}");
        let decoded = found
            .virtio
            .iter()
            .filter(|d| !matches!(d.device.device, DeviceState::Opaque { .. }))
            .count();
        assert_eq!(decoded, 6, "{name}: every device is decoded");
        assert_eq!(found.scsi.len(), 1, "{name}: the scsi-hd");
        assert!(found.scsi[0].requests.requests.is_empty());
    }
}

/// RAM-stripped real streams with requests held (tests/fixtures/stripped/); the ground
/// truth is the corpus MANIFEST and meta/*.elements.txt (QMP x-query-virtio-queue-element).
#[test]
fn stripped_streams_keep_their_scsi_and_serial_elements() {
    let data = read_stream_file(&support::fixture(
        "stripped/qemu7.2-scsi-inflight.stripped.mig.gz",
    ));
    let (_, found) = check_virtio_stream("scsi-inflight", &data);
    let [disk] = found.scsi.as_slice() else {
        panic!("one scsi disk")
    };
    assert_eq!(disk.idstr, "0000:00:01.0/0:0:0/scsi-disk");
    assert_eq!(disk.hba.as_deref(), Some("0000:00:01.0/virtio-scsi"));
    assert_eq!(disk.field_path, ["qdev", "requests"]);
    let heads: Vec<(Option<u32>, u32)> = disk
        .requests
        .requests
        .iter()
        .map(|r| (r.element.queue, r.element.element.index))
        .collect();
    assert_eq!(heads, [(Some(2), 0), (Some(2), 1)]);
    let first = &disk.requests.requests[0];
    assert!(first.retry);
    assert_eq!(first.cdb.0[0], 0x2a, "WRITE(10)");
    assert_eq!(first.queue_number, 0);
    assert_eq!(
        first.element.element.device_readable[..2],
        [
            Segment {
                addr: 0x236d8b8,
                len: 51
            },
            Segment {
                addr: 0x5873000,
                len: 61440
            }
        ]
    );
    assert_eq!(
        first.element.element.device_writable,
        [Segment {
            addr: 0x236d8f3,
            len: 108
        }]
    );
    let disk_part = first.disk.as_ref().unwrap();
    assert_eq!((disk_part.sector, disk_part.sector_count), (0, 512));

    let data = read_stream_file(&support::fixture(
        "stripped/qemu7.2-serial-throttled.stripped.mig.gz",
    ));
    let (_, found) = check_virtio_stream("serial-throttled", &data);
    let elements = in_flight(&found);
    assert_eq!(elements.len(), 1);
    assert_eq!((elements[0].queue, elements[0].element.index), (Some(5), 3));
    assert_eq!(
        elements[0].element.device_readable,
        [Segment {
            addr: 0x2845000,
            len: 4096
        }]
    );
}

#[test]
fn an_assumption_for_a_missing_section_is_refused() {
    let (name, path) = &fixture_streams()[0];
    let data = read_stream_file(path);
    let stream = stream::read(&data).unwrap();
    let options = DecodeOptions {
        assumptions: vec!["0000:00:09.0/virtio-blk:num-queues=2".parse().unwrap()],
        ..DecodeOptions::default()
    };
    let err = devices::decode_virtio(&stream, &options).unwrap_err();
    assert!(
        err.path().contains("assumption 0000:00:09.0"),
        "{name}: {err}"
    );
}

// ---- extended tier: the whole corpus against its ground truth ----

/// The VMState name of a device as QMP names it.
fn vmsd_of(qmp_name: &str) -> &str {
    match qmp_name {
        "virtio-serial" => "virtio-console",
        other => other,
    }
}

/// Compares one device's queues and in-flight requests with QMP's view of it.
/// Returns (queues compared, elements compared).
fn compare_with_truth(
    name: &str,
    device: &VirtioSection,
    found: &Found,
    truth: &Json,
) -> (usize, usize) {
    let queues = truth["queues"].as_array().unwrap();
    let d = &device.device;
    assert_eq!(
        d.queues.len(),
        queues.len(),
        "{name} {}: queue count",
        device.idstr
    );
    let mut elements = 0;
    // The devices that save their elements; virtio-balloon holds one it does not save.
    let saves_elements = matches!(
        d.device,
        DeviceState::Blk(_) | DeviceState::Serial(_) | DeviceState::Empty
    ) && d.kind != vmstate::virtio::DeviceKind::Rng;
    let requests: Vec<InFlight> = match &d.device {
        DeviceState::Blk(blk) => blk.requests.clone(),
        DeviceState::Serial(serial) => serial
            .ports
            .iter()
            .filter_map(|p| p.popped.as_ref().map(|e| e.element.clone()))
            .collect(),
        _ => found
            .scsi
            .iter()
            .filter(|s| s.hba.as_deref() == Some(device.idstr.as_str()))
            .flat_map(|s| s.requests.requests.iter().map(|r| r.element.clone()))
            .collect(),
    };
    let mut inuse_total = 0;
    for (index, q) in queues.iter().enumerate() {
        let status = &q["queue-status"];
        let saved = d.queues[index];
        let at = format!("{name} {} queue {index}", device.idstr);
        assert_eq!(
            u64::from(saved.num),
            status["vring-num"].as_u64().unwrap(),
            "{at}: num"
        );
        assert_eq!(
            saved.desc,
            status["vring-desc"].as_u64().unwrap(),
            "{at}: desc"
        );
        assert_eq!(
            u64::from(saved.last_avail_idx),
            status["last-avail-idx"].as_u64().unwrap(),
            "{at}: last_avail_idx"
        );
        if let Some((avail, used)) = d.ring_areas(index) {
            assert_eq!(
                avail,
                status["vring-avail"].as_u64().unwrap(),
                "{at}: avail"
            );
            assert_eq!(used, status["vring-used"].as_u64().unwrap(), "{at}: used");
        }
        inuse_total += status["inuse"].as_u64().unwrap();
        for inflight in q["inflight-elements-by-avail-index"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let Some(element) = inflight.get("element") else {
                continue; // packed rings: QMP cannot show them
            };
            if !saves_elements {
                continue;
            }
            let head = element["index"].as_u64().unwrap();
            // QMP lists a chain tail first; the element keeps chain order.
            let descs: Vec<&Json> = element["descs"].as_array().unwrap().iter().rev().collect();
            let segments = |writable: bool| -> Vec<Segment> {
                descs
                    .iter()
                    .filter(|d| {
                        d["flags"].as_array().unwrap().iter().any(|f| f == "write") == writable
                    })
                    .map(|d| Segment {
                        addr: d["addr"].as_u64().unwrap(),
                        len: d["len"].as_u64().unwrap(),
                    })
                    .collect()
            };
            let matching = requests.iter().find(|r| {
                u64::from(r.element.index) == head
                    && r.queue.map_or(index == 0, |q| q as usize == index)
            });
            let request = matching.unwrap_or_else(|| panic!("{at}: no request with head {head}"));
            assert_eq!(
                request.element.device_readable,
                segments(false),
                "{at} head {head}"
            );
            assert_eq!(
                request.element.device_writable,
                segments(true),
                "{at} head {head}"
            );
            elements += 1;
        }
    }
    if saves_elements {
        assert_eq!(
            requests.len() as u64,
            inuse_total,
            "{name}: requests vs inuse"
        );
    }
    (queues.len(), elements)
}

#[test]
fn every_corpus_device_decodes_and_matches_the_ground_truth() {
    let Some(shared) =
        support::shared_dir("every_corpus_device_decodes_and_matches_the_ground_truth")
    else {
        return;
    };
    let corpus = shared.join("corpus");
    let (mut devices_seen, mut queues, mut elements, mut blk_with_requests) = (0, 0, 0, 0);
    let (mut scsi_disks, mut scsi_requests, mut popped) = (0, 0, 0);
    for (name, path) in support::corpus_streams(&corpus) {
        let data = read_stream_file(&path);
        let (_, found) = check_virtio_stream(&name, &data);
        devices_seen += found.virtio.len();
        assert!(
            found
                .virtio
                .iter()
                .all(|d| !matches!(d.device.device, DeviceState::Opaque { .. })),
            "{name}: a device left undecoded"
        );
        scsi_disks += found.scsi.len();
        scsi_requests += found
            .scsi
            .iter()
            .map(|s| s.requests.requests.len())
            .sum::<usize>();
        popped += found
            .virtio
            .iter()
            .map(|d| match &d.device.device {
                DeviceState::Serial(s) => s.popped_elements(),
                _ => 0,
            })
            .sum::<usize>();
        blk_with_requests += found
            .virtio
            .iter()
            .filter(|d| matches!(&d.device.device, DeviceState::Blk(b) if !b.requests.is_empty()))
            .count();
        let truth_path = corpus.join(format!("meta/{name}.truth.json"));
        let truth: Json = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
        for t in truth["devices"].as_array().unwrap() {
            let vmsd = vmsd_of(t["name"].as_str().unwrap());
            let device = found
                .virtio
                .iter()
                .find(|d| d.idstr.ends_with(&format!("/{vmsd}")))
                .unwrap_or_else(|| panic!("{name}: no section for {vmsd}"));
            let (q, e) = compare_with_truth(&name, device, &found, t);
            queues += q;
            elements += e;
        }
    }
    eprintln!(
        "corpus: {devices_seen} virtio devices, {queues} queues and {elements} in-flight \
         elements equal to the ground truth; {blk_with_requests} virtio-blk devices with \
         requests; {scsi_disks} SCSI disks with {scsi_requests} requests; {popped} throttled \
         serial element(s)"
    );
    // blk-inflight-split holds 8 requests, blk-inflight-mq2 one per queue (MANIFEST); the
    // packed stream's 2 are counted against inuse only, as QMP cannot show packed elements.
    // Plus scsi-inflight's 2 and serial-throttled's 1.
    assert_eq!(elements, 13, "split-ring elements the ground truth shows");
    assert_eq!((scsi_requests, popped), (2, 1));
    assert_eq!(blk_with_requests, 3, "split, mq2 and packed");
}
