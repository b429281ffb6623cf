//! `vmstate convert`: read a migration stream and write it back.

use std::path::{Path, PathBuf};

use std::collections::HashSet;

use clap::Args;
use vmstate::check;
use vmstate::compat::{self, Problem, ProblemKind, Release, ReleaseGuess};
use vmstate::devices;
use vmstate::element::Layout;
use vmstate::stream::{RamLayout, Stream};
use vmstate::virtio::{Framing, NdescsOrder};

use super::compat::DstSide;
use super::devices::DeviceArgs;
use super::dump::{read_loaded, LoadedStream, SourceArgs};
use super::memory::guest_ram;
use crate::io::{convert_flowing, print_json, write_stream, Input, Opened};
use crate::outcome::{Failure, Outcome, INVALID_STATE};

/// What `convert` writes, when not what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum To {
    /// The bare QEMU stream, out of any container.
    Stream,
}

/// How `convert` writes the guest's pages, when not as they were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RamLayoutArg {
    /// Page records, as every migration but mapped-ram sends them.
    Ordinary,
    /// QEMU's mapped-ram: every page at a fixed offset of the file (written to a file).
    MappedRam,
}

impl From<RamLayoutArg> for RamLayout {
    fn from(arg: RamLayoutArg) -> RamLayout {
        match arg {
            RamLayoutArg::Ordinary => RamLayout::Records,
            RamLayoutArg::MappedRam => RamLayout::MappedRam,
        }
    }
}

/// Which guest pages `convert` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RamPages {
    /// Every page, as read.
    All,
    /// No page: the block list and device state only.
    None,
    /// The pages that hold rings, indirect tables and request headers.
    Rings,
}

/// Keeps only the pages that the memory checks read.
fn keep_ring_pages(loaded: &mut LoadedStream, args: &ConvertArgs, shown: &str) -> Outcome {
    let devices = args.devices.decode(&loaded.stream, shown)?;
    let scsi = args.devices.decode_scsi(&loaded.stream, &devices, shown)?;
    let ram = guest_ram(loaded, &devices, args.ram_map.as_deref(), shown)?
        .map_err(|reason| Failure::unreadable(format!("{shown}: --ram=rings: {reason}")))?;
    let page_size = loaded.stream.page_size.bytes.max(1);
    let mut keep: HashSet<(String, u64)> = HashSet::new();
    for device in &devices {
        for (gpa, len) in check::ring_ranges(device, &scsi, &ram) {
            let first = gpa.checked_div(page_size).unwrap_or(0);
            let last = gpa
                .saturating_add(len.max(1))
                .saturating_sub(1)
                .checked_div(page_size)
                .unwrap_or(0);
            for page in first..=last {
                if let Some((block, offset)) =
                    ram.map().block_offset(page.saturating_mul(page_size))
                {
                    keep.insert((block.to_owned(), offset));
                }
            }
        }
    }
    drop(ram);
    let LoadedStream { stream, bytes, .. } = loaded;
    bytes.rewind();
    stream
        .keep_pages(
            bytes,
            &mut |block, offset| keep.contains(&(block.to_owned(), offset)),
            &mut |offset| bytes.release_before(offset),
        )
        .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    bytes.release_all();
    Ok(())
}

