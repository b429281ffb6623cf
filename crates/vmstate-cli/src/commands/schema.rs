//! `vmstate schema`: the VMState descriptions of a stream or of a `-dump-vmstate` file.

use std::path::{Path, PathBuf};

use clap::Args;
use vmstate::devices::VirtioSection;
use vmstate::schema::{render_tree, Schema};

use super::devices::DeviceArgs;
use super::dump::{load_stream, LoadedStream, SourceArgs};
use crate::io::{print_json, read_input, write_output};
use crate::outcome::{Failure, Outcome};

/// The largest `-dump-vmstate` file read (QEMU's are about 1 MB).
const DUMP_LIMIT: u64 = 64 << 20;

/// Arguments of `vmstate schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// A stream (bare, compressed, in a libvirt save image or a qcow2 snapshot) or a
    /// `-dump-vmstate` file (JSON, optionally gzip-compressed).
    file: PathBuf,
    /// Print JSON in the shape of QEMU's -dump-vmstate instead of a tree.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    devices: DeviceArgs,
}

/// One side of a comparison: a `-dump-vmstate` file, or a stream with what it carries.
pub enum Side {
    /// A `-dump-vmstate` file.
    Dump(Schema),
    /// A stream.
    Stream {
        /// The stream read.
        loaded: Box<LoadedStream>,
        /// Its virtio devices, decoded.
        devices: Vec<VirtioSection>,
        /// What it carries.
        schema: Schema,
    },
}

impl Side {
    /// The schema of this side.
    pub fn schema(&self) -> &Schema {
        match self {
            Side::Dump(schema) | Side::Stream { schema, .. } => schema,
        }
    }

    /// What kind of input this is, in words.
    pub fn kind(&self) -> &'static str {
        match self {
            Side::Dump(_) => "-dump-vmstate file",
            Side::Stream { .. } => "stream",
        }
    }
}

/// Reads `path` as a `-dump-vmstate` file when it is JSON, as a stream otherwise.
pub fn load_side(path: &Path, source: &SourceArgs, devices: &DeviceArgs) -> Result<Side, Failure> {
    let shown = path.display().to_string();
    if let Some(json) = dump_json(path)? {
        let schema =
            Schema::from_dump(&json).map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?;
        return Ok(Side::Dump(schema));
    }
    let loaded = load_stream(path, source)?;
    let found = devices.decode(&loaded.stream, &shown)?;
    let schema = Schema::from_stream(&loaded.stream, &found);
    Ok(Side::Stream {
        loaded: Box::new(loaded),
        devices: found,
        schema,
    })
}

/// The JSON text of `path` when it is a (possibly gzipped) JSON file small enough to be a
/// `-dump-vmstate` file; `None` for anything else (a stream).
fn dump_json(path: &Path) -> Result<Option<Vec<u8>>, Failure> {
    if path == Path::new("-") {
        return Ok(None);
    }
    let size = std::fs::metadata(path)
        .map_err(|e| Failure::unreadable(format!("cannot read {}: {e}", path.display())))?
        .len();
    if size > DUMP_LIMIT {
        return Ok(None);
    }
    let data = read_input(path, DUMP_LIMIT)?;
    let text = vmstate::stream::decompress_if_gzip(&data, DUMP_LIMIT.saturating_mul(4))
        .map_err(|e| Failure::unreadable(format!("{}: {e}", path.display())))?;
    let is_json = text
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    Ok(is_json.then(|| text.into_owned()))
}

/// Runs `vmstate schema`.
pub fn run(args: SchemaArgs) -> Outcome {
    let side = load_side(&args.file, &args.source, &args.devices)?;
    if args.json {
        return print_json(&side.schema().to_dump_json());
    }
    write_output(Path::new("-"), render_tree(side.schema()).as_bytes())
}
