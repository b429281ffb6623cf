//! Real streams the stream-level targets start from: the `rings` fixtures (requests in
//! flight, only ring pages kept) and a stripped stream, embedded and decompressed once.

#![allow(dead_code)]

use std::sync::OnceLock;

#[path = "../../../crates/vmstate/tests/support/mod.rs"]
mod support;

/// The `rings` fixtures, by name: every device with requests in flight, and its ring pages;
/// then streams of other machines (virtio-mmio on aarch64, virtio-ccw on s390x) with
/// virtio-blk requests in flight.
const RINGS: [(&str, &[u8]); 7] = [
    (
        "blk-inflight-split",
        include_bytes!("../../../tests/fixtures/rings/qemu7.2-blk-inflight-split.rings.mig.gz"),
    ),
    (
        "blk-inflight-mq2",
        include_bytes!("../../../tests/fixtures/rings/qemu7.2-blk-inflight-mq2.rings.mig.gz"),
    ),
    (
        "blk-inflight-packed",
        include_bytes!("../../../tests/fixtures/rings/qemu7.2-blk-inflight-packed.rings.mig.gz"),
    ),
    (
        "scsi-inflight",
        include_bytes!("../../../tests/fixtures/rings/qemu7.2-scsi-inflight.rings.mig.gz"),
    ),
    (
        "serial-throttled",
        include_bytes!("../../../tests/fixtures/rings/qemu7.2-serial-throttled.rings.mig.gz"),
    ),
    (
        "aarch64virt-mmio-inflight",
        include_bytes!("../../../tests/fixtures/machines/qemu7.2-aarch64virt-mmio-inflight.mig.gz"),
    ),
    (
        "s390x-ccw-inflight",
        include_bytes!("../../../tests/fixtures/machines/qemu7.2-s390x-ccw-inflight.mig.gz"),
    ),
];

const STRIPPED_SERIAL: &[u8] =
    include_bytes!("../../../tests/fixtures/stripped/qemu7.2-serial-throttled.stripped.mig.gz");

fn gunzip(gz: &[u8]) -> Vec<u8> {
    vmstate::stream::decompress_if_gzip(gz, 1 << 30)
        .expect("an embedded fixture decompresses")
        .into_owned()
}

/// The `rings` fixtures, in the order of [`RINGS`], cut down to what the virtio decoders and
/// checks read (`support::cut_to_virtio`, which the sweeps use too).
pub fn rings() -> &'static [Vec<u8>] {
    static CELL: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CELL.get_or_init(|| {
        RINGS
            .iter()
            .map(|(_, gz)| support::cut_to_virtio(&gunzip(gz)).data)
            .collect()
    })
}

/// A stripped stream (virtio-serial with a throttled port): device state, no pages.
pub fn stripped_serial() -> &'static [u8] {
    static CELL: OnceLock<Vec<u8>> = OnceLock::new();
    CELL.get_or_init(|| gunzip(STRIPPED_SERIAL))
}

/// Reads a stream, decodes its virtio devices and checks them, against its guest memory when
/// the memory can be placed. Every step may fail; none may panic.
pub fn read_decode_check(data: &[u8]) {
    if let Ok(parsed) = vmstate::stream::read(data) {
        decode_check(&parsed, data);
    }
}

/// Decodes the virtio devices of a stream read from `data` and checks them, against its
/// guest memory when the memory can be placed. Every step may fail; none may panic.
pub fn decode_check(parsed: &vmstate::stream::Stream, data: &[u8]) {
    use vmstate::{check, devices, memory};
    let options = devices::DecodeOptions::default();
    let Ok(found) = devices::decode_virtio(parsed, &options) else {
        return;
    };
    let _ = check::check_devices(&found);
    let scsi = devices::decode_scsi_requests(parsed, &found, &options).unwrap_or_default();
    let Ok(map) = memory::map_for(parsed, &found, None) else {
        return;
    };
    let Ok(ram) = memory::GuestRam::from_stream(parsed, data, map, &mut |_| {}) else {
        return;
    };
    let _ = check::check_stream(&found, &scsi, Some(&ram));
}

/// Boundary values of integer fields, as the mutation sweeps use them.
pub const BOUNDARIES: [u64; 9] = [
    0,
    1,
    2,
    1 << 15,
    (1 << 16) - 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 63,
    u64::MAX,
];
