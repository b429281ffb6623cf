//! The one error type of the library.
//!
//! Every failure names the field that was being read or written (a dotted path such as
//! `element.in_sg[3].iov_len`) and the byte offset where it happened, counted from the start
//! of the input that the caller handed in (or of the output being written). The kind says
//! what went wrong in terms a user can act on; it never carries a backtrace or a panic message.

use std::fmt;

/// What went wrong. Each variant is one class of defect, so that tests and callers can match
/// on the exact problem rather than on message text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input ended before the field could be read.
    UnexpectedEof {
        /// Bytes the field needs.
        needed: u64,
        /// Bytes that were left.
        available: u64,
    },
    /// A complete value was read but bytes follow it that belong to nothing.
    TrailingBytes {
        /// How many bytes are left over.
        count: u64,
    },
    /// A count read from the input exceeds the largest value the format allows.
    CountTooLarge {
        /// The count as read.
        value: u64,
        /// The largest allowed count.
        max: u64,
    },
    /// Two counts that share one bound exceed it together (an element's `out_num + in_num`).
    CountSumTooLarge {
        /// The first count (`out_num`).
        first: u64,
        /// The second count (`in_num`).
        second: u64,
        /// The largest allowed sum.
        max: u64,
    },
    /// A guest address plus a length passes the end of the 64-bit address space.
    AddressOverflow {
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// A value is too large for the width of the field it must be written to.
    ValueTooWide {
        /// The value.
        value: u64,
        /// Width of the field in bits.
        bits: u32,
    },
    /// The input's size fits none of the layouts that could describe it.
    NoLayoutFits {
        /// Size of the input in bytes.
        size: u64,
    },
    /// More than one layout fits the input and nothing decides between them.
    AmbiguousLayout {
        /// The names of the layouts that fit.
        candidates: Vec<&'static str>,
    },
    /// A layout that fits the size was ruled out (or forced) but its counters make no sense.
    ImplausibleLayout {
        /// Why no candidate was plausible.
        reason: String,
    },
    /// A value that must be one of a few constants is something else.
    InvalidValue {
        /// The value as read.
        value: u64,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// The input does not start with the migration stream magic `QEVM`.
    BadMagic {
        /// The first four bytes, big-endian.
        found: u32,
    },
    /// The stream's file version is not 3 (2 is the obsolete pre-2011 format).
    UnsupportedVersion {
        /// The version as read.
        version: u32,
    },
    /// A byte where a section or record type belongs is no known type.
    UnknownSectionType {
        /// The byte as read.
        byte: u8,
    },
    /// A section footer carries another section id than its header.
    FooterMismatch {
        /// The id in the section header.
        expected: u32,
        /// The id in the footer.
        found: u32,
    },
    /// The stream has section footers, but a section ends without one.
    MissingFooter {
        /// The section whose footer is missing.
        section_id: u32,
        /// The byte found where the footer marker (0x7e) belongs.
        found: u8,
    },
    /// A command record carries a command number QEMU does not define.
    UnknownCommand {
        /// The command number as read.
        command: u16,
    },
    /// A command record's payload length is not the command's fixed length.
    CommandLength {
        /// Name of the command.
        command: &'static str,
        /// The length as read.
        length: u16,
        /// The length the command requires, in words.
        expected: &'static str,
    },
    /// A PART or END section names a section id that no START section opened.
    UnknownSectionId {
        /// The id as read.
        section_id: u32,
    },
    /// A valid construct this reader does not handle (multifd channels, mapped-ram, ...).
    Unsupported {
        /// What is not supported, in words.
        what: String,
    },
    /// A subsection with the parent's name prefix that the parent does not know.
    UnknownSubsection {
        /// The subsection's name.
        name: String,
        /// The parent's VMState name.
        parent: String,
    },
    /// A subsection comes twice in one struct. QEMU never writes one twice; its loader would
    /// keep the last copy, so a reader of the first would see other state than a loader.
    RepeatedSubsection {
        /// The subsection's name.
        name: String,
    },
    /// A subsection that the stream's own description lists is not in the stream.
    MissingSubsection {
        /// The subsection's name.
        name: String,
    },
    /// A device section's payload cannot be delimited: payloads carry no length.
    Undelimited {
        /// Why not, in words.
        reason: String,
    },
    /// The stream's JSON description (vmdesc trailer) is malformed or does not fit the stream.
    BadDescription {
        /// What is wrong with it.
        reason: String,
    },
    /// A `-dump-vmstate` file is malformed.
    BadSchema {
        /// What is wrong with it.
        reason: String,
    },
    /// A RAM record is invalid (unknown flags, unknown block, offset outside its block, ...).
    BadRamRecord {
        /// What is wrong with it.
        reason: String,
    },
    /// A counted string that must not be empty (a section idstr) has length zero.
    EmptyString,
    /// A name in the stream is not UTF-8.
    NotUtf8,
    /// Gzip-compressed input could not be decompressed.
    Decompress {
        /// The compression format.
        format: &'static str,
        /// The decompressor's complaint.
        reason: String,
    },
    /// Reading the input failed (a reset connection, a device error).
    Input {
        /// The operating system's complaint.
        reason: String,
    },
    /// Writing the output failed (a full disk, a closed pipe).
    Output {
        /// The operating system's complaint.
        reason: String,
    },
    /// Several readings of device state that the stream does not delimit all fit, and the
    /// stream holds nothing that decides between them.
    AmbiguousFraming {
        /// The readings that fit.
        readings: Vec<String>,
        /// The options that settle it.
        settle: String,
    },
    /// The only readings of undelimited device state that parse contradict the rest of it.
    InconsistentFraming {
        /// The readings that parsed.
        readings: Vec<String>,
        /// The rule they break.
        reason: String,
    },
    /// Guest memory cannot be placed: the RAM block to address map is missing or wrong.
    BadRamMap {
        /// What is wrong.
        reason: String,
    },
    /// State built by hand, or loaded against guest memory, contradicts itself or the memory:
    /// a queue index past its ring, a chain that is not what was saved.
    Inconsistent {
        /// What is wrong.
        reason: String,
    },
    /// A field path given by a user does not name an editable field.
    BadPath {
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::UnexpectedEof { needed, available } => write!(
                f,
                "input ends early: needs {needed} byte(s), {available} left"
            ),
            ErrorKind::TrailingBytes { count } => {
                write!(f, "{count} unexpected byte(s) after the end of the value")
            }
            ErrorKind::CountTooLarge { value, max } => {
                write!(f, "count {value} exceeds the maximum {max}")
            }
            ErrorKind::CountSumTooLarge { first, second, max } => write!(
                f,
                "counts {first} + {second} exceed the maximum total {max}"
            ),
            ErrorKind::AddressOverflow { addr, len } => {
                write!(f, "address {addr:#x} + length {len:#x} overflows 64 bits")
            }
            ErrorKind::ValueTooWide { value, bits } => {
                write!(f, "value {value} does not fit in {bits} bits")
            }
            ErrorKind::NoLayoutFits { size } => {
                write!(f, "no element layout has a size of {size} bytes")
            }
            ErrorKind::AmbiguousLayout { candidates } => write!(
                f,
                "several layouts fit ({}); the layout must be given",
                candidates.join(", ")
            ),
            ErrorKind::ImplausibleLayout { reason } => f.write_str(reason),
            ErrorKind::Inconsistent { reason } => f.write_str(reason),
            ErrorKind::InvalidValue { value, expected } => {
                write!(f, "value {value} is invalid: expected {expected}")
            }
            ErrorKind::BadMagic { found } => write!(
                f,
                "not a QEMU migration stream: magic {found:#010x}, expected 0x5145564d (QEVM)"
            ),
            ErrorKind::UnsupportedVersion { version: 2 } => f.write_str(
                "obsolete version 2 of the migration stream format; only version 3 is read",
            ),
            ErrorKind::UnsupportedVersion { version } => write!(
                f,
                "unsupported migration stream version {version}; only version 3 is read"
            ),
            ErrorKind::UnknownSectionType { byte } => {
                write!(f, "unknown section type byte {byte:#04x}")
            }
            ErrorKind::FooterMismatch { expected, found } => write!(
                f,
                "section footer carries section id {found}, the section header {expected}"
            ),
            ErrorKind::MissingFooter { section_id, found } => write!(
                f,
                "section {section_id} has no footer: byte {found:#04x} where 0x7e belongs"
            ),
            ErrorKind::UnknownCommand { command } => write!(f, "unknown command {command}"),
            ErrorKind::CommandLength {
                command,
                length,
                expected,
            } => write!(
                f,
                "command {command} has a payload of {length} byte(s), expected {expected}"
            ),
            ErrorKind::UnknownSectionId { section_id } => write!(
                f,
                "section id {section_id} continues a section that no START section opened"
            ),
            ErrorKind::Unsupported { what } => write!(f, "unsupported: {what}"),
            ErrorKind::UnknownSubsection { name, parent } => write!(
                f,
                "subsection {name:?} is not a known subsection of {parent:?}"
            ),
            ErrorKind::RepeatedSubsection { name } => {
                write!(f, "subsection {name:?} comes twice in one struct")
            }
            ErrorKind::MissingSubsection { name } => write!(
                f,
                "subsection {name:?} is in the stream's description but not in the stream"
            ),
            ErrorKind::Undelimited { reason } => {
                write!(f, "cannot find the end of the section: {reason}")
            }
            ErrorKind::BadDescription { reason } => {
                write!(f, "bad stream description (vmdesc): {reason}")
            }
            ErrorKind::BadSchema { reason } => write!(f, "bad -dump-vmstate file: {reason}"),
            ErrorKind::BadRamRecord { reason } => write!(f, "bad RAM record: {reason}"),
            ErrorKind::EmptyString => f.write_str("empty name (length 0)"),
            ErrorKind::NotUtf8 => f.write_str("name is not UTF-8"),
            ErrorKind::Decompress { format, reason } => {
                write!(f, "cannot decompress {format} input: {reason}")
            }
            ErrorKind::Input { reason } => write!(f, "cannot read the input: {reason}"),
            ErrorKind::Output { reason } => write!(f, "cannot write the output: {reason}"),
            ErrorKind::InconsistentFraming { readings, reason } => write!(
                f,
                "no reading of the request list agrees with the rest of the device ({}): {reason}",
                readings.join("; ")
            ),
            ErrorKind::BadRamMap { reason } => write!(f, "guest memory: {reason}"),
            ErrorKind::BadPath { reason } => write!(f, "cannot set this path: {reason}"),
            ErrorKind::AmbiguousFraming { readings, settle } => write!(
                f,
                "the stream fits several readings ({}); settle it by assuming {settle}",
                readings.join("; ")
            ),
        }
    }
}

