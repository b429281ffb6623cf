//! Interop with real QEMU (extended tier): streams that `vmstate` re-encoded, converted
//! between element layouts, fixed (packed-ring `ndescs` order) or edited are loaded by
//! Debian's `qemu-system-x86_64`, and the guest finishes every write that was in flight.
//!
//! The work is done by `tests/interop/interop.py` (it boots the corpus' tiny guest under TCG,
//! saves it with requests in flight, runs `vmstate`, loads the result with `-incoming`, sends
//! `cont` and watches the serial console); this test runs it and asserts its results. Under
//! `CI=true` a missing QEMU (that cannot be installed), Python or guest fails the test, and so
//! does a 32-bit QEMU build that cannot be fetched (Debian's `qemu-system-x86:i386`, unpacked
//! under the target folder; the system's apt configuration is untouched), and so does the
//! big-endian build (`qemu-system-x86:s390x`, fetched the same way and run under user-mode
//! emulation by `qemu-s390x-static`, which the suite installs from Debian's
//! `qemu-user-static` when it is missing).
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_qemu -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use std::path::Path;

use serde_json::Value;

use interop::{assert_completes, assert_corrupt, held, rules, text};

/// What QEMU and the guest must do with each scenario's stream.
enum Expect {
    /// QEMU loads it, and after `cont` the guest completes every write.
    Completes,
    /// QEMU refuses it: exits during the load with this message.
    Refused(&'static str),
    /// QEMU loads it, but the guest never finishes: the in-flight requests were lost.
    Stuck,
    /// QEMU loads it without a word, and W0 ends with the wrong bytes on disk.
    Corrupt,
    /// QEMU loads it, and after `cont` the device fails W0 with an I/O error; the other
    /// writes complete.
    Fails,
}

const SCENARIOS: &[(&str, Expect)] = &[
    ("split-unchanged", Expect::Completes),
    ("split-reencode", Expect::Completes),
    // Converted by vmstate to the i386 / lp64-be (s390x-like) layouts from the x86-64 stream,
    // not written by 32-bit or big-endian QEMU builds.
    (
        "split-i386-unconverted",
        Expect::Refused("virtio: error trying to map MMIO memory"),
    ),
    ("split-i386-to-stable", Expect::Completes),
    (
        "split-lp64be-unconverted",
        Expect::Refused(
            "qemu_get_virtqueue_element: Assertion `ARRAY_SIZE(data.in_addr) >= data.in_num' failed",
        ),
    ),
    ("split-lp64be-to-stable", Expect::Completes),
    ("split-reencode-i386-reencode", Expect::Completes),
    (
        "split-edit-addr-outside-ram",
        Expect::Refused("virtio: unexpected memory split"),
    ),
    ("split-edit-addr-inside-ram", Expect::Corrupt),
    ("split-requests-dropped", Expect::Stuck),
    ("mq2-reencode", Expect::Completes),
    ("mq2-i386-to-stable", Expect::Completes),
    // Written by Debian's 32-bit i386 QEMU build (fetched by the suite, run on this host).
    (
        "i386host-unconverted",
        Expect::Refused("virtio: error trying to map MMIO memory"),
    ),
    ("i386host-to-stable", Expect::Completes),
    // Written by Debian's big-endian s390x QEMU build under qemu-s390x-static: native QEMU
    // reads its 49,168-byte elements as x86-64 ones and aborts on the counters.
    (
        "s390xhost-unconverted",
        Expect::Refused(
            "qemu_get_virtqueue_element: Assertion `ARRAY_SIZE(data.in_addr) >= data.in_num' failed",
        ),
    ),
    ("s390xhost-to-stable", Expect::Completes),
    (
        "packed-unchanged",
        Expect::Refused("virtio: unexpected memory split"),
    ),
    ("packed-ndescs-after", Expect::Completes),
    ("split-live-pipe", Expect::Completes),
    // What a device saved about a request against the request (`check` finds each).
    ("split-edit-sector-past-end", Expect::Fails),
    ("scsi-unchanged", Expect::Completes),
    ("scsi-reencode", Expect::Completes),
    ("scsi-edit-cdb-lba", Expect::Completes),
    (
        "scsi-edit-cdb-read",
        Expect::Refused(
            "virtio_scsi_load_request: Assertion `req->sreq->cmd.mode == req->mode' failed",
        ),
    ),
    ("scsi-edit-disk-sector", Expect::Corrupt),
];

/// Streams converted to a legacy layout and back must equal what QEMU wrote.
const BYTE_IDENTICAL: &[&str] = &[
    "split-i386-to-stable",
    "split-lp64be-to-stable",
    "mq2-i386-to-stable",
    // ... and back to i386: what the 32-bit QEMU wrote.
    "i386host-to-stable",
    // ... and back to lp64-be: what the s390x QEMU wrote.
    "s390xhost-to-stable",
];

/// The guest's writers: one 4 MiB write per vCPU (W0, W1), then W7, W8, W9.
fn writers(r: &Value) -> Vec<&'static str> {
    if text(r, "source") == "mq2" {
        vec!["W0", "W1", "W7", "W8", "W9"]
    } else {
        vec!["W0", "W7", "W8", "W9"]
    }
}

