//! Findings: what the figures of an answer mean for an operator, in plain
//! words, each with the figures it rests on. Every rule is checked at every
//! answer; an absent finding means the rule did not fire. A rule whose inputs
//! could not be read says so in `errors`. Thresholds are named constants (their
//! sources are in the README).

use serde_json::{json, Value};

use crate::model::container::Container;
use crate::model::findings::Finding;
use crate::model::findings::Severity;
use crate::model::labels::Label;
use crate::model::report::Report;
use crate::model::server::{ProcessRole, ServerProcess};
use crate::model::source_error::SourceError;
use crate::model::zones::Zone;
use crate::sources::cgroup::CgroupMemory;
use crate::sources::errors::SampleError;

const MIB: u64 = 1 << 20;

/// `zone_oversized`: a zone above this size...
pub const ZONE_OVERSIZED_MIN_BYTES: u64 = 64 * MIB;
/// ...and more than this many times what was ever loaded into it.
pub const ZONE_OVERSIZED_RATIO: u64 = 4;
/// `zone_fragmented`: free pages at least this share (percent) of the zone...
pub const ZONE_FRAGMENTED_FREE_PERCENT: u64 = 10;
/// ...scattered in runs the largest of which is under this share of them.
pub const ZONE_FRAGMENTED_RUN_DIVISOR: u64 = 8;
/// `glibc_free_held`: glibc's free bytes above this, and above its in-use bytes.
pub const GLIBC_FREE_HELD_MIN_BYTES: u64 = 64 * MIB;
/// `glibc_arenas`: arenas besides the main one and the measuring thread's.
pub const GLIBC_EXTRA_ARENAS: u64 = 1;
/// `lua_allocator_held`: the allocator maps more than this many times `gc_bytes`...
pub const LUA_ALLOCATOR_HELD_RATIO: u64 = 2;
/// ...and this much more than `gc_bytes` (an idle VM maps a few MiB for KBs).
pub const LUA_ALLOCATOR_HELD_MIN_EXCESS_BYTES: u64 = 32 * MIB;
/// `lua_heap_limit`: LuaJIT without GC64 keeps its heap under 2 GiB (31-bit
/// allocations on x86_64)...
pub const LUA_NON_GC64_LIMIT_BYTES: u64 = 2048 * MIB;
/// ...warned at this share (percent).
pub const LUA_HEAP_LIMIT_WARN_PERCENT: u64 = 75;
/// `memory_limit`: warned at this share (percent) of the cgroup's limit...
pub const MEMORY_LIMIT_WARN_PERCENT: u64 = 80;
/// ...critical at this one.
pub const MEMORY_LIMIT_CRITICAL_PERCENT: u64 = 95;
/// `old_generation_lingering`: old workers alive this long after the reload.
pub const OLD_GENERATION_LINGER_MS: u64 = 30_000;
/// `steady_growth`: a fit at least this good (R²)...
pub const STEADY_GROWTH_MIN_R_SQUARED: f64 = 0.9;
/// ...over at least this many samples...
pub const STEADY_GROWTH_MIN_SAMPLES: usize = 6;
/// ...that grew at least this much over its window.
pub const STEADY_GROWTH_MIN_BYTES: f64 = 4.0 * MIB as f64;
/// `cycle_pool_large`: the configuration's pool above this share (percent) of
/// a worker's resident memory...
pub const CYCLE_POOL_LARGE_PERCENT: u64 = 25;
/// ...and above this size.
pub const CYCLE_POOL_LARGE_MIN_BYTES: u64 = 16 * MIB;
/// `working_set_near_limit`: the container's working set (usage less inactive
/// file pages, as the kubelet reads it) at this share (percent) of the limit.
pub const WORKING_SET_WARN_PERCENT: u64 = 90;
/// `page_cache_in_usage`: active file pages (reclaimable, yet in the working
/// set) at this share (percent) of the limit.
pub const PAGE_CACHE_ACTIVE_PERCENT: u64 = 20;
/// `socket_buffers_large`: the kernel's TCP buffers at this share (percent)
/// of the limit...
pub const SOCKET_BUFFERS_PERCENT: u64 = 10;
/// ...or, without a limit, this size.
pub const SOCKET_BUFFERS_MIN_BYTES: u64 = 256 * MIB;
/// `unexplained_container_memory`: what no part explains at this share
/// (percent) of usage...
pub const UNEXPLAINED_PERCENT: u64 = 10;
/// ...and at least this size.
pub const UNEXPLAINED_MIN_BYTES: u64 = 64 * MIB;

