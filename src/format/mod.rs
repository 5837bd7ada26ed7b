//! Every format of the answer, each over the same plain model.

pub mod html;
pub mod json;
pub mod prometheus;
pub mod text;

use crate::model::report::Report;
use crate::query::Format;

/// How one answer is rendered: its format and, for the HTML page, its
/// reload interval. Requests asking the same share one rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendering {
    pub format: Format,
    pub refresh_seconds: Option<u32>,
}

pub const JSON_CONTENT_TYPE: &[u8] = b"application/json";

impl Rendering {
    pub fn content_type(self) -> &'static [u8] {
        match self.format {
            Format::Json => JSON_CONTENT_TYPE,
            Format::Prometheus => prometheus::CONTENT_TYPE,
            Format::Html => html::CONTENT_TYPE,
            Format::Text => text::CONTENT_TYPE,
        }
    }

    /// The answer's bytes; `None` when memory ran out while rendering.
    pub fn render(self, report: &Report) -> Option<Vec<u8>> {
        match self.format {
            Format::Json => report.to_json(),
            Format::Prometheus => prometheus::render(report).map(String::into_bytes),
            Format::Html => Some(html::render(report, self.refresh_seconds).into_bytes()),
            Format::Text => Some(text::render(report).into_bytes()),
        }
    }
}

/// A size for people: `1.5 MiB`; exact bytes go beside it where space allows.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `human_bytes` of a signed figure (a part such as `unexplained`).
pub fn human_signed_bytes(bytes: i64) -> String {
    match bytes {
        b if b < 0 => format!("-{}", human_bytes(b.unsigned_abs())),
        b => human_bytes(b as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
