//! `vmstate edit`: change decoded device fields and write the stream from the typed state.

use std::path::PathBuf;

use clap::Args;
use vmstate::devices;
use vmstate::stream::Stream;

use super::devices::DeviceArgs;
use super::dump::{read_loaded, SourceArgs};
use crate::io::{convert_flowing, write_stream, Input, Opened};
use crate::outcome::{Failure, Outcome};

/// Arguments of `vmstate edit`.
#[derive(Debug, Args)]
pub struct EditArgs {
    /// The stream to read: bare, compressed (gzip, bzip2, xz, lzop, zstd) or in a libvirt save
    /// image (`-` for standard input).
    input: PathBuf,
    /// Where to write the edited stream (`-` for standard output); a libvirt save image
    /// stays one, with its header, domain XML and compression.
    output: PathBuf,
    /// PATH=VALUE: a field of `dump --json`, such as
    /// virtio_devices[0].virtio.queues[0].last_avail_idx=5 (the device by index or by its
    /// section, virtio_devices[0000:00:01.0/virtio-blk]), or of a SCSI disk's requests, such
    /// as scsi_requests[0].requests[1].tag; repeatable, applied in order.
    #[arg(long = "set", value_name = "PATH=VALUE", required = true)]
    set: Vec<String>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// Runs `vmstate edit`: like `convert`, a piped or compressed stream is edited as it
/// arrives (what precedes the device sections is written out as it is read).
pub fn run(args: EditArgs) -> Outcome {
    let shown = args.input.display().to_string();
    let bytes = match Input::open_flowing(&args.input, args.source.snapshot.as_deref())? {
        Opened::Mapped(bytes) => bytes,
        Opened::Flowing(flowing) => {
            let image = flowing.envelope.libvirt_image().cloned();
            return convert_flowing(
                flowing,
                &args.input,
                &args.output,
                image.as_ref(),
                |stream| apply(stream, &args, &shown),
            );
        }
    };
    let mut loaded = read_loaded(bytes, &args.input)?;
    apply(&mut loaded.stream, &args, &shown)?;
    write_stream(
        &loaded.stream,
        &loaded.bytes,
        &args.output,
        loaded.bytes.envelope.libvirt_image(),
        vmstate::stream::RamLayout::AsRead,
    )
}

/// Makes the assignments of `--set` in the model.
fn apply(stream: &mut Stream, args: &EditArgs, shown: &str) -> Outcome {
    let mut found = args.devices.decode(stream, shown)?;
    let mut scsi = args.devices.decode_scsi(stream, &found, shown)?;
    let mut touched = vec![false; found.len()];
    let mut scsi_touched = vec![false; scsi.len()];
    for assignment in &args.set {
        let (path, value) = assignment.split_once('=').ok_or_else(|| {
            Failure::unreadable(format!("--set '{assignment}': expected PATH=VALUE"))
        })?;
        if let Some((disk, field)) = split_scsi_path(path) {
            let position = match disk.parse::<usize>() {
                Ok(n) if n < scsi.len() => n,
                _ => scsi.iter().position(|s| s.idstr == disk).ok_or_else(|| {
                    Failure::unreadable(format!("--set '{path}': no SCSI disk {disk}"))
                })?,
            };
            if let (Some(section), Some(flag)) =
                (scsi.get_mut(position), scsi_touched.get_mut(position))
            {
                vmstate::virtio::set_scsi(&mut section.requests, field, value)
                    .map_err(|e| Failure::unreadable(format!("--set '{path}': {e}")))?;
                *flag = true;
            }
            continue;
        }
        let (device, field) = split_device_path(path).ok_or_else(|| {
            Failure::unreadable(format!(
                "--set '{path}': expected virtio_devices[N or SECTION].virtio.FIELD"
            ))
        })?;
        let position = match device.parse::<usize>() {
            Ok(n) if n < found.len() => n,
            _ => found
                .iter()
                .position(|s| s.idstr == device)
                .ok_or_else(|| {
                    Failure::unreadable(format!("--set '{path}': no virtio device {device}"))
                })?,
        };
        if let (Some(section), Some(flag)) = (found.get_mut(position), touched.get_mut(position)) {
            section
                .device
                .set(field, value)
                .map_err(|e| Failure::unreadable(format!("--set '{path}': {e}")))?;
            *flag = true;
        }
    }
    for (section, _) in found.iter().zip(&touched).filter(|(_, t)| **t) {
        devices::store_virtio(stream, section, None)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    }
    for (disk, _) in scsi.iter().zip(&scsi_touched).filter(|(_, t)| **t) {
        devices::store_scsi_requests(stream, disk, None)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    }
    Ok(())
}

/// Splits `scsi_requests[KEY].FIELD` into KEY and FIELD.
fn split_scsi_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("scsi_requests[")?;
    let (key, field) = rest.split_once("].")?;
    (!key.is_empty() && !field.is_empty()).then_some((key, field))
}

/// Splits `virtio_devices[KEY].virtio.FIELD` into KEY and FIELD.
fn split_device_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("virtio_devices[")?;
    let (key, field) = rest.split_once("].virtio.")?;
    (!key.is_empty() && !field.is_empty()).then_some((key, field))
}

#[cfg(test)]
mod tests {
    #[test]
    fn device_paths_split() {
        assert_eq!(
            super::split_device_path("virtio_devices[0000:00:01.0/virtio-blk].virtio.status"),
            Some(("0000:00:01.0/virtio-blk", "status"))
        );
        assert_eq!(
            super::split_device_path("virtio_devices[2].virtio.queues[0].num"),
            Some(("2", "queues[0].num"))
        );
        assert_eq!(super::split_device_path("virtio_devices[2].status"), None);
        assert_eq!(
            super::split_scsi_path("scsi_requests[0000:00:01.0/0:0:0/scsi-disk].requests[0].tag"),
            Some(("0000:00:01.0/0:0:0/scsi-disk", "requests[0].tag"))
        );
    }
}
