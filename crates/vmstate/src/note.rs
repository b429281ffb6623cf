//! Notes: facts about the input worth telling a user that are not defects.
//!
//! A note never changes a result or an exit code. Examples: a legacy writer left host
//! pointers in `iov_base`, or stale data in array slots past the counts.

use std::fmt;

/// One observation about the input, with the place it refers to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    /// Byte offset the note refers to, when it is about particular bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Dotted path of the field the note refers to.
    pub path: String,
    /// What was observed, in words.
    pub message: String,
}

impl Note {
    /// A note about `path` at `offset`.
    pub fn new(offset: u64, path: impl Into<String>, message: impl Into<String>) -> Self {
        Note {
            offset: Some(offset),
            path: path.into(),
            message: message.into(),
        }
    }

    /// A note about the field `path` as a whole (decoded state), not about bytes.
    pub fn about(path: impl Into<String>, message: impl Into<String>) -> Self {
        Note {
            offset: None,
            path: path.into(),
            message: message.into(),
        }
    }

    /// Prefixes the path with the name of the structure that contains it.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.path = crate::error::join_path(parent, &self.path);
        self
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.offset {
            Some(offset) => write!(f, "{} at offset {offset}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}
