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
        Failure::unreadable(with_flag_hint(&error))
    }
}

/// A library error with the command-line option that supplies what it says is missing: the
/// library speaks of facts (an assumption, a layout, a RAM map), the command line of flags.
pub fn with_flag_hint(error: &vmstate::Error) -> String {
    use vmstate::ErrorKind;
    let hint = match error.kind() {
        ErrorKind::AmbiguousFraming { .. } => {
            " (--assume SECTION:PROPERTY=VALUE states a device property, --from-layout NAME \
             the element layout)"
        }
        ErrorKind::AmbiguousLayout { .. } => " (choose one with --layout)",
        ErrorKind::BadRamMap { .. } => " (give it with --ram-map BLOCK@GPA)",
        _ => "",
    };
    format!("{error}{hint}")
}

/// The result of a command.
pub type Outcome = Result<(), Failure>;
