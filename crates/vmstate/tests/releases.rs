//! Streams of QEMU 5.2 and 11.1 (`tests/fixtures/releases/`): every virtio device decodes,
//! re-encodes to the bytes QEMU wrote, checks clean against the rings the stream keeps, and
//! the requests in flight are the ones the source QEMU reported. QEMU 5.1 to 6.1's misspelled
//! virtio-balloon subsection is read, noted and mended.

mod memory_checks;
mod stream_checks;
mod support;

use memory_checks::{check_bytes, decoded, device};
use stream_checks::read_stream_file;
use vmstate::devices::{self, DecodeOptions};
use vmstate::stream;
use vmstate::virtio::{BalloonSubsection, DeviceState};

const STREAMS: [&str; 10] = [
    "qemu5.2-split-inflight",
    "qemu5.2-packed-inflight",
    "qemu5.2-scsi-inflight",
    "qemu5.2-booted-q35-idle",
    "qemu5.2-booted-pc-idle",
    "qemu11.1-split-inflight",
    "qemu11.1-packed-inflight",
    "qemu11.1-scsi-inflight",
    "qemu11.1-booted-q35-idle",
    "qemu11.1-booted-pc-idle",
];

fn release(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!("releases/{name}.rings.mig.gz")))
}

/// Re-encodes every virtio device from its typed state and writes the stream.
fn reencoded(data: &[u8], mend: bool) -> Vec<u8> {
    let mut model = stream::read(data).unwrap();
    let mut found = devices::decode_virtio(&model, &DecodeOptions::default()).unwrap();
    for section in &mut found {
        if mend {
            section.device.mend_names();
        }
        devices::store_virtio(&mut model, section, None).unwrap();
    }
    stream::write(&model, data).unwrap()
}

#[test]
fn every_release_stream_decodes_reencodes_and_checks_clean() {
    for name in STREAMS {
        let data = release(name);
        let (found, scsi) = decoded(&data);
        let wanted = if name.contains("idle") { 6 } else { 1 };
        assert_eq!(found.len(), wanted, "{name}");
        assert!(
            found
                .iter()
                .all(|s| !matches!(s.device.device, DeviceState::Opaque { .. })),
            "{name}: a device left undecoded"
        );
        assert_eq!(
            reencoded(&data, false),
            data,
            "{name}: re-encoding changed bytes"
        );
        let report = check_bytes(&data);
        assert!(report.is_clean(), "{name}: {report:#?}");
        let in_flight: usize = found
            .iter()
            .map(|s| match &s.device.device {
                DeviceState::Blk(blk) => blk.requests.len(),
                _ => 0,
            })
            .sum::<usize>()
            + scsi
                .iter()
                .map(|d| d.requests.requests.len())
                .sum::<usize>();
        let expected = if name.contains("inflight") { 16 } else { 0 };
        assert_eq!(in_flight, expected, "{name}");
    }
}

/// The ground truth QMP gave on the 11.1 source: last-avail-idx and inuse of the queue
/// that holds the requests.
#[test]
fn queue_indices_are_the_ones_qemu_reported() {
    for (name, queue, last_avail_idx) in [
        ("qemu11.1-split-inflight", 0, 18),
        ("qemu11.1-packed-inflight", 0, 18),
        ("qemu11.1-scsi-inflight", 2, 303),
    ] {
        let (found, _) = decoded(&release(name));
        let q = &found[0].device.queues[queue];
        assert_eq!(q.last_avail_idx, last_avail_idx, "{name}");
    }
}

#[test]
fn the_misspelled_page_poison_subsection_is_read_noted_and_mended() {
    for name in ["qemu5.2-booted-q35-idle", "qemu5.2-booted-pc-idle"] {
        let data = release(name);
        let balloon_of = |data: &[u8]| {
            let (found, _) = decoded(data);
            found
                .into_iter()
                .find_map(|s| match s.device.device {
                    DeviceState::Balloon(b) => Some(b),
                    _ => None,
                })
                .unwrap()
        };
        let balloon = balloon_of(&data);
        assert!(balloon.has_misspelled_names(), "{name}");
        assert_eq!(
            balloon
                .subsections
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>(),
            ["vitio-balloon-device/page-poison"]
        );
        let report = check_bytes(&data);
        let notes = &device(&report, "virtio-balloon").notes;
        assert!(
            notes.iter().any(|n| n.path == "balloon.subsections"
                && n.message.contains("vitio-balloon-device/page-poison")),
            "{name}: {notes:?}"
        );

        // Mended: the corrected name, the same value, and nothing to note.
        let mended = reencoded(&data, true);
        let balloon = balloon_of(&mended);
        assert!(!balloon.has_misspelled_names(), "{name}");
        assert!(matches!(
            balloon.subsections.as_slice(),
            [BalloonSubsection::PagePoison {
                misspelled: false,
                ..
            }]
        ));
        assert_eq!(
            balloon.subsections[0].name(),
            "virtio-balloon-device/page-poison"
        );
        let report = check_bytes(&mended);
        assert!(report.is_clean(), "{name}");
        assert!(
            device(&report, "virtio-balloon")
                .notes
                .iter()
                .all(|n| n.path != "balloon.subsections"),
            "{name}"
        );
        // A mended stream re-encodes to itself.
        assert_eq!(reencoded(&mended, false), mended, "{name}");
    }
    // 11.1's balloon writes the name every QEMU since 6.1 reads.
    let (found, _) = decoded(&release("qemu11.1-booted-q35-idle"));
    assert!(found.iter().all(|s| match &s.device.device {
        DeviceState::Balloon(b) => !b.has_misspelled_names(),
        _ => true,
    }));
}
