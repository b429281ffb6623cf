//! Checks against guest memory: real streams with their rings (`tests/fixtures/rings/`) check
//! clean, and each one broken on purpose (in the typed state through our own writer, or by
//! a byte edit of a ring page) is reported with the right finding. Extended tier: every
//! corpus stream, with all its memory, checks clean and covers what the ground truth shows.

mod memory_checks;
mod stream_checks;
mod support;

use memory_checks::{blk_report, check_bytes, edited, rings, rules};
use stream_checks::{page_byte, read_stream_file};
use vmstate::check::Rule;
use vmstate::virtio::DeviceState;

const SPLIT_DESC: u64 = 0x2318000;

#[test]
fn every_rings_fixture_checks_clean_with_its_elements_walked() {
    for (name, walked) in [
        ("blk-inflight-split", "queue 0: 8 element(s) walked"),
        ("blk-inflight-mq2", "queue 1: 1 element(s) walked"),
        ("blk-inflight-packed", "2 element(s) matched by buffer id"),
    ] {
        let report = check_bytes(&rings(name));
        assert!(report.is_clean(), "{name}: {report:#?}");
        let blk = blk_report(&report);
        assert!(blk.not_checked.is_empty(), "{name}: {:?}", blk.not_checked);
        assert!(
            blk.checked.iter().any(|c| c.contains(walked)),
            "{name}: {:?}",
            blk.checked
        );
    }
    for name in ["scsi-inflight", "serial-throttled"] {
        let report = check_bytes(&rings(name));
        assert!(report.is_clean(), "{name}: {report:#?}");
    }
}

#[test]
fn a_stripped_stream_says_what_it_could_not_check() {
    let data = read_stream_file(&support::fixture(
        "stripped/qemu7.2-blk-inflight-split.stripped.mig.gz",
    ));
    let report = check_bytes(&data);
    assert!(report.is_clean());
    let blk = blk_report(&report);
    assert!(
        blk.not_checked
            .iter()
            .any(|c| c.contains("not in the stream")),
        "{:?}",
        blk.not_checked
    );
}

#[test]
fn an_element_address_not_matching_its_descriptor() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        blk.requests[0].element.device_readable[1].addr += 0x1000;
    });
    let report = check_bytes(&data);
    assert_eq!(
        rules(blk_report(&report)),
        [(Rule::SegmentMismatch, "requests[0].out[1]".to_owned())]
    );
}

#[test]
fn an_element_length_or_direction_not_matching() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        blk.requests[2].element.device_writable[0].len = 2;
    });
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::SegmentMismatch, "requests[2].in[0]".to_owned())]
    );
    // The status byte moved to the device-readable side: both lists disagree, the request
    // has no status buffer left and its write is one byte over whole sectors.
    let data = edited(&rings("blk-inflight-split"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        let status = blk.requests[1].element.device_writable.remove(0);
        blk.requests[1].element.device_readable.push(status);
    });
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [
            (Rule::SegmentMismatch, "requests[1].out".to_owned()),
            (Rule::SegmentMismatch, "requests[1].in".to_owned()),
            (Rule::BlkStatusBuffer, "requests[1].in".to_owned()),
            (Rule::BlkDataLength, "requests[1].out".to_owned())
        ]
    );
}

#[test]
fn a_looping_chain() {
    let original = rings("blk-inflight-split");
    // Head 7 (requests[0]): make its descriptor continue to itself.
    let at = page_byte(&original, SPLIT_DESC + 7 * 16 + 12);
    let mut data = original.clone();
    data[at..at + 4].copy_from_slice(&[1, 0, 7, 0]); // flags NEXT, next 7
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::ChainLoop, "requests[0].index".to_owned())]
    );
}

