//! The JSON description (vmdesc trailer): fuzzed JSON text after the device state of a real
//! stripped stream, so the description's parser and the decoding of sections through the
//! description both see it. The device state keeps the stream's small sections (CPU, timers,
//! interrupt controllers, RAM block list: under 2 KiB each), so that each run spends its time
//! on the description rather than on copying large sections.
//!
//! Invariant: nothing panics; a stream that reads writes back to exactly its bytes.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vmstate::stream;

/// The real stream's header, configuration and small sections, and its EOF byte.
fn device_state() -> &'static [u8] {
    static CELL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CELL.get_or_init(|| {
        let data = common::stripped_serial();
        let parsed = stream::read(data).expect("the fixture reads");
        let mut out = data[..8].to_vec();
        for record in &parsed.records {
            let span = match record {
                stream::Record::Configuration(c) => c.span,
                stream::Record::Section(s) if s.span.len < 2048 => s.span,
                _ => continue,
            };
            out.extend_from_slice(&data[span.offset as usize..span.end() as usize]);
        }
        out.push(0);
        out
    })
}

fuzz_target!(|json: &[u8]| {
    let mut data = device_state().to_vec();
    data.push(0x06);
    data.extend_from_slice(&(json.len() as u32).to_be_bytes());
    data.extend_from_slice(json);
    let Ok(parsed) = stream::read(&data) else {
        return;
    };
    let written = stream::write(&parsed, &data).expect("a stream that reads writes back");
    assert!(written == data, "written stream differs from the input");
    common::read_decode_check(&data);
});
