//! The answer's plain types: what each format renders and the JSON schema
//! describes. Data only (serde derives, no logic); imports nothing of ours.

pub mod breakdown;
pub mod container;
pub mod findings;
pub mod history;
pub mod labels;
pub mod lua;
pub mod pools;
pub mod process;
pub mod report;
pub mod server;
pub mod source_error;
pub mod zones;
