//! The commands on streams of other machines, as a user runs them: what `dump` says of each
//! transport, `check` with the board's memory map or without one, and the files that are not
//! bare migration streams.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use std::path::Path;
use std::process::Output;

fn vmstate(args: &[&str]) -> Output {
    cli::run(args, None)
}

fn machine(name: &str) -> String {
    support::fixture(&format!("machines/qemu7.2-{name}.mig.gz"))
        .to_string_lossy()
        .into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dump_names_each_transport_and_what_shapes_it() {
    for (name, expected) in [
        (
            "aarch64virt-mmio-inflight",
            "virtio-mmio@000000000a003e00/virtio-blk (section",
        ),
        (
            "aarch64virt-mmio-noguest-modern",
            "virtio-mmio, modern (v2) interface",
        ),
        ("armvirt-mmio-noguest", "virtio-mmio, legacy (v1) interface"),
        ("s390x-ccw-inflight", "/fe.0.0000/virtio-blk (section"),
        ("s390x-ccw-inflight", "virtio-ccw fe.0.0000, revision"),
        ("pseries-pci-noguest", "pci@800000020000000:00.0/virtio-blk"),
        ("aarch64virt-pci-inflight", "virtio-pci, MSI-X 2 vectors"),
    ] {
        let out = vmstate(&["dump", &machine(name)]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        let text = stdout(&out);
        assert!(
            text.contains(expected),
            "{name}: {expected:?} not in\n{text}"
        );
    }
    let out = vmstate(&["dump", &machine("s390x-ccw-inflight")]);
    let text = stdout(&out);
    assert!(text.contains("16 request(s) in flight"), "{text}");
    assert!(text.contains("s390-storage_attributes"), "{text}");
    let out = vmstate(&["dump", &machine("pseries-pci-noguest")]);
    assert!(
        stdout(&out).contains("hash page table of 2^"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_places_memory_by_board_and_walks_the_requests() {
    for (name, map) in [
        (
            "aarch64virt-mmio-inflight",
            "Arm virt machine (virt-7.2): mach-virt.ram from 1 GiB",
        ),
        ("aarch64virt-pci-inflight", "Arm virt machine"),
        (
            "s390x-ccw-inflight",
            "s390x machine (s390-ccw-virtio-7.2): s390.ram from 0",
        ),
    ] {
        let out = vmstate(&["check", &machine(name)]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!("guest memory: {map}")),
            "{name}: {text}"
        );
        assert!(
            text.contains("16 element(s) walked from their heads and compared segment by segment"),
            "{name}: {text}"
        );
    }
}

#[test]
fn an_edited_ccw_request_is_found() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_machines");
    std::fs::create_dir_all(&dir).unwrap();
    let edited = dir.join("ccw-edited.mig");
    let out = vmstate(&[
        "edit",
        &machine("s390x-ccw-inflight"),
        edited.to_str().unwrap(),
        "--set",
        "virtio_devices[/fe.0.0000/virtio-blk].virtio.requests[0].out[0].len=17",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", out);
    let out = vmstate(&["check", edited.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("[segment-mismatch]"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_machine_without_a_known_map_is_not_taken_for_a_pass() {
    let stream = support::fixture("machines-unmapped/qemu7.2-vexpress-a9-mmio-noguest.mig.gz");
    let out = vmstate(&["check", stream.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "guest memory: not available, rings and in-flight requests not checked: guest \
             memory map unknown for machine vexpress-a9"
        ),
        "{text}"
    );
    assert!(text.contains("--ram-map BLOCK@GPA"), "{text}");
    assert!(
        text.contains("checked on their saved fields only (no guest memory)"),
        "{text}"
    );
    // The map given by hand is used.
    let out = vmstate(&[
        "check",
        "--ram-map",
        "vexpress.highmem@0x60000000",
        stream.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("guest memory: given: vexpress.highmem@0x60000000"));
}

#[test]
fn a_qcow2_image_without_vm_state_says_so() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_machines");
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.qcow2");
    // A version 3 header with 64 KiB clusters and no snapshots.
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(512, 0);
    bytes[20..24].copy_from_slice(&16u32.to_be_bytes());
    std::fs::write(&image, &bytes).unwrap();
    let out = vmstate(&["dump", image.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains("no internal snapshot with VM state; it has none"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
