//! The answering worker's own series: each carries its `pid` and `worker`
//! labels first.

use super::writer::{Kind, Metrics};
use crate::model::breakdown::{Breakdown, Owner, VirtualSplit};
use crate::model::labels::Label;
use crate::model::lua::{Lua, LuaGrowth, LuaLargest};
use crate::model::pools::Pools;
use crate::model::process::ProcessMemory;
use crate::model::report::NginxInfo;
use crate::model::zones::{Slab, Zone};

pub fn info(m: &mut Metrics, nginx: &NginxInfo) {
    m.gauge(
        "info",
        "Always 1; labels name the nginx and module versions and the process role.",
        &[
            ("nginx_version", &nginx.version),
            ("module_version", nginx.module_version),
            ("role", nginx.role.label()),
        ],
        1,
    );
}

/// The whole process's figures, from `/proc/self/status`.
pub fn process(m: &mut Metrics, p: &ProcessMemory, split: &VirtualSplit) {
    m.gauges(
        &[],
        &[
            (
                "process_virtual_bytes",
                "Virtual memory size (VmSize).",
                p.virtual_bytes,
            ),
            (
                "process_resident_bytes",
                "Resident memory (VmRSS).",
                p.resident_bytes,
            ),
            (
                "process_resident_anon_bytes",
                "Resident anonymous memory (RssAnon).",
                p.resident_anon_bytes,
            ),
            (
                "process_resident_file_bytes",
                "Resident file-backed memory (RssFile).",
                p.resident_file_bytes,
            ),
            (
                "process_resident_shmem_bytes",
                "Resident shared memory (RssShmem).",
                p.resident_shmem_bytes,
            ),
            (
                "process_swap_bytes",
                "Swapped-out memory (VmSwap).",
                p.swap_bytes,
            ),
            (
                "process_peak_virtual_bytes",
                "Peak virtual memory size (VmPeak).",
                p.peak_virtual_bytes,
            ),
            (
                "process_peak_resident_bytes",
                "Peak resident memory (VmHWM).",
                p.peak_resident_bytes,
            ),
            ("process_threads", "OS threads.", p.threads),
            (
                "virtual_untouched_bytes",
                "Virtual memory mapped but never touched.",
                split.untouched_bytes,
            ),
        ],
    );
}

/// The owners and glibc's own figures.
pub fn breakdown(m: &mut Metrics, b: &Breakdown) {
    let owners = b.owners();
    for (name, o) in owners {
        if let Some(o) = o {
            owner(m, name, o);
        }
    }
    owner(m, "unattributed", &b.unattributed);
    if let Some(g) = &b.glibc {
        let detail = |k: &str| g.details.get(k).and_then(|v| v.as_u64());
        m.gauges(
            &[],
            &[
                (
                    "glibc_free_bytes",
                    "Free memory glibc's arenas hold (fordblks).",
                    detail("free_bytes"),
                ),
                (
                    "glibc_mmapped_bytes",
                    "Memory in chunks glibc mapped directly (hblkhd).",
                    detail("mmapped_bytes"),
                ),
                (
                    "glibc_mmapped_chunks",
                    "Chunks glibc mapped directly (hblks).",
                    detail("mmapped_chunks"),
                ),
            ],
        );
    }
}

