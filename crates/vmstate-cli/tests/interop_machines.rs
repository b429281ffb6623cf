//! Interop with real QEMU on other machines (extended tier): streams of booted aarch64 `virt`
//! (virtio-mmio and virtio-pci) and s390x `s390-ccw-virtio` (virtio-ccw) guests with
//! virtio-blk requests in flight, passed through `vmstate` (unchanged, `convert --reencode`,
//! a layout round trip through i386, edits of one element), are loaded by Debian's QEMU with
//! `-incoming`; after `cont` the guest must finish and read back every write, and the
//! pattern must be on the destination's disk. Streams QEMU must refuse are asserted with its
//! own message.
//!
//! The work is done by `tests/interop/machines.py`, which runs
//! `tests/machines/make-machine-corpus.sh` for the guests' kernels, initramfs and command
//! lines, boots its own pattern-writing guest on each machine and drives every QEMU; this test
//! runs it and asserts each scenario's outcome. Without `CI=true` it says so and returns;
//! under `CI=true` anything that cannot be prepared (QEMU, the guests' kernels, python3) fails
//! the test. The corpus script's scratch folder (downloaded kernels) is kept under the target
//! folder between runs.
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_machines -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use std::path::Path;

use serde_json::Value;

use interop::{assert_completes, assert_corrupt, held, rules, text};

/// What QEMU and the guest must do with each scenario's stream.
#[derive(Clone, Copy)]
enum Expect {
    /// make-machine-corpus.sh's own stream and load check: loads, the held write completes.
    CorpusLoads,
    /// QEMU loads it; after `cont` every write completes, reads back, and is on disk.
    Completes,
    /// QEMU refuses it: exits during the load with this message.
    Refused(&'static str),
    /// QEMU loads it without a word; W0 ends with the wrong bytes on disk, the rest intact.
    Corrupt,
}

/// (machine key, its QEMU binary).
const MACHINES: &[(&str, &str)] = &[
    ("aarch64virt-mmio", "qemu-system-aarch64"),
    ("aarch64virt-pci", "qemu-system-aarch64"),
    ("s390x-ccw", "qemu-system-s390x"),
];

/// Every machine's scenarios and what must happen; the same on all three machines.
const SCENARIOS: &[(&str, Expect)] = &[
    ("corpus-recorded", Expect::CorpusLoads),
    ("unchanged", Expect::Completes),
    ("reencode", Expect::Completes),
    (
        "i386-unconverted",
        Expect::Refused("virtio: error trying to map MMIO memory"),
    ),
    ("i386-to-stable", Expect::Completes),
    (
        "edit-addr-outside-ram",
        Expect::Refused("virtio: unexpected memory split"),
    ),
    ("edit-addr-inside-ram", Expect::Corrupt),
];

/// The guest's writes: one 4 MiB write (16 requests held in flight), then three small ones.
const WRITERS: &[&str] = &["W0", "W7", "W8", "W9"];

fn check(r: &Value, bin: &str, expect: Expect) {
    let name = format!("{}/{}", text(r, "machine"), text(r, "name"));
    let error = text(r, "qemu_error");
    let loaded = r["loaded"].as_bool() == Some(true);
    if !matches!(expect, Expect::CorpusLoads) {
        let held = held(r);
        assert!(
            held >= 4,
            "{name}: only {held} request(s) were in flight at the save"
        );
    }
    match expect {
        Expect::CorpusLoads => {
            let status = text(r, "corpus_load_status");
            assert!(
                status.starts_with("loaded, status io-error")
                    && status.contains("CORPUS: W0 done")
                    && !status.contains("[qemu:"),
                "{name}: the corpus script's load check says {status:?}"
            );
        }
        Expect::Completes => {
            assert_completes(r, &name, "MACHINES:", WRITERS);
            assert_eq!(text(r, "runstate_after"), "running", "{name}");
            assert!(
                r["queues_after"].as_array().is_some_and(|q| !q.is_empty()),
                "{name}: no queue status after the writes"
            );
        }
        Expect::Refused(message) => {
            assert!(!loaded, "{name}: QEMU loaded a stream it must refuse");
            assert_ne!(r["qemu_exit"].as_i64(), Some(0), "{name}: QEMU exit code");
            let said = format!("{bin}: {message}");
            assert!(
                error.contains(&said),
                "{name}: QEMU said {error:?}, expected {said:?}"
            );
        }
        Expect::Corrupt => {
            assert_corrupt(r, &name, "MACHINES:");
            for w in &WRITERS[1..] {
                assert_eq!(r["image"][w].as_bool(), Some(true), "{name}: {w} on disk");
            }
        }
    }
    if text(r, "name") == "i386-to-stable" {
        assert_eq!(
            r["equals_source_stream"].as_bool(),
            Some(true),
            "{name}: converting to i386 and back changed the stream"
        );
        let dump = r["intermediate_dump"].to_string();
        assert!(
            dump.contains("16 request(s) in flight (i386 layout)")
                && r["intermediate_differs"].as_bool() == Some(true),
            "{name}: the intermediate stream is not in the i386 layout: {dump}"
        );
    }
    // `vmstate check` of the same stream, before QEMU sees it: the edited element is a
    // finding, everything else is clean.
    let rules = rules(&r["check"]);
    let edited = text(r, "name").starts_with("edit-");
    assert_eq!(
        r["check"]["exit"],
        if edited { 1 } else { 0 },
        "{name}: vmstate check exit; rules {rules:?}"
    );
    if edited {
        assert!(
            rules.contains(&"segment-mismatch"),
            "{name}: check found {rules:?}, not segment-mismatch"
        );
        let finding = r["check"]["findings"][0].to_string();
        assert!(
            finding.contains("requests[0].out[1]"),
            "{name}: the finding is not about the edited segment: {finding}"
        );
    }
    assert_eq!(
        r["ok"].as_bool(),
        Some(true),
        "{name}: the suite's own verdict"
    );
}

#[test]
fn qemu_on_aarch64_and_s390x_loads_vmstate_streams_and_the_guest_completes_every_write() {
    if !support::extended_tier() {
        eprintln!(
            "NOTE: extended-tier test `interop_machines` not run: set CI=true (it boots \
             aarch64 and s390x guests under QEMU)"
        );
        return;
    }
    let root = support::repo_root();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let run = interop::run_suite(
        &root.join("tests/interop/machines.py"),
        &tmp.join("interop_machines"),
        &[
            "--corpus-work".as_ref(),
            tmp.join("interop-machines-corpus-work").as_os_str(),
        ],
        "machines interop suite",
        "QEMU, the guests or the corpus script",
    );
    let ran = &run.results;
    for (machine, bin) in MACHINES {
        for (name, expect) in SCENARIOS {
            let r = ran
                .iter()
                .find(|r| r["machine"] == *machine && r["name"] == *name)
                .unwrap_or_else(|| panic!("scenario {machine}/{name} did not run"));
            check(r, bin, *expect);
        }
    }
    assert_eq!(
        ran.len(),
        MACHINES.len() * SCENARIOS.len(),
        "scenarios this test does not know"
    );
    run.finish();
}
