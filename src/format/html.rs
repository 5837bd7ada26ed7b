//! One self-contained page (no external assets, no script): the article's two
//! pies as inline SVG, the zones with fill bars, the Lua VMs, the sources that
//! could not be read. Sizes for people, exact bytes on hover.

use std::f64::consts::PI;
use std::fmt::Write;

use super::human_bytes;
use crate::model::labels::Label;
use crate::model::report::Report;

pub const CONTENT_TYPE: &[u8] = b"text/html; charset=utf-8";

const COLORS: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A size for people with the exact bytes on hover.
fn size(bytes: u64) -> String {
    format!(
        "<span class=\"size\" title=\"{bytes} bytes\">{}</span>",
        human_bytes(bytes)
    )
}

fn size_opt(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "<span class=\"na\">n/a</span>".to_string(), size)
}

/// An SVG pie of `(name, bytes)`; slices with nothing in them are left out.
pub fn pie(id: &str, slices: &[(&str, u64)]) -> String {
    let total: u64 = slices.iter().map(|(_, b)| b).sum();
    let mut svg = format!("<svg id=\"{id}\" class=\"pie\" viewBox=\"-1.05 -1.05 2.1 2.1\" width=\"220\" height=\"220\" role=\"img\">");
    let mut angle = -PI / 2.0;
    for (i, (name, bytes)) in slices.iter().enumerate().filter(|(_, (_, b))| *b > 0) {
        let color = COLORS[i % COLORS.len()];
        let title = format!(
            "<title>{}: {} ({bytes} bytes)</title>",
            esc(name),
            human_bytes(*bytes)
        );
        let attrs = format!(
            "class=\"slice\" data-name=\"{}\" data-bytes=\"{bytes}\" fill=\"{color}\"",
            esc(name)
        );
        if *bytes == total {
            let _ = write!(svg, "<circle {attrs} r=\"1\">{title}</circle>");
            continue;
        }
        let sweep = 2.0 * PI * (*bytes as f64) / (total as f64);
        let (x0, y0) = (angle.cos(), angle.sin());
        angle += sweep;
        let (x1, y1) = (angle.cos(), angle.sin());
        let large = u8::from(sweep > PI);
        let _ = write!(
            svg,
            "<path {attrs} d=\"M0,0 L{x0:.5},{y0:.5} A1,1 0 {large} 1 {x1:.5},{y1:.5} Z\">{title}</path>"
        );
    }
    svg.push_str("</svg>");
    svg
}

