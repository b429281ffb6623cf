//! Streams of every machine QEMU runs: virtio-mmio (aarch64, arm, riscv64 `virt`, x86
//! `microvm`), virtio-pci (aarch64 and riscv64 `virt`, ppc64 `pseries`, ppc `mac99`, x86 `q35`
//! with memory devices) and virtio-ccw (s390x), with no guest, with firmware only and with a
//! booted Linux guest, idle or with virtio-blk writes held in flight.
//!
//! Default tier: the fixtures in `tests/fixtures/machines/`, made by
//! `tests/machines/make-machine-corpus.sh` (Debian's QEMU 7.2 on each machine) and reduced
//! with `vmstate convert --strip-ram` (no guest) or `--ram rings` (the rest, which keeps the
//! ring pages `check` reads). The in-flight ones come with the ground truth QEMU gave over
//! QMP before the save (`*.inflight.json`, see `tests/machines/inflight-truth.py`).
//!
//! Extended tier: the whole corpus as the script writes it (`target/machine-corpus/`, or
//! `$MACHINE_CORPUS`), full guest memory included; `.ci/run` makes it before the tests.

mod stream_checks;
mod support;
mod virtio_checks;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use stream_checks::{check_stream, read_stream_file};
use vmstate::check;
use vmstate::memory::{self, GuestRam};
use vmstate::virtio::{DeviceState, Transport, TransportKind};
use vmstate::{devices, stream};

/// The fixture streams, as (name, path).
fn fixtures() -> Vec<(String, PathBuf)> {
    let found = support::corpus_streams(&support::fixture("machines"));
    assert!(found.len() >= 30, "{} machine fixtures", found.len());
    found
}

/// The transport a stream's name says its devices use.
fn named_transport(name: &str) -> TransportKind {
    if name.contains("-mmio-") {
        TransportKind::Mmio
    } else if name.contains("-ccw-") {
        TransportKind::Ccw
    } else {
        TransportKind::Pci
    }
}

/// Device kinds whose own state this crate does not decode (kept as bytes with a note).
const UNDECODED: &[&str] = &["virtio-iommu"];

/// Everything a stream of the set must satisfy, whatever its machine: it reads and writes
/// back byte for byte, every virtio device decodes on the transport its name says, with its
/// own state typed (but for the kinds in [`UNDECODED`]), writes back from its typed state,
/// converts to other host layouts and back, and `check` finds nothing wrong. Returns the
/// check report.
fn check_machine_stream(name: &str, data: &[u8]) -> check::Report {
    let parsed = check_stream(name, data);
    let (_, found) = virtio_checks::check_virtio_stream(name, data);
    let transport = named_transport(name);
    for section in &found.virtio {
        let device = &section.device;
        let what = format!("{name}: {}", section.idstr);
        assert_eq!(device.transport.kind(), transport, "{what}");
        let undecoded = matches!(device.device, DeviceState::Opaque { .. });
        assert_eq!(
            undecoded,
            UNDECODED.contains(&device.kind.vmsd_name()),
            "{what}: own state decoded or not"
        );
        assert!(
            device.byte_order().is_some(),
            "{what}: byte order unknown on a known machine"
        );
    }
    // Without guest memory the stream still reads, and its devices are the same.
    let mut stripped = parsed.clone();
    stripped.strip_ram();
    let stripped = stream::write(&stripped, data).unwrap();
    let (_, without_ram) = virtio_checks::decode(&stripped);
    let encoded = |sections: &[devices::VirtioSection]| -> Vec<Vec<u8>> {
        sections
            .iter()
            .map(|s| {
                let mut w = vmstate::wire::Writer::new();
                s.device.encode(&mut w).unwrap();
                w.into_bytes()
            })
            .collect()
    };
    assert!(
        encoded(&without_ram.virtio) == encoded(&found.virtio),
        "{name}: the devices differ after --strip-ram"
    );
    let map = memory::map_for(&parsed, &found.virtio, None)
        .unwrap_or_else(|e| panic!("{name}: map: {e}"));
    let ram = GuestRam::from_stream(&parsed, data, map, &mut |_| {})
        .unwrap_or_else(|e| panic!("{name}: guest memory: {e}"));
    let report = check::check_stream(&found.virtio, &found.scsi, Some(&ram));
    for device in &report.devices {
        assert!(
            device.findings.is_empty(),
            "{name}: {}: {:?}",
            device.section,
            device.findings
        );
    }
    report
}

