//! Checks against guest memory: a real stream with requests in flight and its ring pages,
//! patched at fuzzed places (the `virtio` field of its device, the guest pages it carries
//! (rings, indirect tables, request headers), or anywhere), read, decoded and checked with
//! its guest memory.
//!
//! Input: one byte choosing the stream, then patches of 7 to 14 bytes: a region byte (0 mod
//! 3: the device's `virtio` field; 1: a guest page, chosen by the offset; 2: the whole
//! stream), a 32-bit little-endian offset taken modulo the region, a length byte (1 to 8)
//! and that many bytes.
//!
//! Invariant: nothing panics, hangs or allocates without bound.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmstate::stream::{RamItem, RamRecordKind, SectionBody};
use vmstate::{devices, stream, wire};

/// Where the `virtio` field of each fixture's first virtio device lies.
fn fields() -> &'static [(usize, usize)] {
    static CELL: std::sync::OnceLock<Vec<(usize, usize)>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        common::rings()
            .iter()
            .map(|data| {
                let parsed = stream::read(data).expect("a fixture reads");
                let found = devices::decode_virtio(&parsed, &devices::DecodeOptions::default())
                    .expect("a fixture decodes");
                let first = found.first().expect("a fixture has a virtio device");
                (first.field_offset as usize, first.field_size as usize)
            })
            .collect()
    })
}

/// Where the data of each fixture's PAGE records lies: the guest pages it carries.
fn pages() -> &'static [Vec<(usize, usize)>] {
    static CELL: std::sync::OnceLock<Vec<Vec<(usize, usize)>>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        common::rings()
            .iter()
            .map(|data| {
                let parsed = stream::read(data).expect("a fixture reads");
                let page_size = parsed.page_size.bytes;
                let mut spans = Vec::new();
                for section in parsed.sections() {
                    let SectionBody::Ram(payload) = &section.body else {
                        continue;
                    };
                    for item in &payload.items {
                        let RamItem::Pages(run) = item else { continue };
                        let bytes = &data[run.span.offset as usize..run.span.end() as usize];
                        let mut r = wire::Reader::at(bytes, run.span.offset);
                        for _ in 0..run.count {
                            let record = stream::read_page_record(&mut r, page_size)
                                .expect("a fixture's page record reads");
                            if let RamRecordKind::Page { data: span } = record.kind {
                                spans.push((span.offset as usize, span.len as usize));
                            }
                        }
                    }
                }
                spans
            })
            .collect()
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, mut patches)) = input.split_first() else {
        return;
    };
    let which = usize::from(which) % common::rings().len();
    let mut data = common::rings()[which].clone();
    let (field_at, field_len) = fields()[which];
    while let [region, a, b, c, d, len, rest @ ..] = patches {
        let len = usize::from(*len % 8) + 1;
        let Some(bytes) = rest.get(..len) else { break };
        let offset = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
        let spans = &pages()[which];
        let at = match region % 3 {
            0 => field_at + offset % field_len,
            1 if !spans.is_empty() => {
                let (start, len) = spans[(offset >> 12) % spans.len()];
                start + offset % len
            }
            _ => offset % data.len(),
        };
        let end = (at + len).min(data.len());
        data[at..end].copy_from_slice(&bytes[..end - at]);
        patches = &rest[len..];
    }
    common::read_decode_check(&data);
});
