//! `vmstate dump`: what a migration stream holds, as a summary or as JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;
use vmstate::stream::{
    self, Command, Configuration, RamBlockSummary, Record, Section, SectionBody, Stream,
};

use vmstate::envelope::Envelope;

use super::devices::{self, DeviceArgs, ScsiJson, VirtioJson};
use crate::io::{read_stream, write_output, Input, Opened};
use crate::outcome::{Failure, Outcome};

/// Arguments of `vmstate dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The stream: bare, compressed (gzip, bzip2, xz, lzop, zstd) or in a libvirt save image
    /// (`-` for standard input).
    file: PathBuf,
    /// Print the full decode as JSON (RAM as counts and ranges, not page contents).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// A stream read from a file: its (decompressed) bytes and its model.
pub struct LoadedStream {
    /// The stream's bytes, decompressed, mapped rather than read into memory.
    pub bytes: Input,
    /// The model.
    pub stream: Stream,
}

/// Where in its input a stream is, for inputs that hold several.
#[derive(Debug, Clone, Default, Args)]
pub struct SourceArgs {
    /// For a qcow2 image: the internal snapshot whose VM state to read, by id or name
    /// (default: the newest one with VM state, named on stderr).
    #[arg(long, value_name = "ID|NAME")]
    pub snapshot: Option<String>,
}

/// Reads and parses the stream in `path` (`-` for standard input).
pub fn load_stream(path: &Path, source: &SourceArgs) -> Result<LoadedStream, Failure> {
    read_loaded(Input::open(path, source.snapshot.as_deref())?, path)
}

/// Parses the stream in `bytes`, which came from `path`.
pub fn read_loaded(bytes: Input, path: &Path) -> Result<LoadedStream, Failure> {
    let shown = path.display();
    let stream = read_stream(&bytes).map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
    Ok(LoadedStream { bytes, stream })
}

/// A stream's model and what its input was, for commands that need no page contents.
pub struct LoadedModel {
    /// The model.
    pub stream: Stream,
    /// Bytes of the (decompressed) stream.
    pub size: u64,
    /// Bytes in the file, before decompression.
    pub file_size: u64,
    /// Whether the stream was compressed in the file.
    pub compressed: bool,
    /// What wrapped the stream.
    pub envelope: Envelope,
}

/// Reads the model of the stream in `path` (`-` for standard input) in one pass: a file is
/// mapped, a pipe or a compressed stream read as it arrives, never copied.
pub fn load_model(path: &Path, source: &SourceArgs) -> Result<LoadedModel, Failure> {
    let shown = path.display();
    let unreadable = |e: vmstate::Error| Failure::unreadable(format!("{shown}: {e}"));
    match Input::open_flowing(path, source.snapshot.as_deref())? {
        Opened::Mapped(bytes) => {
            let stream = read_stream(&bytes).map_err(unreadable)?;
            Ok(LoadedModel {
                stream,
                size: bytes.len() as u64,
                file_size: bytes.file_size,
                compressed: bytes.envelope.is_compressed(),
                envelope: bytes.envelope.clone(),
            })
        }
        Opened::Flowing(mut flowing) => {
            let file_offset = flowing.envelope.stream_file_offset();
            let read = stream::read_one_pass(&mut flowing, file_offset, &mut |_| Ok(()))
                .map_err(unreadable)?;
            let size = read
                .held
                .offset
                .saturating_add(read.held.bytes.len() as u64);
            stream::expect_input_end(&mut flowing, size).map_err(unreadable)?;
            Ok(LoadedModel {
                stream: read.stream,
                size,
                file_size: flowing.file_size(),
                compressed: flowing.envelope.is_compressed(),
                envelope: flowing.envelope,
            })
        }
    }
}

