//! Findings: what the figures of an answer mean for an operator, in plain
//! words, each with the figures it rests on. Every rule is checked at every
//! answer; an absent finding means the rule did not fire. A rule whose inputs
//! could not be read says so in `errors`. Thresholds are named constants (their
//! sources are in the README).

use serde::Serialize;
use serde_json::{json, Value};

use crate::cgroup::CgroupMemory;
use crate::report::Report;
use crate::server::{ProcessRole, ServerProcess};
use crate::source_error::SourceError;
use crate::zones::Zone;

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
pub const OLD_GENERATION_LINGER_MS: u64 = 60_000;
/// `cycle_pool_large`: the configuration's pool above this share (percent) of
/// a worker's resident memory...
pub const CYCLE_POOL_LARGE_PERCENT: u64 = 25;
/// ...and above this size.
pub const CYCLE_POOL_LARGE_MIN_BYTES: u64 = 16 * MIB;

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

/// What the rules need beyond the answer.
pub struct Inputs<'a> {
    pub report: &'a Report,
    pub cgroup: &'a Result<Option<CgroupMemory>, String>,
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
    old_generation_lingering(inputs, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn process_name(p: &ServerProcess) -> String {
    match p.worker {
        Some(n) => format!("worker {n} (pid {})", p.pid),
        None => format!("{} (pid {})", p.role.name(), p.pid),
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
            errors.push(SourceError::new("findings.memory_limit", e.clone()));
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

/// `old_generation_lingering`: workers of an older configuration still alive
/// long after the reload.
fn old_generation_lingering(inputs: &Inputs<'_>, out: &mut Vec<Finding>) {
    let r = inputs.report;
    let current = r.server.generation;
    let old: Vec<&ServerProcess> = r
        .processes
        .iter()
        .filter(|p| p.role == ProcessRole::Worker && (p.exiting || p.generation < current))
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
