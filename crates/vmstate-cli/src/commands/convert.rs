//! `vmstate convert`: read a migration stream and write it back.

use std::path::PathBuf;

use clap::Args;
use vmstate::devices;
use vmstate::element::Layout;
use vmstate::virtio::{Framing, NdescsOrder};

use super::devices::DeviceArgs;
use super::dump::load_stream;
use crate::io::write_stream;
use crate::outcome::{Failure, Outcome};

/// Arguments of `vmstate convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The stream to read, raw or gzip-compressed (`-` for standard input).
    input: PathBuf,
    /// Where to write the stream, uncompressed (`-` for standard output).
    output: PathBuf,
    /// Drop the RAM pages, keeping the RAM block list and all device state: the output
    /// shares device state without guest memory.
    #[arg(long)]
    strip_ram: bool,
    /// Write in-flight elements in this host layout: stable (= lp64-le, what x86-64 QEMU
    /// reads), lp64-be, i386, ilp32-le, ilp32-be. Without it the input's layout is kept.
    #[arg(long, value_name = "NAME")]
    to_layout: Option<Layout>,
    /// Write each packed-ring request's ndescs word after its element, the order QEMU's
    /// loader reads (QEMU writes it before, and cannot load its own stream).
    #[arg(long, conflicts_with = "packed_ndescs_before")]
    packed_ndescs_after: bool,
    /// Write each packed-ring request's ndescs word before its element, the order QEMU
    /// writes.
    #[arg(long)]
    packed_ndescs_before: bool,
    /// Write every virtio device from its decoded, typed state rather than from the bytes
    /// read (implied by the options above that change device state).
    #[arg(long)]
    reencode: bool,
    #[command(flatten)]
    devices: DeviceArgs,
}

impl ConvertArgs {
    /// The element framing to write, from the one read and the options.
    fn reframe(&self, mut framing: Framing) -> Framing {
        if let Some(layout) = self.to_layout {
            framing.layout = layout;
        }
        if framing.ndescs != NdescsOrder::Absent {
            if self.packed_ndescs_after {
                framing.ndescs = NdescsOrder::AfterElement;
            } else if self.packed_ndescs_before {
                framing.ndescs = NdescsOrder::BeforeElement;
            }
        }
        framing
    }

    fn touches_devices(&self) -> bool {
        self.reencode
            || self.to_layout.is_some()
            || self.packed_ndescs_after
            || self.packed_ndescs_before
            || self.devices.any()
    }
}

/// Runs `vmstate convert`: the stream is decoded into its model and written from the model,
/// so an unchanged stream comes out byte for byte as it went in (decompressed). Options that
/// concern devices decode every virtio device and write it from its typed state, rewriting
/// the description's sizes where a field's length changes.
pub fn run(args: ConvertArgs) -> Outcome {
    let shown = args.input.display().to_string();
    let mut loaded = load_stream(&args.input)?;
    if args.strip_ram {
        loaded.stream.strip_ram();
    }
    if args.touches_devices() {
        let found = args.devices.decode(&loaded.stream, &shown)?;
        let scsi = args.devices.decode_scsi(&loaded.stream, &found, &shown)?;
        for section in &found {
            let framing = section.device.framing().map(|f| args.reframe(f));
            devices::store_virtio(&mut loaded.stream, section, framing)
                .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        }
        for disk in &scsi {
            let framing = args.reframe(disk.requests.framing);
            devices::store_scsi_requests(&mut loaded.stream, disk, Some(framing))
                .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        }
    }
    write_stream(&loaded.stream, &loaded.bytes, &args.output)
}
