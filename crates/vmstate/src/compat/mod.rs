//! Will a destination load this? Schemas and streams compared with what a destination knows.
//!
//! [`compare_schemas`] compares two [`Schema`]s the way QEMU's `vmstate-static-checker.py`
//! compares two `-dump-vmstate` files (sections missing, versions above the destination's or
//! below its minimum, field names, sizes and counts, nested descriptions, subsections), but
//! walks every description to its end instead of stopping at its first field mismatch.
//! [`check_stream`] compares what one stream carries with a destination: everything the
//! destination would refuse, in stream order, each with the message QEMU prints, including
//! what `-dump-vmstate` does not show: the machine type, commands and capabilities (which
//! depend on the destination's QEMU release, see [`release`]) and the virtio internals.
//! [`retarget`] rewrites a stream so that such a destination loads it, where that loses no
//! state.
//!
//! A destination is known by its schema or, without one, by its QEMU release alone
//! ([`Destination`]): then what that release knows is checked, and [`WITHOUT_SCHEMA`] lists
//! what is not. What the schemas leave open (a field sent only when a test holds, the size of
//! a field whose dump gives no element count) is [`Findings::undecided`], not a problem.

pub mod bundled;
pub mod release;
mod retarget;
mod schemas;
mod stream;

pub use release::{guess_release, Certainty, Release, ReleaseGuess};
pub use retarget::{retarget, Change};
pub use schemas::{compare_schemas, compare_with_release};
pub use stream::{check_stream, NOT_IN_DUMPS};

use serde::Serialize;

use crate::schema::{Field, Schema};

/// What a destination is known by.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// Its schema (a `-dump-vmstate` file, or a stream it wrote) and its QEMU release, when
    /// known.
    Schema(&'a Schema, Option<Release>),
    /// Its QEMU release only: its commands, capabilities, machine types and virtio
    /// subsections are known, its sections are not.
    Release(Release),
}

impl Destination<'_> {
    /// Its QEMU release, when known.
    pub fn release(&self) -> Option<Release> {
        match self {
            Destination::Schema(_, release) => *release,
            Destination::Release(release) => Some(*release),
        }
    }
}

/// The checks that need the destination's schema, not made when only its release is known.
pub const WITHOUT_SCHEMA: &[&str] = &[
    "the sections the destination has, and the versions of each it loads (that takes its \
     -dump-vmstate file)",
    "the fields and subsections of every section (that takes its -dump-vmstate file)",
    "the machine type the destination runs (only whether its release has the source's was \
     checked)",
];

/// What a comparison found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Findings {
    /// Everything the destination refuses or misreads (for a stream, in stream order).
    pub problems: Vec<Problem>,
    /// What the schemas leave open, not a problem by itself: a field sent only when a test
    /// holds that the other side does not have, the size of a field whose dump gives no
    /// element count.
    pub undecided: Vec<Problem>,
    /// What could not be checked, and why.
    pub unchecked: Vec<String>,
}

impl Findings {
    /// Adds the checks [`WITHOUT_SCHEMA`] lists to what was not checked.
    fn without_schema(&mut self) {
        self.unchecked
            .extend(WITHOUT_SCHEMA.iter().map(|what| (*what).to_owned()));
    }
}

/// A field's size as a noun: its bytes, or its element's when its dump gives no count.
fn bytes_text(field: &Field) -> String {
    match field.bytes() {
        Some(bytes) => format!("{bytes} byte(s)"),
        None => format!(
            "elements of {} byte(s), a count its dump does not give",
            field.size
        ),
    }
}

/// What kind of problem a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// The destination has no such section (device class, or section of the stream).
    SectionMissing,
    /// A version above the highest the destination loads.
    VersionTooNew,
    /// A version below the lowest the destination loads.
    VersionTooOld,
    /// A description has another name in the destination.
    DescriptionRenamed,
    /// A struct field of the source has no nested description in the destination.
    DescriptionMissing,
    /// Fields in another order or under another name.
    FieldMismatch,
    /// A field the source has and the destination does not read.
    FieldNotRead,
    /// A field the destination reads and the source does not have.
    FieldNotSent,
    /// A field of another size or element count.
    SizeMismatch,
    /// The source's description has fields and the destination's has none.
    FieldsMissing,
    /// A subsection the destination does not know.
    SubsectionMissing,
    /// The machine types differ.
    MachineType,
    /// A command the destination does not know.
    UnknownCommand,
    /// A capability the destination does not know, or must enable.
    Capability,
    /// Virtio state the destination's QEMU does not read as written.
    VirtioInternals,
    /// A field sent (or read) only when its test holds, which the other side does not have:
    /// the migration fails only when the test holds (undecided).
    Conditional,
    /// Sizes that differ in a way that cannot be measured: a dump gives no element count
    /// (undecided).
    SizeUnknown,
}

/// One reason a destination would not load the source, or would load it wrongly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The section: a device class of a `-dump-vmstate` file, or a stream section's idstr.
    pub section: String,
    /// The VMState description the problem is in, when it is inside one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The field or subsection concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong, in words.
    pub message: String,
    /// The message the destination QEMU prints when it refuses the stream here (for a stream
    /// compared with a destination), when it prints one of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_message: Option<String>,
    /// Offset in the stream of what the problem is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Problem {
    fn new(kind: ProblemKind, section: &str, message: String) -> Problem {
        Problem {
            kind,
            section: section.to_owned(),
            description: None,
            field: None,
            message,
            qemu_message: None,
            offset: None,
        }
    }

    fn in_description(mut self, description: &str) -> Problem {
        self.description = Some(description.to_owned());
        self
    }

    fn on(mut self, field: &str) -> Problem {
        self.field = Some(field.to_owned());
        self
    }

    fn qemu(mut self, message: String) -> Problem {
        self.qemu_message = Some(message);
        self
    }

    fn at(mut self, offset: Option<u64>) -> Problem {
        self.offset = offset;
        self
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.section)?;
        if let Some(d) = &self.description {
            write!(f, ", {d}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", {field}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(q) = &self.qemu_message {
            write!(f, " (QEMU: \"{q}\")")?;
        }
        Ok(())
    }
}