/// What the rules need beyond the answer.
pub struct Inputs<'a> {
    pub report: &'a Report,
    pub cgroup: &'a Result<Option<CgroupMemory>, SampleError>,
    /// `worker_shutdown_timeout`; `None` when not set.
    pub shutdown_timeout_ms: Option<u64>,
    pub now_ms: u64,
}

fn finding(
    code: &'static str,
    severity: Severity,
    subject: impl Into<String>,
    message: String,
    evidence: Value,
) -> Finding {
    Finding {
        code,
        severity,
        subject: subject.into(),
        message,
        evidence,
    }
}

/// Every rule over an answer, most severe first.
pub fn evaluate(inputs: &Inputs<'_>, errors: &mut Vec<SourceError>) -> Vec<Finding> {
    let r = inputs.report;
    let mut out = Vec::new();
    for zone in &r.zones {
        zone_rules(zone, &mut out);
    }
    swap_used(&r.processes, &mut out);
    for p in r.processes.iter().filter(|p| p.memory.is_some()) {
        worker_rules(p, &mut out);
    }
    glibc_arenas(r, &mut out);
    lua_heap_limit(r, &mut out);
    memory_limit(inputs, errors, &mut out);
    if let Some(c) = &r.container {
        oom_killed(c, &mut out);
        container_share_rules(c, &mut out);
    }
    old_generation_lingering(inputs, &mut out);
    for t in &r.trends {
        steady_growth(r, t, &mut out);
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn process_name(p: &ServerProcess) -> String {
    match p.worker {
        Some(n) => format!("worker {n} (pid {})", p.pid),
        None => format!("{} (pid {})", p.role.label(), p.pid),
    }
}

/// `zone_alloc_failed`, `zone_fragmented`, `zone_oversized`.
fn zone_rules(z: &Zone, out: &mut Vec<Finding>) {
    if let Some(slab) = &z.slab {
        for (size, c) in slab.slots.0.iter().filter(|(_, c)| c.fails > 0) {
            out.push(finding(
                "zone_alloc_failed",
                Severity::Warning,
                &z.name,
                format!(
                    "Zone {} could not allocate {size}-byte slots {} times: it is too small or fragmented for what is stored in it; enlarge it.",
                    z.name, c.fails
                ),
                json!({"slot_size_bytes": size, "fails": c.fails, "reqs": c.reqs, "size_bytes": z.size_bytes}),
            ));
        }
        let free = slab.free_bytes;
        let failed = slab.slots.0.iter().any(|(_, c)| c.fails > 0);
        if free * 100 >= ZONE_FRAGMENTED_FREE_PERCENT * slab.total_bytes.max(1)
            && slab.largest_free_run_bytes * ZONE_FRAGMENTED_RUN_DIVISOR < free
        {
            out.push(finding(
                "zone_fragmented",
                if failed {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                &z.name,
                format!(
                    "Zone {} has {free} bytes free but in {} scattered runs, the largest {} bytes: a larger value cannot be stored (a shared dict evicts instead); keep value sizes alike or enlarge the zone.",
                    z.name, slab.free_runs, slab.largest_free_run_bytes
                ),
                json!({"free_bytes": free, "free_runs": slab.free_runs, "largest_free_run_bytes": slab.largest_free_run_bytes, "size_bytes": z.size_bytes}),
            ));
        }
    }
    if let Some(loaded) = z.loaded_bytes {
        if z.size_bytes > ZONE_OVERSIZED_MIN_BYTES && z.size_bytes > ZONE_OVERSIZED_RATIO * loaded {
            out.push(finding(
                "zone_oversized",
                Severity::Info,
                &z.name,
                format!(
                    "Zone {} is {} bytes but only {loaded} were ever loaded: the rest is virtual memory that becomes real the day it fills; size it to what it holds.",
                    z.name, z.size_bytes
                ),
                json!({"size_bytes": z.size_bytes, "loaded_bytes": loaded}),
            ));
        }
    }
}

/// `swap_used`: any process of the server with pages in swap.
fn swap_used(processes: &[ServerProcess], out: &mut Vec<Finding>) {
    for p in processes {
        let Some(swap) = p.status.swap_bytes.filter(|&s| s > 0) else {
            continue;
        };
        out.push(finding(
            "swap_used",
            Severity::Warning,
            process_name(p),
            format!(
                "{} has {swap} bytes in swap: requests touching them wait for the disk; give the machine memory or lower nginx's.",
                process_name(p)
            ),
            json!({"swap_bytes": swap, "resident_bytes": p.status.resident_bytes}),
        ));
    }
}

/// `glibc_free_held`, `lua_allocator_held`, `cycle_pool_large`: from each
/// worker's published figures (the answering worker's are this answer's).
fn worker_rules(p: &ServerProcess, out: &mut Vec<Finding>) {
    let Some(m) = &p.memory else { return };
    if let Some(g) = m.glibc {
        if g.free_bytes > g.in_use_bytes && g.free_bytes > GLIBC_FREE_HELD_MIN_BYTES {
            out.push(finding(
                "glibc_free_held",
                Severity::Warning,
                process_name(p),
                format!(
                    "glibc in {} holds {} bytes freed but not returned to the system, more than the {} in use: call malloc_trim (OpenResty: lua_malloc_trim) or look for a burst of allocations.",
                    process_name(p), g.free_bytes, g.in_use_bytes
                ),
                json!({"free_bytes": g.free_bytes, "in_use_bytes": g.in_use_bytes}),
            ));
        }
    }
    for (vm, figures) in [("http", &m.lua.http), ("stream", &m.lua.stream)] {
        let Some(v) = figures else { continue };
        let Some(mapped) = v.allocator_mapped_bytes else {
            continue;
        };
        if mapped > LUA_ALLOCATOR_HELD_RATIO * v.gc_bytes
            && mapped > v.gc_bytes + LUA_ALLOCATOR_HELD_MIN_EXCESS_BYTES
        {
            out.push(finding(
                "lua_allocator_held",
                Severity::Warning,
                format!("{} lua {vm}", process_name(p)),
                format!(
                    "The {vm} Lua VM of {} maps {mapped} bytes for {} bytes of live objects: LuaJIT's allocator keeps what the collector freed (a pseudo leak, not a leak); it is reused, and returned only on a restart of the worker.",
                    process_name(p), v.gc_bytes
                ),
                json!({"allocator_mapped_bytes": mapped, "gc_bytes": v.gc_bytes}),
            ));
        }
    }
    let rss = p.status.resident_bytes.unwrap_or(0);
    let cycle = m.pools.cycle_bytes;
    if cycle > CYCLE_POOL_LARGE_MIN_BYTES && cycle * 100 > CYCLE_POOL_LARGE_PERCENT * rss {
        out.push(finding(
            "cycle_pool_large",
            Severity::Info,
            process_name(p),
            format!(
                "The configuration's pool of {} is {cycle} bytes of its {rss} resident: a large configuration (many servers, maps, certificates) costs every worker that much, twice during a reload.",
                process_name(p)
            ),
            json!({"cycle_bytes": cycle, "worker_resident_bytes": rss}),
        ));
    }
}

/// `glibc_arenas`: this worker's threads made glibc arenas of their own.
fn glibc_arenas(r: &Report, out: &mut Vec<Finding>) {
    let Some(g) = &r.breakdown.glibc else { return };
    let found = g.details.get("arena_heaps_found").and_then(Value::as_u64);
    let threads = r.process.threads.unwrap_or(1);
    let Some(found) = found else { return };
    if threads > 2 && found > GLIBC_EXTRA_ARENAS {
        let bytes = g.details.get("arena_heap_bytes").and_then(Value::as_u64);
        out.push(finding(
            "glibc_arenas",
            Severity::Info,
            format!("worker {} (pid {})", r.nginx.worker, r.nginx.pid),
            format!(
                "glibc made {found} arena heaps for this worker's {threads} threads (aio thread pools): each can hold freed memory apart; MALLOC_ARENA_MAX=2 in nginx's environment caps them."
            ),
            json!({"threads": threads, "arena_heaps_found": found, "arena_heap_bytes": bytes}),
        ));
    }
}

/// `lua_heap_limit`: a LuaJIT without GC64 (its allocations all below 2 GiB)
/// near its limit.
fn lua_heap_limit(r: &Report, out: &mut Vec<Finding>) {
    for (vm, v) in [("http", &r.lua.http), ("stream", &r.lua.stream)] {
        let Some(a) = v.as_ref().and_then(|v| v.allocator.as_ref()) else {
            continue;
        };
        let gc64 = a
            .segment_ranges
            .iter()
            .any(|&(_, end)| end > LUA_NON_GC64_LIMIT_BYTES);
        if gc64 || a.segment_ranges.is_empty() {
            continue;
        }
        let limit = LUA_NON_GC64_LIMIT_BYTES;
        if a.mapped_bytes * 100 >= LUA_HEAP_LIMIT_WARN_PERCENT * limit {
            out.push(finding(
                "lua_heap_limit",
                Severity::Critical,
                format!("worker {} lua {vm}", r.nginx.worker),
                format!(
                    "The {vm} Lua VM's allocator maps {} bytes of the {limit} a LuaJIT without GC64 can address: it fails with \"not enough memory\" at the limit; use a GC64 LuaJIT (OpenResty 1.21+) or hold less in Lua.",
                    a.mapped_bytes
                ),
                json!({"allocator_mapped_bytes": a.mapped_bytes, "limit_bytes": limit}),
            ));
        }
    }
}

/// `memory_limit`: the server (counted once, plus what the Lua collectors may
/// still grow to) near its cgroup's limit.
fn memory_limit(inputs: &Inputs<'_>, errors: &mut Vec<SourceError>, out: &mut Vec<Finding>) {
    let cg = match inputs.cgroup {
        Ok(Some(cg)) => cg,
        Ok(None) => return,
        Err(e) => {
            errors.push(SourceError::new("findings.memory_limit", e.to_string()));
            return;
        }
    };
    let Some(limit) = cg.limit_bytes else { return };
    let r = inputs.report;
    // The collector lets a heap grow to about twice what it held after its
    // last cycle before it runs again.
    let headroom: u64 = r
        .processes
        .iter()
        .filter_map(|p| p.memory.as_ref())
        .flat_map(|m| [m.lua.http, m.lua.stream])
        .flatten()
        .map(|v| v.gc_bytes)
        .sum();
    let server = r.server.resident_bytes;
    let projected = server + headroom;
    let severity = if projected * 100 >= MEMORY_LIMIT_CRITICAL_PERCENT * limit {
        Severity::Critical
    } else if projected * 100 >= MEMORY_LIMIT_WARN_PERCENT * limit {
        Severity::Warning
    } else {
        return;
    };
    out.push(finding(
        "memory_limit",
        severity,
        "server",
        format!(
            "nginx's memory, {server} bytes counted once plus {headroom} the Lua collectors may still grow to, is {}% of its cgroup's limit of {limit}: past it the kernel kills a worker; raise the limit or lower nginx's memory.",
            projected * 100 / limit.max(1)
        ),
        json!({"limit_bytes": limit, "usage_bytes": cg.usage_bytes, "server_resident_bytes": server,
               "lua_headroom_bytes": headroom, "projected_bytes": projected, "cgroup_version": cg.version}),
    ));
}

/// `oom_killed`: the kernel killed a process of nginx's cgroup for memory
/// since nginx started.
fn oom_killed(c: &Container, out: &mut Vec<Finding>) {
    let Some(kills) = c.oom.kills_since_start.filter(|&n| n > 0) else {
        return;
    };
    out.push(finding(
        "oom_killed",
        Severity::Critical,
        "container",
        format!(
            "the kernel's OOM killer killed {kills} process(es) in nginx's memory cgroup since nginx started (a worker, which error.log shows as \"exited on signal 9\" and the master respawns, dropping its connections, the child of a Lua heap walk (lua_largest=1, which the OOM killer takes first), or another process of the group); the working set is now {} of a limit of {}: see the container's parts for what holds the memory.",
            c.limited_working_set_bytes(),
            c.limit_bytes.map_or("none".to_string(), |l| l.to_string())
        ),
        json!({"oom_kills_since_start": kills, "oom_kills": c.oom.kills,
               "working_set_bytes": c.working_set_bytes, "limit_bytes": c.limit_bytes}),
    ));
}

fn part_bytes(c: &Container, name: &str) -> i64 {
    c.parts
        .iter()
        .find(|p| p.part == name)
        .map_or(0, |p| p.bytes)
}

/// `working_set_near_limit`, `page_cache_in_usage`, `socket_buffers_large`,
/// `unexplained_container_memory`: parts of the charge against the limit.
fn container_share_rules(c: &Container, out: &mut Vec<Finding>) {
    let limit = c.limit_bytes;
    let at = |bytes: u64, percent: u64| {
        limit.is_some_and(|l| u128::from(bytes) * 100 >= u128::from(percent) * u128::from(l))
    };
    let working_set = c.limited_working_set_bytes();
    if at(working_set, WORKING_SET_WARN_PERCENT) {
        let whose = match c.limit_group.as_ref().and_then(|g| g.path.as_deref()) {
            Some(path) => format!("the group whose limit binds ({path}, with its other members)"),
            None => "the container".to_string(),
        };
        out.push(finding(
            "working_set_near_limit",
            Severity::Warning,
            "container",
            format!(
                "the working set of {whose}, {working_set} bytes (usage less inactive file pages, as the kubelet and the OOM killer see it), is {}% of its limit of {}.",
                u128::from(working_set) * 100 / u128::from(limit.unwrap_or(1).max(1)),
                limit.unwrap_or(0)
            ),
            json!({"working_set_bytes": working_set, "usage_bytes": c.limited_usage_bytes(), "limit_bytes": limit}),
        ));
    }
    let active = part_bytes(c, "page_cache_active").max(0) as u64;
    if at(active, PAGE_CACHE_ACTIVE_PERCENT) {
        out.push(finding(
            "page_cache_in_usage",
            Severity::Info,
            "container",
            format!(
                "{active} bytes of the container's charge are active page cache (files nginx or others read or wrote): the kernel can reclaim them, but they count toward the working set until it does."
            ),
            json!({"page_cache_active_bytes": active, "limit_bytes": limit}),
        ));
    }
    let sockets = c
        .tcp_buffers_outside_usage_bytes
        .unwrap_or(part_bytes(c, "socket_buffers").max(0) as u64);
    let large = match limit {
        Some(_) => at(sockets, SOCKET_BUFFERS_PERCENT),
        None => sockets >= SOCKET_BUFFERS_MIN_BYTES,
    };
    if large {
        out.push(finding(
            "socket_buffers_large",
            Severity::Warning,
            "container",
            format!(
                "the kernel holds {sockets} bytes of TCP buffers for the container ({} connections in nginx's worker, {} TCP sockets in its network namespace): clients that do not read, or large buffers, hold memory no process's RSS shows.",
                c.sockets.nginx_connections,
                c.sockets.tcp_in_use.map_or("unknown".to_string(), |n| n.to_string())
            ),
            json!({"socket_buffers_bytes": sockets, "nginx_connections": c.sockets.nginx_connections,
                   "tcp_in_use": c.sockets.tcp_in_use, "limit_bytes": limit}),
        ));
    }
    let unexplained = part_bytes(c, "unexplained").unsigned_abs();
    if unexplained >= UNEXPLAINED_MIN_BYTES
        && u128::from(unexplained) * 100
            >= u128::from(UNEXPLAINED_PERCENT) * u128::from(c.usage_bytes)
    {
        out.push(finding(
            "unexplained_container_memory",
            Severity::Info,
            "container",
            format!(
                "{unexplained} bytes of the container's usage of {} are explained by no part (nginx, other processes, page cache, shmem, kernel).",
                c.usage_bytes
            ),
            json!({"unexplained_bytes": part_bytes(c, "unexplained"), "usage_bytes": c.usage_bytes}),
        ));
    }
}

/// `steady_growth`: a series of a process that grew in a straight line over
/// its window (since the last reload), by a material amount. Zones fill toward
/// their size (never a leak), and a VM's owner repeats its heap's finding.
fn steady_growth(r: &Report, t: &crate::model::history::ProcessTrends, out: &mut Vec<Finding>) {
    let name = match r.processes.iter().find(|p| p.pid == t.pid) {
        Some(p) => process_name(p),
        None => format!("pid {}", t.pid),
    };
    let steady = |s: &crate::model::history::Trend| {
        let f = &s.fit;
        let grown = f.bytes_per_hour * f.span_ms as f64 / 3_600_000.0;
        f.bytes_per_hour > 0.0
            && f.r_squared >= STEADY_GROWTH_MIN_R_SQUARED
            && f.samples >= STEADY_GROWTH_MIN_SAMPLES
            && grown >= STEADY_GROWTH_MIN_BYTES
    };
    let fired: Vec<&crate::model::history::Trend> = t
        .trends
        .iter()
        .filter(|s| {
            !matches!(
                s.series,
                "shm" | "resident" | "container_usage" | "container_working_set"
            )
        })
        .filter(|s| steady(s))
        .collect();
    for s in &fired {
        let heap_fired = |vm: &str| fired.iter().any(|o| o.series == vm);
        if (s.series == "lua_http" && heap_fired("lua_http_gc"))
            || (s.series == "lua_stream" && heap_fired("lua_stream_gc"))
        {
            continue;
        }
        let f = &s.fit;
        out.push(finding(
            "steady_growth",
            Severity::Warning,
            format!("{name} {}", s.series),
            format!(
                "{} of {name} grew steadily by {:.0} bytes per hour over the last {} s ({} samples, R² {:.2}): if it does not level off it is a leak; compare ?history=1 after the next reload.",
                s.series, f.bytes_per_hour, f.span_ms / 1000, f.samples, f.r_squared
            ),
            json!({"bytes_per_hour": f.bytes_per_hour as i64, "r_squared": f.r_squared,
                   "samples": f.samples, "span_ms": f.span_ms, "last_bytes": s.last_bytes}),
        ));
    }
}

/// `old_generation_lingering`: workers of an older configuration still alive
/// long after the reload.
fn old_generation_lingering(inputs: &Inputs<'_>, out: &mut Vec<Finding>) {
    let r = inputs.report;
    let current = r.server.generation;
    let old: Vec<&ServerProcess> = r
        .processes
        .iter()
        .filter(|p| p.is_old_generation(current))
        .collect();
    // The reload: when the first worker of the current generation started.
    let reload_at = r
        .processes
        .iter()
        .filter(|p| p.role == ProcessRole::Worker && p.generation == current && !p.exiting)
        .map(|p| p.started_at_ms)
        .min();
    let (false, Some(reload_at)) = (old.is_empty(), reload_at) else {
        return;
    };
    let since = inputs.now_ms.saturating_sub(reload_at);
    if since < OLD_GENERATION_LINGER_MS {
        return;
    }
    let resident: u64 = old.iter().filter_map(|p| p.status.resident_bytes).sum();
    let advice = match inputs.shutdown_timeout_ms {
        None => {
            "worker_shutdown_timeout is not set, so they wait for every connection to close; set it"
        }
        Some(_) => "they wait for long requests or connections, up to worker_shutdown_timeout",
    };
    out.push(finding(
        "old_generation_lingering",
        Severity::Warning,
        "server",
        format!(
            "{} workers of an older configuration are still alive {} s after the reload, holding {resident} bytes (each counted whole): {advice}.",
            old.len(),
            since / 1000
        ),
        json!({"workers": old.len(), "resident_bytes": resident, "since_reload_ms": since,
               "worker_shutdown_timeout_ms": inputs.shutdown_timeout_ms}),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::assemble::tests::sample_report;
    use crate::analysis::zones::{SlabSample, SlotSample, ZoneSample};
    use crate::model::lua::{LuaAllocator, LuaVm};
    use crate::model::server::{GlibcFigures, Published, ServerProcess, VmFigures};

    fn report() -> Report {
        let process = crate::analysis::assemble::process_memory(
            Ok("VmRSS:\t102400 kB\nThreads:\t1\n".into()),
            &mut Vec::new(),
        );
        sample_report(process, Vec::new())
    }

    fn run(
        r: &Report,
        cgroup: Result<Option<CgroupMemory>, SampleError>,
    ) -> (Vec<Finding>, Vec<SourceError>) {
        let mut errors = Vec::new();
        let inputs = Inputs {
            report: r,
            cgroup: &cgroup,
            shutdown_timeout_ms: None,
            now_ms: 100_000,
        };
        (evaluate(&inputs, &mut errors), errors)
    }

    fn process(pid: u32, role: ProcessRole, generation: u64, started_at_ms: u64) -> ServerProcess {
        ServerProcess {
            pid,
            role,
            worker: (role == ProcessRole::Worker).then_some(0),
            generation,
            exiting: false,
            started_at_ms,
            status: Default::default(),
            pss_bytes: None,
            pss_age_ms: None,
            memory: None,
        }
    }

    fn codes(f: &[Finding]) -> Vec<&'static str> {
        f.iter().map(|f| f.code).collect()
    }

    #[test]
    fn a_quiet_answer_has_none() {
        let (f, errors) = run(&report(), Ok(None));
        assert!(f.is_empty(), "{f:?}");
        assert!(errors.is_empty());
    }

    #[test]
    fn swap_of_any_process() {
        let mut r = report();
        let mut master = process(1, ProcessRole::Master, 1, 0);
        master.status.swap_bytes = Some(4096);
        r.processes = vec![master, process(2, ProcessRole::Worker, 1, 0)];
        let (f, _) = run(&r, Ok(None));
        assert_eq!(codes(&f), ["swap_used"]);
        assert_eq!(f[0].subject, "master (pid 1)");
        assert_eq!(f[0].evidence["swap_bytes"], 4096);
    }

    #[test]
    fn zones_failed_fragmented_oversized() {
        let sample = ZoneSample {
            name: "z".into(),
            owner: Some("ngx_http_lua_module".into()),
            size_bytes: 256 << 20,
            page_size_bytes: 4096,
            resident_pages: Ok(100),
            resident_age_ms: 0,
            slab: Ok(SlabSample {
                pages_total: 65_000,
                pages_free: 30_000,
                slots: vec![SlotSample {
                    size_bytes: 128,
                    total: 32,
                    used: 32,
                    reqs: 50,
                    fails: 3,
                }],
                free_runs: 15_000,
                largest_free_run_pages: 2,
                free_runs_truncated: false,
            }),
        };
        let mut r = report();
        r.zones = vec![sample.to_zone(&mut Vec::new())];
        let (f, _) = run(&r, Ok(None));
        assert_eq!(
            codes(&f),
            ["zone_alloc_failed", "zone_fragmented", "zone_oversized"]
        );
        assert_eq!(f[0].evidence["slot_size_bytes"], 128);
        assert_eq!(f[1].severity, Severity::Warning, "fragmented with failures");
        assert_eq!(f[2].evidence["loaded_bytes"], 100 * 4096);
    }

    #[test]
    fn per_worker_from_published_figures() {
        let mut r = report();
        let mut w = process(7, ProcessRole::Worker, 1, 0);
        w.status.resident_bytes = Some(40 << 20);
        let mut m = Published {
            glibc: Some(GlibcFigures {
                in_use_bytes: 10 << 20,
                free_bytes: 65 << 20,
            }),
            ..Published::default()
        };
        m.lua.http = Some(VmFigures {
            gc_bytes: 1 << 20,
            allocator_mapped_bytes: Some(40 << 20),
            ..Default::default()
        });
        m.pools.cycle_bytes = 17 << 20;
        w.memory = Some(m);
        r.processes = vec![w];
        let (f, _) = run(&r, Ok(None));
        let mut got = codes(&f);
        got.sort();
        assert_eq!(
            got,
            ["cycle_pool_large", "glibc_free_held", "lua_allocator_held"]
        );
        // Below the floors: nothing.
        let m = r.processes[0].memory.as_mut().unwrap();
        m.glibc = Some(GlibcFigures {
            in_use_bytes: 1,
            free_bytes: 63 << 20,
        });
        m.lua.http.as_mut().unwrap().allocator_mapped_bytes = Some(30 << 20);
        m.pools.cycle_bytes = 15 << 20;
        assert!(run(&r, Ok(None)).0.is_empty());
    }

    #[test]
    fn a_non_gc64_heap_near_its_limit() {
        let vm = |end: u64, mapped: u64| LuaVm {
            gc_bytes: 1,
            allocator: Some(LuaAllocator {
                kind: "lj_alloc",
                segments: 1,
                mapped_bytes: mapped,
                resident_bytes: None,
                resident_age_ms: None,
                free_bytes: 0,
                free_chunks: 0,
                walk_truncated: false,
                segment_ranges: vec![(end - mapped, end)],
            }),
            version: None,
            library: None,
            jit_enabled: None,
            objects: None,
            largest: None,
            growth: None,
        };
        let mut r = report();
        r.lua.http = Some(vm(1600 << 20, 1550 << 20));
        let (f, _) = run(&r, Ok(None));
        assert_eq!(codes(&f), ["lua_heap_limit"]);
        assert_eq!(f[0].severity, Severity::Critical);
        r.lua.http = Some(vm(1600 << 20, 1000 << 20));
        assert!(run(&r, Ok(None)).0.is_empty(), "below 75%");
        r.lua.http = Some(vm(0x7f00_0000_0000, 1550 << 20));
        assert!(run(&r, Ok(None)).0.is_empty(), "GC64: segments above 2 GiB");
    }

    #[test]
    fn memory_limit_counts_the_lua_headroom() {
        let mut r = report();
        r.server.resident_bytes = 70 << 20;
        let mut w = process(7, ProcessRole::Worker, 1, 0);
        let mut m = Published::default();
        m.lua.http = Some(VmFigures {
            gc_bytes: 12 << 20,
            ..Default::default()
        });
        w.memory = Some(m);
        r.processes = vec![w];
        let cg = |limit: u64| {
            Ok(Some(CgroupMemory {
                limit_bytes: Some(limit),
                usage_bytes: Some(1),
                version: 2,
                ..CgroupMemory::default()
            }))
        };
        // 70 + 12 = 82 MiB of 100: warning; of 85: critical; of 200: none.
        let (f, _) = run(&r, cg(100 << 20));
        assert_eq!(
            (codes(&f), f[0].severity),
            (vec!["memory_limit"], Severity::Warning)
        );
        assert_eq!(f[0].evidence["projected_bytes"], 82 << 20);
        assert_eq!(run(&r, cg(85 << 20)).0[0].severity, Severity::Critical);
        assert!(run(&r, cg(200 << 20)).0.is_empty());
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        let (f, errors) = run(&r, Err(SampleError::file("/proc/self/cgroup", &denied)));
        assert!(f.is_empty());
        assert_eq!(
            (errors[0].source.as_str(), errors[0].error.as_str()),
            (
                "findings.memory_limit",
                "/proc/self/cgroup: Permission denied (os error 13)"
            )
        );
    }

    #[test]
    fn old_generation_after_the_threshold() {
        let mut r = report();
        r.server.generation = 2;
        let mut old = process(5, ProcessRole::Worker, 1, 1_000);
        old.exiting = true;
        old.status.resident_bytes = Some(9 << 20);
        r.processes = vec![old, process(6, ProcessRole::Worker, 2, 60_000)];
        // 40 s after the reload (now 100 s, the new worker started at 60 s).
        let (f, _) = run(&r, Ok(None));
        assert_eq!(codes(&f), ["old_generation_lingering"]);
        assert_eq!(f[0].evidence["since_reload_ms"], 40_000);
        assert!(f[0].message.contains("not set"));
        let mut errors = Vec::new();
        let set = Inputs {
            report: &r,
            cgroup: &Ok(None),
            shutdown_timeout_ms: Some(10_000),
            now_ms: 100_000,
        };
        let f = evaluate(&set, &mut errors);
        assert!(f[0].message.contains("up to worker_shutdown_timeout"));
        r.processes[1].started_at_ms = 80_000;
        assert!(run(&r, Ok(None)).0.is_empty(), "20 s: not yet");
    }

    fn container(parts: &[(&'static str, i64)]) -> crate::model::container::Container {
        use crate::model::container::{Container, ContainerPart};
        Container {
            usage_bytes: 900 * MIB,
            limit_bytes: Some(1000 * MIB),
            working_set_bytes: 500 * MIB,
            parts: parts
                .iter()
                .map(|&(part, bytes)| ContainerPart {
                    part,
                    bytes,
                    source: "",
                })
                .collect(),
            ..Container::default()
        }
    }

    #[test]
    fn container_rules_fire_at_their_thresholds() {
        let mut r = report();
        let quiet = container(&[
            ("page_cache_active", 199 * MIB as i64),
            ("unexplained", 63 * MIB as i64),
        ]);
        r.container = Some(quiet);
        assert!(run(&r, Ok(None)).0.is_empty());
        let mut c = container(&[
            ("page_cache_active", 200 * MIB as i64),
            ("unexplained", -(90 * MIB as i64)),
        ]);
        c.working_set_bytes = 900 * MIB;
        c.oom.kills_since_start = Some(1);
        c.tcp_buffers_outside_usage_bytes = Some(100 * MIB);
        r.container = Some(c);
        let (f, _) = run(&r, Ok(None));
        assert_eq!(
            codes(&f),
            [
                "oom_killed",
                "working_set_near_limit",
                "socket_buffers_large",
                "page_cache_in_usage",
                "unexplained_container_memory"
            ]
        );
        // Without a limit, only the socket buffers' own floor applies.
        let mut c = container(&[("socket_buffers", 256 * MIB as i64)]);
        c.limit_bytes = None;
        c.working_set_bytes = 10_000 * MIB;
        r.container = Some(c);
        assert_eq!(codes(&run(&r, Ok(None)).0), ["socket_buffers_large"]);
    }

    #[test]
    fn a_limiting_ancestors_working_set_is_measured_against_its_limit() {
        use crate::model::container::LimitGroup;
        let mut r = report();
        // nginx's group holds 500 MiB, its parent (with a sidecar) 950 of
        // the parent's limit of 1000.
        let mut c = container(&[]);
        c.limit_group = Some(LimitGroup {
            path: Some("/kubepods/pod1".into()),
            usage_bytes: Some(980 * MIB),
            working_set_bytes: Some(950 * MIB),
        });
        r.container = Some(c);
        let (f, _) = run(&r, Ok(None));
        assert_eq!(codes(&f), ["working_set_near_limit"]);
        assert!(f[0]
            .message
            .contains("(/kubepods/pod1, with its other members)"));
        assert_eq!(f[0].evidence["working_set_bytes"], 950 * MIB);
        // Above the mount namespace: its charge unknown, the group's own counts.
        r.container.as_mut().unwrap().limit_group = Some(LimitGroup::default());
        assert!(run(&r, Ok(None)).0.is_empty());
    }
}
