//! RAM: fuzzed bytes as the payload of a RAM section (`START ram`, version 4) right after a
//! valid header, as a run of page records, and as an XBZRLE payload; streams that read are
//! placed in guest memory and read back, and extracted page by page (`extract_ram`) into
//! memory, each page within its block.
//!
//! Input: one byte choosing the page size (2^9 to 2^16), then the payload.
//!
//! Invariants: nothing panics, and no record sizes an allocation before the input holds it.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmstate::memory::GuestBytes;
use vmstate::wire::Reader;
use vmstate::{memory, stream};

/// Header, then section START (0x01), id 2, idstr "ram", instance 0, version 4.
const PREFIX: &[u8] = b"QEVM\0\0\0\x03\x01\0\0\0\x02\x03ram\0\0\0\0\0\0\0\x04";

/// Extracted pages, in memory.
#[derive(Default)]
struct Pages(std::collections::HashMap<(String, u64), Vec<u8>>);

impl vmstate::extract::PageTarget for Pages {
    fn write(&mut self, block: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.insert((block.to_owned(), offset), data.to_vec());
        Ok(())
    }
    fn zero(&mut self, block: &str, offset: u64, _len: u64) -> std::io::Result<()> {
        self.0.remove(&(block.to_owned(), offset));
        Ok(())
    }
    fn read(&mut self, block: &str, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if let Some(page) = self.0.get(&(block.to_owned(), offset)) {
            let n = buf.len().min(page.len());
            buf[..n].copy_from_slice(&page[..n]);
        }
        Ok(())
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&shift, payload)) = input.split_first() else {
        return;
    };
    let page_size = 1u64 << (9 + u32::from(shift % 8));

    let mut r = Reader::new(payload);
    for _ in 0..4096 {
        if r.remaining() == 0 || stream::read_page_record(&mut r, page_size).is_err() {
            break;
        }
    }
    let mut page = vec![0u8; page_size as usize];
    let _ = stream::apply_xbzrle(payload, 0, &mut page);

    let mut data = PREFIX.to_vec();
    data.extend_from_slice(payload);
    let Ok(parsed) = stream::read(&data) else {
        return;
    };
    let written = stream::write(&parsed, &data).expect("a stream that reads writes back");
    assert!(written == data, "written stream differs from the input");
    let _ = parsed.ram_summary();
    let mut target = Pages::default();
    if let Ok(blocks) = vmstate::extract::extract_ram(&parsed, &data, &mut target, &mut |_| {}) {
        let stream_page = parsed.page_size.bytes;
        for b in &blocks {
            let pages = b.used_length.div_ceil(stream_page);
            assert_eq!(b.data_pages + b.zero_pages + b.absent_pages, pages);
        }
        for (block, offset) in target.0.keys() {
            let len = blocks
                .iter()
                .find(|b| &b.name == block)
                .map(|b| b.used_length);
            assert!(
                len.is_some_and(|len| *offset < len),
                "a page outside its block"
            );
        }
    }
    let Ok(map) = memory::map_for(&parsed, &[], None) else {
        return;
    };
    let Ok(ram) = memory::GuestRam::from_stream(&parsed, &data, map, &mut |_| {}) else {
        return;
    };
    let mut buf = [0u8; 64];
    for gpa in [0u64, 0xfff, 0x1000, 0x7fff_ffc0, u64::MAX - 63] {
        let _ = ram.read(gpa, &mut buf);
        let _ = ram.is_ram(gpa, 64);
    }
});