#[test]
fn every_machine_fixture_reads_converts_and_checks_clean() {
    let mut transports = HashMap::new();
    for (name, path) in fixtures() {
        let data = read_stream_file(&path);
        check_machine_stream(&name, &data);
        *transports.entry(named_transport(&name)).or_insert(0) += 1;
    }
    for transport in TransportKind::ALL {
        assert!(
            transports.get(&transport).copied().unwrap_or(0) >= 4,
            "{transport:?}: {transports:?}"
        );
    }
}

/// The ground truth of an in-flight stream: its virtio-blk queues and requests as QEMU and
/// the guest's descriptors gave them.
fn truth(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn segments(list: &Json) -> Vec<(u64, u64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| match s {
            Json::Array(pair) => (pair[0].as_u64().unwrap(), pair[1].as_u64().unwrap()),
            other => (
                other["addr"].as_u64().unwrap(),
                other["len"].as_u64().unwrap(),
            ),
        })
        .collect()
}

/// Compares the stream's virtio-blk device with the ground truth: every queue's ring
/// addresses and `last_avail_idx`, and every request in flight, segment by segment; then
/// the check must have walked each request's chain in guest memory.
fn compare_in_flight(name: &str, data: &[u8], truth: &Json) {
    let report = check_machine_stream(name, data);
    let parsed = stream::read(data).unwrap();
    let found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
    let blk: Vec<_> = found
        .iter()
        .filter(|s| s.device.kind.vmsd_name() == "virtio-blk")
        .collect();
    assert_eq!(blk.len(), 1, "{name}");
    let device = &blk[0].device;
    for q in truth["queues"].as_array().unwrap() {
        let index = q["queue"].as_u64().unwrap() as usize;
        let saved = &device.queues[index];
        assert_eq!(u64::from(saved.num), q["num"].as_u64().unwrap(), "{name}");
        assert_eq!(saved.desc, q["desc"].as_u64().unwrap(), "{name}");
        assert_eq!(
            u64::from(saved.last_avail_idx),
            q["last_avail_idx"].as_u64().unwrap(),
            "{name}"
        );
        let (avail, used) = device.ring_areas(index).unwrap();
        assert_eq!(avail, q["avail"].as_u64().unwrap(), "{name}");
        assert_eq!(used, q["used"].as_u64().unwrap(), "{name}");
    }
    let DeviceState::Blk(state) = &device.device else {
        panic!("{name}: virtio-blk not decoded")
    };
    let expected = truth["requests"].as_array().unwrap();
    assert!(expected.len() >= 8, "{name}: {} in flight", expected.len());
    assert_eq!(state.requests.len(), expected.len(), "{name}");
    for want in expected {
        let queue = want["queue"].as_u64().unwrap() as u32;
        let index = want["index"].as_u64().unwrap() as u32;
        let got = state
            .requests
            .iter()
            .find(|r| r.queue.unwrap_or(0) == queue && r.element.index == index)
            .unwrap_or_else(|| panic!("{name}: no saved request with head {index}"));
        let out: Vec<_> = got
            .element
            .device_readable
            .iter()
            .map(|s| (s.addr, s.len))
            .collect();
        let device_writable: Vec<_> = got
            .element
            .device_writable
            .iter()
            .map(|s| (s.addr, s.len))
            .collect();
        assert_eq!(out, segments(&want["out"]), "{name}: head {index} out");
        assert_eq!(
            device_writable,
            segments(&want["in"]),
            "{name}: head {index} in"
        );
    }
    let blk_report = report
        .devices
        .iter()
        .find(|d| d.section == blk[0].idstr)
        .unwrap();
    let walked = format!("{} element(s)", expected.len());
    assert!(
        blk_report.checked.iter().any(|c| c.contains(&walked)),
        "{name}: the elements were not walked in guest memory: {:?}",
        blk_report.checked
    );
}

#[test]
fn in_flight_requests_equal_the_ground_truth_on_mmio_pci_and_ccw() {
    let mut compared = Vec::new();
    for (name, path) in fixtures()
        .into_iter()
        .filter(|(n, _)| n.ends_with("-inflight") || n.ends_with("-inflight-packed"))
    {
        let truth_path = path.with_file_name(format!("{name}.inflight.json"));
        compare_in_flight(&name, &read_stream_file(&path), &truth(&truth_path));
        compared.push(name);
    }
    for must in [
        "qemu7.2-aarch64virt-mmio-inflight",
        "qemu7.2-aarch64virt-pci-inflight",
        "qemu7.2-s390x-ccw-inflight",
    ] {
        assert!(
            compared.iter().any(|c| c == must),
            "{must} missing: {compared:?}"
        );
    }
}

