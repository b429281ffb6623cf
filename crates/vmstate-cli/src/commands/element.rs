//! `vmstate element`: one in-flight request as raw bytes or as JSON.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use vmstate::element::{self, Element, Layout, LayoutChoice};
use vmstate::wire::{Reader, Writer};

use crate::io::{print_json, read_input, write_output};
use crate::outcome::{Failure, Outcome};

/// The largest input the element commands read: a few times the largest element.
const INPUT_LIMIT: u64 = 1 << 20;

/// Subcommands of `vmstate element`.
#[derive(Debug, Subcommand)]
pub enum ElementCommand {
    /// Decode a raw element blob and print it as JSON.
    ///
    /// Prints {"layout", "index", "out": [{"addr", "len"}], "in": [...]}; notes about stale
    /// bytes left by legacy writers go to stderr and do not fail the command.
    Decode(DecodeArgs),
    /// Encode an element from JSON into raw bytes of a layout.
    Encode(EncodeArgs),
    /// List the layouts whose size fits a blob and whether its counters are plausible.
    Detect(DetectArgs),
}

/// Arguments of `vmstate element decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Host layout of the blob: auto, stable (= lp64-le), lp64-be, i386, ilp32-le, ilp32-be.
    #[arg(long, default_value = "auto")]
    layout: LayoutChoice,
    /// The blob, exactly one element long (`-` for standard input).
    file: PathBuf,
}

/// Arguments of `vmstate element encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// Layout to write. Defaults to the "layout" key of the JSON, or stable when it has none.
    #[arg(long)]
    layout: Option<Layout>,
    /// JSON of one element, as `element decode` prints it (`-` for standard input).
    json_file: PathBuf,
    /// Where to write the bytes (`-` for standard output).
    #[arg(short, long)]
    output: PathBuf,
}

/// Arguments of `vmstate element detect`.
#[derive(Debug, Args)]
pub struct DetectArgs {
    /// The blob (`-` for standard input).
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The JSON form of a decoded element: its layout, then its fields.
#[derive(Serialize)]
struct ElementJson<'a> {
    layout: &'static str,
    #[serde(flatten)]
    element: &'a Element,
}

/// Runs one `vmstate element` subcommand.
pub fn run(command: ElementCommand) -> Outcome {
    match command {
        ElementCommand::Decode(args) => decode(args),
        ElementCommand::Encode(args) => encode(args),
        ElementCommand::Detect(args) => detect(args),
    }
}

fn decode(args: DecodeArgs) -> Outcome {
    let blob = read_input(&args.file, INPUT_LIMIT)?;
    let layout = element::choose_layout(&blob, args.layout).map_err(|e| e.within("element"))?;
    let mut reader = Reader::new(&blob);
    let decoded = element::decode(&mut reader, layout).map_err(|e| e.within("element"))?;
    reader.expect_end("element").map_err(Failure::from)?;
    for note in &decoded.notes {
        eprintln!("note: {}", note.clone().within("element"));
    }
    print_json(&ElementJson {
        layout: layout.name(),
        element: &decoded.element,
    })
}

fn encode(args: EncodeArgs) -> Outcome {
    let text = read_input(&args.json_file, INPUT_LIMIT)?;
    let shown = args.json_file.display();
    let mut value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| Failure::unreadable(format!("{shown}: invalid JSON: {e}")))?;
    let named = match value.as_object_mut().and_then(|o| o.remove("layout")) {
        None => None,
        Some(serde_json::Value::String(name)) => Some(
            name.parse::<Layout>()
                .map_err(|e| Failure::unreadable(format!("{shown}: {e}")))?,
        ),
        Some(other) => {
            return Err(Failure::unreadable(format!(
                "{shown}: \"layout\" must be a string, not {other}"
            )))
        }
    };
    let element: Element = serde_json::from_value(value)
        .map_err(|e| Failure::unreadable(format!("{shown}: not an element: {e}")))?;
    let layout = args.layout.or(named).unwrap_or(Layout::Stable);
    let mut writer = Writer::with_capacity(layout.size());
    element::encode(&element, layout, &mut writer).map_err(|e| e.within("element"))?;
    write_output(&args.output, writer.as_bytes())
}

/// The JSON form of one detection candidate.
#[derive(Serialize)]
struct CandidateJson {
    layout: &'static str,
    size: usize,
    plausible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
}

fn detect(args: DetectArgs) -> Outcome {
    let blob = read_input(&args.file, INPUT_LIMIT)?;
    let candidates = element::detect(&blob);
    let chosen = element::choose_layout(&blob, LayoutChoice::Auto);
    if args.json {
        let rows: Vec<CandidateJson> = candidates
            .iter()
            .map(|c| CandidateJson {
                layout: c.layout.name(),
                size: c.layout.size(),
                plausible: c.is_plausible(),
                problem: c.problem.clone(),
            })
            .collect();
        print_json(&serde_json::json!({
            "size": blob.len(),
            "candidates": rows,
            "chosen": chosen.as_ref().ok().map(|l| l.name()),
        }))?;
    } else {
        println!("size: {} bytes", blob.len());
        for c in &candidates {
            match &c.problem {
                None => println!("{:<9} plausible", c.layout.name()),
                Some(problem) => println!("{:<9} ruled out: {problem}", c.layout.name()),
            }
        }
        if let Ok(layout) = &chosen {
            println!("layout: {layout}");
        }
    }
    chosen.map(|_| ()).map_err(Failure::from)
}
