//! `vmstate`: read, check, convert and write the saved state of virtio devices.
//!
//! Exit codes, for every subcommand: 0 success; 1 the input parsed but its state is wrong;
//! 2 the input cannot be read or parsed, or the command line is wrong.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unreachable
)]

mod commands;
mod io;
mod outcome;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::outcome::Failure;

/// Read, check, convert and write the saved state of virtio devices.
#[derive(Debug, Parser)]
#[command(name = "vmstate", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// In-flight requests (VirtQueueElement): decode, encode, detect the host layout.
    #[command(subcommand)]
    Element(commands::element::ElementCommand),
    /// Summarise a QEMU migration stream (bare, compressed, in a libvirt save image or a qcow2
    /// snapshot); --json for the full decode.
    Dump(commands::dump::DumpArgs),
    /// Read a migration stream and write it back (byte-identical when unchanged), optionally
    /// converting in-flight elements to another host layout.
    Convert(commands::convert::ConvertArgs),
    /// Check the virtio device state of a stream: exit 0 clean, 1 with findings.
    Check(commands::check::CheckArgs),
    /// The VMState descriptions of a stream or a -dump-vmstate file: a tree, or --json in
    /// the shape of -dump-vmstate (virtio state shown as the layout inside its one field).
    Schema(commands::schema::SchemaArgs),
    /// Will DST load what SRC sends? Each a stream or a -dump-vmstate file: exit 0
    /// compatible, 1 with every problem listed (for a stream, QEMU's message for each).
    Compat(commands::compat::CompatArgs),
    /// Change decoded virtio device fields and write the stream from the typed state.
    Edit(commands::edit::EditArgs),
    /// Guest RAM: `extract` writes it out by RAM block, by guest-physical address, or as an
    /// ELF core.
    #[command(subcommand)]
    Ram(commands::ram::RamCommand),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with success, usage errors to stderr.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Element(command) => commands::element::run(command),
        Command::Dump(args) => commands::dump::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Edit(args) => commands::edit::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Schema(args) => commands::schema::run(args),
        Command::Compat(args) => commands::compat::run(args),
        Command::Ram(command) => commands::ram::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("error: {message}");
            ExitCode::from(code as u8)
        }
    }
}