#[test]
fn transports_are_what_the_bytes_say() {
    let data = read_stream_file(&support::fixture(
        "machines/qemu7.2-s390x-ccw-inflight.mig.gz",
    ));
    let parsed = stream::read(&data).unwrap();
    let found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
    let blk = found
        .iter()
        .find(|s| s.device.kind.vmsd_name() == "virtio-blk")
        .unwrap();
    let Transport::Ccw(ccw) = &blk.device.transport else {
        panic!("not ccw")
    };
    // The guest's Linux driver negotiated VIRTIO 1 (revision 1 or 2).
    assert!(ccw.revision().unwrap() >= 1, "{:?}", ccw.revision());
    assert_eq!(ccw.bus_id().as_deref(), Some(&blk.idstr[1..10]));
    assert!(blk.device.queues.iter().all(|q| q.vector.is_some()));

    let data = read_stream_file(&support::fixture(
        "machines/qemu7.2-aarch64virt-mmio-noguest-modern.mig.gz",
    ));
    let parsed = stream::read(&data).unwrap();
    let found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
    for section in &found {
        assert!(matches!(section.device.transport, Transport::Mmio(_)));
        assert!(section.device.queues.iter().all(|q| q.align.is_some()));
        // A modern (version 2) virtio-mmio device saves its registers in virtio/extra_state.
        assert!(
            section
                .device
                .subsections
                .iter()
                .any(|s| s.state.name() == "virtio/extra_state"),
            "{}",
            section.idstr
        );
    }
}

/// The whole set, as `tests/machines/make-machine-corpus.sh` writes it for QEMU 7.2 and
/// 10.0, with all of guest memory: every stream checks clean and the in-flight ones equal
/// their ground truth.
#[test]
fn extended_whole_machine_corpus() {
    if !support::extended_tier() {
        eprintln!(
            "NOTE: extended-tier test `extended_whole_machine_corpus` not run: set CI=true \
             (it reads the corpus made by tests/machines/make-machine-corpus.sh)"
        );
        return;
    }
    let dirs: Vec<PathBuf> = match std::env::var_os("MACHINE_CORPUS") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => ["target/machine-corpus", "target/machine-corpus-10.0"]
            .iter()
            .map(|d| support::repo_root().join(d))
            .collect(),
    };
    for dir in dirs {
        assert!(
            dir.is_dir(),
            "extended tier: {} is missing: run tests/machines/make-machine-corpus.sh \
             (with QEMU_VERSION=10.0 for the 10.0 set; .ci/run does both)",
            dir.display()
        );
        let streams = support::corpus_streams(&dir);
        assert!(
            streams.len() >= 35,
            "{} streams in {}",
            streams.len(),
            dir.display()
        );
        for (name, path) in streams {
            let data = read_stream_file(&path);
            let truth_path = path.with_file_name(format!("{name}.truth.json"));
            if name.contains("-inflight") {
                let compact = std::process::Command::new("python3")
                    .arg(support::repo_root().join("tests/machines/inflight-truth.py"))
                    .arg(&truth_path)
                    .output()
                    .unwrap();
                assert!(compact.status.success(), "{name}: {compact:?}");
                let truth: Json = serde_json::from_slice(&compact.stdout).unwrap();
                compare_in_flight(&name, &data, &truth);
            } else {
                check_machine_stream(&name, &data);
            }
        }
    }
}

/// Legacy drivers' rings are in the guest's byte order: the s390-ccw BIOS drives its devices
/// through the legacy interface (revision 0), big-endian, and their rings check clean only
/// when read so. Read little-endian, the same rings are inconsistent (the control that the
/// byte order is what decides). SLOF on pseries negotiates VIRTIO 1: little-endian.
#[test]
fn legacy_rings_of_big_endian_guests_are_read_big_endian() {
    for name in ["s390x-ccw-fw"] {
        let data = read_stream_file(&support::fixture(&format!(
            "machines/qemu7.2-{name}.mig.gz"
        )));
        let parsed = stream::read(&data).unwrap();
        let mut found =
            devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
        let legacy_big: Vec<String> = found
            .iter()
            .filter(|s| {
                s.device.byte_order().map(|(e, _)| e) == Some(vmstate::wire::Endian::Big)
                    && s.device.queues.iter().any(|q| q.desc != 0)
            })
            .map(|s| s.idstr.clone())
            .collect();
        assert!(
            !legacy_big.is_empty(),
            "{name}: no legacy big-endian device"
        );
        let map = memory::map_for(&parsed, &found, None).unwrap();
        let ram = GuestRam::from_stream(&parsed, &data, map, &mut |_| {}).unwrap();
        let report = check::check_stream(&found, &[], Some(&ram));
        assert_eq!(report.finding_count(), 0, "{name}");
        for section in &mut found {
            section.device.machine_endian = Some(vmstate::wire::Endian::Little);
        }
        let wrong = check::check_stream(&found, &[], Some(&ram));
        let flagged: Vec<&str> = wrong
            .devices
            .iter()
            .filter(|d| !d.findings.is_empty())
            .map(|d| d.section.as_str())
            .collect();
        assert!(
            legacy_big.iter().any(|s| flagged.contains(&s.as_str())),
            "{name}: read little-endian, no legacy ring was flagged ({legacy_big:?})"
        );
    }
}

