//! What wraps a stream: libvirt save image headers and the compressed payloads after them.
//!
//! Input: arbitrary bytes, raw, after a valid libvirt header prefix, and as the snapshot
//! table of a qcow2 header whose cluster size the first byte picks (L1 and L2 offsets then
//! point into the input itself). The first byte also picks a compression whose decoder gets
//! the rest of the input.
//!
//! Invariants: nothing panics, and no decoder produces more than its limit; a header that
//! parses encodes back to the bytes it was read from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::envelope::{Compression, Envelope};

/// The most a decoder may produce here.
const LIMIT: u64 = 1 << 22;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Most inputs fail at the magic: also try them as the rest of a libvirt header.
    let mut framed = b"LibvirtQemudSave\x02\0\0\0".to_vec();
    framed.extend_from_slice(data);
    check(&framed);
    if let Some(&pick) = data.first() {
        check(&qcow2_header(pick, data));
    }
    if let Some((&pick, rest)) = data.split_first() {
        let compression = Compression::ALL[usize::from(pick) % Compression::ALL.len()];
        let mut out = Vec::new();
        if let Ok(n) = compression.decompress(rest, &mut out, LIMIT) {
            assert!(n <= LIMIT && n == out.len() as u64);
        }
    }
});

/// A version 3 qcow2 header (clusters of 2^(9 + pick % 13) bytes, a 1 MiB disk, one
/// snapshot whose table entry starts right after the header), followed by `rest`.
fn qcow2_header(pick: u8, rest: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"QFI\xfb");
    h.extend(3u32.to_be_bytes());
    h.extend([0u8; 12]); // no backing file
    h.extend((9 + u32::from(pick % 13)).to_be_bytes());
    h.extend((1u64 << 20).to_be_bytes());
    h.extend([0u8; 4 + 4 + 8 + 8 + 4]); // crypt, L1, refcounts
    h.extend(1u32.to_be_bytes()); // one snapshot
    h.extend(112u64.to_be_bytes()); // right after the header
    h.extend([0u8; 8 * 3]); // feature words
    h.extend(4u32.to_be_bytes()); // refcount order
    h.extend(112u32.to_be_bytes()); // header length
    h.resize(112, 0);
    h.extend_from_slice(rest);
    h
}

fn check(data: &[u8]) {
    let Ok(envelope) = Envelope::identify(data) else {
        return;
    };
    if let Envelope::Qcow2 { image, .. } = &envelope {
        for snapshot in &image.snapshots {
            if let Ok(n) = image.read_vm_state(data, snapshot, &mut std::io::sink(), LIMIT) {
                assert_eq!(n, snapshot.vm_state_size);
            }
        }
        return;
    }
    let Ok((offset, compression)) = envelope.payload() else {
        return;
    };
    if let Envelope::Libvirt(image) = envelope.clone() {
        let header = image.encode().expect("a header that reads encodes");
        let start = usize::try_from(offset).expect("the offset is within the input");
        // The XML is kept up to its NUL: what follows the NUL in the data (padding) is
        // rewritten as zeros, so compare only what libvirt itself reads.
        assert_eq!(header.len(), start);
        // Version 1 headers have no format word (libvirt ignores what is there).
        if image.version == 2 {
            assert_eq!(header[..92], data[..92]);
        }
    }
    if let Some(compression) = compression {
        let rest = data.get(offset as usize..).unwrap_or(&[]);
        let _ = compression.decompress(rest, &mut Vec::new(), LIMIT);
    }
}
