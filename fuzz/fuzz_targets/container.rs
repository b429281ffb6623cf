//! Stream container parser: arbitrary bytes, raw, behind a valid header, and as the RAM block
//! list of a real mapped-ram stream (its header, configuration with the `mapped-ram`
//! capability and `START ram` kept), whose pages are then walked.
//!
//! Invariants: nothing panics; whatever reads writes back to exactly the bytes it was read
//! from (the model keeps everything, and the writer adds nothing); with its RAM stripped it
//! still reads, with no pages, and writes back to itself. Written as page records it reads
//! as a stream without mapped-ram; written as mapped-ram further into a file (when its RAM is
//! small enough to hold) it reads there, with mapped-ram, and its block list unchanged.
//! Read in one pass, arriving a few bytes at a time, it gives the same model, and the bytes
//! handed on with the held end written back give the input; the one-pass reader refuses
//! only what it must (mapped-ram, a page size that only the description gives and the
//! records do not tell).

#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use vmstate::stream::{self, RamLayout, Stream, WriteOptions};

fuzz_target!(|data: &[u8]| {
    check(data);
    // Most inputs fail at the magic: also try them after a valid header.
    let mut framed = b"QEVM\0\0\0\x03".to_vec();
    framed.extend_from_slice(data);
    check(&framed);
    let mut mapped = MAPPED_PREFIX.to_vec();
    mapped.extend_from_slice(data);
    check(&mapped);
    if let Ok(parsed) = stream::read(&mapped) {
        let _ = stream::visit_page_records(&parsed, &mapped, &mut |_, _| Ok(()), &mut |_| {});
    }
});

/// The first 88 bytes of `tests/fixtures/ram/qemu10.0-mapped-ram-noguest.mig.gz`: the header,
/// the configuration (machine pc-q35-10.0, capability mapped-ram) and `START ram` (id 1,
/// version 4), up to the RAM block list.
const MAPPED_PREFIX: &[u8] = b"QEVM\0\0\0\x03\x07\0\0\0\x0bpc-q35-10.0\x05\x1aconfiguration/capabilities\0\0\0\x01\0\0\0\x01\x0amapped-ram\x01\0\0\0\x01\x03ram\0\0\0\0\0\0\0\x04";

/// An input that arrives in pieces of 1 to 13 bytes.
struct Pieces<'a> {
    data: &'a [u8],
    next: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.next = self.next % 13 + 1;
        let n = self.next.min(buf.len()).min(self.data.len());
        let (piece, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(piece);
        self.data = rest;
        Ok(n)
    }
}

fn one_pass(data: &[u8], mapped: Option<&Stream>) {
    let mut passed = Vec::new();
    let mut input = Pieces { data, next: 0 };
    let read = stream::read_one_pass(&mut input, 0, &mut |bytes| {
        passed.extend_from_slice(bytes);
        Ok(())
    })
    .and_then(|read| {
        let end = read.held.offset + read.held.bytes.len() as u64;
        stream::expect_input_end(&mut input, end).map(|()| read)
    });
    match read {
        Ok(read) => {
            assert_eq!(read.held.offset, passed.len() as u64);
            let mut out = passed;
            stream::write_held(&read.stream, &read.held, &mut out).expect("the held end writes");
            assert!(out == data, "one pass: written back differs from the input");
            if let Some(mapped) = mapped {
                assert!(
                    format!("{mapped:?}") == format!("{:?}", read.stream),
                    "one pass: the model differs from the mapped reader's"
                );
            }
        }
        Err(e) => {
            if let Some(mapped) = mapped {
                let message = e.to_string();
                assert!(
                    mapped.has_mapped_ram() || message.contains("page size"),
                    "one pass refuses what the mapped reader reads: {message}"
                );
            }
        }
    }
}

fn check(data: &[u8]) {
    let parsed = stream::read(data);
    one_pass(data, parsed.as_ref().ok());
    let Ok(parsed) = parsed else {
        return;
    };
    let written = stream::write(&parsed, data).expect("a stream that reads writes back");
    assert!(written == data, "written stream differs from the input");
    layouts(&parsed, data);
    // Without its pages a stream is still a stream, and stripping it again changes nothing.
    let mut stripped = parsed;
    stripped.strip_ram();
    let bytes = stream::write(&stripped, data).expect("a stripped stream writes");
    let reread = stream::read(&bytes).expect("a stripped stream reads");
    assert!(reread
        .ram_summary()
        .iter()
        .all(|b| b.pages + b.zero_pages + b.xbzrle_pages == 0));
    assert!(stream::write(&reread, &bytes).expect("writes again") == bytes);
}

/// Where the mapped-ram output is placed in its file, as after a libvirt image's header.
const FILE_OFFSET: u64 = 1000;

fn layouts(parsed: &Stream, data: &[u8]) {
    let options = WriteOptions {
        ram_layout: RamLayout::Records,
        file_offset: 0,
    };
    let mut records = Vec::new();
    if stream::write_with(parsed, data, &mut records, &options, &mut |_| {}).is_ok() {
        let reread = stream::read(&records).expect("page records written from a stream read");
        assert!(!reread.has_mapped_ram());
    }
    // Holes are zeros in memory: only streams that claim little RAM are laid out there.
    let blocks = vmstate::memory::ram_blocks(parsed);
    let ram: u64 = blocks
        .iter()
        .map(|(_, len)| *len)
        .fold(0, u64::saturating_add);
    if blocks.is_empty() || ram > 256 << 10 {
        return;
    }
    let mut file = Cursor::new(vec![0xAA; FILE_OFFSET as usize]);
    file.set_position(FILE_OFFSET);
    if vmstate::extract::write_mapped_ram(parsed, data, &mut file, &mut |_| {}).is_err() {
        return;
    }
    let bytes = file.into_inner();
    let inner = &bytes[FILE_OFFSET as usize..];
    let reread = stream::read_in_file(inner, FILE_OFFSET, &mut |_| {})
        .expect("a mapped-ram stream written reads where it was placed");
    assert!(reread.has_mapped_ram());
    assert!(vmstate::memory::ram_blocks(&reread) == blocks);
}
