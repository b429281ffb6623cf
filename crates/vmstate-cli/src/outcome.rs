//! How a command ends: the exit code and the one-line message for stderr.

use std::fmt::Display;

/// Exit code when the input parsed but its state is wrong.
pub const INVALID_STATE: i32 = 1;
/// Exit code when the input cannot be read or parsed, or the command line is wrong.
pub const UNREADABLE: i32 = 2;

/// A command that did not succeed.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: i32,
    /// What went wrong, on one line.
    pub message: String,
}

impl Failure {
    /// The input could not be read or parsed (exit 2).
    pub fn unreadable(message: impl Display) -> Self {
        Failure {
            code: UNREADABLE,
            message: message.to_string(),
        }
    }
}

impl From<vmstate::Error> for Failure {
    fn from(error: vmstate::Error) -> Self {
        Failure::unreadable(error)
    }
}

/// The result of a command.
pub type Outcome = Result<(), Failure>;
