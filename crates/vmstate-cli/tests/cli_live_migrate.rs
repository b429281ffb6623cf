//! A stream the `live-migrate` example saved, read by the CLI: `dump` shows the requests in
//! flight at the switch, `check` walks their chains, and one edited by `vmstate edit` is
//! refused by the example's destination.

#[path = "../../vmstate/tests/live_migrate/mod.rs"]
mod live_migrate;

mod cli;

use live_migrate::{in_flight_at_switch, run};
use serde_json::Value;

const OPTIONS: &[&str] = &["--queues", "2", "--queue-size", "64", "--requests", "400"];
const QUEUES: u64 = 2;

/// A run of the example saved into `dir`: the stream's path and the requests in flight at the
/// switch, by the example's last line.
fn saved_run(dir: &std::path::Path) -> (String, u64) {
    let file = dir.join("vm.mig").to_string_lossy().into_owned();
    let mut args = OPTIONS.to_vec();
    args.extend(["--save-stream", &file]);
    let (code, stdout, stderr) = run(&args);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let in_flight = in_flight_at_switch(&stdout).unwrap();
    assert!(in_flight >= QUEUES, "{stdout}");
    (file, in_flight)
}

/// `vmstate edit FILE OUT --set ...` for each of `sets`, with the example's disk and driver
/// files beside OUT, so that `--restore-from OUT` runs.
fn edited(file: &str, out: &str, sets: &[String]) {
    let mut args = vec!["edit", file, out];
    for set in sets {
        args.extend(["--set", set]);
    }
    cli::ok(&args);
    for part in ["disk", "driver"] {
        std::fs::copy(format!("{file}.{part}"), format!("{out}.{part}")).unwrap();
    }
}

fn requests(dump: &Value) -> &Vec<Value> {
    dump["virtio_devices"][0]["virtio"]["requests"]
        .as_array()
        .unwrap()
}

#[test]
fn the_saved_stream_shows_its_requests_in_flight_and_check_walks_them() {
    let dir = tempfile::tempdir().unwrap();
    let (file, in_flight) = saved_run(dir.path());

    let dump = cli::dump_json(&file);
    let requests = requests(&dump);
    assert_eq!(requests.len() as u64, in_flight, "{dump}");
    for queue in 0..QUEUES {
        assert!(
            requests.iter().any(|r| r["queue"] == queue),
            "no request on queue {queue}: {dump}"
        );
    }
    for r in requests {
        // A write: header and data to the device, the status byte back.
        assert_eq!(r["out"].as_array().map(Vec::len), Some(2), "{r}");
        assert_eq!(r["in"][0]["len"], 1, "{r}");
    }

    let out = cli::ok(&["check", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 virtio device(s) checked, 0 finding(s)"),
        "{text}"
    );
    let walked: u64 = text
        .lines()
        .filter_map(|line| {
            line.split_once(" element(s) walked from their heads and compared")
                .and_then(|(before, _)| before.rsplit(' ').next()?.parse::<u64>().ok())
        })
        .sum();
    assert_eq!(walked, in_flight, "{text}");
}

#[test]
fn an_edited_element_address_is_refused_on_restore() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = saved_run(dir.path());
    let dump = cli::dump_json(&file);
    let moved = requests(&dump)[0]["out"][1]["addr"].as_u64().unwrap() + 0x1000;
    let bad = dir.path().join("bad.mig").to_string_lossy().into_owned();
    edited(
        &file,
        &bad,
        &[format!(
            "virtio_devices[0].virtio.requests[0].out[1].addr={moved:#x}"
        )],
    );

    let out = cli::run(&["check", &bad], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("requests[0].out[1]: saved {moved:#x}+"))
            && text.contains("[segment-mismatch]"),
        "{text}"
    );
    let (code, stdout, stderr) = run(&["--restore-from", &bad]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("requests[0].out[1]"),
        "{stderr}"
    );
    // The stream as saved still restores.
    let (code, stdout, stderr) = run(&["--restore-from", &file]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn a_stream_with_nothing_in_flight_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = saved_run(dir.path());
    // The requests dropped and each queue wound back to before them: a device that restores
    // clean and takes them off the ring again, as if it had drained nothing in flight.
    let dump = cli::dump_json(&file);
    let mut sets = vec!["virtio_devices[0].virtio.requests=[]".to_owned()];
    for queue in 0..QUEUES {
        let on_queue = requests(&dump)
            .iter()
            .filter(|r| r["queue"] == queue)
            .count() as u64;
        let last_avail = dump["virtio_devices"][0]["virtio"]["queues"][queue as usize]
            ["last_avail_idx"]
            .as_u64()
            .unwrap();
        let wound_back = (last_avail + 0x1_0000 - on_queue) % 0x1_0000;
        sets.push(format!(
            "virtio_devices[0].virtio.queues[{queue}].last_avail_idx={wound_back}"
        ));
    }
    let drained = dir
        .path()
        .join("drained.mig")
        .to_string_lossy()
        .into_owned();
    edited(&file, &drained, &sets);
    cli::ok(&["check", &drained]);

    let (code, stdout, stderr) = run(&["--restore-from", &drained]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(in_flight_at_switch(&stdout), Some(0), "{stdout}");
    assert!(
        stdout.contains("lost 0, duplicated 0, disk verified"),
        "{stdout}"
    );
    assert!(
        stderr.contains("no request in flight at the switch on queue(s) [0, 1]"),
        "{stderr}"
    );
}
