//! Element decoder: arbitrary bytes, as they are and stretched to each layout's size.
//!
//! Invariants: nothing panics; whatever decodes re-encodes, and the re-encoded bytes decode
//! to the same element (the encoder's output is canonical).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::element::{self, Layout, LayoutChoice};
use vmstate::wire::{Reader, Writer};

fuzz_target!(|data: &[u8]| {
    let _ = element::choose_layout(data, LayoutChoice::Auto);
    for layout in Layout::ALL {
        let _ = element::decode(&mut Reader::new(data), layout);

        // Fuzzed bytes rarely have an element's exact size: lay them over a zeroed element so
        // the counters, addresses and lengths themselves get explored.
        let mut blob = vec![0u8; layout.size()];
        let n = data.len().min(blob.len());
        blob[..n].copy_from_slice(&data[..n]);
        let Ok(decoded) = element::decode(&mut Reader::new(&blob), layout) else {
            continue;
        };
        let mut writer = Writer::new();
        element::encode(&decoded.element, layout, &mut writer)
            .expect("a decoded element re-encodes in its own layout");
        let again = element::decode(&mut Reader::new(writer.as_bytes()), layout)
            .expect("the encoder's output decodes");
        assert_eq!(again.element, decoded.element);
        assert!(again.notes.is_empty(), "the encoder writes canonical zeros");
    }
});
