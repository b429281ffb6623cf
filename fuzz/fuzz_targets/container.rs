//! Stream container parser: arbitrary bytes, raw, behind a valid header, and as the RAM block
//! list of a real mapped-ram stream (its header, configuration with the `mapped-ram`
//! capability and `START ram` kept), whose pages are then walked.
//!
//! Invariants: nothing panics; whatever reads writes back to exactly the bytes it was read
//! from (the model keeps everything, and the writer adds nothing); with its RAM stripped it
//! still reads, with no pages, and writes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::stream;

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

fn check(data: &[u8]) {
    let Ok(parsed) = stream::read(data) else {
        return;
    };
    let written = stream::write(&parsed, data).expect("a stream that reads writes back");
    assert!(written == data, "written stream differs from the input");
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