/// Arguments of `vmstate convert`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("retargets").multiple(true)))]
pub struct ConvertArgs {
    /// The stream to read: bare, compressed (gzip, bzip2, xz, lzop, zstd) or in a libvirt save
    /// image (`-` for standard input).
    input: PathBuf,
    /// Where to write the stream, uncompressed (`-` for standard output). A libvirt save image
    /// stays one (header and domain XML kept, compressed as it was) unless `--to stream`.
    output: PathBuf,
    /// `stream`: write the bare QEMU stream, whatever the input came in.
    #[arg(long, value_name = "WHAT")]
    to: Option<To>,
    /// Drop the RAM pages, keeping the RAM block list and all device state: the output
    /// shares device state without guest memory.
    #[arg(long)]
    strip_ram: bool,
    /// Which guest pages to keep: `all` (default), `none` (as --strip-ram) or `rings`: only the
    /// pages that hold virtqueue rings and the indirect tables and headers of in-flight
    /// requests, so the stream can be shared without the guest's data and still be checked.
    #[arg(long, value_name = "WHICH", conflicts_with = "strip_ram")]
    ram: Option<RamPages>,
    /// With --ram=rings: where RAM blocks sit in guest-physical memory, for machines other
    /// than x86 pc and q35 (as for `check`).
    #[arg(long, value_name = "MAP")]
    ram_map: Option<String>,
    /// How the guest's pages are written: `ordinary` (page records, what any QEMU loads) or
    /// `mapped-ram` (each page at a fixed offset, as QEMU 9.0+ writes with the mapped-ram
    /// capability to a `file:` URI; written to a regular file). Without it, as read. A
    /// libvirt save image becomes "sparse" with mapped-ram, "raw" without.
    #[arg(long, value_name = "LAYOUT")]
    ram_layout: Option<RamLayoutArg>,
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
    /// Give subsections that a QEMU release misnamed the name QEMU's loaders read: the
    /// virtio-balloon `vitio-balloon-device/page-poison` of QEMU 5.1 to 6.1, which no QEMU
    /// loads (QEMU 6.2 and later load the mended stream). Every renaming is said on stderr.
    #[arg(long)]
    mend_names: bool,
    /// Write every virtio device from its decoded, typed state rather than from the bytes
    /// read (implied by the options above that change device state).
    #[arg(long)]
    reencode: bool,
    /// Rewrite the stream for the destination this -dump-vmstate file (or stream) describes,
    /// or QEMU release X.Y as vmstate holds it (as `compat --to X.Y`),
    /// where no state is lost: commands it does not know that carry no state are dropped,
    /// the machine type renamed to its own, section versions lowered when every field sent
    /// is one that version reads. Anything else it would refuse is refused here (exit 1),
    /// naming the field; every change is listed on stderr.
    #[arg(long, value_name = "DST", group = "retargets")]
    target: Option<PathBuf>,
    /// The destination's QEMU release (X.Y). With --target, instead of the one inferred
    /// from its schema. Alone (one of the releases known here: 5.2, 7.2, 10.0, 11.1), rewrite the stream
    /// for that release as far as the release decides: commands it does not know that carry
    /// no state dropped, the machine type renamed to the release's of its family; what
    /// needs the destination's schema (sections, versions, fields) is not checked, and
    /// listed on stderr.
    #[arg(long, value_name = "X.Y", group = "retargets")]
    dst_version: Option<Release>,
    /// With --target or --dst-version: print the changes as JSON on standard output (OUT
    /// must be a file).
    #[arg(long, requires = "retargets")]
    json: bool,
    #[command(flatten)]
    source: SourceArgs,
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
            || self.mend_names
            || self.devices.any()
    }
}

/// Runs `vmstate convert`: the stream is decoded into its model and written from the model,
/// so an unchanged stream comes out byte for byte as it went in (decompressed). Options that
/// concern devices decode every virtio device and write it from its typed state, rewriting
/// the description's sizes where a field's length changes.
///
/// A stream from a pipe or a decompressor is converted as it arrives unless the options
/// change its pages: what precedes the device sections is written out as soon as it has
/// been read (a migration filter, `exec:vmstate convert - - | ...`, adds no copy of guest
/// memory), the device sections once the description at the end has arrived.
pub fn run(args: ConvertArgs) -> Outcome {
    let shown = args.input.display().to_string();
    let drops_pages = args.strip_ram || matches!(args.ram, Some(RamPages::None | RamPages::Rings));
    if args.json && args.output == Path::new("-") {
        return Err(Failure::unreadable(
            "--json prints the changes on standard output: write the stream to a file",
        ));
    }
    // The configuration section, first in the stream, may change: read it all first.
    let retargets = args.target.is_some() || args.dst_version.is_some();
    let flows = !drops_pages && args.ram_layout != Some(RamLayoutArg::MappedRam) && !retargets;
    let snapshot = args.source.snapshot.as_deref();
    let bytes = if flows {
        match Input::open_flowing(&args.input, snapshot)? {
            Opened::Mapped(bytes) => bytes,
            Opened::Flowing(flowing) => {
                let image = match args.to {
                    Some(To::Stream) => None,
                    None => flowing.envelope.libvirt_image().cloned(),
                };
                return convert_flowing(
                    flowing,
                    &args.input,
                    &args.output,
                    image.as_ref(),
                    |stream| store_devices(stream, &args, &shown),
                );
            }
        }
    } else {
        Input::open(&args.input, snapshot)?
    };
    let mut loaded = read_loaded(bytes, &args.input)?;
    if drops_pages && loaded.stream.has_mapped_ram() {
        return Err(Failure::unreadable(format!(
            "{shown}: a mapped-ram stream keeps its pages at fixed offsets inside the RAM block \
             list: --strip-ram and --ram drop page records, so convert it with --ram-layout \
             ordinary first (`vmstate ram extract` takes the memory out)"
        )));
    }
    match (args.strip_ram, args.ram) {
        (true, _) | (_, Some(RamPages::None)) => {
            loaded.stream.strip_ram();
        }
        (_, Some(RamPages::Rings)) => keep_ring_pages(&mut loaded, &args, &shown)?,
        _ => {}
    }
    store_devices(&mut loaded.stream, &args, &shown)?;
    if retargets {
        retarget(&mut loaded.stream, &args, &shown)?;
    }
    let image = match args.to {
        Some(To::Stream) => None,
        None => loaded.bytes.envelope.libvirt_image(),
    };
    let layout = args.ram_layout.map_or(RamLayout::AsRead, RamLayout::from);
    write_stream(&loaded.stream, &loaded.bytes, &args.output, image, layout)
}

/// The release `--target X.Y` names, when it names one rather than a file.
fn target_release(args: &ConvertArgs) -> Option<Release> {
    let target = args.target.as_deref()?;
    if target.exists() {
        return None;
    }
    target.to_str()?.parse().ok()
}

