//! `vmstate convert`: read a migration stream and write it back.

use std::path::PathBuf;

use clap::Args;
use vmstate::stream;

use super::dump::load_stream;
use crate::io::write_output;
use crate::outcome::{Failure, Outcome};

/// Arguments of `vmstate convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The stream to read, raw or gzip-compressed (`-` for standard input).
    input: PathBuf,
    /// Where to write the stream, uncompressed (`-` for standard output).
    output: PathBuf,
}

/// Runs `vmstate convert`: the stream is decoded into its model and written from the model,
/// so an unchanged stream comes out byte for byte as it went in (decompressed).
pub fn run(args: ConvertArgs) -> Outcome {
    let loaded = load_stream(&args.input)?;
    let bytes = stream::write(&loaded.stream, &loaded.bytes)
        .map_err(|e| Failure::unreadable(format!("cannot write the stream: {e}")))?;
    write_output(&args.output, &bytes)
}
