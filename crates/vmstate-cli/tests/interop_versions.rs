//! QEMU 10.0 and 7.2 on both sides (extended tier): `tests/interop/versions.py` makes streams
//! with requests in flight (virtio-blk split, two queues, packed; virtio-scsi) with each
//! release and the default machine type, loads each into the other release as written
//! (QEMU must refuse it with the message `vmstate compat` gave first) and after
//! `vmstate convert --target` with the destination's -dump-vmstate (`compat` must say
//! compatible, QEMU must load it and the guest finish every write after `cont`).
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_versions -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use interop::text;

#[test]
fn streams_of_one_release_load_into_the_other_after_convert_target_as_compat_predicts() {
    if !support::extended_tier() {
        eprintln!(
            "NOTE: extended-tier test `interop_versions` not run: set CI=true (it runs QEMU)"
        );
        return;
    }
    let Some(shared) = support::shared_dir("interop_versions") else {
        return;
    };
    let root = support::repo_root();
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let schemas = shared.join("schemas");
    let run = interop::run_suite(
        &root.join("tests/interop/versions.py"),
        &tmp.join("interop_versions"),
        &[std::ffi::OsStr::new("--schemas"), schemas.as_os_str()],
        "versions suite",
        "QEMU 10.0 or 7.2",
    );
    assert_eq!(run.results.len(), 12);
    for r in &run.results {
        let name = text(r, "name");
        let (from, to) = (text(r, "from"), text(r, "to"));
        let machine = |v: &str| {
            if v == "10.0" {
                "pc-q35-10.0"
            } else {
                "pc-q35-7.2"
            }
        };
        if name.ends_with("-as-written") {
            let expected = format!(
                "Machine type received is '{}' and local is '{}'",
                machine(from),
                machine(to)
            );
            assert_eq!(text(r, "compat_first"), expected, "{name}: {r}");
            assert_eq!(
                text(r, "qemu_first"),
                expected,
                "{name}: QEMU said otherwise"
            );
            assert_eq!(r["compat_exit"], 1, "{name}");
            let messages: Vec<&str> = r["compat"]["problems"]
                .as_array()
                .map(|p| {
                    p.iter()
                        .filter_map(|p| p["qemu_message"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            // 10.0 sends SWITCHOVER_START, which 7.2 does not know; 7.2 sends nothing 10.0 lacks.
            assert_eq!(
                messages.contains(&"MIG_CMD 0xb unknown (len 0x0)"),
                from == "10.0",
                "{name}: {messages:?}"
            );
        } else {
            assert_eq!(r["convert_exit"], 0, "{name}: {}", text(r, "convert_said"));
            assert!(text(r, "convert_said").contains("renamed"), "{name}");
            assert_eq!(r["compat_exit"], 0, "{name}: {}", r["compat"]);
            assert_eq!(r["loaded"], true, "{name}: QEMU did not load it");
        }
        assert_eq!(r["ok"], true, "{name}: {r}");
    }
    run.finish();
}
