//! virtio devices through the command line: `dump` shows them, `convert` changes element
//! layouts and the packed-ring ndescs order, `edit` changes one field and nothing else.

#[path = "../../vmstate/tests/support/mod.rs"]
mod support;

mod cli;

use cli::{dump_json, gunzip, ok};

use std::path::PathBuf;
use std::process::Output;

fn vmstate(args: &[&str]) -> Output {
    cli::run(args, None)
}

fn stripped(name: &str) -> String {
    support::fixture(&format!("stripped/qemu7.2-{name}.stripped.mig.gz"))
        .to_string_lossy()
        .into_owned()
}

fn tmp(name: &str) -> PathBuf {
    cli::tmp("cli_virtio", name)
}

fn blk(json: &serde_json::Value) -> &serde_json::Value {
    json["virtio_devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["virtio"]["device"] == "virtio-blk")
        .map(|d| &d["virtio"])
        .unwrap()
}

#[test]
fn dump_shows_queues_and_requests() {
    let text = String::from_utf8(ok(&["dump", &stripped("blk-inflight-split")]).stdout).unwrap();
    assert!(text.contains("0000:00:01.0/virtio-blk"), "{text}");
    assert!(text.contains("queue 0: num 256 desc 0x2318000"), "{text}");
    assert!(
        text.contains("8 request(s) in flight (stable layout)"),
        "{text}"
    );

    let json = dump_json(&stripped("blk-inflight-split"));
    let device = blk(&json);
    let queue = &device["queues"][0];
    for key in [
        "index",
        "num",
        "desc",
        "avail",
        "used",
        "last_avail_idx",
        "vector",
    ] {
        assert!(queue.get(key).is_some(), "queue has no {key}");
    }
    assert_eq!(queue["last_avail_idx"], 9);
    let requests = device["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 8);
    assert_eq!(requests[0]["index"], 7);
    assert_eq!(requests[0]["out"][0]["addr"], 0x232cd00);
    assert!(device["inferred"].as_array().unwrap().len() >= 3);
}

#[test]
fn convert_with_decoding_is_byte_identical() {
    for name in [
        "blk-inflight-split",
        "blk-inflight-mq2",
        "blk-inflight-packed",
    ] {
        let out = tmp(&format!("{name}.reencoded.mig"));
        ok(&[
            "convert",
            "--reencode",
            &stripped(name),
            out.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == gunzip(stripped(name)),
            "{name}"
        );
    }
}

#[test]
fn layout_conversion_rewrites_sizes_and_comes_back() {
    let original = gunzip(stripped("blk-inflight-split"));
    let i386 = tmp("split.i386.mig");
    ok(&[
        "convert",
        "--to-layout",
        "i386",
        &stripped("blk-inflight-split"),
        i386.to_str().unwrap(),
    ]);
    let i386_bytes = std::fs::read(&i386).unwrap();
    // Eight elements, each 49,168 - 32,780 bytes shorter.
    assert_eq!(original.len() - i386_bytes.len(), 8 * (49_168 - 32_780));

    let json = dump_json(i386.to_str().unwrap());
    let device = blk(&json);
    assert_eq!(device["framing"]["layout"], "i386");
    let field_size = json["virtio_devices"][0]["field_size"].as_u64().unwrap();
    assert_eq!(field_size, 438_957 - 8 * (49_168 - 32_780));

    let back = tmp("split.back.mig");
    ok(&[
        "convert",
        "--to-layout",
        "stable",
        i386.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == original);

    // The layout can be forced on input; a wrong one is an error, not a wrong decode.
    ok(&["dump", "--from-layout", "i386", i386.to_str().unwrap()]);
    let wrong = vmstate(&["dump", "--from-layout", "stable", i386.to_str().unwrap()]);
    assert_eq!(wrong.status.code(), Some(2));
}

#[test]
fn packed_ndescs_can_move_to_where_qemus_loader_reads_it() {
    let after = tmp("packed.after.mig");
    ok(&[
        "convert",
        "--packed-ndescs-after",
        &stripped("blk-inflight-packed"),
        after.to_str().unwrap(),
    ]);
    let json = dump_json(after.to_str().unwrap());
    assert_eq!(blk(&json)["framing"]["ndescs"], "after-element");
    let original = dump_json(&stripped("blk-inflight-packed"));
    assert_eq!(blk(&original)["framing"]["ndescs"], "before-element");
    assert_eq!(blk(&json)["requests"], blk(&original)["requests"]);

    let before = tmp("packed.before.mig");
    ok(&[
        "convert",
        "--packed-ndescs-before",
        after.to_str().unwrap(),
        before.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&before).unwrap() == gunzip(stripped("blk-inflight-packed")));
}

#[test]
fn edit_to_the_same_value_is_identical_and_to_another_changes_only_that_field() {
    let input = stripped("blk-inflight-split");
    let original = gunzip(&input);
    let same = tmp("edit.same.mig");
    ok(&[
        "edit",
        &input,
        same.to_str().unwrap(),
        "--set",
        "virtio_devices[0].virtio.queues[0].last_avail_idx=9",
    ]);
    assert!(std::fs::read(&same).unwrap() == original);

    let changed = tmp("edit.changed.mig");
    ok(&[
        "edit",
        &input,
        changed.to_str().unwrap(),
        "--set",
        "virtio_devices[0000:00:01.0/virtio-blk].virtio.queues[0].last_avail_idx=0x1234",
    ]);
    let edited = std::fs::read(&changed).unwrap();
    assert_eq!(edited.len(), original.len());
    let differing: Vec<usize> = (0..edited.len())
        .filter(|&i| edited[i] != original[i])
        .collect();
    assert!(
        !differing.is_empty() && differing.len() <= 2,
        "{differing:?}"
    );

    let before = dump_json(&input);
    let after = dump_json(changed.to_str().unwrap());
    assert_eq!(blk(&after)["queues"][0]["last_avail_idx"], 0x1234);
    let mut expected = blk(&before).clone();
    expected["queues"][0]["last_avail_idx"] = 0x1234.into();
    assert_eq!(blk(&after)["queues"], expected["queues"]);
    assert_eq!(blk(&after)["requests"], blk(&before)["requests"]);
}

#[test]
fn edit_of_an_element_segment_and_bad_paths() {
    let input = stripped("blk-inflight-split");
    let out = tmp("edit.segment.mig");
    ok(&[
        "edit",
        &input,
        out.to_str().unwrap(),
        "--set",
        "virtio_devices[0].virtio.requests[1].out[2].len=4096",
    ]);
    let after = dump_json(out.to_str().unwrap());
    assert_eq!(blk(&after)["requests"][1]["out"][2]["len"], 4096);

    for bad in [
        "virtio_devices[0].virtio.queues[5].num=1",
        "virtio_devices[0].virtio.queues[0].last_avail_idx=70000",
        "virtio_devices[0].virtio.frobs=1",
        "virtio_devices[9].virtio.status=1",
        "status=1",
    ] {
        let result = vmstate(&["edit", &input, out.to_str().unwrap(), "--set", bad]);
        assert_eq!(result.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(
            stderr.starts_with("error: ") && stderr.lines().count() == 1,
            "{bad}: {stderr}"
        );
    }
}

#[test]
fn assumptions_settle_or_refuse() {
    let input = stripped("blk-inflight-mq2");
    ok(&[
        "dump",
        "--assume",
        "0000:00:01.0/virtio-blk:num-queues=2",
        &input,
    ]);
    // Contradicting the stream is an error, not a wrong decode.
    let out = vmstate(&[
        "dump",
        "--assume",
        "0000:00:01.0/virtio-blk:num-queues=1",
        &input,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = vmstate(&["dump", "--assume", "nonsense", &input]);
    assert_eq!(out.status.code(), Some(2));
}

/// virtio-scsi's requests live in the disk's section: dump shows them with the element
/// shape of blk's requests, convert changes their layout (and the description's sizes of
/// the field and its struct) and back to the same bytes, edit changes one of them.
#[test]
fn scsi_requests_dump_convert_and_edit() {
    let input = stripped("scsi-inflight");
    let json = dump_json(&input);
    let disks = json["scsi_requests"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0]["hba"], "0000:00:01.0/virtio-scsi");
    let requests = disks[0]["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    for r in requests {
        assert_eq!(r["queue"], 2);
        assert!(r["index"].is_u64() && r["out"].is_array() && r["in"].is_array());
    }
    let text = String::from_utf8(ok(&["dump", &input]).stdout).unwrap();
    assert!(
        text.contains("virtio-scsi requests in SCSI disk sections"),
        "{text}"
    );

    let i386 = tmp("scsi-i386.mig");
    let back = tmp("scsi-back.mig");
    ok(&[
        "convert",
        "--to-layout",
        "i386",
        &input,
        i386.to_str().unwrap(),
    ]);
    let converted = dump_json(i386.to_str().unwrap());
    assert_eq!(converted["scsi_requests"][0]["framing"]["layout"], "i386");
    assert_eq!(
        converted["scsi_requests"][0]["requests"],
        json["scsi_requests"][0]["requests"]
    );
    ok(&[
        "convert",
        "--to-layout",
        "stable",
        i386.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == gunzip(&input));

    let edited = tmp("scsi-edited.mig");
    ok(&[
        "edit",
        &input,
        edited.to_str().unwrap(),
        "--set",
        "scsi_requests[0].requests[1].tag=7",
    ]);
    let after = dump_json(edited.to_str().unwrap());
    assert_eq!(after["scsi_requests"][0]["requests"][1]["tag"], 7);
    assert_eq!(
        after["scsi_requests"][0]["requests"][0],
        json["scsi_requests"][0]["requests"][0]
    );
}

/// A throttled virtio-serial port's element converts like any other.
#[test]
fn serial_element_converts_and_comes_back() {
    let input = stripped("serial-throttled");
    let json = dump_json(&input);
    let serial = json["virtio_devices"][0]["virtio"]["serial"].clone();
    assert_eq!(serial["ports"][0]["popped"]["queue"], 5);
    let be = tmp("serial-be.mig");
    let back = tmp("serial-back.mig");
    ok(&[
        "convert",
        "--to-layout",
        "lp64-be",
        &input,
        be.to_str().unwrap(),
    ]);
    let converted = dump_json(be.to_str().unwrap());
    let again = &converted["virtio_devices"][0]["virtio"]["serial"];
    assert_eq!(again["framing"]["layout"], "lp64-be");
    assert_eq!(again["ports"], serial["ports"]);
    ok(&[
        "convert",
        "--to-layout",
        "stable",
        be.to_str().unwrap(),
        back.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&back).unwrap() == gunzip(&input));
}