fn check(r: &Value, expect: &Expect) {
    let name = text(r, "name");
    let serial = text(r, "serial");
    let error = text(r, "qemu_error");
    let loaded = r["loaded"].as_bool() == Some(true);
    let held = held(r);
    assert!(
        held >= 2,
        "{name}: only {held} request(s) were in flight at the save"
    );
    match expect {
        Expect::Completes => assert_completes(r, name, "INTEROP:", &writers(r)),
        Expect::Refused(message) => {
            assert!(!loaded, "{name}: QEMU loaded a stream it must refuse");
            assert!(
                error.contains(message),
                "{name}: QEMU said {error:?}, expected {message:?}"
            );
        }
        Expect::Corrupt => assert_corrupt(r, name, "INTEROP:"),
        Expect::Fails => {
            assert!(loaded, "{name}: QEMU did not load the stream: {error}");
            assert_eq!(error, "", "{name}: QEMU reported errors");
            assert!(
                serial.contains("INTEROP: W0 FAILED") && !serial.contains("INTEROP: W0 done"),
                "{name}: expected W0 to fail with an I/O error; serial:\n{serial}"
            );
            for w in writers(r).into_iter().filter(|w| *w != "W0") {
                assert!(
                    serial.contains(&format!("INTEROP: {w} verified\n")),
                    "{name}: write {w} did not complete; serial:\n{serial}"
                );
            }
        }
        Expect::Stuck => {
            assert!(loaded, "{name}: QEMU did not load the stream: {error}");
            assert!(
                !serial.contains("INTEROP: W0 done") && !serial.contains("ALL WRITES DONE"),
                "{name}: the guest finished writes whose requests were dropped; serial:\n{serial}"
            );
        }
    }
    if text(r, "source") == "i386host" {
        let dump = r["source_dump"].to_string();
        assert!(
            dump.contains("(i386 layout)"),
            "{name}: vmstate did not detect the i386 layout: {dump}"
        );
    }
    if text(r, "source") == "s390xhost" {
        assert!(
            text(r, "source_qemu").contains("s390x build"),
            "{name}: the source was not the s390x QEMU build: {}",
            r["source_qemu"]
        );
        let dump = r["source_dump"].to_string();
        assert!(
            dump.contains("(lp64-be layout)"),
            "{name}: vmstate dump did not detect the lp64-be layout: {dump}"
        );
        // `vmstate dump --json` with no layout flags: the framing's detected layout
        assert_eq!(
            r["source_layouts"],
            serde_json::json!(["lp64-be"]),
            "{name}: vmstate dump --json layout of the s390x-written stream"
        );
    }
    if BYTE_IDENTICAL.contains(&name) {
        assert_eq!(
            r["equals_source_stream"].as_bool(),
            Some(true),
            "{name}: converting to a legacy layout and back changed the stream"
        );
    }
    // What `vmstate check` says of the same stream, before QEMU sees it: defects that QEMU
    // loads without a word (a wrong element address inside RAM) or dies on are findings.
    if let Some(check) = r.get("check") {
        let rules = rules(check);
        let (exit, rule) = match name {
            "split-edit-addr-outside-ram" | "split-edit-addr-inside-ram" => {
                (1, Some("segment-mismatch"))
            }
            "split-requests-dropped" => (1, Some("elements-vs-in-use")),
            "split-edit-sector-past-end" => (1, Some("blk-sector-range")),
            "scsi-edit-cdb-lba" => (1, Some("scsi-cdb")),
            "scsi-edit-cdb-read" => (1, Some("scsi-direction")),
            "scsi-edit-disk-sector" => (1, Some("scsi-disk-position")),
            _ => (0, None),
        };
        assert_eq!(
            check["exit"], exit,
            "{name}: vmstate check exit; rules {rules:?}"
        );
        if let Some(rule) = rule {
            assert!(
                rules.contains(&rule),
                "{name}: check found {rules:?}, not {rule}"
            );
        }
    }
    assert_eq!(
        r["ok"].as_bool(),
        Some(true),
        "{name}: the suite's own verdict"
    );
}

#[test]
fn qemu_loads_converted_streams_and_the_guest_completes_every_in_flight_write() {
    let Some(shared) = support::shared_dir("interop_qemu") else {
        return;
    };
    let root = support::repo_root();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let run = interop::run_suite(
        &root.join("tests/interop/interop.py"),
        &tmp.join("interop_qemu"),
        &[
            "--assets".as_ref(),
            shared.join("corpus/assets").as_os_str(),
            "--i386-cache".as_ref(),
            tmp.join("interop-qemu-i386").as_os_str(),
            "--s390x-cache".as_ref(),
            tmp.join("interop-qemu-s390x").as_os_str(),
        ],
        "interop suite",
        "QEMU or the guest",
    );
    let ran = &run.results;
    for (name, expect) in SCENARIOS {
        let r = ran
            .iter()
            .find(|r| r["name"] == *name)
            .unwrap_or_else(|| panic!("scenario {name} did not run"));
        check(r, expect);
    }
    assert_eq!(
        ran.len(),
        SCENARIOS.len(),
        "scenarios this test does not know"
    );
    run.finish();
}
