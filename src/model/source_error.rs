//! What the answer says about a source it could not read.

use serde::Serialize;

/// A source that could not be read, and why. Its fields in the answer are `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceError {
    pub source: String,
    pub error: String,
}

impl SourceError {
    pub fn new(source: impl Into<String>, error: impl Into<String>) -> Self {
        SourceError {
            source: source.into(),
            error: error.into(),
        }
    }
}
