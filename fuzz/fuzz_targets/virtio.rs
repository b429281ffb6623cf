//! virtio blob decoder: arbitrary bytes as the `virtio` field of each kind of device on each
//! transport, or as a SCSI disk's `requests` field. The first byte selects: bits 0-2 the
//! device kind, bit 3 (with kind 7) an undecoded kind, bits 5-6 the transport.
//!
//! Invariants: nothing panics; whatever decodes encodes, and the encoding decodes to the same
//! state; when the decoder noted nothing (no stale bytes in elements, the only thing the
//! encoder normalises), the encoding is exactly the input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmstate::virtio::scsi::ScsiRequests;
use vmstate::virtio::{Assumptions, DeviceKind, TransportKind, VirtioDevice};
use vmstate::wire::{Reader, Writer};

fn scsi_requests(selector: u8, blob: &[u8]) {
    // The selector's high bit says whether the HBA offers packed rings.
    let packed = Some(selector & 0x80 != 0);
    let assume = Assumptions::default();
    let Ok(requests) = ScsiRequests::decode(&mut Reader::new(blob), packed, &assume) else {
        return;
    };
    let mut writer = Writer::new();
    requests
        .encode_with(&mut writer, None)
        .expect("decoded requests encode");
    if requests.notes.is_empty() {
        assert!(
            writer.as_bytes() == blob,
            "decode then encode changed the bytes"
        );
    }
    let again = ScsiRequests::decode(&mut Reader::new(writer.as_bytes()), packed, &assume)
        .expect("the encoding decodes");
    assert_eq!(again.requests, requests.requests);
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blob)) = data.split_first() else {
        return;
    };
    let kind = match selector % 8 {
        0 => DeviceKind::Blk,
        1 => DeviceKind::Scsi,
        2 => DeviceKind::Rng,
        3 => DeviceKind::Net,
        4 => DeviceKind::Serial,
        5 => DeviceKind::Balloon,
        6 => return scsi_requests(selector, blob),
        _ if selector & 0x08 != 0 => DeviceKind::Other("virtio-mem".to_owned()),
        _ => DeviceKind::Other("virtio-gpu".to_owned()),
    };
    let transport = match (selector >> 5) & 3 {
        1 => TransportKind::Mmio,
        2 => TransportKind::Ccw,
        _ => TransportKind::Pci,
    };
    let assume = Assumptions::default();
    let mut reader = Reader::new(blob);
    let Ok(device) = VirtioDevice::decode_on(&mut reader, kind, transport, &assume) else {
        return;
    };
    let mut writer = Writer::new();
    device.encode(&mut writer).expect("decoded state encodes");
    if device.notes.is_empty() {
        assert!(
            writer.as_bytes() == blob,
            "decode then encode changed the bytes"
        );
    }
    let again = VirtioDevice::decode_on(
        &mut Reader::new(writer.as_bytes()),
        device.kind.clone(),
        transport,
        &assume,
    )
    .expect("the encoding decodes");
    assert_eq!(again.transport, device.transport);
    assert_eq!(again.device, device.device);
    assert_eq!(again.subsections, device.subsections);
    assert_eq!(again.queues, device.queues);
});
