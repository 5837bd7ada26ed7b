//! The names the answer gives its enums, as its JSON spells them: for
//! Prometheus labels, the HTML page and messages. One place; a unit test
//! checks each against serde's.

use crate::model::findings::Severity;
use crate::model::pools::{ConnectionKind, RequestKind};
use crate::model::report::Role;
use crate::model::server::ProcessRole;

/// An enum's name in the answer.
pub trait Label: Copy {
    fn label(self) -> &'static str;
}

impl Label for Role {
    fn label(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Single => "single",
            Role::Other => "other",
        }
    }
}

impl Label for ProcessRole {
    fn label(self) -> &'static str {
        match self {
            ProcessRole::Master => "master",
            ProcessRole::Worker => "worker",
            ProcessRole::CacheManager => "cache_manager",
            ProcessRole::CacheLoader => "cache_loader",
            ProcessRole::Single => "single",
        }
    }
}

impl Label for ConnectionKind {
    fn label(self) -> &'static str {
        match self {
            ConnectionKind::Http => "http",
            ConnectionKind::Stream => "stream",
            ConnectionKind::Upstream => "upstream",
            ConnectionKind::Other => "other",
        }
    }
}

impl Label for RequestKind {
    fn label(self) -> &'static str {
        match self {
            RequestKind::Http1 => "http1",
            RequestKind::Http2 => "http2",
            RequestKind::Stream => "stream",
        }
    }
}

impl Label for Severity {
    fn label(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_json<T: Label + serde::Serialize>(all: &[T]) {
        for &v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), v.label());
        }
    }

    #[test]
    fn every_label_is_the_json_name() {
        same_as_json(&[Role::Worker, Role::Single, Role::Other]);
        same_as_json(&[
            ProcessRole::Master,
            ProcessRole::Worker,
            ProcessRole::CacheManager,
            ProcessRole::CacheLoader,
            ProcessRole::Single,
        ]);
        same_as_json(&[
            ConnectionKind::Http,
            ConnectionKind::Stream,
            ConnectionKind::Upstream,
            ConnectionKind::Other,
        ]);
        same_as_json(&[RequestKind::Http1, RequestKind::Http2, RequestKind::Stream]);
        same_as_json(&[Severity::Info, Severity::Warning, Severity::Critical]);
    }
}
