//! `vmstate schema`, `vmstate compat` and `vmstate convert --target` on bundled streams and
//! QEMU's -dump-vmstate files the library bundles (crates/vmstate/schemas).

mod cli;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use cli::run;
use serde_json::Value;

fn fixture(p: &str) -> String {
    support::fixture(p).display().to_string()
}

/// A -dump-vmstate file of the ones the library bundles (crates/vmstate/schemas).
fn release_schema(name: &str) -> String {
    support::repo_root()
        .join("crates/vmstate/schemas")
        .join(name)
        .display()
        .to_string()
}

const STREAM_10: &str = "streams/qemu10.0-noos-q35-alldev.mig.gz";
const SCHEMA_72: &str = "qemu7.2-pc-q35-7.2.json.gz";
const SCHEMA_10: &str = "qemu10.0-pc-q35-10.0.json.gz";

fn compat_json(src: &str, dst: &str) -> (i32, Value) {
    let out = run(&["compat", "--json", src, dst], None);
    let report = serde_json::from_slice(&out.stdout).expect("compat --json prints JSON");
    (out.status.code().unwrap_or(-1), report)
}

/// The message QEMU prints for each problem of a `compat --json` report ("" where none).
fn qemu_messages(report: &Value) -> Vec<&str> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["qemu_message"].as_str().unwrap_or(""))
        .collect()
}

/// The messages QEMU 7.2 prints for the bundled stream of 10.0, and nothing else.
fn assert_refused_as_7_2_refuses_the_10_0_stream(report: &Value) {
    let messages = qemu_messages(report);
    assert_eq!(
        messages,
        [
            "Machine type received is 'pc-q35-10.0' and local is 'pc-q35-7.2'",
            "MIG_CMD 0xb unknown (len 0x0)"
        ]
    );
}

#[test]
fn a_stream_of_10_0_against_7_2_has_exactly_the_two_refusals_qemu_7_2_prints() {
    let (code, report) = compat_json(&fixture(STREAM_10), &release_schema(SCHEMA_72));
    assert_eq!(code, 1);
    assert_eq!(report["destination"]["release"]["release"], "7.2");
    assert_eq!(report["destination"]["release"]["certainty"], "exact");
    assert_refused_as_7_2_refuses_the_10_0_stream(&report);
    // Against its own release it is compatible.
    let (code, report) = compat_json(&fixture(STREAM_10), &release_schema(SCHEMA_10));
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["compatible"], true);
}

#[test]
fn the_dst_version_overrides_the_inferred_release() {
    let out = run(
        &[
            "compat",
            "--json",
            "--dst-version",
            "10.0",
            &fixture(STREAM_10),
            &release_schema(SCHEMA_72),
        ],
        None,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["destination"]["release"]["certainty"], "stated");
    // Stated as 10.0, the destination knows SWITCHOVER_START: only the machine type remains.
    assert_eq!(report["problems"].as_array().unwrap().len(), 1);
}

/// Every line of QEMU's vmstate-static-checker.py (7.2's script) on the pair is a problem
/// `compat` reports too.
#[test]
fn compat_reports_every_problem_the_static_checker_reports_on_10_0_to_7_2() {
    let src = "qemu10.0-pc-q35-7.2.json.gz";
    let checker = "schemas/checker-qemu10.0-pc-q35-7.2-to-qemu7.2-pc-q35-7.2.txt";
    let (matched, problems) = checker_lines_reported(src, SCHEMA_72, checker);
    assert_eq!(matched, 39);
    // ... and the ones it skips after the first mismatch of a description.
    assert!(problems > 39, "{problems}");
}

#[test]
fn compat_reports_every_problem_the_static_checker_reports_on_7_2_to_10_0() {
    let checker = "schemas/checker-qemu7.2-pc-q35-7.2-to-qemu10.0-pc-q35-10.0.txt";
    let (matched, problems) = checker_lines_reported(SCHEMA_72, SCHEMA_10, checker);
    assert_eq!(matched, 15);
    assert!(problems > 15, "{problems}");
}