/// Rewrites the stream for the destination --target describes, or for the release
/// --dst-version names alone, listing every change on stderr (and as JSON on stdout with
/// --json); refusals end the command with exit 1.
fn retarget(stream: &mut Stream, args: &ConvertArgs, shown: &str) -> Outcome {
    let to = target_release(args);
    let for_release = DstSide::resolve(
        to,
        None,
        stream.configuration().map(|c| c.machine.as_str()),
        args.target.as_deref().filter(|_| to.is_none()),
        args.dst_version,
    )?;
    if let Some(problem) = &for_release.first {
        eprintln!("refused: {problem}");
        return Err(Failure {
            code: INVALID_STATE,
            message: format!("{shown}: {}", problem.message),
        });
    }
    let dst_side = for_release.side;
    let release = dst_side.release();
    let unchecked = match &dst_side {
        DstSide::Bundled(_, _, _) => {
            eprintln!(
                "target: {} (-dump-vmstate bundled with vmstate)",
                release.how
            );
            Vec::new()
        }
        DstSide::File(side, _) => {
            let path = args.target.as_deref().unwrap_or(Path::new("-"));
            eprintln!(
                "target: {} ({}); {}",
                path.display(),
                side.kind(),
                release.how
            );
            Vec::new()
        }
        DstSide::Release(alone) => {
            eprintln!("target: QEMU {alone}, without a schema");
            // A release whose dump for the stream's machine type is not bundled says so.
            compat::WITHOUT_SCHEMA
                .iter()
                .copied()
                .chain(for_release.unchecked.as_deref())
                .collect()
        }
    };
    let dst = dst_side.destination();
    for what in &unchecked {
        eprintln!("not checked: {what}");
    }
    let devices = args.devices.decode(stream, shown)?;
    let target = args.target.as_ref().map(|p| p.display().to_string());
    match compat::retarget(stream, &devices, dst) {
        Ok(changes) => {
            for change in &changes {
                eprintln!("changed: {}: {}", change.section, change.message);
            }
            if changes.is_empty() {
                eprintln!("changed: nothing: the destination loads the stream as it is");
            }
            if args.json {
                print_report(target.as_deref(), &release, &unchecked, "changes", &changes)?;
            }
            Ok(())
        }
        Err(refused) => {
            for problem in &refused {
                eprintln!("refused: {problem}{}", flag_hint(problem));
            }
            if args.json {
                print_report(target.as_deref(), &release, &unchecked, "refused", &refused)?;
            }
            Err(Failure {
                code: INVALID_STATE,
                message: format!(
                    "{shown}: {} problem(s) cannot be rewritten for {} without losing state; \
                     nothing written",
                    refused.len(),
                    target.unwrap_or_else(|| format!(
                        "QEMU {}",
                        dst.release().map(|r| r.to_string()).unwrap_or_default()
                    ))
                ),
            })
        }
    }
}

/// The --json report of `convert --target`/`--dst-version`: the target (none for a release
/// alone), its release, the checks not made, and the `key` list.
fn print_report(
    target: Option<&str>,
    release: &ReleaseGuess,
    unchecked: &[&str],
    key: &str,
    list: &impl serde::Serialize,
) -> Outcome {
    let mut report = serde_json::Map::new();
    report.insert("target".to_owned(), to_value(&target)?);
    report.insert("release".to_owned(), to_value(release)?);
    report.insert("unchecked".to_owned(), to_value(&unchecked)?);
    report.insert(key.to_owned(), to_value(list)?);
    print_json(&report)
}

fn to_value(value: &impl serde::Serialize) -> Result<serde_json::Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::unreadable(format!("cannot render JSON: {e}")))
}

/// The option that rewrites what a refusal names, where one does.
fn flag_hint(problem: &Problem) -> &'static str {
    if problem.kind != ProblemKind::VirtioInternals {
        return "";
    }
    match (problem.description.as_deref(), problem.field.as_deref()) {
        (_, Some("ndescs")) => " (--packed-ndescs-after)",
        (Some(parent), Some(subsection)) if !subsection.starts_with(parent) => " (--mend-names)",
        _ => "",
    }
}

/// Writes every virtio device (and virtio-scsi's requests) back from its typed state, as
/// the options ask, when they concern devices.
fn store_devices(stream: &mut Stream, args: &ConvertArgs, shown: &str) -> Outcome {
    if !args.touches_devices() {
        return Ok(());
    }
    let mut found = args.devices.decode(stream, shown)?;
    let scsi = args.devices.decode_scsi(stream, &found, shown)?;
    for section in &mut found {
        if args.mend_names {
            for (from, to) in section.device.mend_names() {
                eprintln!("vmstate: {}: subsection {from} renamed {to}", section.idstr);
            }
        }
        let framing = section.device.framing().map(|f| args.reframe(f));
        devices::store_virtio(stream, section, framing)
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    }
    for disk in &scsi {
        let framing = args.reframe(disk.requests.framing);
        devices::store_scsi_requests(stream, disk, Some(framing))
            .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    }
    Ok(())
}
