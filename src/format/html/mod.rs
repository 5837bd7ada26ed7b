//! One self-contained page (no external assets, no script): the article's two
//! pies as inline SVG, the zones with fill bars, the Lua VMs, the sources that
//! could not be read. Sizes for people, exact bytes on hover. The page is
//! here, its pictures in `svg`, its sections in `sections`.

// Read by the handler, which test builds leave out.
#[cfg_attr(test, allow(unused_imports))]
pub use svg::SPARK_POINTS;

mod container;
mod sections;
mod svg;

use std::fmt::Write;

use super::human_bytes;
use crate::model::labels::Label;
use crate::model::report::Report;

pub const CONTENT_TYPE: &[u8] = b"text/html; charset=utf-8";

pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A size for people with the exact bytes on hover.
pub(super) fn size(bytes: u64) -> String {
    format!(
        "<span class=\"size\" title=\"{bytes} bytes\">{}</span>",
        human_bytes(bytes)
    )
}

pub(super) fn size_opt(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "<span class=\"na\">n/a</span>".to_string(), size)
}

pub fn render(r: &Report, refresh_seconds: Option<u32>) -> String {
    let mut h = String::new();
    let refresh = refresh_seconds
        .map(|n| format!("<meta http-equiv=\"refresh\" content=\"{n}\">"))
        .unwrap_or_default();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}\
         <title>nginx memory: pid {pid}</title><style>{STYLE}</style></head><body>\
         <h1>nginx worker {pid} <small>(worker {worker}, {role}, nginx {version}, module {module})</small></h1>",
        pid = r.nginx.pid,
        worker = r.nginx.worker,
        role = r.nginx.role.label(),
        version = esc(&r.nginx.version),
        module = r.nginx.module_version,
    );
    sections::findings(&mut h, &r.findings);
    sections::virtual_memory(&mut h, r);
    sections::resident(&mut h, r);
    sections::zones(&mut h, r);
    sections::lua(&mut h, r);
    sections::pools(&mut h, r);
    sections::server(&mut h, r);
    if let Some(c) = &r.container {
        container::container(&mut h, c);
    }
    sections::history(&mut h, r);
    sections::errors(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1 small{font-weight:normal;color:#666;font-size:60%}\
section{margin-bottom:2em}.pair{display:flex;gap:2em;align-items:center}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}\
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.na{color:#999}tr.old td{background:#fff3e0}\
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}\
.bar{display:inline-block;width:8em;height:.8em;background:#eee;vertical-align:middle}\
.fill{height:100%;background:#4e79a7}li.warning b{color:#b35c00}li.critical b{color:#c00}.note{color:#666}.size{border-bottom:1px dotted #999}";