/// Runs `vmstate dump`.
pub fn run(args: DumpArgs) -> Outcome {
    let loaded = load_model(&args.file, &args.source)?;
    let virtio = args
        .devices
        .decode(&loaded.stream, &args.file.display().to_string())?;
    let scsi =
        args.devices
            .decode_scsi(&loaded.stream, &virtio, &args.file.display().to_string())?;
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&DumpJson {
            size: loaded.size,
            compressed: loaded.compressed,
            envelope: &loaded.envelope,
            trailer_json_len: loaded.stream.trailer.as_ref().map(|t| t.json.len() as u64),
            ram_blocks: loaded.stream.ram_summary(),
            virtio_devices: virtio.iter().map(VirtioJson::from).collect(),
            scsi_requests: scsi.iter().map(ScsiJson::from).collect(),
            stream: &loaded.stream,
        })
        .map_err(|e| Failure::unreadable(format!("cannot render JSON: {e}")))?;
        text.push('\n');
        text
    } else {
        let mut text = summary(&args.file, &loaded);
        devices::summary(&virtio, &mut text);
        devices::scsi_summary(&scsi, &mut text);
        text
    };
    write_output(Path::new("-"), text.as_bytes())
}

/// The JSON form of `dump --json`.
#[derive(Serialize)]
struct DumpJson<'a> {
    /// Bytes of the (decompressed) stream.
    size: u64,
    /// Whether the stream was compressed in the file.
    compressed: bool,
    /// What wrapped the stream in the file.
    envelope: &'a vmstate::envelope::Envelope,
    /// Bytes of the JSON description, when present.
    trailer_json_len: Option<u64>,
    /// Per RAM block: counts and where its pages are.
    ram_blocks: Vec<RamBlockSummary>,
    /// Every virtio device, decoded.
    virtio_devices: Vec<VirtioJson<'a>>,
    /// virtio-scsi's requests in flight, per SCSI disk section.
    scsi_requests: Vec<ScsiJson<'a>>,
    /// The full model.
    #[serde(flatten)]
    stream: &'a Stream,
}

