//! `vmstate check` as a user runs it: exit 0 when clean, 1 with findings, 2 when unreadable.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Output};

fn vmstate(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_vmstate"))
        .args(args)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

fn stripped(name: &str) -> String {
    support::fixture(&format!("stripped/qemu7.2-{name}.stripped.mig.gz"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_real_stream_checks_clean() {
    let out = vmstate(&["check", &stripped("blk-inflight-split")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("0000:00:01.0/virtio-blk: clean"), "{text}");
    assert!(text.contains("checked: 8 in-flight request(s)"), "{text}");
}

#[test]
fn a_broken_stream_exits_1_with_the_finding() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_check");
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("dup.mig");
    let out = vmstate(&[
        "edit",
        &stripped("blk-inflight-split"),
        broken.to_str().unwrap(),
        "--set",
        "virtio_devices[0].virtio.requests[2].index=7",
    ]);
    assert_eq!(out.status.code(), Some(0));

    let out = vmstate(&["check", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "finding: requests[2].index: head 7 of queue 0 is in flight twice [duplicate-head]"
        ),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("1 finding(s)"),
        "{stderr}"
    );

    let out = vmstate(&["check", "--json", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = &json["devices"][0]["findings"][0];
    assert_eq!(finding["rule"], "duplicate-head");
    assert_eq!(finding["path"], "requests[2].index");
}

#[test]
fn an_unreadable_stream_exits_2() {
    let out = vmstate(&["check", "/nonexistent.mig"]);
    assert_eq!(out.status.code(), Some(2));
}
