//! The `vmstate element` commands as a user runs them: output, exit codes and messages.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::process::Output;

fn vmstate(args: &[&str], stdin: Option<&[u8]>) -> Output {
    cli::run(args, stdin)
}

fn fixture(name: &str) -> String {
    support::fixture(&format!("elements/{name}"))
        .to_string_lossy()
        .into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    cli::tmp("cli_element", name)
}

#[test]
fn decode_prints_the_documented_json() {
    let example = support::repo_root().join("examples/inflight-element-qemu7.2-x86_64.bin");
    let out = vmstate(&["element", "decode", example.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["layout"], "stable");
    assert_eq!(v["index"], 7);
    assert_eq!(v["out"][1]["addr"], 0x1c42000);
    assert_eq!(v["out"][1]["len"], 122_880);
    assert_eq!(v["in"][0]["addr"], 0x232cd10);
    assert_eq!(v["out"].as_array().unwrap().len(), 4);
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);
}

#[test]
fn decode_detects_every_layout_and_accepts_a_forced_one() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("element.json")).unwrap()).unwrap();
    for layout in ["stable", "lp64-be", "i386", "ilp32-le", "ilp32-be"] {
        let file = fixture(&format!("element-{layout}.bin"));
        for args in [
            vec!["element", "decode", &file],
            vec!["element", "decode", "--layout", layout, &file],
        ] {
            let out = vmstate(&args, None);
            assert_eq!(out.status.code(), Some(0), "{layout}");
            let v = json(&out);
            assert_eq!(v["layout"], layout);
            assert_eq!(v["index"], expected["index"]);
            assert_eq!(v["out"], expected["out"]);
            assert_eq!(v["in"], expected["in"]);
        }
    }
}

#[test]
fn notes_go_to_stderr_and_keep_exit_0() {
    let out = vmstate(
        &["element", "decode", &fixture("element-i386-dirty.bin")],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.lines().all(|l| l.starts_with("note: element.")),
        "{stderr}"
    );
    assert!(stderr.contains("iov_base"), "{stderr}");
    assert_eq!(json(&out)["layout"], "i386");
}

#[test]
fn bad_counts_exit_2_with_one_line_naming_field_and_offset() {
    let mut blob = std::fs::read(fixture("element-stable.bin")).unwrap();
    blob[8..12].copy_from_slice(&5000u32.to_le_bytes());
    let path = tmp("bad-in-num.bin");
    std::fs::write(&path, &blob).unwrap();
    let out = vmstate(
        &[
            "element",
            "decode",
            "--layout",
            "stable",
            path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr
            .starts_with("error: element.in_num at offset 8: count 5000 exceeds the maximum 1024"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn truncated_and_oversized_input_exit_2() {
    let blob = std::fs::read(fixture("element-stable.bin")).unwrap();
    let out = vmstate(
        &["element", "decode", "--layout", "stable", "-"],
        Some(&blob[..30_000]),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("element.in_sg at offset 16400"), "{stderr}");

    let out = vmstate(&["element", "decode", "-"], Some(&blob[..30_000]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no element layout has a size of 30000"));

    let mut longer = blob.clone();
    longer.push(0);
    let out = vmstate(
        &["element", "decode", "--layout", "stable", "-"],
        Some(&longer),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 unexpected byte(s)"));

    let out = vmstate(&["element", "decode", "/nonexistent/blob"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec!["element", "decode", "--layout", "vax", "x"],
        vec!["element", "frobnicate"],
        vec!["element", "encode", "x"],
    ] {
        let out = vmstate(&args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!(vmstate(&["--help"], None).status.code(), Some(0));
}

#[test]
fn encode_converts_a_legacy_element_to_the_stable_bytes() {
    let decoded = vmstate(
        &["element", "decode", &fixture("element-i386-dirty.bin")],
        None,
    );
    let json_path = tmp("i386.json");
    std::fs::write(&json_path, &decoded.stdout).unwrap();
    let out_path = tmp("stable.bin");
    let out = vmstate(
        &[
            "element",
            "encode",
            "--layout",
            "stable",
            json_path.to_str().unwrap(),
            "-o",
            out_path.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&out_path).unwrap() == std::fs::read(fixture("element-stable.bin")).unwrap()
    );

    // Without --layout the JSON's own layout is kept; through standard input and output.
    let out = vmstate(
        &["element", "encode", "-", "-o", "-"],
        Some(&decoded.stdout),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == std::fs::read(fixture("element-i386.bin")).unwrap());

    // A JSON without a layout is written in the stable layout.
    let plain = std::fs::read(fixture("element.json")).unwrap();
    let out = vmstate(&["element", "encode", "-", "-o", "-"], Some(&plain));
    assert!(out.stdout == std::fs::read(fixture("element-stable.bin")).unwrap());
}

#[test]
fn encode_rejects_invalid_elements_and_json() {
    let big_len = br#"{"index": 1, "out": [{"addr": 0, "len": 4294967296}], "in": []}"#;
    let out = vmstate(
        &["element", "encode", "--layout", "i386", "-", "-o", "-"],
        Some(big_len),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("element.out_sg[0].iov_len"));
    assert!(out.stdout.is_empty());

    let typo = br#"{"index": 1, "outt": [], "in": []}"#;
    let out = vmstate(&["element", "encode", "-", "-o", "-"], Some(typo));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn detect_lists_candidates() {
    let out = vmstate(
        &[
            "element",
            "detect",
            "--json",
            &fixture("element-lp64-be.bin"),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    assert_eq!(v["chosen"], "lp64-be");
    assert_eq!(v["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(v["candidates"][0]["layout"], "stable");
    assert_eq!(v["candidates"][0]["plausible"], false);

    let zeros = vec![0u8; 32_784];
    let out = vmstate(&["element", "detect", "-"], Some(&zeros));
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ilp32-le  ruled out") && stdout.contains("ilp32-be  ruled out"),
        "{stdout}"
    );
}