/// An error with the place it happened: the field path and the byte offset; an error of
/// reading the input or writing the output also keeps the I/O error that caused it, as its
/// [`std::error::Error::source`].
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    offset: u64,
    path: String,
    io: Option<std::sync::Arc<std::io::Error>>,
}

/// Errors are equal when they say the same thing at the same place; the I/O error behind one
/// is not compared.
impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.offset == other.offset && self.path == other.path
    }
}

impl Eq for Error {}

impl Error {
    /// Makes an error of `kind` for the field `path` at byte `offset`.
    pub fn new(kind: ErrorKind, offset: u64, path: impl Into<String>) -> Self {
        Error {
            kind,
            offset,
            path: path.into(),
            io: None,
        }
    }

    /// Writing the output failed at `offset` (of the output) with `error`, which is kept.
    pub fn output(error: std::io::Error, offset: u64, path: impl Into<String>) -> Self {
        let kind = ErrorKind::Output {
            reason: error.to_string(),
        };
        Error {
            io: Some(std::sync::Arc::new(error)),
            ..Error::new(kind, offset, path)
        }
    }

    /// Reading the input failed at `offset` with `error`, which is kept.
    pub fn input(error: std::io::Error, offset: u64, path: impl Into<String>) -> Self {
        let kind = ErrorKind::Input {
            reason: error.to_string(),
        };
        Error {
            io: Some(std::sync::Arc::new(error)),
            ..Error::new(kind, offset, path)
        }
    }