/// Checks that `compat SRC DST` reports every line of the checker's output `checker` on the
/// pair: how many lines, and how many problems `compat` reports.
fn checker_lines_reported(src: &str, dst: &str, checker: &str) -> (usize, usize) {
    let (code, report) = compat_json(&release_schema(src), &release_schema(dst));
    assert_eq!(code, 1);
    let problems = report["problems"].as_array().unwrap();
    let checker = std::fs::read_to_string(support::fixture(checker)).unwrap();
    let quoted = |line: &str| -> Vec<String> {
        line.split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    };
    let mut matched = 0;
    for line in checker.lines() {
        let q = quoted(line);
        let section = &q[0];
        let has = |kind: &str, pred: &dyn Fn(&Value) -> bool| {
            problems
                .iter()
                .any(|p| p["section"] == section.as_str() && p["kind"] == kind && pred(p))
        };
        let found = if line.starts_with("Warning: checking incompatible machine types") {
            problems.iter().any(|p| {
                p["kind"] == "machine-type" && p["message"].as_str().unwrap_or("").contains(&q[1])
            })
        } else if line.ends_with("does not exist in dest") {
            has("section-missing", &|_| true)
        } else if line.contains("expected field") {
            // The same pair of fields; or, where the checker took a 7.2 field without `num`
            // for one element and so misaligned what follows (e1000e), the field before
            // the pair it names, whose size could not be compared.
            let pair = format!("expected field \"{}\", got \"{}\"", q[2], q[3]);
            problems.iter().any(|p| {
                let message = p["message"].as_str().unwrap_or("");
                p["section"] == section.as_str()
                    && p["description"] == q[1].as_str()
                    && (message.contains(&pair)
                        || message.contains("expected field")
                            && message.contains("the size could not be compared"))
            })
        } else if line.contains("Entry \"Subsections\" missing") {
            has("subsection-missing", &|p| p["description"] == q[1].as_str())
        } else if line.contains("Subsection") {
            has("subsection-missing", &|p| p["field"] == q[2].as_str())
        } else if line.contains("Entry \"Fields\" missing") {
            has("fields-missing", &|p| p["description"] == q[1].as_str())
        } else if let Some(v) = line.split("version error: ").nth(1) {
            has("version-too-new", &|p| {
                p["message"].as_str().unwrap_or("").contains(v)
            })
        } else {
            panic!("checker line not understood: {line}");
        };
        assert!(found, "not reported: {line}");
        matched += 1;
    }
    (matched, problems.len())
}

fn of_section<'a>(report: &'a Value, key: &str, section: &str) -> Vec<&'a Value> {
    report[key]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["section"] == section)
        .collect()
}

/// QEMU 7.2's dump writes no element counts: no size is taken from it, and what follows a
/// field of unknown size stays aligned.
#[test]
fn sizes_a_7_2_dump_does_not_give_are_not_compared_and_e1000e_stays_aligned() {
    let (_, report) = compat_json(
        &release_schema("qemu10.0-pc-q35-7.2.json.gz"),
        &release_schema(SCHEMA_72),
    );
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().all(|p| p["kind"] != "size-mismatch"),
        "{problems:?}"
    );
    let e1000e = of_section(&report, "problems", "e1000e");
    let fields: Vec<&str> = e1000e
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    // core.itr_intr_pending and core.eitr_intr_pending became `unused`; nothing after them.
    assert_eq!(fields, ["unused", "unused"], "{e1000e:?}");
    let pending = e1000e[1]["message"].as_str().unwrap();
    assert!(pending.contains("core.eitr_intr_pending"), "{pending}");
    assert!(
        pending.contains("the size could not be compared"),
        "{pending}"
    );
    assert!(!pending.contains(" 1 in the destination"), "{pending}");
    // core.timadj is sent only when its test holds: conditional, not missing.
    let open = of_section(&report, "undecided", "e1000e");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["kind"], "conditional");
    assert_eq!(open[0]["field"], "core.timadj");
    // sb16's five registers became one `unused` of 20 bytes: one mismatch, not five.
    assert_eq!(of_section(&report, "problems", "sb16").len(), 1);
    let unchecked = report["unchecked"].as_array().unwrap();
    assert!(
        unchecked
            .iter()
            .any(|u| u.as_str().unwrap().contains("gives no element counts")),
        "{unchecked:?}"
    );
}

