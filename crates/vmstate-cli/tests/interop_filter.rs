//! A live migration through `vmstate convert - -` (extended tier): `tests/interop/filter.py`
//! migrates the corpus' tiny guest, busy rewriting its memory, from one QEMU to another of
//! the same version three ways (through `cat`, through `convert --to-layout stable - -` and
//! through `convert --reencode - -`), once each, on QEMU 7.2 and on bookworm-backports' QEMU
//! 10.0 (unpacked by `tests/machines/make-machine-corpus.sh`, which `.ci/run` runs first).
//! Every migration must complete, every destination must run a guest that goes on ticking
//! with its memory intact, and a filtered destination must have received bytes before its
//! source finished sending: the filter streams the RAM rather than holding the whole stream.
//! With `--capture` the suite also keeps both ends of every writer: the stream QEMU sent
//! must hold the memory the stopped source dumps, and the destination must have received
//! what the same conversion of that stream makes from a file. The suite's timing figures are
//! printed, never asserted.
//!
//! Run it alone: `CI=true cargo test -p vmstate-cli --test interop_filter -- --nocapture`.

mod interop;
#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

use serde_json::Value;

fn check(results: &[Value], qemu: &str) {
    let ways: Vec<&str> = results.iter().map(|s| interop::text(s, "way")).collect();
    assert_eq!(ways, ["direct", "stable", "reencode"], "{qemu}");
    for s in results {
        let name = interop::text(s, "name");
        assert_eq!(interop::text(s, "qemu"), qemu, "{name}");
        let runs = s["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 1, "{name}");
        for r in runs {
            assert_eq!(r["failed"], Value::Null, "{name}: {r}");
            assert_eq!(
                interop::text(r, "source_status"),
                "completed",
                "{name}: {r}"
            );
            assert_eq!(
                interop::text(r, "destination_migration"),
                "completed",
                "{name}: {r}"
            );
            assert_eq!(
                interop::text(r, "destination_status"),
                "running",
                "{name}: {r}"
            );
            assert_eq!(
                r["guest_ticking"], true,
                "{name}: no tick after resume: {r}"
            );
            assert_eq!(
                r["guest_checked"], true,
                "{name}: no memory check after resume: {r}"
            );
            assert_eq!(r["guest_bad"], Value::Array(vec![]), "{name}: {r}");
            assert_eq!(interop::text(r, "writer_exit"), "0", "{name}: {r}");
            let capture = &r["capture"];
            assert_eq!(
                r["qemu_lost_writes"], false,
                "{name}: the stream QEMU sent differs from the memory it stopped with (QEMU 7.2's \
                 TCG dirty tracking, which the suite's RAM size works around?): {capture}"
            );
            // 256 MiB of guest RAM (less 64 KiB on 7.2) and the BIOS flash.
            let pages = capture["sent_pages"].as_u64().unwrap_or(0);
            assert!(pages > 65_000, "{name}: {pages} pages compared: {capture}");
            assert_eq!(
                capture["delivered_intact"], true,
                "{name}: the destination did not receive what the writer had to make: {capture}"
            );
            if interop::text(r, "way") != "direct" {
                assert_eq!(
                    r["received_before_source_done"], true,
                    "{name}: the destination got nothing before the source finished: {r}"
                );
            }
            assert_eq!(r["ok"], true, "{name}: {r}");
        }
    }
}

#[test]
fn a_live_migration_runs_through_the_filter() {
    let Some(shared) = support::shared_dir("interop_filter") else {
        return;
    };
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let script = support::repo_root().join("tests/interop/filter.py");
    let assets = shared.join("corpus/assets");
    // Where `make-machine-corpus.sh` (QEMU_VERSION=10.0) unpacks bookworm-backports' QEMU.
    let qemu10 = std::path::PathBuf::from(std::env::var("TMPDIR").unwrap_or("/tmp".into()))
        .join("machine-corpus-work/qemu-10.0/root");
    let legs: [(&str, Vec<&std::ffi::OsStr>); 2] = [
        ("qemu7.2", vec![]),
        ("qemu10.0", vec!["--qemu10".as_ref(), qemu10.as_os_str()]),
    ];
    for (qemu, extra) in legs {
        let mut args = vec![
            "--runs".as_ref(),
            "1".as_ref(),
            "--capture".as_ref(),
            "--assets".as_ref(),
            assets.as_os_str(),
        ];
        args.extend(extra);
        let run = interop::run_suite(
            &script,
            &tmp.join(format!("interop_filter-{qemu}")),
            &args,
            "filter suite",
            "QEMU or the guest",
        );
        check(&run.results, qemu);
        run.finish();
    }
}
