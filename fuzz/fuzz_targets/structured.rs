//! Structure-aware: valid streams (the `rings` fixtures, requests in flight and ring pages)
//! whose decoded fields are set to fuzzed and boundary values through the editor, written
//! back by our own writer, then read, decoded and checked with their guest memory.
//!
//! Input: one byte choosing the stream, one choosing its virtio device, then operations of
//! 12 bytes: what to change, two index bytes, and a value byte plus a 64-bit little-endian
//! value (a boundary value when the value byte is odd).
//!
//! Invariants: nothing panics; whatever the editor and the writer accept reads back as a
//! stream (only the `virtio` field and its size in the description change).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmstate::devices::{self, DecodeOptions, VirtioSection};
use vmstate::stream::{self, Stream};
use vmstate::virtio::{DeviceState, QueueState};

struct Base {
    data: &'static [u8],
    model: Stream,
    found: Vec<VirtioSection>,
}

fn bases() -> &'static [Base] {
    static CELL: std::sync::OnceLock<Vec<Base>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        common::rings()
            .iter()
            .map(|data| {
                let model = stream::read(data).expect("a fixture reads");
                let found = devices::decode_virtio(&model, &DecodeOptions::default())
                    .expect("a fixture decodes");
                Base { data, model, found }
            })
            .collect()
    })
}

/// Field paths the editor takes; `{i}` and `{j}` are filled from the operation's index bytes.
const PATHS: [&str; 27] = [
    "status",
    "isr",
    "queue_sel",
    "guest_features",
    "transport.msix.config_vector",
    "queues[{i}].num",
    "queues[{i}].desc",
    "queues[{i}].last_avail_idx",
    "queues[{i}].vector",
    "queues[{i}].avail",
    "queues[{i}].used",
    "requests[{i}].index",
    "requests[{i}].queue",
    "requests[{i}].ndescs",
    "requests[{i}].out[{j}].addr",
    "requests[{i}].out[{j}].len",
    "requests[{i}].in[{j}].addr",
    "requests[{i}].in[{j}].len",
    "subsections[virtio/64bit_features].value",
    "subsections[virtio/device_endian].value",
    "serial.ports[{i}].id",
    "serial.ports[{i}].elem_popped",
    "serial.ports[{i}].popped.index",
    "serial.ports[{i}].popped.iov_idx",
    "serial.ports[{i}].popped.iov_offset",
    "serial.ports[{i}].popped.out[{j}].len",
    "serial.ports[{i}].popped.in[{j}].addr",
];

fn apply(section: &mut VirtioSection, op: &[u8; 12]) {
    let [what, i, j, pick, v @ ..] = *op;
    let raw = u64::from_le_bytes(v);
    let value = if pick % 2 == 1 {
        common::BOUNDARIES[(raw % common::BOUNDARIES.len() as u64) as usize]
    } else {
        raw
    };
    let device = &mut section.device;
    let count = |n: u64| usize::try_from(n % 2048).unwrap_or(0);
    match usize::from(what) % (PATHS.len() + 4) {
        // Counts the editor has no path for: queues, config bytes and requests.
        n if n == PATHS.len() => {
            let queues = count(value);
            let template = device.queues.first().cloned().unwrap_or(QueueState {
                num: 0,
                align: None,
                desc: 0,
                last_avail_idx: 0,
                vector: None,
            });
            device.queues.resize(queues, template);
        }
        n if n == PATHS.len() + 1 => device.config.0.resize(count(value) * 32, 0xa5),
        n if n == PATHS.len() + 2 => {
            if let DeviceState::Blk(blk) = &mut device.device {
                // Up to 63: past the 16 to 32 requests in flight in the fixtures and past
                // rings shrunk by the other edits, which is where the checks have logic. Each
                // request is a 49 KiB element, so lists of thousands would make each run cost
                // 50 to 100 MB of copying; those are the `virtio` target's and the
                // catalogue's (`unbounded request lists`) to cover.
                let requests = usize::try_from(value % 64).unwrap_or(0);
                match blk.requests.first().cloned() {
                    Some(first) => blk.requests.resize(requests, first),
                    None => blk.requests.clear(),
                }
            }
        }
        n if n == PATHS.len() + 3 => {
            if let Some(last) = device.queues.last_mut() {
                last.num = (value & 0xffff) as u32;
            }
        }
        n => {
            let path = PATHS[n]
                .replace("{i}", &(i % 8).to_string())
                .replace("{j}", &(j % 4).to_string());
            let _ = device.set(&path, &value.to_string());
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let [which, device, rest @ ..] = input else {
        return;
    };
    let mut ops: &[u8] = rest;
    let base = &bases()[usize::from(*which) % bases().len()];
    let mut section = base.found[usize::from(*device) % base.found.len()].clone();
    let mut steps = 0;
    while let Some((op, rest)) = ops.split_first_chunk::<12>() {
        apply(&mut section, op);
        ops = rest;
        steps += 1;
        if steps == 16 {
            break;
        }
    }
    let mut model = base.model.clone();
    if devices::store_virtio(&mut model, &section, None).is_err() {
        return;
    }
    let Ok(written) = stream::write(&model, base.data) else {
        return;
    };
    match stream::read(&written) {
        Ok(parsed) => common::decode_check(&parsed, &written),
        Err(e) => panic!("a stream our writer wrote does not read: {e}"),
    }
});