fn legend(slices: &[(&str, u64)]) -> String {
    let total: u64 = slices.iter().map(|(_, b)| b).sum::<u64>().max(1);
    let mut out = String::from("<table class=\"legend\">");
    for (i, (name, bytes)) in slices.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td></tr>",
            COLORS[i % COLORS.len()],
            esc(name),
            size(*bytes),
            100.0 * (*bytes as f64) / (total as f64)
        );
    }
    out.push_str("</table>");
    out
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
    findings_section(&mut h, &r.findings);

    // The virtual pie.
    let v = &r.virtual_split;
    let virt = [
        ("resident", v.resident_bytes.unwrap_or(0)),
        ("swapped", v.swap_bytes.unwrap_or(0)),
        ("untouched", v.untouched_bytes.unwrap_or(0)),
    ];
    let _ = write!(
        h,
        "<section id=\"virtual\"><h2>Virtual memory: {}</h2><div class=\"pair\">{}{}</div>\
         <p class=\"note\">Untouched: mapped but never written, such as the unfilled part of a zone.</p></section>",
        size_opt(v.virtual_bytes),
        pie("virtual-pie", &virt),
        legend(&virt)
    );

    // The resident pie, owner by owner.
    let b = &r.breakdown;
    let owners = b.owners();
    let mut slices: Vec<(&str, u64)> = owners
        .iter()
        .filter_map(|(n, o)| Some((*n, o.as_ref()?.resident_bytes?.max(0) as u64)))
        .collect();
    slices.push((
        "unattributed",
        b.unattributed.resident_bytes.unwrap_or(0).max(0) as u64,
    ));
    let _ = write!(
        h,
        "<section id=\"resident\"><h2>Resident memory by owner: {}</h2><div class=\"pair\">{}{}</div>",
        size_opt(r.process.resident_bytes),
        pie("resident-pie", &slices),
        legend(&slices)
    );
    h.push_str(
        "<table><tr><th>owner</th><th>own figure</th><th>measure</th><th>resident</th></tr>",
    );
    for (name, o) in owners {
        match o {
            Some(o) => {
                let _ = write!(
                    h,
                    "<tr><td>{name}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                    size(o.bytes),
                    o.measure,
                    size_opt(o.resident_bytes.map(|r| r.max(0) as u64))
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<tr><td>{name}</td><td colspan=\"3\" class=\"na\">not present</td></tr>"
                );
            }
        }
    }
    h.push_str("</table>");
    if let Some(serde_json::Value::Array(includes)) = b.unattributed.details.get("includes") {
        if !includes.is_empty() {
            let names: Vec<&str> = includes.iter().filter_map(|v| v.as_str()).collect();
            let _ = write!(
                h,
                "<p class=\"note\">Unattributed includes the pages of: {} (they cannot be told from other anonymous memory).</p>",
                esc(&names.join(", "))
            );
        }
    }
    h.push_str("</section>");

    // Zones.
    h.push_str(
        "<section id=\"zones\"><h2>Shared memory zones</h2><table><tr><th>zone</th><th>owner</th><th>kind</th>\
         <th>size</th><th>loaded</th><th>pages used</th><th>free runs</th><th>largest free run</th><th>failed allocations</th></tr>",
    );
    for z in &r.zones {
        let (fill, runs, largest, fails) = match &z.slab {
            Some(s) => {
                let total = s.pages_total.max(1);
                let pct = 100.0 * s.pages.used as f64 / total as f64;
                let fails: u64 = s.slots.0.iter().map(|(_, c)| c.fails).sum();
                (
                    format!(
                        "<div class=\"bar\" title=\"{} of {} pages used\"><div class=\"fill\" style=\"width:{pct:.1}%\"></div></div> {pct:.0}%",
                        s.pages.used, s.pages_total
                    ),
                    s.free_runs.to_string(),
                    size(s.largest_free_run_bytes),
                    fails.to_string(),
                )
            }
            None => ("n/a".into(), "n/a".into(), "n/a".into(), "n/a".into()),
        };
        let _ = write!(
            h,
            "<tr class=\"zone\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td>{fill}</td><td class=\"num\">{runs}</td><td class=\"num\">{largest}</td><td class=\"num\">{fails}</td></tr>",
            esc(&z.name),
            esc(z.owner.as_deref().unwrap_or("?")),
            esc(z.kind),
            size(z.size_bytes),
            size_opt(z.loaded_bytes)
        );
    }
    h.push_str("</table></section>");

    // Lua VMs.
    h.push_str("<section id=\"lua\"><h2>Lua VMs</h2><table><tr><th>VM</th><th>GC live</th><th>allocator mapped</th><th>resident</th><th>free, kept</th><th>JIT</th><th>version</th></tr>");
    for (name, vm) in [("http", &r.lua.http), ("stream", &r.lua.stream)] {
        match vm {
            Some(vm) => {
                let a = vm.allocator.as_ref();
                let _ = write!(
                    h,
                    "<tr><td>{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
                    size(vm.gc_bytes),
                    size_opt(a.map(|a| a.mapped_bytes)),
                    size_opt(a.and_then(|a| a.resident_bytes)),
                    size_opt(a.map(|a| a.free_bytes)),
                    vm.jit_enabled.map_or("n/a", |on| if on { "on" } else { "off" }),
                    esc(vm.version.as_deref().unwrap_or("n/a"))
                );
            }
            None => {
                let _ = write!(
                    h,
                    "<tr><td>{name}</td><td colspan=\"6\" class=\"na\">not present</td></tr>"
                );
            }
        }
    }
    h.push_str("</table>");
    for (name, vm) in [("http", &r.lua.http), ("stream", &r.lua.stream)] {
        let Some(census) = vm.as_ref().and_then(|v| v.objects.as_ref()) else {
            continue;
        };
        let _ = write!(
            h,
            "<h3>GC objects of the {name} VM{}</h3><table><tr><th>type</th><th>count</th><th>bytes</th></tr>",
            if census.truncated { " (walk cut short)" } else { "" }
        );
        for (kind, t) in &census.types {
            let _ = write!(
                h,
                "<tr><td>{kind}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                t.count,
                size(t.bytes)
            );
        }
        let _ = write!(
            h,
            "<tr><td>string table (no object)</td><td class=\"num\"></td><td class=\"num\">{}</td></tr></table>",
            size(census.string_table_bytes)
        );
    }
    h.push_str("</section>");

    // Pools.
    let p = &r.pools;
    let _ = write!(
        h,
        "<section id=\"pools\"><h2>nginx pools</h2><table><tr><th>pool</th><th>count</th><th>bytes</th><th>largest</th></tr>\
         <tr><td>cycle</td><td class=\"num\">{} blocks, {} large</td><td class=\"num\">{}</td><td></td></tr>",
        p.cycle.blocks,
        p.cycle.large_allocations,
        size(p.cycle.bytes)
    );
    for (kind, g) in &p.connections.by_kind {
        let _ = write!(
            h,
            "<tr><td>connections: {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            kind.label(),
            g.count,
            size(g.bytes),
            size(g.largest_bytes)
        );
    }
    for (kind, g) in &p.requests.by_kind {
        let _ = write!(
            h,
            "<tr><td>requests: {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            kind.label(),
            g.count,
            size(g.bytes),
            size(g.largest_bytes)
        );
    }
    h.push_str("</table></section>");
    server_section(&mut h, r);
    history_section(&mut h, r);

    if !r.errors.is_empty() {
        h.push_str("<section id=\"errors\"><h2>Not read</h2><ul>");
        for e in &r.errors {
            let _ = write!(
                h,
                "<li><code>{}</code>: {}</li>",
                esc(&e.source),
                esc(&e.error)
            );
        }
        h.push_str("</ul></section>");
    }
    h.push_str("</body></html>\n");
    h
}

