//! Findings: what the figures mean, with a severity.

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub severity: Severity,
    /// What it is about: a zone's name, a process, the server.
    pub subject: String,
    pub message: String,
    /// The figures it rests on, by name.
    pub evidence: Value,
}
