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

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

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

fn text<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key].as_str().unwrap_or("")
}

fn check(r: &Value, bin: &str, expect: Expect) {
    let name = format!("{}/{}", text(r, "machine"), text(r, "name"));
    let serial = text(r, "serial");
    let error = text(r, "qemu_error");
    let loaded = r["loaded"].as_bool() == Some(true);
    if !matches!(expect, Expect::CorpusLoads) {
        let held: u64 = r["source_held"]
            .as_array()
            .map(|q| q.iter().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
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
            assert!(loaded, "{name}: QEMU did not load the stream: {error}");
            assert_eq!(text(r, "runstate"), "io-error", "{name}: loaded runstate");
            assert_eq!(error, "", "{name}: QEMU reported errors");
            for w in WRITERS {
                assert!(
                    serial.contains(&format!("MACHINES: {w} done\n")),
                    "{name}: the guest did not finish write {w}; serial:\n{serial}"
                );
                assert!(
                    serial.contains(&format!("MACHINES: {w} verified\n")),
                    "{name}: write {w} did not read back in the guest; serial:\n{serial}"
                );
                assert_eq!(
                    r["image"][w].as_bool(),
                    Some(true),
                    "{name}: write {w}'s pattern is not on the destination's disk"
                );
            }
            assert!(
                serial.contains("MACHINES: ALL WRITES DONE"),
                "{name}: no final marker; serial:\n{serial}"
            );
            assert_eq!(text(r, "runstate_after"), "running", "{name}");
            let queues = r["queues_after"].as_array().cloned().unwrap_or_default();
            assert!(
                !queues.is_empty(),
                "{name}: no queue status after the writes"
            );
            for q in &queues {
                assert_eq!(
                    q["inuse"], 0,
                    "{name}: requests still in use after the writes"
                );
            }
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
            assert!(loaded, "{name}: QEMU did not load the stream: {error}");
            assert_eq!(error, "", "{name}: QEMU reported errors");
            assert!(
                serial.contains("MACHINES: W0 done\n")
                    && serial.contains("MACHINES: W0 MISMATCH\n"),
                "{name}: expected W0 to end with wrong data; serial:\n{serial}"
            );
            assert_eq!(
                r["image"]["W0"].as_bool(),
                Some(false),
                "{name}: W0 on disk"
            );
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
    let rules: Vec<&str> = r["check"]["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
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
    let work = tmp.join("interop_machines");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let results = work.join("results.json");

    let started = Instant::now();
    let run = Command::new("python3")
        .arg(root.join("tests/interop/machines.py"))
        .arg("--vmstate")
        .arg(env!("CARGO_BIN_EXE_vmstate"))
        .arg("--work")
        .arg(&work)
        .arg("--corpus-work")
        .arg(tmp.join("interop-machines-corpus-work"))
        .arg("--results")
        .arg(&results)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (the interop suite needs it): {e}"));
    let seconds = started.elapsed().as_secs();
    let table = String::from_utf8_lossy(&run.stdout);
    println!("{table}");
    match run.status.code() {
        Some(0) | Some(1) => {}
        Some(2) => panic!("machines interop suite: QEMU, the guests or the corpus script could not be prepared (reason above)"),
        other => panic!("machines interop suite crashed ({other:?}); output:\n{table}"),
    }

    let json: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let ran = json["results"].as_array().unwrap();
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
    assert_eq!(run.status.code(), Some(0), "machines interop suite verdict");
    assert!(
        seconds < 600,
        "the machines interop suite took {seconds} s (budget: 10 minutes)"
    );
    let _ = std::fs::remove_dir_all(&work);
}
