//! `vmstate check` as a user runs it: exit 0 when clean, 1 with findings, 2 when unreadable.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::path::Path;
use std::process::Output;

fn vmstate(args: &[&str]) -> Output {
    cli::run(args, None)
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
    assert!(text.contains("checked: 8 in-flight element(s)"), "{text}");
}

/// `vmstate edit INPUT OUT --set SET` into this test binary's folder, as `name`: OUT.
fn edited(input: &str, name: &str, set: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_check");
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join(name).to_string_lossy().into_owned();
    let out = vmstate(&["edit", input, &out_path, "--set", set]);
    assert_eq!(out.status.code(), Some(0), "{set}");
    out_path
}

#[test]
fn a_broken_stream_exits_1_with_the_finding() {
    let broken = edited(
        &stripped("blk-inflight-split"),
        "dup.mig",
        "virtio_devices[0].virtio.requests[2].index=7",
    );
    let out = vmstate(&["check", &broken]);
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

    let out = vmstate(&["check", "--json", &broken]);
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

fn rings(name: &str) -> String {
    support::fixture(&format!("rings/qemu7.2-{name}.rings.mig.gz"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_stream_with_its_rings_checks_every_element() {
    let out = vmstate(&["check", &rings("blk-inflight-split")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("guest memory: q35 machine (pc-q35-7.2)"),
        "{text}"
    );
    assert!(
        text.contains("queue 0: 8 element(s) walked from their heads"),
        "{text}"
    );
    assert!(!text.contains("not checked"), "{text}");

    let out = vmstate(&["check", "--json", &rings("blk-inflight-mq2")]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["memory"]["map"]["regions"][0]["block"], "pc.ram");
    assert!(json["memory"]["pages_known"].as_u64().unwrap() > 0);
}

#[test]
fn a_scsi_command_block_the_guest_did_not_write_is_a_finding() {
    let cdb = edited(
        &rings("scsi-inflight"),
        "scsi-cdb.mig",
        "scsi_requests[0].requests[1].cdb=2a000000020000010000000000000000",
    );
    let out = vmstate(&["check", &cdb]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "finding: scsi_requests[0].requests[1].cdb: saved command block \
             2a000000020000010000, the guest's header at 0x236dbf8 has 2a000000020000020000: \
             QEMU rebuilds the request from the saved one [scsi-cdb]"
        ),
        "{text}"
    );
    // Half the blocks: scsi-disk's saved position (512 sectors to go) no longer fits.
    assert!(text.contains("[scsi-disk-position]"), "{text}");
    // Without guest memory the saved fields are still compared with each other.
    let read = edited(
        &stripped("scsi-inflight"),
        "scsi-read.mig",
        "scsi_requests[0].requests[1].cdb=28000000020000020000000000000000",
    );
    let out = vmstate(&["check", &read]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "the saved command 0x28 reads data, but the element's buffers carry data to the device"
        ),
        "{text}"
    );
    assert!(!text.contains("[scsi-cdb]"), "{text}");
}

#[test]
fn ram_rings_keeps_what_check_reads() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_check");
    std::fs::create_dir_all(&dir).unwrap();
    let again = dir.join("again.mig");
    let out = vmstate(&[
        "convert",
        "--ram",
        "rings",
        &rings("blk-inflight-packed"),
        again.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vmstate(&["check", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 element(s) matched by buffer id"));

    // Without any pages, the memory checks say they could not be made.
    let none = dir.join("none.mig");
    vmstate(&[
        "convert",
        "--ram",
        "none",
        &rings("blk-inflight-packed"),
        none.to_str().unwrap(),
    ]);
    let text =
        String::from_utf8_lossy(&vmstate(&["check", none.to_str().unwrap()]).stdout).into_owned();
    assert!(
        text.contains("not checked: queue 0: packed descriptor"),
        "{text}"
    );
}

/// Extended tier: `--ram rings` of every corpus stream is far smaller and still checks every
/// element.
#[test]
fn ram_rings_of_every_corpus_stream_checks_clean() {
    let Some(shared) = support::shared_dir("ram_rings_of_every_corpus_stream_checks_clean") else {
        return;
    };
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_check_corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let streams = support::corpus_streams(&shared.join("corpus"));
    assert_eq!(streams.len(), 16);
    for (name, path) in streams {
        let out_path = dir.join(format!("{name}.rings"));
        let out = vmstate(&[
            "convert",
            "--ram",
            "rings",
            path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let full = vmstate(&["dump", "--json", path.to_str().unwrap()]);
        let full: serde_json::Value = serde_json::from_slice(&full.stdout).unwrap();
        let size = std::fs::metadata(&out_path).unwrap().len();
        assert!(
            size * 2 < full["size"].as_u64().unwrap() || size < 600_000,
            "{name}: {size}"
        );
        let check = vmstate(&["check", out_path.to_str().unwrap()]);
        assert_eq!(check.status.code(), Some(0), "{name}");
        let text = String::from_utf8_lossy(&check.stdout);
        assert!(!text.contains("not checked"), "{name}: {text}");
    }
}
