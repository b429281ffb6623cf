//! Helpers of the tests that check streams against their guest memory: the rings fixtures,
//! a whole check of a stream's bytes, and edits of its typed state written back.

#![allow(dead_code)]

use crate::stream_checks::read_stream_file;
use crate::support;
use vmstate::check::{self, DeviceReport, Report, Rule};
use vmstate::devices::{self, DecodeOptions, ScsiDiskSection, VirtioSection};
use vmstate::memory::{self, GuestRam};
use vmstate::stream;
use vmstate::virtio::VirtioDevice;

/// The bytes of `tests/fixtures/rings/qemu7.2-NAME.rings.mig.gz`.
pub fn rings(name: &str) -> Vec<u8> {
    read_stream_file(&support::fixture(&format!(
        "rings/qemu7.2-{name}.rings.mig.gz"
    )))
}

/// Every virtio device of `data` and the SCSI disks' requests, decoded.
pub fn decoded(data: &[u8]) -> (Vec<VirtioSection>, Vec<ScsiDiskSection>) {
    let stream = stream::read(data).unwrap();
    let options = DecodeOptions::default();
    let found = devices::decode_virtio(&stream, &options).unwrap();
    let scsi = devices::decode_scsi_requests(&stream, &found, &options).unwrap();
    (found, scsi)
}

/// `check` of a whole stream, against its memory on the board's map.
pub fn check_bytes(data: &[u8]) -> Report {
    let stream = stream::read(data).unwrap();
    let (found, scsi) = decoded(data);
    let map = memory::map_for(&stream, &[], None).unwrap();
    let ram = GuestRam::from_stream(&stream, data, map, &mut |_| {}).unwrap();
    check::check_stream(&found, &scsi, Some(&ram))
}

/// The report of the device whose section ends with `kind` (`virtio-blk`, ...).
pub fn device<'r>(report: &'r Report, kind: &str) -> &'r DeviceReport {
    report
        .devices
        .iter()
        .find(|d| d.section.ends_with(kind))
        .unwrap()
}

/// The report of the virtio-blk device.
pub fn blk_report(report: &Report) -> &DeviceReport {
    device(report, "virtio-blk")
}

/// Each finding's rule and path.
pub fn rules(report: &DeviceReport) -> Vec<(Rule, String)> {
    report
        .findings
        .iter()
        .map(|f| (f.rule, f.path.clone()))
        .collect()
}

/// Changes the virtio device of kind `vmsd` (`virtio-blk`, ...) of `data` with `change` and
/// writes the stream again.
pub fn edited_device(data: &[u8], vmsd: &str, change: impl FnOnce(&mut VirtioDevice)) -> Vec<u8> {
    let mut model = stream::read(data).unwrap();
    let mut found = devices::decode_virtio(&model, &DecodeOptions::default()).unwrap();
    let section: &mut VirtioSection = found
        .iter_mut()
        .find(|s| s.device.kind.vmsd_name() == vmsd)
        .unwrap();
    change(&mut section.device);
    devices::store_virtio(&mut model, section, None).unwrap();
    stream::write(&model, data).unwrap()
}

/// Changes the virtio-blk device of `data` with `change` and writes the stream again.
pub fn edited(data: &[u8], change: impl FnOnce(&mut VirtioDevice)) -> Vec<u8> {
    edited_device(data, "virtio-blk", change)
}

/// Sets `path=value` on the first SCSI disk's requests (`requests[0].tag`, ...) and writes
/// the stream again.
pub fn edited_scsi(data: &[u8], path: &str, value: &str) -> Vec<u8> {
    let mut model = stream::read(data).unwrap();
    let options = DecodeOptions::default();
    let found = devices::decode_virtio(&model, &options).unwrap();
    let mut scsi = devices::decode_scsi_requests(&model, &found, &options).unwrap();
    let disk = scsi.first_mut().unwrap();
    vmstate::virtio::set_scsi(&mut disk.requests, path, value).unwrap();
    devices::store_scsi_requests(&mut model, disk, None).unwrap();
    stream::write(&model, data).unwrap()
}
