//! `vmstate compat`: will the destination load what the source sends?

use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use vmstate::compat::{self, Problem, Release, ReleaseGuess};

use super::devices::DeviceArgs;
use super::dump::SourceArgs;
use super::schema::{load_side, Side};
use crate::io::{print_json, write_output};
use crate::outcome::{Failure, Outcome, INVALID_STATE};

/// Arguments of `vmstate compat`.
#[derive(Debug, Args)]
pub struct CompatArgs {
    /// The source: a stream, or a -dump-vmstate file of the source QEMU.
    src: PathBuf,
    /// The destination: a -dump-vmstate file of the destination QEMU (run with the machine
    /// type it will load into), or a stream it wrote.
    dst: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The destination's QEMU release (X.Y), instead of the one inferred from its schema: it
    /// decides which commands, capabilities and virtio subsections the destination knows.
    #[arg(long, value_name = "X.Y")]
    dst_version: Option<Release>,
    /// The source's QEMU release (X.Y), instead of the one inferred from its schema.
    #[arg(long, value_name = "X.Y")]
    src_version: Option<Release>,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// One side, as the report shows it.
#[derive(Debug, Serialize)]
pub struct SideJson<'a> {
    /// The file.
    pub path: String,
    /// `stream` or `-dump-vmstate file`.
    pub kind: &'static str,
    /// Its machine type.
    pub machine: Option<&'a str>,
    /// Its QEMU release, and how that was found.
    pub release: ReleaseGuess,
}

/// The report of `vmstate compat`.
#[derive(Debug, Serialize)]
pub struct CompatJson<'a> {
    /// The source.
    pub source: SideJson<'a>,
    /// The destination.
    pub destination: SideJson<'a>,
    /// No problem found.
    pub compatible: bool,
    /// Every problem: for a stream, in stream order.
    pub problems: &'a [Problem],
    /// What could not be checked, and why.
    pub unchecked: &'a [String],
}

/// The release of one side: as stated, or inferred from its schema.
pub fn release_of(side: &Side, stated: Option<Release>) -> ReleaseGuess {
    match stated {
        Some(r) => ReleaseGuess::stated(r),
        None => compat::guess_release(side.schema()),
    }
}

/// Runs `vmstate compat`: exit 0 compatible, 1 with problems, 2 when an input is unreadable.
pub fn run(args: CompatArgs) -> Outcome {
    let src = load_side(&args.src, &args.source, &args.devices)?;
    let dst = load_side(&args.dst, &SourceArgs::default(), &DeviceArgs::default())?;
    let src_release = release_of(&src, args.src_version);
    let dst_release = release_of(&dst, args.dst_version);
    let (problems, unchecked) = match &src {
        Side::Stream { loaded, schema, .. } => {
            let found =
                compat::check_stream(&loaded.stream, schema, dst.schema(), dst_release.release);
            (found.problems, found.unchecked)
        }
        Side::Dump(schema) => (
            compat::compare_schemas(
                schema,
                dst.schema(),
                (src_release.release, dst_release.release),
            ),
            Vec::new(),
        ),
    };
    let report = CompatJson {
        source: SideJson {
            path: args.src.display().to_string(),
            kind: src.kind(),
            machine: src.schema().machine.as_deref(),
            release: src_release,
        },
        destination: SideJson {
            path: args.dst.display().to_string(),
            kind: dst.kind(),
            machine: dst.schema().machine.as_deref(),
            release: dst_release,
        },
        compatible: problems.is_empty(),
        problems: &problems,
        unchecked: &unchecked,
    };
    if args.json {
        print_json(&report)?;
    } else {
        write_output(Path::new("-"), render(&report).as_bytes())?;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: INVALID_STATE,
            message: format!(
                "{} -> {}: {} problem(s)",
                args.src.display(),
                args.dst.display(),
                problems.len()
            ),
        })
    }
}

fn side_line(out: &mut String, role: &str, side: &SideJson<'_>) {
    let _ = writeln!(
        out,
        "{role}: {} ({}), machine {}; {}",
        side.path,
        side.kind,
        side.machine.unwrap_or("not stated"),
        side.release.how
    );
}

fn render(report: &CompatJson<'_>) -> String {
    let mut out = String::new();
    side_line(&mut out, "source", &report.source);
    side_line(&mut out, "destination", &report.destination);
    for problem in report.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    for what in report.unchecked {
        let _ = writeln!(out, "not checked: {what}");
    }
    let _ = match report.problems.len() {
        0 => writeln!(out, "compatible"),
        n => writeln!(out, "not compatible: {n} problem(s)"),
    };
    out
}