#[test]
fn a_next_index_past_the_table_and_a_bad_indirect_table() {
    let original = rings("blk-inflight-split");
    let at = page_byte(&original, SPLIT_DESC + 6 * 16 + 12);
    let mut data = original.clone();
    data[at..at + 4].copy_from_slice(&[5, 0, 0x00, 0x04]); // NEXT|INDIRECT, next 1024
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::NextOutOfRange, "requests[1].index".to_owned())]
    );
    let at = page_byte(&original, SPLIT_DESC + 5 * 16 + 8);
    let mut data = original;
    data[at..at + 4].copy_from_slice(&100u32.to_le_bytes()); // indirect table of 100 bytes
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::IndirectTableLength, "requests[2].index".to_owned())]
    );
}

#[test]
fn a_ring_outside_ram_or_misaligned() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        d.set("queues[0].desc", "0x10000000").unwrap()
    });
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::RingOutsideRam, "queues[0].desc".to_owned())]
    );
    let data = edited(&rings("blk-inflight-split"), |d| {
        d.set("queues[0].desc", "0x2318008").unwrap()
    });
    let found = rules(blk_report(&check_bytes(&data)));
    assert!(
        found.contains(&(Rule::RingMisaligned, "queues[0].desc".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(Rule::RingsOverlap, "queues[0].avail".to_owned())),
        "{found:?}"
    );
}

#[test]
fn last_avail_idx_too_far_ahead() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        d.set("queues[0].last_avail_idx", "300").unwrap()
    });
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [
            (
                Rule::AvailIndexInconsistent,
                "queues[0].last_avail_idx".to_owned()
            ),
            (
                Rule::InUseOverRingSize,
                "queues[0].last_avail_idx".to_owned()
            )
        ]
    );
}

#[test]
fn more_elements_than_in_use() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        let mut extra = blk.requests[0].clone();
        extra.element.index = 8;
        blk.requests.push(extra);
    });
    let found = rules(blk_report(&check_bytes(&data)));
    assert!(
        found.contains(&(Rule::ElementsVsInUse, "queues[0]".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(Rule::HeadNotOutstanding, "requests[8].index".to_owned())),
        "{found:?}"
    );
}

#[test]
fn fewer_elements_than_in_use() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        blk.requests.pop();
    });
    assert_eq!(
        rules(blk_report(&check_bytes(&data))),
        [(Rule::ElementsVsInUse, "queues[0]".to_owned())]
    );
}

