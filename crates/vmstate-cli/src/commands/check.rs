//! `vmstate check`: what is wrong with the device state of a stream.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use vmstate::check::{self, Report};

use super::devices::DeviceArgs;
use super::dump::load_stream;
use crate::io::write_output;
use crate::outcome::{Failure, Outcome, INVALID_STATE};

/// Arguments of `vmstate check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The stream, raw or gzip-compressed (`-` for standard input).
    file: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// Runs `vmstate check`: exit 0 when every device is clean, 1 with findings, 2 when the
/// stream cannot be read.
pub fn run(args: CheckArgs) -> Outcome {
    let shown = args.file.display().to_string();
    let loaded = load_stream(&args.file)?;
    let devices = args.devices.decode(&loaded.stream, &shown)?;
    let report = check::check_devices(&devices);
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::unreadable(format!("cannot render JSON: {e}")))?;
        text.push('\n');
        text
    } else {
        render(&report)
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

fn render(report: &Report) -> String {
    let mut out = String::new();
    for device in &report.devices {
        let verdict = match device.findings.len() {
            0 => "clean".to_owned(),
            n => format!("{n} finding(s)"),
        };
        let _ = writeln!(out, "{}: {verdict}", device.section);
        for what in &device.checked {
            let _ = writeln!(out, "  checked: {what}");
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
        "{} virtio device(s) checked, {} finding(s)",
        report.devices.len(),
        report.finding_count()
    );
    out
}