fn release_only(stream: &str, json: bool) -> (i32, String) {
    let mut argv = vec!["compat", "--dst-version", "7.2", stream];
    if json {
        argv.insert(1, "--json");
    }
    let out = run(&argv, None);
    let text = String::from_utf8(out.stdout).unwrap();
    (out.status.code().unwrap_or(-1), text)
}

/// Without a destination file, what QEMU 7.2 is known to refuse, and the checks not made.
#[test]
fn compat_with_a_release_alone_checks_what_the_release_decides() {
    let (code, text) = release_only(&fixture(STREAM_10), false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("destination: QEMU 7.2, as stated, without a schema"),
        "{text}"
    );
    assert!(text.contains("MIG_CMD 0xb unknown"), "{text}");
    let (_, json) = release_only(&fixture(STREAM_10), true);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["destination"]["kind"], "release");
    assert_eq!(report["destination"]["path"], Value::Null);
    assert_refused_as_7_2_refuses_the_10_0_stream(&report);
    let unchecked = report["unchecked"].clone();
    assert_eq!(unchecked.as_array().unwrap().len(), 3, "{unchecked}");
    assert!(unchecked[0].as_str().unwrap().contains("sections"));
    let not_checked = text
        .lines()
        .filter(|l| l.starts_with("not checked: "))
        .count();
    assert_eq!(not_checked, 3, "{text}");
    // A stream of 7.2 against 7.2: nothing it knows refuses it; the same checks not made.
    let old = fixture("streams/qemu7.2-noos-pc-alldev.mig.gz");
    let (code, text) = release_only(&old, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.ends_with("compatible\n"), "{text}");
    let (_, json) = release_only(&old, true);
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["compatible"], true);
    assert_eq!(report["unchecked"], unchecked);
}

