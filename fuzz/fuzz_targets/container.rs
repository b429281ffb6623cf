//! Stream container parser: arbitrary bytes, raw and behind a valid header.
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
});

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
