//! The answer for a person at a terminal (`format=text`, or `Accept:
//! text/plain` without Prometheus's version): a short aligned summary, as
//! `stub_status` and `free -h` are. Every figure is one of the JSON's, as
//! `human_bytes` writes it; names are the JSON's, escaped by the one rule.

use std::fmt::Write;

use super::{human_bytes, human_signed_bytes};
use crate::model::container::Container;
use crate::model::labels::Label;
use crate::model::report::{Report, Role};
use crate::model::server::ServerProcess;
use crate::model::zones::Zone;

pub const CONTENT_TYPE: &[u8] = b"text/plain; charset=utf-8";

/// Owners shown beside each worker.
const TOP_OWNERS: usize = 3;

pub fn render(r: &Report) -> String {
    let mut t = String::new();
    let who = match r.nginx.role {
        Role::Worker => format!("worker {}", r.nginx.worker),
        role => format!("the {} process", role.label()),
    };
    let _ = writeln!(
        t,
        "nginx {} memory (ngx-memory-status {}), answered by {who} (pid {})\n",
        r.nginx.version, r.nginx.module_version, r.nginx.pid
    );
    server(&mut t, r);
    processes(&mut t, &r.processes);
    zones(&mut t, &r.zones);
    lua(&mut t, r);
    if let Some(c) = &r.container {
        container(&mut t, c);
    }
    findings(&mut t, r);
    for e in &r.errors {
        let _ = writeln!(t, "Not read: {}: {}", e.source, e.error);
    }
    t.push_str("More: ?format=json, ?format=prometheus, ?format=html\n");
    t
}

fn size(bytes: u64) -> String {
    human_bytes(bytes)
}

fn server(t: &mut String, r: &Report) {
    let s = &r.server;
    let _ = writeln!(
        t,
        "Server: {} resident, every page counted once ({} of it estimated); workers: {}, processes: {}, generation {}",
        size(s.resident_bytes),
        size(s.resident_estimated_bytes),
        s.workers,
        s.processes,
        s.generation
    );
    let mut owners: Vec<(&&str, &u64)> = s.breakdown.iter().collect();
    owners.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (owner, bytes) in owners {
        let _ = writeln!(t, "  {owner:<16} {:>12}", size(*bytes));
    }
    if s.old_generation_workers > 0 {
        let _ = writeln!(
            t,
            "  old generation: {} workers, {} resident (each counted whole)",
            s.old_generation_workers,
            size(s.old_generation_resident_bytes)
        );
    }
    t.push('\n');
}

fn process_name(p: &ServerProcess) -> String {
    let name = match p.worker {
        Some(n) => format!("worker {n}"),
        None => p.role.label().to_string(),
    };
    if p.exiting {
        format!("{name} (old)")
    } else {
        name
    }
}

fn processes(t: &mut String, processes: &[ServerProcess]) {
    let _ = writeln!(
        t,
        "{:<22} {:>8} {:>12} {:>12} {:>10}  top owners (resident)",
        "Processes", "pid", "resident", "anonymous", "swap"
    );
    let opt = |v: Option<u64>| v.map_or("n/a".to_string(), size);
    for p in processes {
        let line = format!(
            "  {:<20} {:>8} {:>12} {:>12} {:>10}  {}",
            process_name(p),
            p.pid,
            opt(p.status.resident_bytes),
            opt(p.status.resident_anon_bytes),
            opt(p.status.swap_bytes),
            top_owners(p)
        );
        let _ = writeln!(t, "{}", line.trim_end());
    }
    t.push('\n');
}

/// A worker's largest owners by resident bytes, as it last published them.
fn top_owners(p: &ServerProcess) -> String {
    let Some(memory) = &p.memory else {
        return String::new();
    };
    let mut owners: Vec<(&str, u64)> = memory
        .breakdown
        .iter()
        .filter_map(|(owner, f)| Some((*owner, u64::try_from(f.resident_bytes?).ok()?)))
        .collect();
    owners.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = owners
        .iter()
        .take(TOP_OWNERS)
        .map(|(owner, bytes)| format!("{owner} {}", size(*bytes)))
        .collect();
    top.join(", ")
}

