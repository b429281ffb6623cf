//! The live-migration example run as its users run it: migrations with requests in flight,
//! cut connections, a saved stream restored later, and an edited one refused.

mod live_migrate;

use live_migrate::{in_flight_at_switch, outcome, run, start};

const SMALL: &[&str] = &["--queues", "2", "--queue-size", "64", "--requests", "400"];

/// The last line of a run of `requests` that completed every one once with a verified disk,
/// up to the requests in flight at the switch.
fn migrated(requests: u64) -> String {
    format!(
        "migrated: submitted {requests}, completed once {requests}, lost 0, duplicated 0, \
         disk verified, in flight at the switch "
    )
}

#[test]
fn migrates_with_requests_in_flight_and_completes_every_write_once() {
    let (code, stdout, stderr) = run(SMALL);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with(&migrated(400)), "{stdout}");
    let restored = in_flight_at_switch(&stdout).unwrap();
    assert!(restored >= 2, "{stdout}");
    // What the source stopped with is what the destination restored.
    assert!(
        stderr.contains(&format!(" {restored} request(s) in flight at the switch")),
        "{stderr}"
    );
}

/// Options of a run and its queues: from the fewest requests that promise one in flight on
/// every queue to the defaults.
const RUNS: &[(&[&str], u64, u64)] = &[
    (&["--queues", "2", "--requests", "500"], 2, 500),
    (
        &["--queues", "4", "--queue-size", "16", "--requests", "8"],
        4,
        8,
    ),
    (
        &["--queues", "1", "--queue-size", "4", "--requests", "2"],
        1,
        2,
    ),
    (
        &[
            "--queues",
            "3",
            "--queue-size",
            "64",
            "--requests",
            "300",
            "--backend-latency-steps",
            "0",
        ],
        3,
        300,
    ),
    (&[], 4, 4000),
];

#[test]
fn every_queue_has_a_request_in_flight_at_the_switch_whatever_the_load() {
    for &(options, queues, requests) in RUNS {
        // Two at once, as on a loaded machine: the count depends on the options alone.
        for seeds in [["1", "2"], ["3", "7"]] {
            let children: Vec<_> = seeds
                .iter()
                .map(|seed| {
                    let mut args = options.to_vec();
                    args.extend(["--seed", seed]);
                    start(&args)
                })
                .collect();
            for (seed, child) in seeds.iter().zip(children) {
                let (code, stdout, stderr) = outcome(child.wait_with_output().unwrap());
                let what = format!("{options:?} --seed {seed}: {stdout}{stderr}");
                assert_eq!(code, Some(0), "{what}");
                assert!(
                    stdout
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .starts_with(&migrated(requests)),
                    "{what}"
                );
                let in_flight = in_flight_at_switch(&stdout).unwrap();
                assert!(in_flight >= queues, "{what}");
            }
        }
    }
}

#[test]
fn a_cut_connection_is_retried_at_any_byte() {
    for cut in ["0", "17", "4500", "300000", "99999999999"] {
        let mut args = SMALL.to_vec();
        args.extend(["--cut-at", cut, "--seed", "5"]);
        let (code, stdout, stderr) = run(&args);
        assert_eq!(code, Some(0), "cut at {cut}: {stdout}{stderr}");
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&migrated(400)) && last.ends_with(", retries 1"),
            "cut at {cut}: {stdout}{stderr}"
        );
        assert!(in_flight_at_switch(&stdout).unwrap() >= 2, "{stdout}");
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
    assert!(stdout.starts_with(&migrated(400)), "{stdout}");
    assert!(in_flight_at_switch(&stdout).unwrap() >= 2, "{stdout}");

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
