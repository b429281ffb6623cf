//! How much memory the model of one stream may take.
//!
//! A record of a few bytes of input can cost a hundred bytes of model (a `Field` per element
//! of a described `uint8` array, a `RamRun` per page when pages alternate between blocks, a
//! `Record` per 9-byte command). Without a bound, a hostile stream would take many times its
//! size in memory. While a stream is read, every piece of the model is charged against a
//! budget of the input's size plus 24 MiB (the model keeps a copy of each described field's
//! bytes, so real streams take up to about their size); a stream that would take more is
//! refused.

use std::cell::Cell;

use crate::error::{Error, ErrorKind, Result};

/// The budget's fixed part: what any real stream's device state fits in many times over.
const FIXED: u64 = 24 << 20;

thread_local! {
    /// Bytes left to charge while a stream is read on this thread (`None`: no stream).
    static LEFT: Cell<Option<u64>> = const { Cell::new(None) };
    /// The budget of the stream being read, for the error message.
    static LIMIT: Cell<u64> = const { Cell::new(0) };
}

/// The budget of one read; restores the previous one (none, or an enclosing read's) when
/// dropped.
pub(crate) struct Budget {
    left: Option<u64>,
    limit: u64,
}

impl Budget {
    /// Starts the budget for reading an input of `input_len` bytes.
    pub(crate) fn start(input_len: usize) -> Budget {
        let limit = (input_len as u64).saturating_add(FIXED);
        Budget {
            left: LEFT.with(|l| l.replace(Some(limit))),
            limit: LIMIT.with(|l| l.replace(limit)),
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        LEFT.with(|l| l.set(self.left));
        LIMIT.with(|l| l.set(self.limit));
    }
}

/// Adds `bytes` to the budget of the read under way: a one-pass read, which does not know
/// its input's size in advance, earns its budget as the input arrives.
pub(crate) fn credit(bytes: u64) {
    LEFT.with(|l| l.set(l.get().map(|left| left.saturating_add(bytes))));
    LIMIT.with(|l| l.set(l.get().saturating_add(bytes)));
}

/// Charges `bytes` of model for the piece at `offset` named `path`.
pub(crate) fn charge(bytes: u64, offset: u64, path: &str) -> Result<()> {
    let left = LEFT.with(Cell::get);
    let Some(left) = left else {
        return Ok(());
    };
    match left.checked_sub(bytes) {
        Some(rest) => {
            LEFT.with(|l| l.set(Some(rest)));
            Ok(())
        }
        None => Err(Error::new(
            ErrorKind::Unsupported {
                what: format!(
                    "a stream whose model takes more than {} bytes of memory (its size plus \
                     24 MiB): its records, RAM runs or described fields are too many for \
                     the bytes they take",
                    LIMIT.with(Cell::get)
                ),
            },
            offset,
            path,
        )),
    }
}