fn zones(t: &mut String, zones: &[Zone]) {
    if zones.is_empty() {
        return;
    }
    let width = zones
        .iter()
        .map(|z| z.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let _ = writeln!(
        t,
        "{:<w$} {:>12} {:>12} {:>6} {:>9}",
        "Zones",
        "size",
        "used",
        "fill",
        "failures",
        w = width + 2
    );
    for z in zones {
        let (used, fill, fails) = match &z.slab {
            Some(s) => (
                size(s.used_bytes),
                format!("{}%", s.pages.used * 100 / s.pages_total.max(1)),
                s.slots
                    .0
                    .iter()
                    .map(|(_, c)| c.fails)
                    .sum::<u64>()
                    .to_string(),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        let _ = writeln!(
            t,
            "  {:<width$} {:>12} {:>12} {fill:>6} {fails:>9}",
            z.name,
            size(z.size_bytes),
            used
        );
    }
    t.push('\n');
}

fn lua(t: &mut String, r: &Report) {
    let vms = [("http", &r.lua.http), ("stream", &r.lua.stream)];
    if vms.iter().all(|(_, vm)| vm.is_none()) {
        return;
    }
    let _ = writeln!(
        t,
        "{:<18} {:>12} {:>18} {:>14}",
        format!("Lua (pid {})", r.nginx.pid),
        "live (GC)",
        "allocator mapped",
        "free in it"
    );
    for (name, vm) in vms {
        let Some(vm) = vm else { continue };
        let allocator = vm.allocator.as_ref();
        let _ = writeln!(
            t,
            "  {name:<16} {:>12} {:>18} {:>14}",
            size(vm.gc_bytes),
            allocator.map_or("n/a".to_string(), |a| size(a.mapped_bytes)),
            allocator.map_or("n/a".to_string(), |a| size(a.free_bytes))
        );
    }
    t.push('\n');
    for (name, vm) in vms {
        let Some(vm) = vm else { continue };
        if let Some(l) = &vm.largest {
            let _ = writeln!(
                t,
                "Largest Lua tables ({name} VM, {} objects reached)",
                l.walked
            );
            for o in l.tables.iter().take(TEXT_LUA_ROWS) {
                let _ = writeln!(t, "  {:>12}  {}", size(o.retained_bytes), o.path);
            }
        }
        if let Some(Some(g)) = &vm.growth {
            let _ = writeln!(t, "Grown in {} s ({name} VM)", g.age_ms / 1000);
            for p in g.paths.iter().take(TEXT_LUA_ROWS) {
                let _ = writeln!(
                    t,
                    "  {:>12}  {}",
                    human_signed_bytes(p.retained_bytes),
                    p.path
                );
            }
        }
        if vm.largest.is_some() {
            t.push('\n');
        }
    }
}

/// Rows of the Lua walk's lists the text shows (`lua_largest=1`).
const TEXT_LUA_ROWS: usize = 5;

fn container(t: &mut String, c: &Container) {
    let limit = match c.limit_bytes {
        Some(l) => format!("of a limit of {}", size(l)),
        None => "with no limit".to_string(),
    };
    let _ = writeln!(
        t,
        "Container (cgroup v{} {}): {} charged {limit}; working set {}; OOM kills since nginx started: {}",
        c.cgroup_version,
        c.path,
        size(c.usage_bytes),
        size(c.working_set_bytes),
        c.oom.kills_since_start.map_or("n/a".to_string(), |n| n.to_string())
    );
    let mut parts: Vec<_> = c.parts.iter().filter(|p| p.bytes != 0).collect();
    parts.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    for p in parts {
        let _ = writeln!(t, "  {:<22} {:>12}", p.part, human_signed_bytes(p.bytes));
    }
    t.push('\n');
}

fn findings(t: &mut String, r: &Report) {
    if r.findings.is_empty() {
        t.push_str("Findings: none\n\n");
        return;
    }
    t.push_str("Findings\n");
    for f in &r.findings {
        let _ = writeln!(
            t,
            "  {:<8} {} ({}): {}",
            f.severity.label(),
            f.code,
            f.subject,
            f.message
        );
    }
    t.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::assemble::tests::sample_report;
    use crate::model::container::ContainerPart;
    use crate::model::findings::{Finding, Severity};
    use crate::model::server::{OwnerFigures, ProcessRole, Published};
    use crate::model::source_error::SourceError;
    use crate::model::zones::{PageCounts, Slab, SlotCounts, Slots};

    fn report() -> Report {
        let errors = vec![SourceError::new("lua.stream", "not loaded")];
        let mut r = sample_report(Default::default(), errors);
        r.server.resident_bytes = 7 << 20;
        r.server.breakdown.insert("glibc", 3 << 20);
        r.server.breakdown.insert("text", 4 << 20);
        let mut memory = Published::default();
        for (owner, bytes) in [
            ("glibc", 900_000),
            ("text", 5_000_000),
            ("shm", 1),
            ("stacks", 2),
        ] {
            memory.breakdown.insert(
                owner,
                OwnerFigures {
                    bytes,
                    resident_bytes: Some(bytes as i64),
                },
            );
        }
        r.processes.push(ServerProcess {
            pid: 42,
            role: ProcessRole::Worker,
            worker: Some(3),
            generation: 1,
            exiting: true,
            started_at_ms: 0,
            status: Default::default(),
            pss_bytes: None,
            pss_age_ms: None,
            memory: Some(memory),
        });
        r.zones.push(Zone {
            name: "caf\\xC3\\xA9".into(),
            owner: None,
            kind: "limit_req",
            size_bytes: 1 << 20,
            mapped_bytes: 1 << 20,
            loaded_bytes: None,
            loaded_age_ms: None,
            slab: Some(Slab {
                page_size_bytes: 4096,
                pages_total: 200,
                pages: PageCounts {
                    used: 50,
                    free: 150,
                },
                total_bytes: 200 * 4096,
                used_bytes: 50 * 4096,
                free_bytes: 150 * 4096,
                slots: Slots(vec![(
                    64,
                    SlotCounts {
                        used: 1,
                        free: 2,
                        reqs: 3,
                        fails: 4,
                    },
                )]),
                free_runs: 1,
                largest_free_run_pages: 150,
                largest_free_run_bytes: 150 * 4096,
                free_runs_truncated: false,
            }),
            capacity_bytes: None,
            free_space_bytes: None,
        });
        r.container = Some(Container {
            cgroup_version: 2,
            path: "/pod".into(),
            usage_bytes: 300 << 20,
            limit_bytes: Some(1 << 30),
            parts: vec![ContainerPart {
                part: "unexplained",
                bytes: -(2 << 20),
                source: "",
            }],
            ..Container::default()
        });
        r.findings.push(Finding {
            code: "zone_alloc_failed",
            severity: Severity::Warning,
            subject: "caf\\xC3\\xA9".into(),
            message: "4 allocations failed.".into(),
            evidence: serde_json::Value::Null,
        });
        r
    }

    #[test]
    fn every_figure_is_the_answers() {
        let r = report();
        let text = render(&r);
        for line in [
            "  text                  4.0 MiB",
            "  glibc                 3.0 MiB",
            "Container (cgroup v2 /pod): 300.0 MiB charged of a limit of 1.0 GiB; working set 0 B; OOM kills since nginx started: n/a",
            "  unexplained                -2.0 MiB",
            "  warning  zone_alloc_failed (caf\\xC3\\xA9): 4 allocations failed.",
            "Not read: lua.stream: not loaded",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
        assert!(text.starts_with("nginx "), "{text}");
        let zone = text.lines().find(|l| l.starts_with("  caf")).unwrap();
        let words: Vec<&str> = zone.split_whitespace().collect();
        assert_eq!(
            words,
            ["caf\\xC3\\xA9", "1.0", "MiB", "200.0", "KiB", "25%", "4"]
        );
        let worker = text.lines().find(|l| l.contains(" 42 ")).unwrap();
        assert!(worker.starts_with("  worker 3 (old)"), "{worker}");
        assert!(
            worker.ends_with("text 4.8 MiB, glibc 878.9 KiB, stacks 2 B"),
            "{worker}"
        );
        assert!(
            !text.lines().any(|l| l.ends_with(' ')),
            "no trailing blanks"
        );
    }
}
