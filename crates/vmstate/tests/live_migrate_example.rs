//! The live-migration example run as its users run it: migrations with requests in flight,
//! cut connections, a saved stream restored later, and an edited one refused.

use std::path::PathBuf;
use std::process::Command;

/// The example's binary, which `cargo test` builds beside the tests.
fn example() -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join("live-migrate");
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        // `cargo test` builds examples, `cargo test --test NAME` does not.
        if !path.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let status = Command::new(cargo)
                .args(["build", "-p", "vmstate", "--example", "live-migrate"])
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    assert!(path.exists(), "{} not built", path.display());
    path
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(example()).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SMALL: &[&str] = &["--queues", "2", "--queue-size", "64", "--requests", "400"];

#[test]
fn migrates_with_requests_in_flight_and_completes_every_write_once() {
    let (code, stdout, stderr) = run(SMALL);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout.lines().last(),
        Some("migrated: submitted 400, completed once 400, lost 0, duplicated 0, disk verified")
    );
    let in_flight: u64 = stderr
        .split(" request(s) in flight at the switch")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(in_flight > 0, "{stderr}");
}

#[test]
fn a_cut_connection_is_retried_at_any_byte() {
    for cut in ["0", "17", "4500", "300000", "99999999999"] {
        let mut args = SMALL.to_vec();
        args.extend(["--cut-at", cut, "--seed", "5"]);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(0), "cut at {cut}: {stdout}{stderr}");
        assert_eq!(
            stdout.lines().last(),
            Some("migrated: submitted 400, completed once 400, lost 0, duplicated 0, disk verified, retries 1"),
            "cut at {cut}: {stderr}"
        );
        assert!(
            stderr.contains("destination refused the stream") || stderr.contains("never said go"),
            "cut at {cut}: {stderr}"
        );
    }
}

#[test]
fn a_saved_stream_restores_later_and_an_edited_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vm.mig");
    let file = file.to_str().unwrap();
    let mut args = SMALL.to_vec();
    args.extend(["--save-stream", file]);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let (code, stdout, stderr) = run(&["--restore-from", file]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.ends_with("lost 0, duplicated 0, disk verified\n"),
        "{stdout}"
    );

    // Every descriptor of queue 0 in the last copy of its page now points elsewhere.
    let mut bytes = std::fs::read(file).unwrap();
    // Its record: offset 0x10000 of block ram@0x0, a page, with the block named or not.
    let continued = (0x1_0000u64 | 0x08 | 0x20).to_be_bytes();
    let mut named = (0x1_0000u64 | 0x08).to_be_bytes().to_vec();
    named.push(7);
    named.extend_from_slice(b"ram@0x0");
    let last = |pattern: &[u8]| {
        bytes
            .windows(pattern.len())
            .rposition(|w| w == pattern)
            .map(|at| at + pattern.len())
    };
    let page = last(&continued)
        .max(last(&named))
        .expect("the descriptor table's page");
    for k in 0..64 {
        bytes[page + 16 * k + 1] ^= 0x10;
    }
    std::fs::write(file, &bytes).unwrap();
    let (code, stdout, stderr) = run(&["--restore-from", file]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("requests["),
        "{stderr}"
    );
}
