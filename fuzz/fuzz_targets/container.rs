//! Stream container parser: arbitrary bytes, raw and behind a valid header.
//!
//! Invariants: nothing panics; whatever reads writes back to exactly the bytes it was read
//! from (the model keeps everything, and the writer adds nothing).

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
}