fn summary(path: &Path, loaded: &LoadedModel) -> String {
    let stream = &loaded.stream;
    let mut out = String::new();
    let size = loaded.size;
    let envelope = &loaded.envelope;
    match envelope {
        Envelope::Bare => {
            let _ = writeln!(out, "file: {} ({size} bytes)", path.display());
        }
        Envelope::Compressed { compression } => {
            let _ = writeln!(
                out,
                "file: {} ({} bytes {}-compressed, {size} bytes of stream)",
                path.display(),
                loaded.file_size,
                compression.name()
            );
        }
        Envelope::Libvirt(_) | Envelope::Qcow2 { .. } => {
            let _ = writeln!(
                out,
                "file: {} ({} bytes, {size} bytes of stream)\ncontainer: {}",
                path.display(),
                loaded.file_size,
                envelope.describe()
            );
            if let Envelope::Qcow2 { image, chosen } = envelope {
                let _ = write!(out, "snapshots:\n{}", image.snapshot_table(*chosen));
            }
        }
    }
    let footers = match stream.footers {
        Some(true) => "yes",
        Some(false) => "no",
        None => "no sections",
    };
    let source = match stream.page_size.source {
        stream::PageSizeSource::Description => "from the description",
        stream::PageSizeSource::TargetPageBits => "from configuration/target-page-bits",
        stream::PageSizeSource::DefaultX86 => "x86 default: the stream does not say",
        stream::PageSizeSource::RamRecords => "the only size the RAM records read with",
    };
    let _ = writeln!(
        out,
        "header: QEVM version {}; section footers: {footers}; target page size: {} ({source})",
        stream.version, stream.page_size.bytes
    );
    match stream.configuration() {
        Some(config) => {
            let _ = writeln!(out, "configuration: {}", configuration_line(config));
        }
        None => {
            let _ = writeln!(out, "configuration: none");
        }
    }
    let _ = writeln!(
        out,
        "records:\n  {:<8} {:>4}  {:<40} {:>4} {:>4}  {:<23}  content",
        "kind", "id", "idstr", "inst", "ver", "bytes"
    );
    records(&mut out, &stream.records, "  ");
    let _ = writeln!(out, "  {:<8} at {}", "EOF", stream.eof_offset);
    let blocks = stream.ram_summary();
    if !blocks.is_empty() {
        let _ = writeln!(
            out,
            "RAM blocks:\n  {:<32} {:>12} {:>8} {:>10} {:>8}",
            "name", "used_length", "pages", "zero_pages", "xbzrle"
        );
        for b in &blocks {
            let _ = writeln!(
                out,
                "  {:<32} {:>#12x} {:>8} {:>10} {:>8}",
                b.name, b.used_length, b.pages, b.zero_pages, b.xbzrle_pages
            );
        }
    }
    match &stream.trailer {
        Some(trailer) => {
            let devices = trailer.description.as_ref().map_or_else(
                || "not parsed".to_owned(),
                |d| format!("{} devices", d.devices.len()),
            );
            let _ = writeln!(
                out,
                "description: at {}, {} bytes of JSON, {devices}",
                trailer.offset,
                trailer.json.len()
            );
        }
        None => {
            let _ = writeln!(out, "description: none");
        }
    }
    for note in &stream.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn configuration_line(config: &Configuration) -> String {
    let mut line = format!("machine {}", config.machine);
    if let Some(bits) = config.target_page_bits() {
        let _ = write!(line, ", target-page-bits {bits}");
    }
    let caps = config.capabilities();
    if !caps.is_empty() {
        let _ = write!(line, ", capabilities {}", caps.join(","));
    }
    if config.state.subsection("configuration/uuid").is_some() {
        line.push_str(", uuid");
    }
    let _ = write!(
        line,
        " (bytes {}..{})",
        config.span.offset,
        config.span.end()
    );
    line
}

fn records(out: &mut String, records: &[Record], indent: &str) {
    for record in records {
        match record {
            Record::Configuration(config) => {
                let _ = writeln!(
                    out,
                    "{indent}{:<8} {:>4}  {:<40} {:>4} {:>4}  {:<23}",
                    "CONFIG",
                    "",
                    "configuration",
                    "",
                    "",
                    range(config.span.offset, config.span.end())
                );
            }
            Record::Command(command) => command_row(out, command, indent),
            Record::Section(section) => section_row(out, section, indent),
        }
    }
}

fn command_row(out: &mut String, command: &Command, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}{:<8} {:>4}  {:<40} {:>4} {:>4}  {:<23}  {} byte(s) of payload",
        "COMMAND",
        command.number,
        command.name,
        "",
        "",
        range(command.span.offset, command.span.end()),
        command.payload.len()
    );
    if let Some(packaged) = &command.packaged {
        records(out, &packaged.records, &format!("{indent}  "));
    }
}

fn section_row(out: &mut String, section: &Section, indent: &str) {
    let content = match &section.body {
        SectionBody::Ram(ram) => {
            let mut pages = 0u64;
            let mut zero = 0u64;
            let mut blocks = 0usize;
            for item in &ram.items {
                match item {
                    stream::RamItem::BlockList(list) => blocks = list.blocks.len(),
                    stream::RamItem::Pages(run) => {
                        let (full, zeros, xbzrle) = run.page_counts();
                        pages = pages.saturating_add(full).saturating_add(xbzrle);
                        zero = zero.saturating_add(zeros);
                    }
                    _ => {}
                }
            }
            let mut text = format!("RAM: {pages} page(s), {zero} zero page(s)");
            if blocks > 0 {
                let _ = write!(text, ", block list of {blocks}");
            }
            text
        }
        SectionBody::Device(state) => format!(
            "{} field(s), {} subsection(s)",
            state.fields.len(),
            state.subsections.len()
        ),
        SectionBody::Opaque { span, reason, .. } => {
            format!("{} raw byte(s): {reason}", span.len)
        }
        SectionBody::Iterative(payload) => {
            format!("{} record(s): {}", payload.records, payload.summary)
        }
    };
    let _ = writeln!(
        out,
        "{indent}{:<8} {:>4}  {:<40} {:>4} {:>4}  {:<23}  {content}",
        section.kind.name(),
        section.section_id,
        section.idstr,
        section.instance_id,
        section.version_id,
        range(section.span.offset, section.span.end()),
    );
}

fn range(start: u64, end: u64) -> String {
    format!("{start}..{end}")
}
