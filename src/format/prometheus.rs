//! Prometheus text exposition format 0.0.4. Names follow Prometheus'
//! conventions (units in names, counters end in `_total`, no count inside a
//! `_bytes` metric); slab metrics follow Angie's shape.

use std::collections::HashMap;
use std::fmt::Write;

use crate::model::breakdown::Owner;
use crate::model::report::{NginxInfo, Report, ZoneReport};
use crate::model::server::{Published, Server, ServerProcess};
use crate::model::zones::Zone;

pub const CONTENT_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// The family's sample lines, written as they come: no allocation per sample.
    lines: String,
}

/// Collects samples by family, so each family's samples come out together
/// after its `# HELP` and `# TYPE`.
struct Metrics {
    /// `pid="..",worker=".."`, the labels every sample starts with.
    base_labels: String,
    families: Vec<Family>,
    /// Family index by short name: one lookup per sample, whatever the count.
    index: HashMap<&'static str, usize>,
}

impl Metrics {
    fn new(nginx: &NginxInfo) -> Metrics {
        Metrics {
            base_labels: format!("pid=\"{}\",worker=\"{}\"", nginx.pid, nginx.worker),
            families: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.add_labelled(name, kind, help, true, labels, value);
    }

    /// A sample with the answering worker's labels first (`base`), or without
    /// them: the server's series are the same whichever worker answers.
    fn add_labelled(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        base: bool,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.index.insert(name, self.families.len());
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    lines: String::new(),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[i].lines;
        out.push_str("nginx_memory_");
        out.push_str(name);
        if !base && labels.is_empty() {
            let _ = writeln!(out, " {value}");
            return;
        }
        out.push('{');
        if base {
            out.push_str(&self.base_labels);
        }
        for (i, (k, v)) in labels.iter().enumerate() {
            if base || i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            push_escaped(out, v);
            out.push('"');
        }
        let _ = writeln!(out, "}} {value}");
    }

    fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.add(name, Kind::Gauge, help, labels, value);
    }

    fn gauge_opt(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: Option<impl std::fmt::Display>,
    ) {
        if let Some(v) = value {
            self.gauge(name, help, labels, v);
        }
    }

    fn render(&self) -> String {
        let bytes: usize = self
            .families
            .iter()
            .map(|f| f.lines.len() + f.help.len() + 64)
            .sum();
        let mut out = String::with_capacity(bytes);
        for f in &self.families {
            let kind = if f.kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP nginx_memory_{} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE nginx_memory_{} {kind}", f.name);
            out.push_str(&f.lines);
        }
        out
    }
}

