//! Prometheus text exposition format 0.0.4. Names follow Prometheus'
//! conventions (units in names, counters end in `_total`, no count inside a
//! `_bytes` metric); slab metrics follow Angie's shape. The writer is in
//! `writer`, the answering worker's families in `worker`, the server's in
//! `server`.

mod container;
mod server;
mod worker;
mod writer;

use crate::model::report::{Report, ZoneReport};
use writer::Metrics;

pub const CONTENT_TYPE: &[u8] = b"text/plain; version=0.0.4; charset=utf-8";

/// A whole answer. The families come out in the order they are first
/// written: the worker's, then the server's. `None`: memory ran out.
pub fn render(r: &Report) -> Option<String> {
    let mut m = Metrics::new(&r.nginx);
    worker::info(&mut m, &r.nginx);
    worker::process(&mut m, &r.process, &r.virtual_split);
    worker::breakdown(&mut m, &r.breakdown);
    worker::lua(&mut m, &r.lua);
    worker::pools(&mut m, &r.pools);
    worker::zones(&mut m, &r.zones);
    server::server(&mut m, &r.processes, &r.server);
    server::trends(&mut m, &r.trends);
    if let Some(c) = &r.container {
        container::container(&mut m, c);
    }
    server::findings(&mut m, &r.findings);
    worker::errors(&mut m, r.errors.iter().map(|e| e.source.as_str()));
    m.render()
}

pub fn render_zone(r: &ZoneReport) -> Option<String> {
    let mut m = Metrics::new(&r.nginx);
    worker::info(&mut m, &r.nginx);
    worker::zones(&mut m, &r.zones);
    worker::errors(&mut m, r.errors.iter().map(|e| e.source.as_str()));
    m.render()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::render;
    use crate::analysis::assemble::tests::sample_report;
    use crate::analysis::zones::{SlabSample, SlotSample, ZoneSample};
    use crate::model::findings::{Finding, Severity};
    use crate::model::report::Report;
    use crate::model::server::{ProcessRole, ServerProcess};
    use crate::model::source_error::SourceError;

    /// A worker's answer with a zone whose name needs quoting, a cache
    /// manager in the processes list and one finding.
    fn report() -> Report {
        let errors = vec![SourceError::new("lua.stream", "not loaded")];
        let mut r = sample_report(Default::default(), errors);
        let zone = ZoneSample {
            name: "a\"b\\c\nd".into(),
            owner: None,
            size_bytes: 1 << 20,
            page_size_bytes: 4096,
            resident_pages: Ok(3),
            resident_age_ms: 0,
            slab: Ok(SlabSample {
                pages_total: 250,
                pages_free: 200,
                slots: vec![SlotSample {
                    size_bytes: 8,
                    total: 512,
                    used: 3,
                    reqs: 9,
                    fails: 2,
                }],
                free_runs: 1,
                largest_free_run_pages: 200,
                free_runs_truncated: false,
            }),
        };
        r.zones.push(zone.to_zone(&mut Vec::new()));
        r.processes.push(ServerProcess {
            pid: 7,
            role: ProcessRole::CacheManager,
            worker: None,
            generation: 1,
            exiting: false,
            started_at_ms: 1_000,
            status: Default::default(),
            pss_bytes: Some(4096),
            pss_age_ms: Some(0),
            memory: None,
        });
        r.findings.push(Finding {
            code: "zone_allocation_failures",
            severity: Severity::Critical,
            subject: "z".into(),
            message: "m".into(),
            evidence: serde_json::Value::Null,
        });
        r
    }

    #[test]
    fn the_containers_series_without_worker_labels() {
        use crate::model::container::{Container, ContainerPart, LimitGroup};
        let mut r = report();
        let mut c = Container {
            cgroup_version: 2,
            usage_bytes: 500,
            limit_bytes: Some(1000),
            limit_group: Some(LimitGroup {
                path: Some("/pod".into()),
                usage_bytes: Some(900),
                working_set_bytes: Some(800),
            }),
            parts: vec![ContainerPart {
                part: "unexplained",
                bytes: -3,
                source: "",
            }],
            ..Container::default()
        };
        c.oom.kills = Some(2);
        c.oom.ooms = Some(5);
        c.oom.high = Some(7);
        r.container = Some(c);
        let text = render(&r).unwrap();
        for line in [
            r#"nginx_memory_container_limit_bytes{cgroup_version="2"} 1000"#,
            r#"nginx_memory_container_limit_group_working_set_bytes{cgroup_version="2"} 800"#,
            r#"nginx_memory_container_part_bytes{cgroup_version="2",part="unexplained"} -3"#,
            "nginx_memory_container_oom_kills_total 2",
            "nginx_memory_container_oom_events_total 5",
            "nginx_memory_container_high_events_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing");
        }
    }

    /// The metric name of a sample line.
    fn name_of(line: &str) -> &str {
        line.split(['{', ' ']).next().unwrap_or("")
    }

    #[test]
    fn each_family_is_one_block_after_its_help_and_type() {
        let text = render(&report()).unwrap();
        let mut seen = HashSet::new();
        let mut current = String::new();
        let mut lines = text.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let name = help.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} written twice");
                let kind = lines.next().unwrap();
                assert!(
                    kind == format!("# TYPE {name} gauge")
                        || kind == format!("# TYPE {name} counter"),
                    "{kind}"
                );
                assert_eq!(
                    kind.ends_with("counter"),
                    name.ends_with("_total"),
                    "{name}"
                );
                current = name;
                continue;
            }
            assert_eq!(name_of(line), current, "{line} outside its family");
        }
        for family in [
            "nginx_memory_info",
            "nginx_memory_zone_size_bytes",
            "nginx_memory_slabs_pages_slots_fails_total",
            "nginx_memory_server_process_pss_bytes",
            "nginx_memory_finding",
            "nginx_memory_source_unavailable",
        ] {
            assert!(seen.contains(family), "{family} missing");
        }
    }

    #[test]
    fn label_values_are_quoted_and_enums_named_as_in_json() {
        let text = render(&report()).unwrap();
        assert!(
            text.contains(
                r#"nginx_memory_zone_mapped_bytes{pid="4242",worker="1",zone="a\"b\\c\nd"} "#
            ),
            "{text}"
        );
        assert!(text.contains(r#"role="worker""#));
        assert!(text.contains(r#"nginx_memory_server_process_pss_bytes{pid="7",role="cache_manager",worker="",generation="1"} 4096"#));
        assert!(text.contains(
            r#"nginx_memory_finding{code="zone_allocation_failures",severity="critical",subject="z"} 1"#
        ));
    }

    #[test]
    fn the_server_series_do_not_name_the_answering_worker() {
        let text = render(&report()).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let server = line.starts_with("nginx_memory_server_")
                || line.starts_with("nginx_memory_finding")
                || line.starts_with("nginx_memory_trend_");
            let answering = line.contains(r#"pid="4242",worker="1""#);
            assert_ne!(server, answering, "{line}");
        }
    }
}
