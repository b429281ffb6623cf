//! `vmstate check`: what is wrong with the device state of a stream, against the guest
//! memory the stream carries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use vmstate::check::{self, Report};
use vmstate::memory::{GuestBytes, GuestRam, RamMap};

use super::devices::DeviceArgs;
use super::dump::{load_stream, SourceArgs};
use super::memory::guest_ram;
use crate::io::write_output;
use crate::outcome::{Failure, Outcome, INVALID_STATE};

/// Arguments of `vmstate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The stream: bare, compressed (gzip, bzip2, xz, lzop, zstd) or in a libvirt save image
    /// (`-` for standard input).
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Where RAM blocks sit in guest-physical memory, for machines other than x86 pc and
    /// q35: comma-separated BLOCK@GPA or BLOCK+OFFSET:LEN@GPA, e.g. mach-virt.ram@0x40000000.
    #[arg(long, value_name = "MAP")]
    ram_map: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// The JSON form of `check --json`.
#[derive(Serialize)]
struct CheckJson<'a> {
    /// How guest memory was placed, or why it could not be.
    memory: MemoryJson<'a>,
    #[serde(flatten)]
    report: &'a Report,
}

#[derive(Serialize)]
struct MemoryJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<&'a RamMap>,
    pages_known: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unavailable: Option<String>,
}

/// Runs `vmstate check`: exit 0 when every device is clean, 1 with findings, 2 when the
/// stream cannot be read.
pub fn run(args: CheckArgs) -> Outcome {
    let shown = args.file.display().to_string();
    let loaded = load_stream(&args.file, &args.source)?;
    let devices = args.devices.decode(&loaded.stream, &shown)?;
    let scsi = args.devices.decode_scsi(&loaded.stream, &devices, &shown)?;

    let ram = guest_ram(&loaded, &devices, args.ram_map.as_deref(), &shown)?;
    let report = check::check_stream(
        &devices,
        &scsi,
        ram.as_ref().ok().map(|r| r as &dyn GuestBytes),
    );
    let memory = MemoryJson {
        map: ram.as_ref().ok().map(GuestRam::map),
        pages_known: ram.as_ref().map_or(0, |r| r.pages_known),
        unavailable: ram.as_ref().err().cloned(),
    };
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&CheckJson {
            memory,
            report: &report,
        })
        .map_err(|e| Failure::unreadable(format!("cannot render JSON: {e}")))?;
        text.push('\n');
        text
    } else {
        render(&memory, &report)
    };
    write_output(Path::new("-"), text.as_bytes())?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(Failure {
            code: INVALID_STATE,
            message: format!(
                "{shown}: {} finding(s) in the device state",
                report.finding_count()
            ),
        })
    }
}

fn render(memory: &MemoryJson<'_>, report: &Report) -> String {
    let mut out = String::new();
    match (memory.map, &memory.unavailable) {
        (Some(map), _) => {
            let _ = writeln!(
                out,
                "guest memory: {}; {} page(s) in the stream",
                map.how, memory.pages_known
            );
        }
        (None, Some(reason)) => {
            let _ = writeln!(
                out,
                "guest memory: not available, rings and in-flight requests not checked: {reason}"
            );
        }
        (None, None) => {}
    }
    for device in &report.devices {
        let verdict = match device.findings.len() {
            0 => "clean".to_owned(),
            n => format!("{n} finding(s)"),
        };
        let _ = writeln!(out, "{}: {verdict}", device.section);
        for what in &device.checked {
            let _ = writeln!(out, "  checked: {what}");
        }
        for what in &device.not_checked {
            let _ = writeln!(out, "  not checked: {what}");
        }
        for finding in &device.findings {
            let _ = writeln!(out, "  finding: {finding}");
        }
        for note in &device.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    let _ = writeln!(
        out,
        "{} virtio device(s) checked{}, {} finding(s)",
        report.devices.len(),
        if memory.map.is_some() {
            ""
        } else {
            " on their saved fields only (no guest memory)"
        },
        report.finding_count()
    );
    out
}