    /// The I/O error behind an error of reading or writing, when there is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        self.io.as_deref()
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Byte offset of the failure, counted from the start of the input (or output).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The dotted path of the field that was being read or written.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Prefixes the field path with the name of the structure that contains it, so that an
    /// error raised deep inside a decoder reads `section.virtio.element.in_num`.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join_path(parent, &self.path);
        self
    }

    /// Puts the section's idstr in the assumptions that would settle an ambiguous reading,
    /// where they name `SECTION`, so that the message gives them exactly.
    #[must_use]
    pub fn naming_section(mut self, idstr: &str) -> Self {
        if let ErrorKind::AmbiguousFraming { settle, .. } = &mut self.kind {
            *settle = settle.replace("SECTION", idstr);
        }
        self
    }
}

/// `parent.path`, or `parent` alone when `path` is empty: how every field path (of errors
/// and notes) grows as it passes out of nested decoders.
pub(crate) fn join_path(parent: &str, path: &str) -> String {
    if path.is_empty() {
        parent.to_owned()
    } else {
        format!("{parent}.{path}")
    }
}

impl ErrorKind {
    /// True for errors about what a user asked for (a field path, a RAM map), which have no
    /// place in the input.
    fn is_about_usage(&self) -> bool {
        matches!(
            self,
            ErrorKind::BadPath { .. } | ErrorKind::BadRamMap { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.is_empty(), self.kind.is_about_usage()) {
            (true, true) => write!(f, "{}", self.kind),
            (false, true) => write!(f, "{}: {}", self.path, self.kind),
            (true, false) => write!(f, "at offset {}: {}", self.offset, self.kind),
            (false, false) => write!(f, "{} at offset {}: {}", self.path, self.offset, self.kind),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The result type of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ambiguous_reading_names_its_section() {
        let err = Error::new(
            ErrorKind::AmbiguousFraming {
                readings: vec!["a".to_owned(), "b".to_owned()],
                settle: "SECTION:packed=on|off".to_owned(),
            },
            7,
            "virtio.rq",
        )
        .naming_section("0000:00:01.0/virtio-blk");
        assert!(err
            .to_string()
            .contains("assuming 0000:00:01.0/virtio-blk:packed=on|off"));
    }
}
