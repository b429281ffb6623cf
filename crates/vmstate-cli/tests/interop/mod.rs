//! Running a Python interop suite (`tests/interop/interop.py`, `tests/interop/machines.py`)
//! from the interop tests and reading what it found: shared by `interop_qemu.rs` and
//! `interop_machines.rs` (and `interop_qcow2.rs`, which needs only the runner).

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

use serde_json::Value;

/// A finished suite run: its output, how long it took, and its results.json.
pub struct Run {
    /// How the suite's messages call it ("interop suite", "machines interop suite").
    label: &'static str,
    work: PathBuf,
    output: Output,
    seconds: u64,
    /// The `results` array of the suite's results.json: one object per scenario.
    pub results: Vec<Value>,
}

/// Runs `python3 SCRIPT --vmstate VMSTATE --work WORK --results WORK/results.json ARGS` in a
/// fresh `WORK` folder, prints its table, and fails the test when it could not prepare
/// `prepared` (exit 2, the reason on stderr above) or crashed.
pub fn run_suite<S: AsRef<OsStr>>(
    script: &Path,
    work: &Path,
    args: &[S],
    label: &'static str,
    prepared: &str,
) -> Run {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let results = work.join("results.json");

    let started = Instant::now();
    let output = Command::new("python3")
        .arg(script)
        .arg("--vmstate")
        .arg(env!("CARGO_BIN_EXE_vmstate"))
        .arg("--work")
        .arg(work)
        .arg("--results")
        .arg(&results)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (the interop suite needs it): {e}"));
    let seconds = started.elapsed().as_secs();
    let table = String::from_utf8_lossy(&output.stdout);
    println!("{table}");
    match output.status.code() {
        Some(0) | Some(1) => {}
        Some(2) => panic!("{label}: {prepared} could not be prepared (reason above)"),
        other => panic!("{label} crashed ({other:?}); output:\n{table}"),
    }

    let json: Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let results = json["results"].as_array().unwrap().clone();
    Run {
        label,
        work: work.to_path_buf(),
        output,
        seconds,
        results,
    }
}

impl Run {
    /// After every scenario was checked: the suite's own verdict, its time budget, and the
    /// work folder removed.
    pub fn finish(self) {
        let label = self.label;
        assert_eq!(self.output.status.code(), Some(0), "{label} verdict");
        let seconds = self.seconds;
        assert!(
            seconds < 600,
            "the {label} took {seconds} s (budget: 10 minutes)"
        );
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// A string field of a result (empty when absent).
pub fn text<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key].as_str().unwrap_or("")
}

/// Requests the source held in flight at the save, over all its queues.
pub fn held(r: &Value) -> u64 {
    r["source_held"]
        .as_array()
        .map(|q| q.iter().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

/// The rules of a result's `vmstate check` report.
pub fn rules(check: &Value) -> Vec<&str> {
    check["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A stream QEMU loaded, and after `cont` the guest finished every one of `writers`, read it
/// back (its console lines start with `prefix`, "INTEROP:" or "MACHINES:") and its pattern is
/// on the destination's disk; no request is left in use.
pub fn assert_completes(r: &Value, name: &str, prefix: &str, writers: &[&str]) {
    let serial = text(r, "serial");
    let error = text(r, "qemu_error");
    assert!(
        r["loaded"].as_bool() == Some(true),
        "{name}: QEMU did not load the stream: {error}"
    );
    assert_eq!(text(r, "runstate"), "io-error", "{name}: loaded runstate");
    assert_eq!(error, "", "{name}: QEMU reported errors");
    for w in writers {
        assert!(
            serial.contains(&format!("{prefix} {w} done\n")),
            "{name}: the guest did not finish write {w}; serial:\n{serial}"
        );
        assert!(
            serial.contains(&format!("{prefix} {w} verified\n")),
            "{name}: write {w} did not read back in the guest; serial:\n{serial}"
        );
        assert_eq!(
            r["image"][w].as_bool(),
            Some(true),
            "{name}: write {w}'s pattern is not on the destination's disk"
        );
    }
    assert!(
        serial.contains(&format!("{prefix} ALL WRITES DONE")),
        "{name}: no final marker; serial:\n{serial}"
    );
    for q in r["queues_after"].as_array().into_iter().flatten() {
        assert_eq!(
            q["inuse"], 0,
            "{name}: requests still in use after the writes"
        );
    }
}

/// A stream QEMU loaded without a word, after which W0 ended (console lines starting with
/// `prefix`) with the wrong bytes, in the guest and on the destination's disk.
pub fn assert_corrupt(r: &Value, name: &str, prefix: &str) {
    let serial = text(r, "serial");
    let error = text(r, "qemu_error");
    assert!(
        r["loaded"].as_bool() == Some(true),
        "{name}: QEMU did not load the stream: {error}"
    );
    assert_eq!(error, "", "{name}: QEMU reported errors");
    assert!(
        serial.contains(&format!("{prefix} W0 done\n"))
            && serial.contains(&format!("{prefix} W0 MISMATCH\n")),
        "{name}: expected W0 to end with wrong data; serial:\n{serial}"
    );
    assert_eq!(
        r["image"]["W0"].as_bool(),
        Some(false),
        "{name}: W0 on disk"
    );
}