/// A label value as the exposition format quotes it.
fn push_escaped(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn info(m: &mut Metrics, nginx: &NginxInfo) {
    let role = serde_json::to_value(nginx.role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    m.gauge(
        "info",
        "Always 1; labels name the nginx and module versions and the process role.",
        &[
            ("nginx_version", &nginx.version),
            ("module_version", nginx.module_version),
            ("role", &role),
        ],
        1,
    );
}

fn zones(m: &mut Metrics, zones: &[Zone]) {
    for z in zones {
        let zl: &[(&str, &str)] = &[("zone", &z.name)];
        m.gauge(
            "zone_size_bytes",
            "Shared memory zone size as configured.",
            &[
                ("zone", &z.name),
                ("owner", z.owner.as_deref().unwrap_or("")),
                ("kind", z.kind),
            ],
            z.size_bytes,
        );
        m.gauge(
            "zone_mapped_bytes",
            "Virtual memory the zone's mapping takes.",
            zl,
            z.mapped_bytes,
        );
        m.gauge_opt(
            "zone_loaded_bytes",
            "Pages of the zone resident in memory (mincore), touched by any process.",
            zl,
            z.loaded_bytes,
        );
        m.gauge_opt(
            "lua_shared_dict_capacity_bytes",
            "ngx.shared.DICT:capacity().",
            zl,
            z.capacity_bytes,
        );
        m.gauge_opt(
            "lua_shared_dict_free_space_bytes",
            "ngx.shared.DICT:free_space().",
            zl,
            z.free_space_bytes,
        );
        let Some(s) = &z.slab else { continue };
        m.gauge("slabs_pages_used", "Slab pages in use.", zl, s.pages.used);
        m.gauge("slabs_pages_free", "Slab pages free.", zl, s.pages.free);
        m.gauge(
            "slabs_page_size_bytes",
            "Slab page size.",
            zl,
            s.page_size_bytes,
        );
        m.gauge(
            "slabs_free_runs",
            "Runs of contiguous free pages (many small runs: fragmentation).",
            zl,
            s.free_runs,
        );
        m.gauge(
            "slabs_largest_free_run_bytes",
            "Largest run of free pages: the biggest page allocation that can still succeed.",
            zl,
            s.largest_free_run_bytes,
        );
        for (size, c) in &s.slots.0 {
            let size = size.to_string();
            let sl: &[(&str, &str)] = &[("zone", &z.name), ("slot", &size)];
            m.gauge(
                "slabs_pages_slots_used",
                "Chunks of this slot size in use.",
                sl,
                c.used,
            );
            m.gauge(
                "slabs_pages_slots_free",
                "Free chunks of this slot size in pages given to the slot.",
                sl,
                c.free,
            );
            m.add(
                "slabs_pages_slots_reqs_total",
                Kind::Counter,
                "Allocations asked of this slot.",
                sl,
                c.reqs,
            );
            m.add(
                "slabs_pages_slots_fails_total",
                Kind::Counter,
                "Allocations of this slot size that failed.",
                sl,
                c.fails,
            );
        }
    }
}

fn owner(m: &mut Metrics, name: &str, o: &Owner) {
    m.gauge(
        "owner_bytes",
        "Each owner's own figure, in the measure the label names (allocated, loaded, mapped, resident).",
        &[("owner", name), ("measure", o.measure)],
        o.bytes,
    );
    m.gauge_opt(
        "owner_resident_bytes",
        "Each owner's share of the process's resident memory; the shares add up to process_resident_bytes.",
        &[("owner", name)],
        o.resident_bytes,
    );
    m.gauge_opt(
        "owner_pss_bytes",
        "Proportional set size of the owner's mappings (detail=full).",
        &[("owner", name)],
        o.pss_bytes,
    );
}

pub fn render(r: &Report) -> String {
    let mut m = Metrics::new(&r.nginx);
    info(&mut m, &r.nginx);
    let p = &r.process;
    m.gauge_opt(
        "process_virtual_bytes",
        "Virtual memory size (VmSize).",
        &[],
        p.virtual_bytes,
    );
    m.gauge_opt(
        "process_resident_bytes",
        "Resident memory (VmRSS).",
        &[],
        p.resident_bytes,
    );
    m.gauge_opt(
        "process_resident_anon_bytes",
        "Resident anonymous memory (RssAnon).",
        &[],
        p.resident_anon_bytes,
    );
    m.gauge_opt(
        "process_resident_file_bytes",
        "Resident file-backed memory (RssFile).",
        &[],
        p.resident_file_bytes,
    );
    m.gauge_opt(
        "process_resident_shmem_bytes",
        "Resident shared memory (RssShmem).",
        &[],
        p.resident_shmem_bytes,
    );
    m.gauge_opt(
        "process_swap_bytes",
        "Swapped-out memory (VmSwap).",
        &[],
        p.swap_bytes,
    );
    m.gauge_opt(
        "process_peak_virtual_bytes",
        "Peak virtual memory size (VmPeak).",
        &[],
        p.peak_virtual_bytes,
    );
    m.gauge_opt(
        "process_peak_resident_bytes",
        "Peak resident memory (VmHWM).",
        &[],
        p.peak_resident_bytes,
    );
    m.gauge_opt("process_threads", "OS threads.", &[], p.threads);
    m.gauge_opt(
        "virtual_untouched_bytes",
        "Virtual memory mapped but never touched.",
        &[],
        r.virtual_split.untouched_bytes,
    );

    let b = &r.breakdown;
    let owners = b.owners();
    for (name, o) in owners {
        if let Some(o) = o {
            owner(&mut m, name, o);
        }
    }
    owner(&mut m, "unattributed", &b.unattributed);
    if let Some(g) = &b.glibc {
        let detail = |k: &str| g.details.get(k).and_then(|v| v.as_u64());
        m.gauge_opt(
            "glibc_free_bytes",
            "Free memory glibc's arenas hold (fordblks).",
            &[],
            detail("free_bytes"),
        );
        m.gauge_opt(
            "glibc_mmapped_bytes",
            "Memory in chunks glibc mapped directly (hblkhd).",
            &[],
            detail("mmapped_bytes"),
        );
        m.gauge_opt(
            "glibc_mmapped_chunks",
            "Chunks glibc mapped directly (hblks).",
            &[],
            detail("mmapped_chunks"),
        );
    }

    for (vm, v) in [("http", &r.lua.http), ("stream", &r.lua.stream)] {
        let Some(v) = v else { continue };
        let l: &[(&str, &str)] = &[("vm", vm)];
        m.gauge(
            "lua_gc_bytes",
            "Live bytes the Lua GC counts (collectgarbage(\"count\") * 1024).",
            l,
            v.gc_bytes,
        );
        if let Some(a) = &v.allocator {
            m.gauge(
                "lua_allocator_mapped_bytes",
                "Memory LuaJIT's allocator holds in its segments.",
                l,
                a.mapped_bytes,
            );
            m.gauge_opt(
                "lua_allocator_resident_bytes",
                "Resident part of LuaJIT's allocator segments.",
                l,
                a.resident_bytes,
            );
            m.gauge(
                "lua_allocator_free_bytes",
                "Free memory in LuaJIT's allocator segments: freed by the GC, kept.",
                l,
                a.free_bytes,
            );
        }
        m.gauge_opt(
            "lua_jit_enabled",
            "1 when LuaJIT's JIT compiler is on.",
            l,
            v.jit_enabled.map(u8::from),
        );
        if let Some(census) = &v.objects {
            for (kind, t) in &census.types {
                let tl: &[(&str, &str)] = &[("vm", vm), ("type", kind)];
                m.gauge(
                    "lua_objects",
                    "GC objects of the VM by type (lua_objects=1).",
                    tl,
                    t.count,
                );
                m.gauge(
                    "lua_object_bytes",
                    "Bytes of the VM's GC objects by type (lua_objects=1).",
                    tl,
                    t.bytes,
                );
            }
            m.gauge(
                "lua_string_table_bytes",
                "The VM's string table: in gc_bytes, no GC object (lua_objects=1).",
                l,
                census.string_table_bytes,
            );
            m.gauge(
                "lua_objects_truncated",
                "1 when the object census stopped at its bound.",
                l,
                u8::from(census.truncated),
            );
        }
    }

    let pools = &r.pools;
    m.gauge(
        "pool_cycle_bytes",
        "The cycle pool (configuration and long-lived data): blocks and large allocations.",
        &[],
        pools.cycle.bytes,
    );
    m.gauge(
        "pool_cycle_large_allocations",
        "Large allocations of the cycle pool.",
        &[],
        pools.cycle.large_allocations,
    );
    for (kind, g) in &pools.connections.by_kind {
        let kind = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l: &[(&str, &str)] = &[("kind", &kind)];
        m.gauge("connections", "Connections in use, by kind.", l, g.count);
        m.gauge(
            "connection_pool_bytes",
            "Pool memory of the connections in use, by kind.",
            l,
            g.bytes,
        );
        m.gauge(
            "connection_pool_largest_bytes",
            "The largest connection pool, by kind.",
            l,
            g.largest_bytes,
        );
    }
    for (kind, g) in &pools.requests.by_kind {
        let kind = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l: &[(&str, &str)] = &[("kind", &kind)];
        m.gauge(
            "requests",
            "Requests in flight (HTTP/1 requests, HTTP/2 streams, stream sessions).",
            l,
            g.count,
        );
        m.gauge(
            "request_pool_bytes",
            "Pool memory of the requests in flight, by kind.",
            l,
            g.bytes,
        );
        m.gauge(
            "request_pool_largest_bytes",
            "The largest request pool, by kind.",
            l,
            g.largest_bytes,
        );
    }

    zones(&mut m, &r.zones);
    server(&mut m, &r.processes, &r.server);
    trends(&mut m, &r.trends);
    findings(&mut m, &r.findings);
    errors(&mut m, r.errors.iter().map(|e| e.source.as_str()));
    m.render()
}

/// Each process's fitted growth per series, labelled by the process's pid.
fn trends(m: &mut Metrics, trends: &[crate::model::history::ProcessTrends]) {
    for p in trends {
        let pid = p.pid.to_string();
        for t in &p.trends {
            let l: &[(&str, &str)] = &[("pid", &pid), ("series", t.series)];
            m.add_labelled(
                "trend_bytes_per_hour",
                Kind::Gauge,
                "Growth of each process's series over its history since the last reload (least squares, as deriv()).",
                false,
                l,
                t.fit.bytes_per_hour,
            );
            m.add_labelled(
                "trend_r_squared",
                Kind::Gauge,
                "How well a straight line fits that series (1: exactly).",
                false,
                l,
                t.fit.r_squared,
            );
        }
    }
}

/// One series per finding; a rule that did not fire has none.
fn findings(m: &mut Metrics, findings: &[crate::model::findings::Finding]) {
    for f in findings {
        let severity = serde_json::to_value(f.severity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        m.add_labelled(
            "finding",
            Kind::Gauge,
            "1 for each finding of the answer (see the JSON answer's findings for its message and evidence).",
            false,
            &[
                ("code", f.code),
                ("severity", &severity),
                ("subject", &f.subject),
            ],
            1,
        );
    }
}

/// A worker's published summary, labelled by that worker.
fn published(m: &mut Metrics, l: &[(&str, &str)], p: &Published) {
    for (owner, o) in &p.breakdown {
        let ol: Vec<(&str, &str)> = l.iter().copied().chain([("owner", *owner)]).collect();
        m.add_labelled(
            "server_worker_owner_bytes",
            Kind::Gauge,
            "Each worker's owners, as it published them: the owner's own measure.",
            false,
            &ol,
            o.bytes,
        );
        if let Some(resident) = o.resident_bytes {
            m.add_labelled(
                "server_worker_owner_resident_bytes",
                Kind::Gauge,
                "Each worker's owners, as it published them: their share of its resident memory.",
                false,
                &ol,
                resident,
            );
        }
    }
    for (vm, figures) in [("http", &p.lua.http), ("stream", &p.lua.stream)] {
        if let Some(f) = figures {
            let vl: Vec<(&str, &str)> = l.iter().copied().chain([("vm", vm)]).collect();
            m.add_labelled(
                "server_worker_lua_gc_bytes",
                Kind::Gauge,
                "Each worker's Lua VMs, as it published them: memory the GC counts.",
                false,
                &vl,
                f.gc_bytes,
            );
        }
    }
    m.add_labelled(
        "server_worker_published_age_seconds",
        Kind::Gauge,
        "How old each worker's published figures were when this answer read them.",
        false,
        l,
        p.age_ms as f64 / 1000.0,
    );
}

/// Every process of the server and the server's totals, labelled by the
/// process, not by the worker that answers: one scrape of any worker gives the
/// same series.
fn server(m: &mut Metrics, processes: &[ServerProcess], s: &Server) {
    for p in processes {
        let (pid, worker, generation) = (
            p.pid.to_string(),
            p.worker.map(|w| w.to_string()).unwrap_or_default(),
            p.generation.to_string(),
        );
        let role = serde_json::to_value(p.role)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let l: &[(&str, &str)] = &[
            ("pid", &pid),
            ("role", &role),
            ("worker", &worker),
            ("generation", &generation),
        ];
        let figures = [
            (
                "server_process_resident_bytes",
                "Resident memory of each process of the server (VmRSS).",
                p.status.resident_bytes,
            ),
            (
                "server_process_resident_anon_bytes",
                "Resident anonymous memory of each process (RssAnon).",
                p.status.resident_anon_bytes,
            ),
            (
                "server_process_resident_file_bytes",
                "Resident file-backed memory of each process (RssFile).",
                p.status.resident_file_bytes,
            ),
            (
                "server_process_resident_shmem_bytes",
                "Resident shared memory of each process (RssShmem).",
                p.status.resident_shmem_bytes,
            ),
            (
                "server_process_swap_bytes",
                "Swapped-out memory of each process (VmSwap).",
                p.status.swap_bytes,
            ),
            (
                "server_process_virtual_bytes",
                "Virtual memory size of each process (VmSize).",
                p.status.virtual_bytes,
            ),
        ];
        for (name, help, value) in figures {
            if let Some(v) = value {
                m.add_labelled(name, Kind::Gauge, help, false, l, v);
            }
        }
        if let Some(pss) = p.pss_bytes {
            m.add_labelled(
                "server_process_pss_bytes",
                Kind::Gauge,
                "Proportional share of each process's resident pages (a page of N processes counts 1/N), from its last page-table walk.",
                false,
                l,
                pss,
            );
        }
        if let Some(memory) = &p.memory {
            published(m, l, memory);
        }
        m.add_labelled(
            "server_process_exiting",
            Kind::Gauge,
            "1 for a worker shutting down (an old generation after a reload).",
            false,
            l,
            u8::from(p.exiting),
        );
        m.add_labelled(
            "server_process_start_time_seconds",
            Kind::Gauge,
            "When the process registered, in seconds since the epoch.",
            false,
            l,
            p.started_at_ms as f64 / 1000.0,
        );
    }
    let totals = [
        (
            "server_generation",
            "Configuration loads: 1 at start, +1 per reload.",
            s.generation,
        ),
        (
            "server_processes",
            "Processes of the server listed.",
            s.processes,
        ),
        (
            "server_workers",
            "Workers of the current generation.",
            s.workers,
        ),
        (
            "server_old_generation_workers",
            "Workers of an older generation, or shutting down.",
            s.old_generation_workers,
        ),
        (
            "server_old_generation_resident_bytes",
            "Resident memory of the old generation's workers, each counted whole.",
            s.old_generation_resident_bytes,
        ),
    ];
    for (name, help, value) in totals {
        m.add_labelled(name, Kind::Gauge, help, false, &[], value);
    }
    let counted = [
        (
            "server_resident_bytes",
            "The server's resident memory, every page counted once: the sum of every process's PSS.",
            s.resident_bytes,
        ),
        (
            "server_resident_estimated_bytes",
            "The part of server_resident_bytes estimated for processes whose PSS is unknown.",
            s.resident_estimated_bytes,
        ),
    ];
    for (name, help, value) in counted {
        m.add_labelled(name, Kind::Gauge, help, false, &[], value);
    }
    for (owner, &bytes) in &s.breakdown {
        m.add_labelled(
            "server_owner_resident_bytes",
            Kind::Gauge,
            "The server's resident memory by owner, every page counted once.",
            false,
            &[("owner", owner)],
            bytes,
        );
    }
    if let Some(age) = s.resident_age_ms {
        m.add_labelled(
            "server_resident_age_seconds",
            Kind::Gauge,
            "Age of the oldest figure in server_resident_bytes.",
            false,
            &[],
            age as f64 / 1000.0,
        );
    }
    if let Some(age) = s.oldest_exiting_age_ms {
        m.add_labelled(
            "server_oldest_exiting_age_seconds",
            Kind::Gauge,
            "How long the oldest worker still shutting down has lived.",
            false,
            &[],
            age as f64 / 1000.0,
        );
    }
}

pub fn render_zone(r: &ZoneReport) -> String {
    let mut m = Metrics::new(&r.nginx);
    info(&mut m, &r.nginx);
    zones(&mut m, &r.zones);
    errors(&mut m, r.errors.iter().map(|e| e.source.as_str()));
    m.render()
}

fn errors<'a>(m: &mut Metrics, sources: impl Iterator<Item = &'a str>) {
    for source in sources {
        m.gauge(
            "source_unavailable",
            "1 for each source that could not be read or is absent (see the JSON answer's errors for why).",
            &[("source", source)],
            1,
        );
    }
}
