//! Iterative sections other than RAM: fuzzed bytes as the payload of an
//! `s390-storage_attributes`, `spapr/htab`, `block` or `dirty-bitmap` section (the first byte
//! chooses which).
//!
//! Invariants: nothing panics; a payload that reads lies within the input, and reading
//! exactly its bytes again gives the same payload (the end marker is found where it was).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::stream::{self, IterativeFormat};
use vmstate::wire::Reader;

fuzz_target!(|input: &[u8]| {
    let Some((&selector, payload)) = input.split_first() else {
        return;
    };
    let format = match selector % 4 {
        0 => IterativeFormat::StorageAttributes,
        1 => IterativeFormat::Htab,
        2 => IterativeFormat::Block,
        _ => IterativeFormat::DirtyBitmap,
    };
    let Ok(read) = stream::read_iterative(&mut Reader::new(payload), format) else {
        return;
    };
    assert!(read.span.len <= payload.len() as u64);
    let exact = &payload[..read.span.len as usize];
    let again = stream::read_iterative(&mut Reader::new(exact), format).expect("reads again");
    assert_eq!(again, read);
});