/// What the figures mean, at the top: most severe first.
fn findings_section(h: &mut String, findings: &[crate::model::findings::Finding]) {
    if findings.is_empty() {
        h.push_str("<section id=\"findings\"><h2>Findings</h2><p>Every rule was checked; none fired.</p></section>");
        return;
    }
    h.push_str("<section id=\"findings\"><h2>Findings</h2><ul>");
    for f in findings {
        let severity = f.severity.label();
        let _ = write!(
            h,
            "<li class=\"{severity}\"><b>{severity}</b> <code>{}</code> {}: {}</li>",
            esc(f.code),
            esc(&f.subject),
            esc(&f.message)
        );
    }
    h.push_str("</ul></section>");
}

/// Points a history line draws at most (the page reads no more per ring).
pub const SPARK_POINTS: usize = 160;

/// A small line of (time, bytes) points, no script: the last value beside it.
fn sparkline(points: &[(u64, f64)]) -> String {
    let (w, h) = (160.0, 28.0);
    if points.len() < 2 {
        return "<span class=\"na\">not enough samples</span>".into();
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let lo = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    let coords: Vec<String> = points
        .iter()
        .map(|&(t, v)| {
            let x = (t - t0) as f64 / span_t * w;
            let y = h - (v - lo) / span_v * (h - 2.0) - 1.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><polyline fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.5\" points=\"{}\"/></svg> {}",
        coords.join(" "),
        size(points[points.len() - 1].1.max(0.0) as u64)
    )
}

/// The history: the serving worker's owners over time, and the server's
/// memory counted once (each process's PSS, summed per interval).
fn history_section(h: &mut String, r: &Report) {
    let Some(history) = &r.history else { return };
    let mine = history.processes.iter().find(|p| p.pid == r.nginx.pid);
    let _ = write!(
        h,
        "<section id=\"history\"><h2>Over time <small>(one sample every {} s, the last {})</small></h2><table>",
        history.interval_ms / 1000,
        history.capacity
    );
    if let Some(mine) = mine {
        let resident: Vec<(u64, f64)> = mine
            .samples
            .iter()
            .map(|s| (s.at_ms, s.resident_bytes as f64))
            .collect();
        let _ = write!(
            h,
            "<tr><td>this worker: resident</td><td>{}</td></tr>",
            sparkline(&resident)
        );
        for owner in crate::model::server::PUBLISHED_OWNERS {
            let points: Vec<(u64, f64)> = mine
                .samples
                .iter()
                .filter_map(|s| Some((s.at_ms, *s.owners.get(owner)? as f64)))
                .collect();
            if !points.is_empty() {
                let _ = write!(
                    h,
                    "<tr><td>this worker: {owner}</td><td>{}</td></tr>",
                    sparkline(&points)
                );
            }
        }
    }
    // Each process's samples by time bucket (as wide as the spacing of the
    // samples read), one per process and bucket, summed.
    let step = (history.capacity as usize).div_ceil(SPARK_POINTS).max(1) as u64;
    let width = history.interval_ms.max(1) * step;
    let mut buckets: std::collections::BTreeMap<u64, std::collections::BTreeMap<u32, u64>> =
        std::collections::BTreeMap::new();
    for p in &history.processes {
        for s in &p.samples {
            let bytes = s.pss_bytes.unwrap_or(s.resident_bytes);
            buckets
                .entry(s.at_ms / width * width)
                .or_default()
                .insert(p.pid, bytes);
        }
    }
    // The newest bucket is still filling in: left out.
    let total: Vec<(u64, f64)> = buckets
        .into_iter()
        .map(|(at, by_pid)| (at, by_pid.values().sum::<u64>() as f64))
        .rev()
        .skip(1)
        .rev()
        .collect();
    let _ = write!(
        h,
        "<tr><td>the workers, counted once (PSS)</td><td>{}</td></tr>",
        sparkline(&total)
    );
    for z in &history.zones {
        let used: Vec<(u64, f64)> = z
            .samples
            .iter()
            .map(|p| (p.at_ms, p.used_bytes as f64))
            .collect();
        let _ = write!(
            h,
            "<tr><td>zone {}: used</td><td>{}</td></tr>",
            esc(&z.name),
            sparkline(&used)
        );
    }
    h.push_str("</table></section>");
}

/// Every process of the server: the old generation marked, ages shown.
fn server_section(h: &mut String, r: &Report) {
    let s = &r.server;
    let server_slices: Vec<(&str, u64)> = s.breakdown.iter().map(|(&n, &b)| (n, b)).collect();
    let _ = write!(
        h,
        "<section id=\"server\"><h2>The server: {} processes, {} workers, generation {}</h2>\
         <p>Old generation: {} workers, {} resident (each counted whole).</p>\
         <h3>The server's resident memory, every page counted once: {}{}</h3>\
         <div class=\"pair\">{}{}</div>\
         <table><tr><th>pid</th><th>role</th><th>worker</th><th>generation</th><th>age</th>\
         <th>resident</th><th>anonymous</th><th>file</th><th>shared memory</th><th>swap</th>\
         <th>Lua GC (published)</th><th>published</th></tr>",
        s.processes,
        s.workers,
        s.generation,
        s.old_generation_workers,
        size(s.old_generation_resident_bytes),
        size(s.resident_bytes),
        match (s.resident_estimated_bytes, s.resident_age_ms) {
            (0, Some(age)) => format!(" <small>(up to {} s old)</small>", age / 1000),
            (guess, _) => format!(" <small>({} of it estimated)</small>", size(guess)),
        },
        pie("server-pie", &server_slices),
        legend(&server_slices)
    );
    for p in &r.processes {
        let role = p.role.label();
        let old = p.is_old_generation(s.generation);
        let _ = write!(
            h,
            "<tr{}><td>{}</td><td>{}{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{} s</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            if old { " class=\"old\"" } else { "" },
            p.pid,
            esc(role),
            if p.exiting { " (shutting down)" } else { "" },
            p.worker.map(|w| w.to_string()).unwrap_or_default(),
            p.generation,
            r.collected_at_ms.saturating_sub(p.started_at_ms) / 1000,
            size_opt(p.status.resident_bytes),
            size_opt(p.status.resident_anon_bytes),
            size_opt(p.status.resident_file_bytes),
            size_opt(p.status.resident_shmem_bytes),
            size_opt(p.status.swap_bytes),
            size_opt(
                p.memory
                    .as_ref()
                    .and_then(|m| m.lua.http.map(|v| v.gc_bytes))
            ),
            p.memory
                .as_ref()
                .map_or("—".to_string(), |m| format!("{} ms ago", m.age_ms))
        );
    }
    h.push_str("</table></section>");
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1 small{font-weight:normal;color:#666;font-size:60%}\
section{margin-bottom:2em}.pair{display:flex;gap:2em;align-items:center}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}\
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}.na{color:#999}tr.old td{background:#fff3e0}\
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:middle}\
.bar{display:inline-block;width:8em;height:.8em;background:#eee;vertical-align:middle}\
.fill{height:100%;background:#4e79a7}li.warning b{color:#b35c00}li.critical b{color:#c00}.note{color:#666}.size{border-bottom:1px dotted #999}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pie_has_a_slice_per_nonzero_value() {
        let svg = pie("p", &[("a", 3), ("b", 0), ("c", 1)]);
        assert_eq!(svg.matches("class=\"slice\"").count(), 2);
        assert!(svg.contains("data-name=\"a\" data-bytes=\"3\""));
        assert!(!svg.contains("data-name=\"b\""));
        // A slice of three quarters takes the large arc.
        assert!(svg.contains(" 0 1 1 "));
    }

    #[test]
    fn a_whole_pie_is_a_circle() {
        let svg = pie("p", &[("only", 5), ("none", 0)]);
        assert!(svg.contains("<circle class=\"slice\" data-name=\"only\""));
    }

    #[test]
    fn names_are_escaped() {
        let svg = pie("p", &[("<zone>\"", 1), ("x", 1)]);
        assert!(svg.contains("&lt;zone&gt;&quot;"));
        assert!(!svg.contains("<zone>"));
    }
}