#[test]
fn duplicate_heads_are_found_with_memory_too() {
    let data = edited(&rings("blk-inflight-split"), |d| {
        d.set("requests[1].index", "7").unwrap()
    });
    let found = rules(blk_report(&check_bytes(&data)));
    assert!(
        found.contains(&(Rule::DuplicateHead, "requests[1].index".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(Rule::SegmentMismatch, "requests[1].out".to_owned())),
        "{found:?}"
    );
}

#[test]
fn a_packed_element_not_matching_its_buffer() {
    let data = edited(&rings("blk-inflight-packed"), |d| {
        let DeviceState::Blk(blk) = &mut d.device else {
            panic!()
        };
        blk.requests[0].element.device_readable[0].len += 1;
    });
    let found = rules(blk_report(&check_bytes(&data)));
    // The header buffer grew by a byte, so the write is no longer whole sectors either.
    assert_eq!(
        found,
        [
            (Rule::SegmentMismatch, "requests[0].out[0]".to_owned()),
            (Rule::BlkDataLength, "requests[0].out".to_owned())
        ]
    );
    let data = edited(&rings("blk-inflight-packed"), |d| {
        d.set("requests[1].index", "77").unwrap()
    });
    let found = rules(blk_report(&check_bytes(&data)));
    assert!(
        found.contains(&(Rule::PackedBufferNotFound, "requests[1].index".to_owned())),
        "{found:?}"
    );
}

/// Extended tier: every corpus stream with all its memory checks clean, nothing is left
/// unchecked, and the queues with requests in flight are the ones the ground truth shows.
#[test]
fn every_corpus_stream_checks_clean_against_its_memory() {
    let Some(shared) = support::shared_dir("every_corpus_stream_checks_clean_against_its_memory")
    else {
        return;
    };
    let corpus = shared.join("corpus");
    let streams = support::corpus_streams(&corpus);
    assert_eq!(streams.len(), 16);
    let mut walked_total = 0;
    for (name, path) in streams {
        let data = read_stream_file(&path);
        let report = check_bytes(&data);
        assert!(report.is_clean(), "{name}: {report:#?}");
        for device in &report.devices {
            assert!(
                device.not_checked.is_empty(),
                "{name} {}: {:?}",
                device.section,
                device.not_checked
            );
        }
        let truth: serde_json::Value = serde_json::from_slice(
            &std::fs::read(corpus.join(format!("meta/{name}.truth.json"))).unwrap(),
        )
        .unwrap();
        for t in truth["devices"].as_array().unwrap() {
            if t["name"] != "virtio-blk" {
                continue;
            }
            let blk = blk_report(&report);
            for (index, q) in t["queues"].as_array().unwrap().iter().enumerate() {
                let inuse = q["queue-status"]["inuse"].as_u64().unwrap();
                if inuse == 0 || t["packed-ring"] == true {
                    continue;
                }
                let line = format!("queue {index}: {inuse} element(s) walked");
                assert!(
                    blk.checked.iter().any(|c| c.contains(&line)),
                    "{name}: {line}: {:?}",
                    blk.checked
                );
                walked_total += inuse;
            }
        }
    }
    assert_eq!(
        walked_total, 10,
        "split (8) and mq2 (1 + 1) requests walked"
    );
}

/// A `packed=on` device driven by firmware that knows only split rings: the device offers
/// packed rings (so QEMU sends `virtio/packed_virtqueues`), the driver negotiated split ones,
/// and the subsection holds the split ring's free-running indices.
#[test]
fn firmware_driven_packed_devices_are_checked_as_split_rings() {
    for name in ["firmware-scsi-packed", "firmware-q35-packed-alldev"] {
        let data = rings(name);
        let (found, _) = memory_checks::decoded(&data);
        assert!(
            found.iter().all(|s| !s.device.uses_packed_rings()),
            "{name}"
        );
        assert!(
            found.iter().all(|s| s.device.offers_packed_rings()),
            "{name}"
        );
        let report = check_bytes(&data);
        assert!(report.is_clean(), "{name}: {report:#?}");
        for d in &report.devices {
            assert!(
                d.checked
                    .iter()
                    .any(|c| c.contains("virtio/packed_virtqueues: split-ring indices")),
                "{name} {}: {:?}",
                d.section,
                d.checked
            );
        }
    }
    // The ground truth: the request queue made more requests than its ring has entries.
    let data = rings("firmware-scsi-packed");
    let (found, _) = memory_checks::decoded(&data);
    let scsi = &found[0].device;
    assert_eq!(
        (scsi.queues[2].num, scsi.queues[2].last_avail_idx),
        (256, 263)
    );
    let report = check_bytes(&data);
    assert!(
        memory_checks::device(&report, "virtio-scsi")
            .checked
            .iter()
            .any(|c| c
                .contains("queue 2: rings in RAM and aligned, avail index 263, used index 263")),
        "{report:#?}"
    );
}

/// On a split-driven device the subsection's values are still checked, as split-ring values.
#[test]
fn the_packed_subsection_of_a_split_driven_device_is_checked_as_split_indices() {
    let data = rings("firmware-scsi-packed");
    let at = |field: &str| format!("subsections[virtio/packed_virtqueues].queues[2].{field}");
    for (field, value, rule) in [
        ("last_avail_idx", "262", Rule::PackedIndicesDisagree),
        ("used_idx", "6", Rule::InUseOverRingSize),
        ("inuse", "300", Rule::InUseOverRingSize),
    ] {
        let path = at(field);
        let broken =
            memory_checks::edited_device(&data, "virtio-scsi", |d| d.set(&path, value).unwrap());
        let report = check_bytes(&broken);
        let findings = rules(memory_checks::device(&report, "virtio-scsi"));
        assert!(
            findings.contains(&(rule, path.clone())),
            "{path}: {findings:?}"
        );
        assert!(
            findings
                .iter()
                .all(|(r, _)| *r != Rule::PackedIndexOutOfRange),
            "{path}: {findings:?}"
        );
    }
}
