//! `vmstate compat`: will the destination load what the source sends?

use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use vmstate::compat::{self, Destination, Findings, Problem, Release, ReleaseGuess};

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
    /// type it will load into), or a stream it wrote. Without it, --dst-version alone: what
    /// is known of that release is checked, and the report lists the checks not made.
    #[arg(required_unless_present_any = ["dst_version", "to"])]
    dst: Option<PathBuf>,
    /// Instead of DST: QEMU release X.Y as a destination, from what vmstate bundles of it
    /// (its -dump-vmstate for the machine type it runs, its commands, capabilities and
    /// machine types).
    #[arg(long, value_name = "X.Y", conflicts_with_all = ["dst", "dst_version"])]
    to: Option<Release>,
    /// With --to: the machine type the destination runs (`q35` and `pc` as that release
    /// resolves them). Default: the stream's own when the release has it, else the
    /// release's newest of the same family.
    #[arg(long, value_name = "MACHINE", requires = "to")]
    machine: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The destination's QEMU release (X.Y), instead of the one inferred from its schema: it
    /// decides which commands, capabilities, machine types and virtio subsections the
    /// destination knows. Without DST, one of the releases known here (5.2, 7.2, 10.0, 11.1).
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
    /// The file (none for a destination known by its release alone).
    pub path: Option<String>,
    /// `stream`, `-dump-vmstate file` or `release` (no schema).
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
    /// What the schemas leave open, not counted as problems: fields sent only when a test
    /// holds, sizes a dump does not give.
    pub undecided: &'a [Problem],
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

/// A destination as given: its schema file and release (as stated, or inferred), or a
/// release alone.
pub enum DstSide {
    /// A `-dump-vmstate` file or a stream of the destination.
    File(Side, ReleaseGuess),
    /// The dump vmstate bundles of a release running a machine type.
    Bundled(Side, Release, &'static str),
    /// A release known here, stated without a file.
    Release(Release),
}

impl DstSide {
    /// Reads the destination's file `path` when given; without one, `stated` must be a
    /// release known here.
    pub fn load(path: Option<&Path>, stated: Option<Release>) -> Result<DstSide, Failure> {
        match (path, stated) {
            (Some(path), stated) => {
                let side = load_side(path, &SourceArgs::default(), &DeviceArgs::default())?;
                let release = release_of(&side, stated);
                Ok(DstSide::File(side, release))
            }
            (None, Some(stated)) => known_release(stated).map(DstSide::Release),
            (None, None) => Err(Failure::unreadable(
                "give the destination's file or its release (--dst-version)",
            )),
        }
    }

    /// What the checks know of it.
    pub fn destination(&self) -> Destination<'_> {
        match self {
            DstSide::File(side, release) => Destination::Schema(side.schema(), release.release),
            DstSide::Bundled(side, release, _) => {
                Destination::Schema(side.schema(), Some(*release))
            }
            DstSide::Release(release) => Destination::Release(*release),
        }
    }

    /// Its release, and how it was found.
    pub fn release(&self) -> ReleaseGuess {
        match self {
            DstSide::File(_, release) => release.clone(),
            DstSide::Bundled(_, release, machine) => ReleaseGuess {
                release: Some(*release),
                certainty: compat::Certainty::Stated,
                how: format!("QEMU {release} running {machine}, as stated"),
            },
            DstSide::Release(release) => ReleaseGuess::stated(*release),
        }
    }

    /// The file, when there is one.
    pub fn side(&self) -> Option<&Side> {
        match self {
            DstSide::File(side, _) | DstSide::Bundled(side, _, _) => Some(side),
            DstSide::Release(_) => None,
        }
    }
}

/// A destination given as a release (`--to X.Y`), with what vmstate bundles of it.
pub struct ForRelease {
    /// The destination.
    pub side: DstSide,
    /// What stops the destination before it loads anything (a machine type it lacks).
    pub first: Option<Problem>,
    /// Why the release's schema could not be used, when it could not.
    pub unchecked: Option<String>,
}

impl DstSide {
    /// The destination as given: QEMU release `to` as vmstate holds it (see
    /// [`DstSide::for_release`]), else the file `path` or the release `stated` alone.
    pub fn resolve(
        to: Option<Release>,
        machine: Option<&str>,
        source: Option<&str>,
        path: Option<&Path>,
        stated: Option<Release>,
    ) -> Result<ForRelease, Failure> {
        match to {
            Some(release) => DstSide::for_release(release, machine, source),
            None => Ok(ForRelease {
                side: DstSide::load(path, stated)?,
                first: None,
                unchecked: None,
            }),
        }
    }

