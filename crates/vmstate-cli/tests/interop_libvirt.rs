//! libvirt save images from `virsh save` (extended tier): `tests/interop/libvirt.py` runs
//! Debian's libvirt daemon, saves a TCG domain in every format libvirt 9.0 writes (raw, gzip,
//! bzip2, xz, lzop), and for each `vmstate dump` names the container, `vmstate check` passes,
//! `vmstate convert` keeps the header, domain XML and stream, and `virsh restore` of the
//! converted image brings the domain back running.
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_libvirt -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use interop::text;

#[test]
fn virsh_restores_every_image_vmstate_rewrites() {
    let Some(shared) = support::shared_dir("interop_libvirt") else {
        return;
    };
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let run = interop::run_suite(
        &support::repo_root().join("tests/interop/libvirt.py"),
        &tmp.join("interop_libvirt"),
        &[
            "--assets".as_ref(),
            shared.join("corpus/assets").as_os_str(),
        ],
        "libvirt suite",
        "libvirt",
    );
    let formats: Vec<&str> = run.results.iter().map(|r| text(r, "format")).collect();
    assert_eq!(formats, ["raw", "gzip", "bzip2", "xz", "lzop"]);
    for r in &run.results {
        let format = text(r, "format");
        assert!(
            text(r, "container").contains(&format!(
                "domain vmstate-interop (3d1f6a0e-5b7c-4e2a-9f11-2c8d4e6b7a90), was running \
                 (resumed on restore), stream {format} at offset"
            )),
            "{format}: {}",
            text(r, "container")
        );
        assert_eq!(r["check_exit"], 0, "{format}: check");
        assert_eq!(
            r["same_stream"], true,
            "{format}: the stream inside changed"
        );
        assert_eq!(
            r["same_header_and_xml"], true,
            "{format}: header or XML changed"
        );
        assert_eq!(
            r["restore_exit"],
            0,
            "{format}: {}",
            text(r, "restore_stderr")
        );
        assert_eq!(text(r, "state_after_restore"), "running", "{format}");
    }
    run.finish();
}