/// The state of the stream's one virtio-mem device.
fn mem_state(found: &mut [devices::VirtioSection]) -> &mut vmstate::virtio::MemState {
    let mem = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == "virtio-mem")
        .unwrap();
    let DeviceState::Mem(state) = &mut mem.device.device else {
        panic!("virtio-mem not decoded")
    };
    state
}

/// virtio-mem says where its region sits: its plugged blocks are guest RAM at the region's
/// address, taken from the backend's RAM block (named after the device's bus path).
#[test]
fn virtio_mem_plugged_blocks_are_placed_in_guest_memory() {
    let data = read_stream_file(&support::fixture(
        "machines/qemu7.2-q35-pci-noguest-mem.mig.gz",
    ));
    let parsed = stream::read(&data).unwrap();
    let mut found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
    let region = mem_state(&mut found).region.as_mut().unwrap();
    assert_eq!(
        (region.addr, region.region_size, region.block_size),
        (1 << 32, 128 << 20, 2 << 20)
    );
    // Nothing plugged (no driver): only the board's RAM.
    let map = memory::map_for(&parsed, &found, None).unwrap();
    assert!(map.block_offset(1 << 32).is_none());

    // Blocks 1, 2 and 5 plugged: two runs of the backend's block, at the region's address.
    mem_state(&mut found).region.as_mut().unwrap().bitmap[0] = 0b100110;
    let map = memory::map_for(&parsed, &found, None).unwrap();
    let block = 2u64 << 20;
    assert_eq!(
        map.block_offset((1 << 32) + block + 5),
        Some(("0000:00:01.0/vmem-mem0", block + 5))
    );
    assert_eq!(
        map.block_offset((1 << 32) + 5 * block),
        Some(("0000:00:01.0/vmem-mem0", 5 * block))
    );
    assert!(map.block_offset((1 << 32) + 3 * block).is_none());
    assert!(map.block_offset(1 << 32).is_none());
    assert!(map.how.contains("2 plugged block run(s)"), "{}", map.how);
}

/// QEMU 10.0 (machine types after 7.2) sends virtio-mem's region and plug bitmap in a
/// section of its own before RAM; the map takes them from there.
#[test]
fn virtio_mem_of_qemu_10_places_its_blocks_from_the_early_section() {
    let data = read_stream_file(&support::fixture(
        "machines/qemu10.0-q35-pci-noguest-mem.mig.gz",
    ));
    let mut parsed = stream::read(&data).unwrap();
    let mut found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default()).unwrap();
    assert!(
        mem_state(&mut found).region.is_none(),
        "10.0 sends the region early"
    );
    let map = memory::map_for(&parsed, &found, None).unwrap();
    assert!(map.block_offset(1 << 32).is_none(), "nothing plugged");

    // Plug block 1 in the early section's bitmap.
    let early = parsed
        .records
        .iter_mut()
        .find_map(|r| match r {
            stream::Record::Section(s) if s.idstr.ends_with("/virtio-mem-device-early") => Some(s),
            _ => None,
        })
        .unwrap();
    let stream::SectionBody::Device(state) = &mut early.body else {
        panic!("early section not decoded")
    };
    let bitmap = state
        .fields
        .iter_mut()
        .find(|f| f.name == "bitmap")
        .unwrap();
    let stream::Value::Raw(bytes) = &mut bitmap.value else {
        panic!("bitmap not raw")
    };
    bytes[7] = 0b10;
    let map = memory::map_for(&parsed, &found, None).unwrap();
    let block = 2u64 << 20;
    assert_eq!(
        map.block_offset((1 << 32) + block),
        Some(("0000:00:01.0/vmem-mem0", block))
    );
    assert!(map.block_offset(1 << 32).is_none());
}