    /// QEMU `release` running `machine` (see `bundled::destination_machine`) as the
    /// destination of a source of machine type `source`: its bundled dump, or its release
    /// alone when no dump of that machine type is bundled.
    pub fn for_release(
        release: Release,
        machine: Option<&str>,
        source: Option<&str>,
    ) -> Result<ForRelease, Failure> {
        let release = known_release(release)?;
        let alone = |first, unchecked| ForRelease {
            side: DstSide::Release(release),
            first,
            unchecked,
        };
        let machine = match compat::bundled::destination_machine(release, machine, source) {
            Ok(machine) => machine,
            Err(problem) => return Ok(alone(Some(*problem), None)),
        };
        match compat::bundled::schema(release, machine) {
            Some(schema) => {
                let schema = schema.map_err(|e| Failure::unreadable(e.to_string()))?;
                Ok(ForRelease {
                    side: DstSide::Bundled(Side::Dump(schema), release, machine),
                    first: None,
                    unchecked: None,
                })
            }
            None => Ok(alone(
                None,
                Some(format!(
                    "no -dump-vmstate of QEMU {release} running {machine} is bundled (there \
                     are: {}): checked by the release alone",
                    compat::bundled::bundled_machines(release).join(", ")
                )),
            )),
        }
    }
}

/// A destination known by its release alone: one whose facts this crate holds.
fn known_release(release: Release) -> Result<Release, Failure> {
    let known = compat::release::known_releases();
    if known.contains(&release) {
        return Ok(release);
    }
    let list: Vec<String> = known.iter().map(Release::to_string).collect();
    Err(Failure::unreadable(format!(
        "QEMU {release} is not a release known here ({}): give a -dump-vmstate file of the \
         destination",
        list.join(", ")
    )))
}

/// Runs `vmstate compat`: exit 0 compatible, 1 with problems, 2 when an input is unreadable.
pub fn run(args: CompatArgs) -> Outcome {
    let src = load_side(&args.src, &args.source, &args.devices)?;
    let for_release = DstSide::resolve(
        args.to,
        args.machine.as_deref(),
        src.schema().machine.as_deref(),
        args.dst.as_deref(),
        args.dst_version,
    )?;
    let dst_side = &for_release.side;
    let dst = dst_side.side();
    let src_release = release_of(&src, args.src_version);
    let destination = dst_side.destination();
    let dst_release = dst_side.release();
    let mut found: Findings = match (&src, destination) {
        // QEMU does not start: nothing is loaded, nothing else matters.
        _ if for_release.first.is_some() => Findings::default(),
        (
            Side::Stream {
                loaded,
                devices,
                schema,
            },
            dst,
        ) => compat::check_stream(&loaded.stream, devices, schema, dst),
        (Side::Dump(schema), Destination::Schema(dst, release)) => {
            compat::compare_schemas(schema, dst, (src_release.release, release))
        }
        (Side::Dump(schema), Destination::Release(release)) => {
            compat::compare_with_release(schema, (src_release.release, release))
        }
    };
    found.problems.splice(0..0, for_release.first.clone());
    found.unchecked.extend(for_release.unchecked.clone());
    let dst_shown = match (&args.dst, dst_side) {
        (Some(path), _) => path.display().to_string(),
        (None, DstSide::Bundled(_, release, machine)) => format!("QEMU {release} ({machine})"),
        (None, _) => format!(
            "QEMU {}",
            destination
                .release()
                .map(|r| r.to_string())
                .unwrap_or_default()
        ),
    };
    let report = CompatJson {
        source: SideJson {
            path: Some(args.src.display().to_string()),
            kind: src.kind(),
            machine: src.schema().machine.as_deref(),
            release: src_release,
        },
        destination: SideJson {
            path: args.dst.as_ref().map(|p| p.display().to_string()),
            kind: match dst_side {
                DstSide::Bundled(..) => "-dump-vmstate bundled with vmstate",
                _ => dst.map_or("release", Side::kind),
            },
            machine: dst.and_then(|d| d.schema().machine.as_deref()),
            release: dst_release,
        },
        compatible: found.problems.is_empty(),
        problems: &found.problems,
        undecided: &found.undecided,
        unchecked: &found.unchecked,
    };
    if args.json {
        print_json(&report)?;
    } else {
        write_output(Path::new("-"), render(&report).as_bytes())?;
    }
    if found.problems.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: INVALID_STATE,
            message: format!(
                "{} -> {dst_shown}: {} problem(s)",
                args.src.display(),
                found.problems.len()
            ),
        })
    }
}

fn side_line(out: &mut String, role: &str, side: &SideJson<'_>) {
    let _ = match &side.path {
        None if side.machine.is_some() => {
            writeln!(out, "{role}: {} ({})", side.release.how, side.kind)
        }
        Some(path) => writeln!(
            out,
            "{role}: {path} ({}), machine {}; {}",
            side.kind,
            side.machine.unwrap_or("not stated"),
            side.release.how
        ),
        None => writeln!(out, "{role}: {}, without a schema", side.release.how),
    };
}

fn render(report: &CompatJson<'_>) -> String {
    let mut out = String::new();
    side_line(&mut out, "source", &report.source);
    side_line(&mut out, "destination", &report.destination);
    for problem in report.problems {
        let _ = writeln!(out, "problem: {problem}");
    }
    for point in report.undecided {
        let _ = writeln!(out, "undecided: {point}");
    }
    for what in report.unchecked {
        let _ = writeln!(out, "not checked: {what}");
    }
    let _ = match (report.problems.len(), report.undecided.len()) {
        (0, 0) => writeln!(out, "compatible"),
        (0, open) => writeln!(
            out,
            "compatible, unless {open} undecided point(s) say otherwise"
        ),
        (n, _) => writeln!(out, "not compatible: {n} problem(s)"),
    };
    out
}
