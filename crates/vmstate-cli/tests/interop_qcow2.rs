//! qcow2 internal snapshots made by real QEMU (extended tier): `tests/interop/qcow2.py`
//! takes two `savevm` snapshots on images of every cluster layout (4 KiB, 64 KiB, 2 MiB,
//! extended L2), `vmstate dump` names the newest, `vmstate convert --snapshot` writes each
//! snapshot's state as a bare stream, and a fresh QEMU loads every one with `-incoming`.
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_qcow2 -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use interop::text;

#[test]
fn qemu_loads_the_state_of_every_savevm_snapshot_vmstate_extracts() {
    if !support::extended_tier() {
        eprintln!("NOTE: extended-tier test `interop_qcow2` not run: set CI=true (it runs QEMU)");
        return;
    }
    let root = support::repo_root();
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let run = interop::run_suite::<&str>(
        &root.join("tests/interop/qcow2.py"),
        &tmp.join("interop_qcow2"),
        &[],
        "qcow2 suite",
        "QEMU or qemu-img",
    );
    let layouts: Vec<&str> = run.results.iter().map(|r| text(r, "layout")).collect();
    assert_eq!(layouts, ["4k", "64k", "2m", "extended-l2"]);
    for r in &run.results {
        let layout = text(r, "layout");
        assert_eq!(r["dump_exit"], 0, "{layout}: dump");
        assert!(
            text(r, "dump_container").contains("2 internal snapshot(s): snapshot 2 \"second\""),
            "{layout}: {}",
            text(r, "dump_container")
        );
        assert!(
            text(r, "dump_stderr").contains("reading snapshot 2 \"second\", the newest of 2"),
            "{layout}: {}",
            text(r, "dump_stderr")
        );
        for key in ["first", "2"] {
            let s = &r["snapshots"][key];
            assert_eq!(s["convert_exit"], 0, "{layout} {key}: {s}");
            assert_eq!(
                s["loaded_runstate"], "prelaunch",
                "{layout} {key}: QEMU did not load the extracted state: {s}"
            );
        }
        assert_eq!(r["ok"], true, "{layout}");
    }
    run.finish();
}
