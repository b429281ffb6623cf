//! virtio devices inside whole streams: every device decodes, re-encoding from typed state
//! writes the same stream, elements converted to another layout come back, and (extended
//! tier) every device of the corpus agrees with the ground truth QEMU reported before saving.

mod stream_checks;
mod support;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use stream_checks::read_stream_file;
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::element::{Layout, Segment};
use vmstate::stream::{self, Stream};
use vmstate::virtio::{DeviceState, NdescsOrder};

fn decode(data: &[u8]) -> (Stream, Vec<VirtioSection>) {
    let stream = stream::read(data).unwrap();
    let devices = devices::decode_virtio(&stream, &DecodeOptions::default()).unwrap();
    (stream, devices)
}

/// Re-encodes every device from its typed state and writes the stream.
fn reencode(stream: &Stream, devices: &[VirtioSection], data: &[u8]) -> Vec<u8> {
    let mut stream = stream.clone();
    for device in devices {
        devices::store_virtio(&mut stream, device, None).unwrap();
    }
    stream::write(&stream, data).unwrap()
}

/// Writes every virtio-blk device's requests in `layout` (and ndescs where `ndescs` says).
fn convert(
    stream: &Stream,
    devices: &[VirtioSection],
    data: &[u8],
    layout: Layout,
    ndescs_after: bool,
) -> Vec<u8> {
    let mut stream = stream.clone();
    for device in devices {
        let framing = match &device.device.device {
            DeviceState::Blk(blk) => {
                let mut framing = blk.framing;
                framing.layout = layout;
                if ndescs_after && framing.ndescs != NdescsOrder::Absent {
                    framing.ndescs = NdescsOrder::AfterElement;
                }
                Some(framing)
            }
            _ => None,
        };
        devices::store_virtio(&mut stream, device, framing).unwrap();
    }
    stream::write(&stream, data).unwrap()
}

fn blk_requests(devices: &[VirtioSection]) -> Vec<vmstate::virtio::BlkRequest> {
    devices
        .iter()
        .filter_map(|d| match &d.device.device {
            DeviceState::Blk(blk) => Some(blk.requests.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The checks every stream gets: decoding, identity of re-encoding, layout conversion and
/// back, and the description staying readable after sizes change.
fn check_stream(name: &str, data: &[u8]) -> (Stream, Vec<VirtioSection>) {
    let (stream, found) = decode(data);
    assert!(!found.is_empty(), "{name}: no virtio device");
    assert!(
        reencode(&stream, &found, data) == data,
        "{name}: re-encoding changed the stream"
    );
    if let Some(trailer) = &stream.trailer {
        let root: Json = serde_json::from_slice(&trailer.json).unwrap();
        assert!(
            stream::render_like_qemu(&root).as_bytes() == trailer.json.as_slice(),
            "{name}: the description does not re-render to its own bytes"
        );
    }
    let requests = blk_requests(&found);
    if !requests.is_empty() {
        for layout in [Layout::I386, Layout::Lp64Be, Layout::Ilp32Le] {
            let converted = convert(&stream, &found, data, layout, false);
            assert_eq!(
                converted.len() == data.len(),
                layout.size() == Layout::Stable.size()
            );
            let (back_stream, back) = decode(&converted);
            assert_eq!(blk_requests(&back), requests, "{name} via {layout}");
            let restored = convert(&back_stream, &back, &converted, Layout::Stable, false);
            assert!(
                restored == data,
                "{name}: {layout} and back is not the original"
            );
        }
    }
    (stream, found)
}

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
        let (_, found) = check_stream(&name, &data);
        // alldev machines: blk, net, scsi, serial, balloon, rng.
        assert_eq!(found.len(), 6, "{name}");
        let decoded = found
            .iter()
            .filter(|d| !matches!(d.device.device, DeviceState::Opaque { .. }))
            .count();
        assert_eq!(decoded, 3, "{name}: blk, scsi and rng are decoded");
    }
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
        err.path().contains("--assume 0000:00:09.0"),
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

fn corpus_streams(corpus: &Path) -> Vec<(String, PathBuf)> {
    let mut streams: Vec<(String, PathBuf)> = std::fs::read_dir(corpus)
        .unwrap()
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let file = path.file_name()?.to_str()?.to_owned();
            let name = file
                .strip_suffix(".mig.gz")
                .or_else(|| file.strip_suffix(".mig"))?
                .to_owned();
            Some((name, path))
        })
        .collect();
    streams.sort();
    streams
}

/// Compares one device's queues and in-flight requests with QMP's view of it.
/// Returns (queues compared, elements compared).
fn compare_with_truth(name: &str, device: &VirtioSection, truth: &Json) -> (usize, usize) {
    let queues = truth["queues"].as_array().unwrap();
    let d = &device.device;
    assert_eq!(
        d.queues.len(),
        queues.len(),
        "{name} {}: queue count",
        device.idstr
    );
    let mut elements = 0;
    let requests: Vec<_> = match &d.device {
        DeviceState::Blk(blk) => blk.requests.clone(),
        _ => Vec::new(),
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
            if !matches!(d.device, DeviceState::Blk(_)) {
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
    if matches!(d.device, DeviceState::Blk(_)) {
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
    for (name, path) in corpus_streams(&corpus) {
        let data = read_stream_file(&path);
        let (_, found) = check_stream(&name, &data);
        devices_seen += found.len();
        blk_with_requests += found
            .iter()
            .filter(|d| matches!(&d.device.device, DeviceState::Blk(b) if !b.requests.is_empty()))
            .count();
        let truth_path = corpus.join(format!("meta/{name}.truth.json"));
        let truth: Json = serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
        for t in truth["devices"].as_array().unwrap() {
            let vmsd = vmsd_of(t["name"].as_str().unwrap());
            let device = found
                .iter()
                .find(|d| d.idstr.ends_with(&format!("/{vmsd}")))
                .unwrap_or_else(|| panic!("{name}: no section for {vmsd}"));
            let (q, e) = compare_with_truth(&name, device, t);
            queues += q;
            elements += e;
        }
    }
    eprintln!(
        "corpus: {devices_seen} virtio devices, {queues} queues and {elements} in-flight \
         elements equal to the ground truth; {blk_with_requests} virtio-blk devices with requests"
    );
    // blk-inflight-split holds 8 requests, blk-inflight-mq2 one per queue (MANIFEST); the
    // packed stream's 2 are counted against inuse only, as QMP cannot show packed elements.
    assert_eq!(elements, 10, "split-ring elements the ground truth shows");
    assert_eq!(blk_with_requests, 3, "split, mq2 and packed");
}
