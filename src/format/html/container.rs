//! The container section: the memory cgroup's charge by part as a pie whose
//! whole is the limit (the headroom left is its last slice), the figures the
//! kubelet and the OOM killer look at, and the group's other processes.

use std::fmt::Write;

use super::svg::{legend, pie};
use super::{esc, size, size_opt};
use crate::model::container::Container;

/// The slice that draws the limit: what is left below it.
const HEADROOM: &str = "headroom to the limit";
/// What the limiting ancestor's other members hold.
const OTHER_MEMBERS: &str = "the limiting group's other members";

pub fn container(h: &mut String, c: &Container) {
    let mut slices: Vec<(&str, u64)> = c
        .parts
        .iter()
        .map(|p| (p.part, p.bytes.max(0) as u64))
        .collect();
    if let Some(members) = c.limit_group.as_ref().and_then(|g| g.usage_bytes) {
        slices.push((OTHER_MEMBERS, members.saturating_sub(c.usage_bytes)));
    }
    if let Some(limit) = c.limit_bytes {
        // What the slices leave of the limit, so that the whole is the limit
        // (a negative unexplained is drawn as none).
        let drawn = slices.iter().fold(0u64, |sum, s| sum.saturating_add(s.1));
        slices.push((HEADROOM, limit.saturating_sub(drawn)));
    }
    let limit = match (c.limit_bytes, &c.limit_group) {
        (Some(l), None) => format!("of a limit of {}", size(l)),
        (Some(l), Some(g)) => format!(
            "of a limit of {} on {}",
            size(l),
            g.path.as_deref().map_or(
                "an ancestor this mount namespace does not show".to_string(),
                |p| format!("the group <code>{}</code>", esc(p))
            )
        ),
        (None, _) => "with no limit".to_string(),
    };
    let _ = write!(
        h,
        "<section id=\"container\"><h2>The container: {} charged {limit}</h2>\
         <p>cgroup v{} <code>{}</code>, read {} ms ago. Working set (what the kubelet and the \
         OOM killer look at): {}. Peak: {}. Swap: {}. OOM kills: {} ({} since nginx started).</p>\
         <div class=\"pair\">{}{}</div>\
         <table><tr><th>part</th><th>bytes</th><th>from</th></tr>",
        size(c.usage_bytes),
        c.cgroup_version,
        esc(&c.path),
        c.age_ms,
        size(c.working_set_bytes),
        size_opt(c.peak_bytes),
        size_opt(c.swap_bytes),
        count(c.oom.kills),
        count(c.oom.kills_since_start),
        pie("container-pie", &slices),
        legend(&slices),
    );
    for p in &c.parts {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\" title=\"{} bytes\">{}</td><td>{}</td></tr>",
            p.part,
            p.bytes,
            super::super::human_signed_bytes(p.bytes),
            esc(p.source)
        );
    }
    h.push_str("</table>");
    sockets_and_others(h, c);
    h.push_str("</section>");
}

fn sockets_and_others(h: &mut String, c: &Container) {
    let _ = write!(
        h,
        "<p>Sockets: {} connections in this worker, {} TCP sockets in use in its network \
         namespace; the machine's TCP buffers: {}{}.</p>",
        c.sockets.nginx_connections,
        count(c.sockets.tcp_in_use),
        size_opt(c.sockets.tcp_memory_bytes),
        c.tcp_buffers_outside_usage_bytes
            .map(|b| format!(
                "; the group's TCP buffers beside its usage (v1): {}",
                size(b)
            ))
            .unwrap_or_default(),
    );
    if c.other_processes.is_empty() {
        return;
    }
    h.push_str("<h3>Other processes in the group</h3><table><tr><th>pid</th><th>name</th><th>anonymous</th><th>resident</th></tr>");
    for o in &c.other_processes {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            o.pid,
            esc(o.comm.as_deref().unwrap_or("?")),
            size_opt(o.resident_anon_bytes),
            size_opt(o.resident_bytes)
        );
    }
    h.push_str("</table>");
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "n/a".to_string(), |n| n.to_string())
}