pub fn owner(m: &mut Metrics, name: &str, o: &Owner) {
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

// Long, not deep: one declaration per series, in the order they are written.
/// Each Lua VM: its GC, its allocator and, when asked, its census.
pub fn lua(m: &mut Metrics, lua: &Lua) {
    for (vm, v) in [("http", &lua.http), ("stream", &lua.stream)] {
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
        if let Some(largest) = &v.largest {
            lua_largest(m, vm, largest, v.growth.as_ref().and_then(Option::as_ref));
        }
    }
}

/// Series of each kind's largest objects a scrape shows at most: a path is
/// a label, so their count is bounded.
const LARGEST_SERIES_PER_KIND: usize = 5;
const LARGEST_TABLE_SERIES: usize = 10;

/// The walk from the roots (`lua_largest=1`): totals by kind, the largest
/// objects and what grew, by path.
fn lua_largest(m: &mut Metrics, vm: &str, l: &LuaLargest, growth: Option<&LuaGrowth>) {
    let vl: &[(&str, &str)] = &[("vm", vm)];
    for (kind, t) in &l.types {
        let kl: &[(&str, &str)] = &[("vm", vm), ("kind", kind)];
        m.gauge(
            "lua_walk_objects",
            "Lua objects reached from the roots, by kind (lua_largest=1).",
            kl,
            t.count,
        );
        m.gauge(
            "lua_walk_bytes",
            "Bytes of the Lua objects reached from the roots, by kind (lua_largest=1).",
            kl,
            t.bytes,
        );
    }
    m.gauge(
        "lua_walk_truncated",
        "1 when the walk from the roots stopped at its bound.",
        vl,
        u8::from(l.truncated),
    );
    m.gauge(
        "lua_walk_fork_seconds",
        "How long the walk's fork held the event loop.",
        vl,
        l.fork_us as f64 / 1e6,
    );
    m.gauge(
        "lua_walk_seconds",
        "How long the walk took, in its child.",
        vl,
        l.elapsed_us as f64 / 1e6,
    );
    let rows = |kind: &str| match kind {
        "table" => LARGEST_TABLE_SERIES,
        _ => LARGEST_SERIES_PER_KIND,
    };
    // A path two objects share (`[a table key]`) is one series, the larger's.
    let mut written: Vec<(&str, &str)> = Vec::new();
    for (kind, list) in l.lists(rows) {
        for o in list {
            if written.contains(&(kind, o.path.as_str())) {
                continue;
            }
            written.push((kind, o.path.as_str()));
            let ol: &[(&str, &str)] = &[("vm", vm), ("kind", kind), ("path", &o.path)];
            m.gauge(
                "lua_largest_retained_bytes",
                "A largest Lua object's bytes with those first reached through it, by path (lua_largest=1).",
                ol,
                o.retained_bytes,
            );
        }
    }
    for f in l.cdata_finalizers.iter().take(LARGEST_SERIES_PER_KIND) {
        let fl: &[(&str, &str)] = &[("vm", vm), ("finalizer", &f.finalizer)];
        m.gauge(
            "lua_cdata_finalizer_bytes",
            "Bytes of the cdata waiting on a finalizer (ffi.gc), by finalizer (lua_largest=1).",
            fl,
            f.bytes,
        );
    }
    let Some(g) = growth else { return };
    for p in g.paths.iter().take(LARGEST_TABLE_SERIES) {
        let pl: &[(&str, &str)] = &[("vm", vm), ("kind", p.kind), ("path", &p.path)];
        m.gauge(
            "lua_growth_retained_bytes",
            "Bytes a path gained since the worker's previous walk (lua_largest=1).",
            pl,
            p.retained_bytes,
        );
    }
}

/// nginx's pools: the cycle's, connections' and requests' by kind.
pub fn pools(m: &mut Metrics, pools: &Pools) {
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
        let l: &[(&str, &str)] = &[("kind", kind.label())];
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
        let l: &[(&str, &str)] = &[("kind", kind.label())];
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
}

pub fn zones(m: &mut Metrics, zones: &[Zone]) {
    for z in zones {
        zone(m, z);
        if let Some(s) = &z.slab {
            slab(m, &z.name, s);
        }
    }
}

/// A zone's size, mapping and residency, and a shared dict's own figures.
fn zone(m: &mut Metrics, z: &Zone) {
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
}

/// A zone's slab pool: its pages, free runs and slots.
fn slab(m: &mut Metrics, name: &str, s: &Slab) {
    let zl: &[(&str, &str)] = &[("zone", name)];
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
        let sl: &[(&str, &str)] = &[("zone", name), ("slot", &size)];
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

pub fn errors<'a>(m: &mut Metrics, sources: impl Iterator<Item = &'a str>) {
    for source in sources {
        m.gauge(
            "source_unavailable",
            "1 for each source that could not be read or is absent (see the JSON answer's errors for why).",
            &[("source", source)],
            1,
        );
    }
}