#[test]
fn a_release_not_known_here_without_a_destination_file_exits_2() {
    let out = run(
        &["compat", "--dst-version", "8.1", &fixture(STREAM_10)],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("QEMU 8.1 is not a release known here (5.2, 7.2, 10.0, 11.1)"),
        "{said}"
    );
    // Neither a destination nor a release: a usage error.
    let out = run(&["compat", &fixture(STREAM_10)], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn convert_for_a_release_alone_renames_the_machine_and_drops_the_command() {
    let out_path = cli::tmp("convert_release", "for-7.2.mig");
    let out = cli::ok(&[
        "convert",
        "--json",
        "--dst-version",
        "7.2",
        &fixture(STREAM_10),
        out_path.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["target"], Value::Null);
    let what: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(what, ["machine", "command"]);
    assert_eq!(report["unchecked"].as_array().unwrap().len(), 3);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not checked: the sections"), "{said}");
    // What 7.2's own schema says of the result: it loads.
    let (code, report) = compat_json(out_path.to_str().unwrap(), &release_schema(SCHEMA_72));
    assert_eq!(code, 0, "{report}");
}

#[test]
fn schema_prints_a_tree_and_dump_vmstate_json_with_the_virtio_layout() {
    let out = cli::ok(&["schema", &release_schema(SCHEMA_72)]);
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.starts_with("schema of a -dump-vmstate file: machine pc-q35-7.2"),
        "{tree}"
    );
    assert!(tree.contains("virtio-blk-device version 2 (loads 2..=2): virtio-blk"));
    let out = cli::ok(&["schema", "--json", &fixture(STREAM_10)]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["vmschkmachine"]["Name"], "pc-q35-10.0");
    let blk = json
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("/virtio-blk"))
        .map(|(_, v)| v)
        .expect("a virtio-blk section");
    let virtio = &blk["Description"]["Fields"][0];
    assert_eq!(virtio["field"], "virtio");
    assert_eq!(virtio["Description"]["name"], "virtio");
    assert_eq!(virtio["Description"]["Fields"][0]["field"], "transport");
}

#[test]
fn convert_target_rewrites_what_loses_nothing_and_refuses_the_rest() {
    let out_path = cli::tmp("convert_target", "for-7.2.mig");
    let out = cli::ok(&[
        "convert",
        "--target",
        &release_schema(SCHEMA_72),
        &fixture(STREAM_10),
        out_path.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("machine type pc-q35-10.0 renamed pc-q35-7.2"),
        "{said}"
    );
    assert!(said.contains("command SWITCHOVER_START dropped"), "{said}");
    let (code, report) = compat_json(out_path.to_str().unwrap(), &release_schema(SCHEMA_72));
    assert_eq!(code, 0, "{report}");
    // A capability 7.2 does not know cannot be rewritten away: refused, nothing written.
    let mapped = cli::tmp("convert_target", "mapped.mig");
    cli::ok(&[
        "convert",
        "--ram-layout",
        "mapped-ram",
        &fixture(STREAM_10),
        mapped.to_str().unwrap(),
    ]);
    let refused_path = cli::tmp("convert_target", "refused.mig");
    let out = run(
        &[
            "convert",
            "--target",
            &release_schema(SCHEMA_72),
            mapped.to_str().unwrap(),
            refused_path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("Received unknown capability mapped-ram"),
        "{said}"
    );
    assert!(!refused_path.exists());
}

#[test]
fn unreadable_schemas_exit_2() {
    let bad = cli::tmp("compat_bad", "bad.json");
    std::fs::write(&bad, "{\"x\": {\"Name\": \"x\"}}").unwrap();
    let out = run(
        &["compat", &fixture(STREAM_10), bad.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("version_id"));
}

/// A QEMU 5.2 stream whose balloon subsection QEMU 5.1 to 6.1 misnamed: `compat` says a
/// 7.2 destination refuses it, `convert --target` refuses naming `--mend-names`, and after
/// `convert --mend-names` nothing is left to refuse.
#[test]
fn the_misnamed_balloon_subsection_is_a_problem_until_mended() {
    let src = fixture("releases/qemu5.2-booted-q35-idle.rings.mig.gz");
    let out = run(&["compat", "--json", "--dst-version", "7.2", &src], None);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["field"], "vitio-balloon-device/page-poison");
    assert_eq!(problems[0]["description"], "virtio-balloon-device");
    assert_eq!(
        problems[0]["qemu_message"],
        "error while loading state for instance 0x0 of device '0000:00:05.0/virtio-balloon'"
    );

    let refused = cli::tmp("misnamed", "refused.mig");
    let out = run(
        &[
            "convert",
            "--dst-version",
            "7.2",
            &src,
            &refused.display().to_string(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vitio-balloon-device/page-poison") && stderr.contains("(--mend-names)"),
        "{stderr}"
    );
    assert!(!refused.exists(), "nothing is written when convert refuses");

    let mended = cli::tmp("misnamed", "mended.mig");
    let mended = mended.display().to_string();
    let out = run(&["convert", "--mend-names", &src, &mended], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "subsection vitio-balloon-device/page-poison renamed virtio-balloon-device/page-poison"
    ));
    let out = run(&["compat", "--dst-version", "7.2", &mended], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run(&["check", &mended], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("vitio"));
    // QEMU 5.1 to 6.1 know the subsection only by the misspelled name: measured, QEMU 5.2
    // refuses the mended stream too.
    let (code, report) = compat_json(&mended, &release_schema("qemu5.2-pc-q35-5.2.json.gz"));
    assert_eq!(code, 1);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["kind"], "subsection-missing");
    assert_eq!(problems[0]["field"], "virtio-balloon-device/page-poison");
}

/// Every release with a bundled dump is recognised from its dump, exactly; a stream of 11.1
/// against 5.2 alone is refused for the machine type and the command 5.2 lacks, and a 5.2
/// stream loads on 11.1 as far as the release alone tells.
#[test]
fn every_bundled_release_is_recognised_and_known_alone() {
    let src = fixture(STREAM_10);
    for (release, classes) in [("5.2", 208), ("7.2", 213), ("10.0", 230), ("11.1", 236)] {
        let dump = release_schema(&format!("qemu{release}-pc-q35-{release}.json.gz"));
        let (_, report) = compat_json(&src, &dump);
        let guess = &report["destination"]["release"];
        assert_eq!(guess["release"], release, "{guess}");
        assert_eq!(guess["certainty"], "exact", "{guess}");
        assert!(
            guess["how"]
                .as_str()
                .unwrap()
                .contains(&format!("all {classes} device classes")),
            "{guess}"
        );
    }
    let new = fixture("releases/qemu11.1-split-inflight.rings.mig.gz");
    let out = run(&["compat", "--json", "--dst-version", "5.2", &new], None);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let messages = qemu_messages(&report);
    assert_eq!(
        messages,
        [
            "Machine type received is 'pc-q35-11.1' and local is 'pc-q35-5.2'",
            "MIG_CMD 0xb unknown (len 0x0)"
        ]
    );
    let old = fixture("releases/qemu5.2-split-inflight.rings.mig.gz");
    let out = run(&["compat", "--dst-version", "11.1", &old], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The problem kinds `compat --json SRC DST` reports, by field.
fn problem_fields(src: &str, dst: &str) -> Vec<String> {
    let (_, report) = compat_json(src, dst);
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Streams of 5.2 and 11.1 against their own release's dump (pc and q35): only what QEMU
/// itself refuses (5.2's misnamed balloon subsection, packed-ring ndescs before the element);
/// 11.1's arrays of structs listed element by element without an index (AHCI's ports, IDE's
/// drives) are one array, and 5.2's PS/2 state (`common`) is the struct 7.2 and later read
/// as `parent_obj`.
#[test]
fn release_streams_against_their_own_and_newer_releases() {
    for release in ["5.2", "11.1"] {
        for scenario in [
            "split-inflight",
            "packed-inflight",
            "scsi-inflight",
            "booted-q35-idle",
            "booted-pc-idle",
        ] {
            let src = fixture(&format!("releases/qemu{release}-{scenario}.rings.mig.gz"));
            let family = if scenario.contains("-pc-") {
                "pc-i440fx"
            } else {
                "pc-q35"
            };
            let dst = release_schema(&format!("qemu{release}-{family}-{release}.json.gz"));
            let expected: Vec<&str> = match (release, scenario) {
                (_, "packed-inflight") => vec!["ndescs"],
                ("5.2", s) if s.starts_with("booted") => vec!["vitio-balloon-device/page-poison"],
                _ => vec![],
            };
            assert_eq!(problem_fields(&src, &dst), expected, "{release} {scenario}");
        }
    }
    let src = fixture("releases/qemu5.2-split-inflight.rings.mig.gz");
    for newer in ["7.2", "10.0", "11.1"] {
        let dst = release_schema(&format!("qemu{newer}-pc-q35-{newer}.json.gz"));
        assert_eq!(problem_fields(&src, &dst), ["name"], "5.2 -> {newer}");
    }
}

/// `compat --to X.Y` needs no file: the destination is the dump vmstate bundles of X.Y
/// running the stream's machine type when X.Y has it, else X.Y's newest of its family.
#[test]
fn compat_to_a_release_uses_the_bundled_dump_of_the_machine_it_runs() {
    let old = fixture("releases/qemu5.2-split-inflight.rings.mig.gz");
    let new = fixture("releases/qemu11.1-split-inflight.rings.mig.gz");
    let to = |src: &str, args: &[&str]| -> (i32, Value) {
        let mut all = vec!["compat", "--json", src];
        all.extend_from_slice(args);
        let out = run(&all, None);
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), report)
    };
    let (code, report) = to(&old, &["--to", "11.1"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["destination"]["machine"], "pc-q35-5.2");
    assert_eq!(
        report["destination"]["kind"],
        "-dump-vmstate bundled with vmstate"
    );

    let (code, report) = to(&new, &["--to", "7.2"]);
    assert_eq!(code, 1);
    assert_eq!(report["destination"]["machine"], "pc-q35-7.2");
    let messages = qemu_messages(&report);
    assert_eq!(
        messages,
        [
            "Machine type received is 'pc-q35-11.1' and local is 'pc-q35-7.2'",
            "MIG_CMD 0xb unknown (len 0x0)"
        ]
    );

    // A machine type the release lacks: QEMU does not start, and that is all there is.
    let (code, report) = to(&new, &["--to", "7.2", "--machine", "pc-q35-11.1"]);
    assert_eq!(code, 1);
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["qemu_message"], "unsupported machine type");
    // `pc` is the release's newest i440fx machine.
    let (_, report) = to(&old, &["--to", "11.1", "--machine", "pc"]);
    assert_eq!(report["destination"]["machine"], "pc-i440fx-11.1");
    // No dump of that machine type bundled: the release alone, said so.
    let (code, report) = to(&new, &["--to", "11.1", "--machine", "pc-q35-6.2"]);
    assert_eq!(code, 0);
    assert!(
        report["unchecked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().unwrap().contains("pc-q35-6.2 is bundled")),
        "{report:#}"
    );
    let out = run(&["compat", &new, "--to", "8.1"], None);
    assert_eq!(out.status.code(), Some(2));

    // convert --target X.Y rewrites for the bundled destination; compat then agrees.
    let converted = cli::tmp("compat-to", "for-7.2.mig");
    let converted = converted.display().to_string();
    let out = run(&["convert", "--target", "7.2", &new, &converted], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, report) = to(&converted, &["--to", "7.2"]);
    assert_eq!(code, 0, "{report:#}");
}

/// A virtio-blk queue saved with more entries than the device allocates by default: QEMU
/// 11.1 refuses it ("vring.num ... exceeds allocated max"), 10.0 does not check.
#[test]
fn a_queue_larger_than_the_destination_allocates_is_refused_from_11_1() {
    let src = fixture("releases/qemu11.1-split-inflight.rings.mig.gz");
    let edited = cli::tmp("queue-size", "num-1024.mig");
    let edited = edited.display().to_string();
    cli::ok(&[
        "edit",
        &src,
        &edited,
        "--set",
        "virtio_devices[0].virtio.queues[0].num=1024",
    ]);
    let out = run(&["compat", "--json", &edited, "--to", "11.1"], None);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["field"], "queues[0].num");
    assert_eq!(
        problems[0]["qemu_message"],
        "VQ 0 vring.num 1024 exceeds allocated max 256"
    );
    let out = run(&["compat", &src, "--to", "11.1"], None);
    assert_eq!(out.status.code(), Some(0));
    let old = fixture("releases/qemu5.2-split-inflight.rings.mig.gz");
    let edited_old = cli::tmp("queue-size", "old-1024.mig");
    let edited_old = edited_old.display().to_string();
    cli::ok(&[
        "edit",
        &old,
        &edited_old,
        "--set",
        "virtio_devices[0].virtio.queues[0].num=1024",
    ]);
    let out = run(&["compat", &edited_old, "--to", "10.0"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
