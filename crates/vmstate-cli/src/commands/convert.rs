//! `vmstate convert`: read a migration stream and write it back.

use std::path::PathBuf;

use clap::Args;

use super::dump::load_stream;
use crate::io::write_stream;
use crate::outcome::Outcome;

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
}

/// Runs `vmstate convert`: the stream is decoded into its model and written from the model,
/// so an unchanged stream comes out byte for byte as it went in (decompressed).
pub fn run(args: ConvertArgs) -> Outcome {
    let mut loaded = load_stream(&args.input)?;
    if args.strip_ram {
        loaded.stream.strip_ram();
    }
    write_stream(&loaded.stream, &loaded.bytes, &args.output)
}
