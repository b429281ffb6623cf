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
                "several layouts fit ({}); choose one with --layout",
                candidates.join(", ")
            ),
            ErrorKind::ImplausibleLayout { reason } => f.write_str(reason),
            ErrorKind::InvalidValue { value, expected } => {
                write!(f, "value {value} is invalid: expected {expected}")
            }
        }
    }
}

/// An error with the place it happened: the field path and the byte offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    offset: u64,
    path: String,
}

impl Error {
    /// Makes an error of `kind` for the field `path` at byte `offset`.
    pub fn new(kind: ErrorKind, offset: u64, path: impl Into<String>) -> Self {
        Error {
            kind,
            offset,
            path: path.into(),
        }
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
        self.path = if self.path.is_empty() {
            parent.to_owned()
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "at offset {}: {}", self.offset, self.kind)
        } else {
            write!(f, "{} at offset {}: {}", self.path, self.offset, self.kind)
        }
    }
}

impl std::error::Error for Error {}

/// The result type of every fallible operation in this crate.
pub type Result<T> = std::result::Result<T, Error>;
