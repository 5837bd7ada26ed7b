//! The page's sections, each written into the page from the report.

use std::fmt::Write;

use super::svg::{legend, pie, sparkline, SPARK_POINTS};
use super::{esc, size, size_opt};
use crate::format::human_signed_bytes;
use crate::model::findings::Finding;
use crate::model::history::{History, ProcessHistory};
use crate::model::labels::Label;
use crate::model::lua::{LuaGrowth, LuaLargest};
use crate::model::report::Report;

/// The virtual pie: resident, swapped, untouched.
pub fn virtual_memory(h: &mut String, r: &Report) {
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
}

/// The resident pie, owner by owner, and the owners' table.
pub fn resident(h: &mut String, r: &Report) {
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
}

/// The shared memory zones with their fill bars.
pub fn zones(h: &mut String, r: &Report) {
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
}

/// The Lua VMs and, when asked, their GC objects.
pub fn lua(h: &mut String, r: &Report) {
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
    for (name, vm) in [("http", &r.lua.http), ("stream", &r.lua.stream)] {
        if let Some(largest) = vm.as_ref().and_then(|v| v.largest.as_ref()) {
            lua_largest(h, name, largest);
        }
        if let Some(Some(growth)) = vm.as_ref().and_then(|v| v.growth.as_ref()) {
            lua_growth(h, name, growth);
        }
    }
    h.push_str("</section>");
}

/// The largest objects of a VM's walk from its roots, with their paths.
fn lua_largest(h: &mut String, name: &str, l: &LuaLargest) {
    let _ = write!(
        h,
        "<h3>Largest Lua objects of the {name} VM</h3><p>{} objects reached, {} in {} ms{}; the fork held the loop {} µs.</p>\
         <table><tr><th>kind</th><th>path</th><th>own</th><th>retained</th><th>entries</th></tr>",
        l.walked,
        size(l.bytes),
        l.elapsed_us / 1000,
        if l.truncated { " (walk cut short)" } else { "" },
        l.fork_us
    );
    let rows = |kind: &str| if kind == "table" { 20 } else { 5 };
    for (kind, list) in l.lists(rows) {
        for o in list {
            let _ = write!(
                h,
                "<tr><td>{kind}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&o.path),
                size(o.own_bytes),
                size(o.retained_bytes),
                o.entries.map_or(String::new(), |e| e.to_string())
            );
        }
    }
    h.push_str("</table>");
    if l.cdata_finalizers.is_empty() {
        return;
    }
    h.push_str("<h3>cdata by finalizer</h3><table><tr><th>finalizer</th><th>cdata</th><th>reached</th><th>bytes</th></tr>");
    for f in &l.cdata_finalizers {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&f.finalizer),
            f.count,
            f.reached,
            size(f.bytes)
        );
    }
    h.push_str("</table>");
}

/// What grew in a VM since this worker's previous walk.
fn lua_growth(h: &mut String, name: &str, g: &LuaGrowth) {
    let _ = write!(
        h,
        "<h3>What grew in the {name} VM in {} s</h3><table><tr><th>kind</th><th>path</th><th>bytes</th><th>entries</th></tr>",
        g.age_ms / 1000
    );
    for p in &g.paths {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}{}</td><td class=\"num\">{}{}</td><td class=\"num\">{}</td></tr>",
            p.kind,
            esc(&p.path),
            if p.new { " (new)" } else { "" },
            if p.retained_bytes >= 0 { "+" } else { "" },
            human_signed_bytes(p.retained_bytes),
            p.entries.map_or(String::new(), |e| format!("{e:+}"))
        );
    }
    h.push_str("</table>");
}

/// nginx's pools.
pub fn pools(h: &mut String, r: &Report) {
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
}

/// The sources that could not be read.
pub fn errors(h: &mut String, r: &Report) {
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
}

/// What the figures mean, at the top: most severe first.
pub fn findings(h: &mut String, findings: &[Finding]) {
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

/// The history: the serving worker's owners over time, and the server's
/// memory counted once (each process's PSS, summed per interval).
pub fn history(h: &mut String, r: &Report) {
    let Some(history) = &r.history else { return };
    let mine = history.processes.iter().find(|p| p.pid == r.nginx.pid);
    let _ = write!(
        h,
        "<section id=\"history\"><h2>Over time <small>(one sample every {} s, the last {})</small></h2><table>",
        history.interval_ms / 1000,
        history.capacity
    );
    if let Some(mine) = mine {
        own_lines(h, mine);
    }
    let _ = write!(
        h,
        "<tr><td>the workers, counted once (PSS)</td><td>{}</td></tr>",
        sparkline(&counted_once(history))
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

/// The serving worker's resident memory and owners over time.
fn own_lines(h: &mut String, mine: &ProcessHistory) {
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

/// The workers' memory counted once: each process's samples by time bucket
/// (as wide as the spacing of the samples read), one per process and
/// bucket, summed.
fn counted_once(history: &History) -> Vec<(u64, f64)> {
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
    buckets
        .into_iter()
        .map(|(at, by_pid)| (at, by_pid.values().sum::<u64>() as f64))
        .rev()
        .skip(1)
        .rev()
        .collect()
}

/// Every process of the server: the old generation marked, ages shown.
pub fn server(h: &mut String, r: &Report) {
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
