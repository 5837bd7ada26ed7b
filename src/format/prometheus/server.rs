//! The server's series: labelled by the process they describe, or not at
//! all, never by the worker that answers: one scrape of any worker gives the
//! same series.

use super::writer::{Kind, Metrics};
use crate::model::findings::Finding;
use crate::model::history::ProcessTrends;
use crate::model::labels::Label;
use crate::model::server::{Published, Server, ServerProcess};

/// Every process of the server and the server's totals, labelled by the
/// process, not by the worker that answers: one scrape of any worker gives the
/// same series.
pub fn server(m: &mut Metrics, processes: &[ServerProcess], s: &Server) {
    for p in processes {
        process(m, p);
    }
    totals(m, s);
}

// Long, not deep: one declaration per series, in the order they are written.
/// One process's figures, labelled by its pid, role, worker number and
/// generation.
fn process(m: &mut Metrics, p: &ServerProcess) {
    let (pid, worker, generation) = (
        p.pid.to_string(),
        p.worker.map(|w| w.to_string()).unwrap_or_default(),
        p.generation.to_string(),
    );
    let l: &[(&str, &str)] = &[
        ("pid", &pid),
        ("role", p.role.label()),
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

// Long, not deep: one declaration per series, in the order they are written.
/// The server's totals, every page counted once.
fn totals(m: &mut Metrics, s: &Server) {
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
            if let Some(mapped) = f.allocator_mapped_bytes {
                m.add_labelled(
                    "server_worker_lua_allocator_mapped_bytes",
                    Kind::Gauge,
                    "Each worker's Lua VMs, as it published them: memory their allocator maps.",
                    false,
                    &vl,
                    mapped,
                );
            }
        }
    }
    if let Some(g) = &p.glibc {
        let glibc = [
            (
                "server_worker_glibc_in_use_bytes",
                "Each worker's glibc, as it published it: memory in use.",
                g.in_use_bytes,
            ),
            (
                "server_worker_glibc_free_bytes",
                "Each worker's glibc, as it published it: free memory its arenas hold.",
                g.free_bytes,
            ),
        ];
        for (name, help, value) in glibc {
            m.add_labelled(name, Kind::Gauge, help, false, l, value);
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

/// Each process's fitted growth per series, labelled by the process's pid.
pub fn trends(m: &mut Metrics, trends: &[ProcessTrends]) {
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
pub fn findings(m: &mut Metrics, findings: &[Finding]) {
    for f in findings {
        m.add_labelled(
            "finding",
            Kind::Gauge,
            "1 for each finding of the answer (see the JSON answer's findings for its message and evidence).",
            false,
            &[
                ("code", f.code),
                ("severity", f.severity.label()),
                ("subject", &f.subject),
            ],
            1,
        );
    }
}
