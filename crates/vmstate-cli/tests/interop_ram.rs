//! Guest memory out, against QEMU's own dump (extended tier): `tests/interop/ram.py` boots
//! the corpus' tiny guest on QEMU 7.2, stops it, has QEMU write `dump-guest-memory` and then
//! migrate to a file; `vmstate ram extract --format elf` of that stream must equal QEMU's
//! dump page for page at every address it covers, and `--by block` must equal the ELF. Then
//! the same on bookworm-backports' QEMU 10.0 (unpacked by `tests/machines/make-machine-corpus.sh`,
//! which `.ci/run` runs first) with the mapped-ram capability: pages at fixed file offsets.
//! On 10.0 every conversion between RAM layouts is loaded back by QEMU and its memory dumped:
//! mapped-ram to page records, QEMU's own page records to mapped-ram, and a libvirt "sparse"
//! save image (QEMU's mapped-ram stream after libvirt's header) to a bare stream of either
//! layout; each dump must equal the first, and the sparse image must extract equal to it.
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_ram -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

#[test]
fn extracted_memory_equals_qemus_dump_of_the_same_guest() {
    let Some(shared) = support::shared_dir("interop_ram") else {
        return;
    };
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    // Where `make-machine-corpus.sh` (QEMU_VERSION=10.0) unpacks bookworm-backports' QEMU.
    let qemu10 = std::path::PathBuf::from(std::env::var("TMPDIR").unwrap_or("/tmp".into()))
        .join("machine-corpus-work/qemu-10.0/root");
    let run = interop::run_suite(
        &support::repo_root().join("tests/interop/ram.py"),
        &tmp.join("interop_ram"),
        &[
            "--assets".as_ref(),
            shared.join("corpus/assets").as_os_str(),
            "--qemu10".as_ref(),
            qemu10.as_os_str(),
        ],
        "ram suite",
        "QEMU or the guest",
    );
    let r = &run.results[0];
    let pages = r["pages"].as_u64().unwrap();
    // 128 MiB of pc.ram and the 256 KiB BIOS flash below 4 GiB.
    assert_eq!(pages, 32768 + 64, "{r}");
    assert_eq!(r["equal"].as_u64(), Some(pages), "{r}");
    assert_eq!(r["different"], 0, "{r}");
    assert_eq!(r["not_in_vmstate"], 0, "{r}");
    assert_eq!(r["block_file_equals_elf"], true, "{r}");

    let mapped = &run.results[1];
    assert_eq!(mapped["name"], "qemu10.0-mapped-ram", "{mapped}");
    assert_eq!(mapped["equal"].as_u64(), Some(pages), "{mapped}");
    let legs = mapped["layouts"].as_array().unwrap();
    let names: Vec<&str> = legs.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "mapped-ram-to-ordinary",
            "ordinary-to-mapped-ram",
            "sparse-image-to-stream",
            "sparse-image-to-ordinary",
            "sparse-image-extract"
        ]
    );
    for leg in legs {
        assert_eq!(leg["pages"].as_u64(), Some(pages), "{leg}");
        assert_eq!(leg["equal"].as_u64(), Some(pages), "{leg}");
        assert_eq!(leg["ok"], true, "{leg}");
    }
    run.finish();
}
