//! Checks shared by the tests of streams with virtio devices: decode every device, write it
//! back from its typed state, and convert its in-flight elements to other host layouts and
//! back.

#![allow(dead_code)]

use serde_json::Value as Json;
use vmstate::devices::{self, DecodeOptions, ScsiDiskSection, VirtioSection};
use vmstate::element::Layout;
use vmstate::stream::{self, Stream};
use vmstate::virtio::{DeviceState, Framing, InFlight, NdescsOrder};

/// The decoded virtio devices of a stream and the requests its SCSI disks keep.
pub struct Found {
    pub virtio: Vec<VirtioSection>,
    pub scsi: Vec<ScsiDiskSection>,
}

pub fn decode(data: &[u8]) -> (Stream, Found) {
    let stream = stream::read(data).unwrap();
    let options = DecodeOptions::default();
    let virtio = devices::decode_virtio(&stream, &options).unwrap();
    let scsi = devices::decode_scsi_requests(&stream, &virtio, &options).unwrap();
    (stream, Found { virtio, scsi })
}

/// Re-encodes every device from its typed state and writes the stream.
pub fn reencode(stream: &Stream, found: &Found, data: &[u8]) -> Vec<u8> {
    let mut stream = stream.clone();
    for device in &found.virtio {
        devices::store_virtio(&mut stream, device, None).unwrap();
    }
    for disk in &found.scsi {
        devices::store_scsi_requests(&mut stream, disk, None).unwrap();
    }
    stream::write(&stream, data).unwrap()
}

/// Writes every in-flight element (virtio-blk, virtio-serial, virtio-scsi) in `layout` (and
/// ndescs after the element where `ndescs_after` says).
pub fn convert(
    stream: &Stream,
    found: &Found,
    data: &[u8],
    layout: Layout,
    ndescs_after: bool,
) -> Vec<u8> {
    let reframe = |mut framing: Framing| {
        framing.layout = layout;
        if ndescs_after && framing.ndescs != NdescsOrder::Absent {
            framing.ndescs = NdescsOrder::AfterElement;
        }
        framing
    };
    let mut stream = stream.clone();
    for device in &found.virtio {
        let framing = device.device.framing().map(reframe);
        devices::store_virtio(&mut stream, device, framing).unwrap();
    }
    for disk in &found.scsi {
        let framing = reframe(disk.requests.framing);
        devices::store_scsi_requests(&mut stream, disk, Some(framing)).unwrap();
    }
    stream::write(&stream, data).unwrap()
}

/// Every saved element of the stream, device by device.
pub fn in_flight(found: &Found) -> Vec<InFlight> {
    let mut out = Vec::new();
    for d in &found.virtio {
        match &d.device.device {
            DeviceState::Blk(blk) => out.extend(blk.requests.iter().cloned()),
            DeviceState::Serial(serial) => out.extend(
                serial
                    .ports
                    .iter()
                    .filter_map(|p| p.popped.as_ref().map(|e| e.element.clone())),
            ),
            _ => {}
        }
    }
    for disk in &found.scsi {
        out.extend(disk.requests.requests.iter().map(|r| r.element.clone()));
    }
    out
}

/// The checks every stream gets: decoding, identity of re-encoding, layout conversion and
/// back, and the description staying readable after sizes change.
/// Decodes, re-encodes (byte-identical), and converts the in-flight elements through three
/// legacy layouts and back (byte-identical); returns the decoded stream.
pub fn check_virtio_stream(name: &str, data: &[u8]) -> (Stream, Found) {
    let (stream, found) = decode(data);
    assert!(!found.virtio.is_empty(), "{name}: no virtio device");
    assert!(
        reencode(&stream, &found, data) == data,
        "{name}: re-encoding changed the stream"
    );
    if let Some(trailer) = &stream.trailer {
        let root: Json = serde_json::from_slice(&trailer.json).unwrap();
        assert!(
            stream::render_like_qemu(&root).as_bytes() == trailer.json.as_slice(),
            "{name}: the description does not re-render to its own bytes"
        );
    }
    let requests = in_flight(&found);
    if !requests.is_empty() {
        for layout in [Layout::I386, Layout::Lp64Be, Layout::Ilp32Le] {
            let converted = convert(&stream, &found, data, layout, false);
            assert_eq!(
                converted.len() == data.len(),
                layout.size() == Layout::Stable.size()
            );
            let (back_stream, back) = decode(&converted);
            assert_eq!(in_flight(&back), requests, "{name} via {layout}");
            let restored = convert(&back_stream, &back, &converted, Layout::Stable, false);
            assert!(
                restored == data,
                "{name}: {layout} and back is not the original"
            );
        }
    }
    (stream, found)
}
