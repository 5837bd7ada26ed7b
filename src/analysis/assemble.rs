//! Assembly: the loop's copies and the thread's measurements turned into
//! the answer and this worker's summary. No I/O: what was read comes in as
//! text or samples.

use crate::analysis::breakdown::GlibcSample;
use crate::analysis::breakdown::Inputs;
use crate::analysis::breakdown::MappedChunk;
use crate::analysis::breakdown::OtherAllocatorSample;
use crate::analysis::breakdown::ProgramDataRanges;
use crate::analysis::breakdown::ProgramDataSample;
use crate::analysis::breakdown::StackSample;
use crate::analysis::container::{self, ContainerSample};
use crate::analysis::history::series_name;
use crate::analysis::lua::{LuaError, LuaVmSample};
use crate::analysis::pools::PoolsSample;
use crate::analysis::server::{self, ProcessSample};
use crate::analysis::zones::ZoneSample;
use crate::model::breakdown::Breakdown;
use crate::model::breakdown::Depth;
use crate::model::breakdown::VirtualSplit;
use crate::model::container::Container;
use crate::model::history::Fit;
use crate::model::history::ProcessTrends;
use crate::model::history::Sample;
use crate::model::history::Trend;
use crate::model::history::{History, ProcessHistory};
use crate::model::lua::Lua;
use crate::model::pools::Pools;
use crate::model::process::ProcessMemory;
use crate::model::report::Report;
use crate::model::report::{NginxInfo, ZoneReport, SCHEMA_VERSION};
use crate::model::server::ProcessRole;
use crate::model::server::Published;
use crate::model::server::PublishedPss;
use crate::model::source_error::SourceError;
use crate::model::zones::Zone;
use crate::sources::errors::{ResidencyError, SampleError};
use crate::sources::procfs::Mapping;
use crate::sources::procfs::SmapsEntry;

/// What the event loop copies out of nginx and the Lua VMs: counts, lists and
/// addresses; nothing whose cost grows with bytes.
pub struct LoopPart {
    pub depth: Depth,
    pub zones: Vec<ZoneSample>,
    pub http: Result<LuaVmSample, LuaError>,
    pub stream: Result<LuaVmSample, LuaError>,
    pub pools: PoolsSample,
    /// The registry's generation and master start, when this process has one.
    pub registry: Option<(u64, u64)>,
    /// The memory cgroup's OOM kills when nginx started (the registry's).
    pub oom_kills_at_start: Option<u64>,
    /// This process's last published walk, kept when this one makes none.
    pub own_walk: Option<PublishedPss>,
    pub shutdown_timeout_ms: Option<u64>,
    /// `memory_status_interval` of the running configuration.
    pub interval_ms: u64,
    /// Every live process's history ring: its trends, and its samples when asked.
    pub rings: Option<(Vec<RingView>, usize)>,
    /// The zones' trends, and their samples when asked.
    pub zone_trends: Vec<(u64, crate::model::history::Fit, u64)>,
    pub zone_samples: Option<Vec<crate::shm::samples::ZonesSample>>,
    /// `history_since=`, for the answer to repeat.
    pub history_since_ms: Option<u64>,
    /// When the history zone saw its last reloads.
    pub reloads_at_ms: Vec<u64>,
    pub nginx: NginxInfo,
    /// What went wrong before the measuring (no thread for it, say).
    pub errors: Vec<SourceError>,
    /// `alloc_guard::failures()` when the measuring began: a summary measured
    /// while an allocation failed is not published.
    pub alloc_failures_at_begin: u64,
}

impl LoopPart {
    /// Says in the answer's `errors` what went wrong around its measuring.
    pub fn add_error(&mut self, error: SourceError) {
        self.errors.push(error);
    }
}

/// What the measuring thread read, off the loop.
pub struct Measured {
    pub samples: ProcessSamples,
    pub zone_pages: Vec<(Result<u64, ResidencyError>, u64)>,
    pub lua_resident: [Option<(Result<u64, ResidencyError>, u64)>; 2],
    pub status: std::io::Result<String>,
    pub processes: Vec<ProcessSample>,
    /// The memory cgroup and what the container section reads beside it.
    pub container: Result<Option<ContainerSample>, SampleError>,
    /// `lua_largest=1`: the walk of the Lua heaps from their roots.
    pub lua_walk: Option<Result<super::lua_walk::WalkOutcome, super::lua_walk::WalkError>>,
}

/// What the process-wide reads found: mappings, glibc, stacks, chunks.
pub struct ProcessSamples {
    pub maps: Result<Vec<Mapping>, SampleError>,
    pub smaps: Option<Result<Vec<SmapsEntry>, SampleError>>,
    pub glibc: Result<GlibcSample, SampleError>,
    pub stacks: Result<Vec<StackSample>, SampleError>,
    pub other_allocators: Result<Option<OtherAllocatorSample>, SampleError>,
    pub mapped_chunks: Vec<MappedChunk>,
    pub program_data: Result<ProgramDataSample, SampleError>,
    pub program_ranges: ProgramDataRanges,
}

/// A history ring as the loop copied it: its owner, trends and samples.
pub struct RingView {
    pub pid: u32,
    pub started_at_ms: u64,
    pub trends: Vec<(usize, Fit, i64)>,
    /// `?history=1` (or the HTML page) only: those the window picks, and
    /// how many the ring keeps.
    pub samples: Option<(Vec<Sample>, u64)>,
}

/// The answer, from the loop's part and what was measured, and this worker's
/// summary as the answer lists it. No I/O: `clock` gives the answer's time,
/// asked once the worker's own figures are assembled (its ages are then the
/// freshest).
pub fn assemble(
    part: LoopPart,
    measured: Measured,
    clock: impl FnOnce() -> u64,
) -> (Report, Published) {
    let LoopPart {
        depth,
        zones,
        http,
        stream,
        pools,
        registry,
        own_walk,
        shutdown_timeout_ms,
        interval_ms,
        rings,
        zone_trends,
        zone_samples,
        history_since_ms,
        reloads_at_ms,
        nginx,
        mut errors,
        alloc_failures_at_begin: _,
        oom_kills_at_start,
    } = part;
    let zones = measured_zones(zones, measured.zone_pages, &mut errors);
    let mut lua = measured_lua([http, stream], measured.lua_resident, &mut errors);
    if let Some(outcome) = measured.lua_walk {
        super::lua_walk::attach(&mut lua, outcome, &mut errors);
    }
    let process = process_memory(measured.status, &mut errors);
    let breakdown = breakdown_of(depth, &process, measured.samples, &zones, &lua, &mut errors);
    if let Some(reason) = &pools.http2_unavailable {
        errors.push(SourceError::new("pools.requests.http2", reason.to_string()));
    }
    let pools = Pools::from_sample(&pools);
    let now = clock();
    let mut report = own_report(nginx, now, process, breakdown, (zones, lua, pools));
    let listing = (measured.processes, registry, own_walk);
    let mine = list_processes(&mut report, listing, now, &mut errors);
    if let Some((rings, capacity)) = rings {
        let window = (capacity, interval_ms, history_since_ms, reloads_at_ms);
        let (trends, mut history) = history_of(&report, rings, window, &mut errors);
        report.trends = trends;
        if let (Some(h), Some(samples)) = (&mut history, zone_samples) {
            h.zones = crate::analysis::history::zones_history(&report.zones, &samples);
        }
        report.history = history;
    }
    report.zone_trends = crate::analysis::history::zone_trends_of(&report.zones, zone_trends);
    let cgroup = measured
        .container
        .as_ref()
        .map(|c| c.as_ref().map(|s| s.cgroup.clone()))
        .map_err(Clone::clone);
    report.container = container_of(measured.container, oom_kills_at_start, &report, &mut errors);
    report.findings = crate::analysis::findings::evaluate(
        &crate::analysis::findings::Inputs {
            report: &report,
            cgroup: &cgroup,
            shutdown_timeout_ms,
            now_ms: now,
        },
        &mut errors,
    );
    report.errors = errors;
    (report, mine)
}

/// The container section, once the server's processes are listed: nginx's
/// share of the group's charge is theirs, counted once.
fn container_of(
    sample: Result<Option<ContainerSample>, SampleError>,
    oom_kills_at_start: Option<u64>,
    report: &Report,
    errors: &mut Vec<SourceError>,
) -> Option<Container> {
    let reason = match sample {
        Ok(Some(mut sample)) => {
            sample.oom_kills_at_start = oom_kills_at_start;
            let nginx = container::nginx_kinds(&report.server, &report.processes);
            let connections = report.pools.connections.count;
            if let Some(c) = container::reconcile(&sample, nginx, connections) {
                return Some(c);
            }
            format!(
                "the group's usage could not be read in {}",
                sample.cgroup.dir
            )
        }
        Ok(None) => "no memory cgroup hierarchy this process can see holds its group".to_string(),
        Err(e) => e.to_string(),
    };
    errors.push(SourceError::new("container", reason));
    None
}

/// The report of this worker's own figures, the server's parts still
/// empty.
fn own_report(
    nginx: NginxInfo,
    now: u64,
    process: ProcessMemory,
    breakdown: Breakdown,
    (zones, lua, pools): (Vec<Zone>, Lua, Pools),
) -> Report {
    Report {
        schema: SCHEMA_VERSION,
        nginx,
        collected_at_ms: now,
        virtual_split: VirtualSplit::from_process(&process),
        process,
        breakdown,
        zones,
        lua,
        pools,
        processes: Vec::new(),
        server: Default::default(),
        trends: Vec::new(),
        zone_trends: Vec::new(),
        history: None,
        container: None,
        findings: Vec::new(),
        errors: Vec::new(),
    }
}

/// The zones the loop copied, with the residency the thread measured.
fn measured_zones(
    mut zones: Vec<ZoneSample>,
    pages: Vec<(Result<u64, ResidencyError>, u64)>,
    errors: &mut Vec<SourceError>,
) -> Vec<Zone> {
    for (zone, (pages, age_ms)) in zones.iter_mut().zip(pages) {
        zone.resident_pages = pages;
        zone.resident_age_ms = age_ms;
    }
    zones.iter().map(|z| z.to_zone(errors)).collect()
}

/// The Lua VMs the loop copied (http, stream), with their allocators'
/// residency as the thread measured it.
fn measured_lua(
    vms: [Result<LuaVmSample, LuaError>; 2],
    resident: [Option<(Result<u64, ResidencyError>, u64)>; 2],
    errors: &mut Vec<SourceError>,
) -> Lua {
    let [mut http, mut stream] = vms;
    for (vm, resident) in [&mut http, &mut stream].into_iter().zip(resident) {
        if let (Ok(vm), Some((resident, age_ms))) = (vm, resident) {
            if let Ok(a) = &mut vm.allocator {
                a.resident_bytes = resident;
                a.resident_age_ms = age_ms;
            }
        }
    }
    Lua::from_samples(http, stream, errors)
}

fn breakdown_of(
    depth: Depth,
    process: &ProcessMemory,
    samples: ProcessSamples,
    zones: &[Zone],
    lua: &Lua,
    errors: &mut Vec<SourceError>,
) -> Breakdown {
    let inputs = Inputs {
        depth,
        process,
        maps: &samples.maps,
        smaps: samples.smaps.as_ref(),
        glibc: samples.glibc,
        zones,
        lua,
        stacks: samples.stacks,
        other_allocators: samples.other_allocators,
        mapped_chunks: &samples.mapped_chunks,
        program_data: samples.program_data,
        program_ranges: &samples.program_ranges,
    };
    Breakdown::build(inputs, errors)
}

/// The processes list and the server's totals, and this worker's own
/// summary: published for the others, and its entry in this answer's list
/// is this answer's. `(samples, registry, own_walk)`: the processes read, the
/// registry's generation and master start, this worker's last walk.
fn list_processes(
    report: &mut Report,
    (mut samples, registry, own_walk): (
        Vec<ProcessSample>,
        Option<(u64, u64)>,
        Option<PublishedPss>,
    ),
    now: u64,
    errors: &mut Vec<SourceError>,
) -> Published {
    let (generation, master_started_at_ms) = registry.unwrap_or_else(|| {
        errors.push(SourceError::new(
            "processes",
            "no process registry in this process: only the master and this worker are listed",
        ));
        (0, 0)
    });
    let mut mine = Published::from_report(report, now);
    match &mut mine.pss {
        Some(walk) => walk.others = server::others_pss(&samples),
        None => mine.pss = own_walk,
    }
    for s in &mut samples {
        if let Some(e) = s.entry.as_mut().filter(|e| e.pid == report.nginx.pid) {
            e.published = Some(mine.clone());
        }
    }
    let (processes, server) = server::build(samples, generation, master_started_at_ms, now, errors);
    report.processes = processes;
    report.server = server;
    mine
}

// Long, not deep: the rings' trends and samples are read in one pass over them.
/// The trends of every listed process, and its samples where they were read.
/// `(capacity, interval_ms, since_ms, reloads_at_ms)`: the rings' length and
/// spacing, the page asked for, and the last reloads.
fn history_of(
    report: &Report,
    rings: Vec<RingView>,
    (capacity, interval_ms, since_ms, reloads_at_ms): (usize, u64, Option<u64>, Vec<u64>),
    errors: &mut Vec<SourceError>,
) -> (Vec<ProcessTrends>, Option<History>) {
    // Only this configuration's processes: an older generation's may keep
    // its rings in the history zone of its own configuration (another size).
    let writers: Vec<u32> = report
        .processes
        .iter()
        .filter(|p| matches!(p.role, ProcessRole::Worker | ProcessRole::Single))
        .filter(|p| p.generation == report.server.generation)
        .map(|p| p.pid)
        .collect();
    let with_ring: Vec<u32> = rings.iter().map(|r| r.pid).collect();
    for pid in crate::analysis::history::without_ring(&writers, &with_ring) {
        errors.push(SourceError::new(
            "history",
            format!(
                "process {pid} has no history ring ({} in use): its samples are not kept until it claims one on its timer",
                rings.len()
            ),
        ));
    }
    let shm_cap: u64 = report.zones.iter().map(|z| z.size_bytes).sum();
    let listed = |pid: u32| report.processes.iter().any(|p| p.pid == pid);
    let mut trends = Vec::new();
    let mut samples = Vec::new();
    for ring in rings.into_iter().filter(|r| listed(r.pid)) {
        trends.push(ProcessTrends {
            pid: ring.pid,
            trends: ring
                .trends
                .iter()
                .filter_map(|&(i, fit, last_bytes)| {
                    let series = series_name(i)?;
                    Some(Trend {
                        series,
                        fit,
                        cap_bytes: (series == "shm").then_some(shm_cap),
                        last_bytes,
                    })
                })
                .collect(),
        });
        if let Some((s, kept)) = ring.samples {
            samples.push(ProcessHistory {
                pid: ring.pid,
                started_at_ms: ring.started_at_ms,
                kept,
                samples: s,
            });
        }
    }
    let history = (!samples.is_empty()).then(|| History {
        interval_ms,
        capacity: capacity as u64,
        points_max: crate::analysis::history::HISTORY_POINTS as u64,
        since_ms,
        reloads_at_ms,
        processes: samples,
        zones: Vec::new(),
    });
    (trends, history)
}

/// Reads the process section from the text of `/proc/self/status` (or the error
/// met reading it), noting in `errors` whatever could not be had.
pub fn process_memory(
    status_text: std::io::Result<String>,
    errors: &mut Vec<SourceError>,
) -> ProcessMemory {
    const SOURCE: &str = "/proc/self/status";
    match status_text {
        Ok(text) => {
            let (status, unreadable) = ProcessMemory::parse(&text);
            if !unreadable.is_empty() {
                errors.push(SourceError::new(
                    SOURCE,
                    format!("missing or malformed: {}", unreadable.join(", ")),
                ));
            }
            status
        }
        Err(err) => {
            errors.push(SourceError::new(SOURCE, err.to_string()));
            ProcessMemory::default()
        }
    }
}

impl ZoneReport {
    /// One zone, with the errors about it.
    pub fn new(
        nginx: NginxInfo,
        collected_at_ms: u64,
        zone: Zone,
        errors: Vec<SourceError>,
    ) -> ZoneReport {
        ZoneReport {
            schema: SCHEMA_VERSION,
            nginx,
            collected_at_ms,
            zones: vec![zone],
            errors,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::breakdown::Inputs;
    use crate::model::breakdown::Breakdown;
    use crate::model::breakdown::Depth;
    use crate::model::lua::Lua;
    use crate::model::pools::Pools;
    use crate::model::report::{NginxInfo, Report, Role};
    use serde_json::Value;

    pub(crate) fn nginx() -> NginxInfo {
        NginxInfo {
            version: "1.22.1".into(),
            module_version: "0.1.0",
            pid: 4242,
            worker: 1,
            role: Role::Worker,
        }
    }

    pub(crate) fn sample_report(process: ProcessMemory, errors: Vec<SourceError>) -> Report {
        let lua = Lua::default();
        let inputs = Inputs {
            depth: Depth::Default,
            process: &process,
            maps: &Ok(Vec::new()),
            smaps: None,
            glibc: Err(SampleError::NotGlibc),
            zones: &[],
            lua: &lua,
            stacks: Ok(Vec::new()),
            other_allocators: Ok(None),
            mapped_chunks: &[],
            program_data: Ok(Default::default()),
            program_ranges: &Default::default(),
        };
        let breakdown = Breakdown::build(inputs, &mut Vec::new());
        let pools = Pools::from_sample(&Default::default());
        let mut report = own_report(
            nginx(),
            1_700_000_000_000,
            process,
            breakdown,
            (Vec::new(), lua, pools),
        );
        report.errors = errors;
        report
    }

    #[test]
    fn unreadable_status_gives_nulls_and_one_error() {
        let mut errors = Vec::new();
        let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let process = process_memory(Err(err), &mut errors);
        let v: Value =
            serde_json::from_slice(&sample_report(process, errors).to_json().unwrap()).unwrap();
        assert!(v["process"]["resident_bytes"].is_null());
        assert!(v["process"]["threads"].is_null());
        assert_eq!(v["errors"][0]["source"], "/proc/self/status");
        assert!(v["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ermission"));
    }

    #[test]
    fn a_missing_key_is_null_and_named() {
        let mut errors = Vec::new();
        let process = process_memory(Ok("VmRSS:\t100 kB\n".into()), &mut errors);
        assert_eq!(process.resident_bytes, Some(102_400));
        assert_eq!(process.swap_bytes, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].error.contains("VmSwap"));
        assert!(!errors[0].error.contains("VmRSS"));
    }

    /// The loop's copies of a worker (pid 4242, worker 1) with one zone, no
    /// Lua, and the server's registry at generation 3.
    fn loop_part() -> LoopPart {
        use crate::analysis::zones::SlabSample;
        LoopPart {
            oom_kills_at_start: None,
            depth: Depth::Default,
            zones: vec![ZoneSample {
                name: "one".into(),
                owner: Some("ngx_http_limit_req_module".into()),
                size_bytes: 1 << 20,
                page_size_bytes: 4096,
                resident_pages: Err(ResidencyError::NotMeasured),
                resident_age_ms: 0,
                slab: Ok(SlabSample {
                    pages_total: 250,
                    pages_free: 200,
                    slots: Vec::new(),
                    free_runs: 1,
                    largest_free_run_pages: 200,
                    free_runs_truncated: false,
                }),
            }],
            http: Err(LuaError::NotLoaded("ngx_http_lua_module")),
            stream: Err(LuaError::NotLoaded("ngx_stream_lua_module")),
            pools: Default::default(),
            registry: Some((3, 1_600_000_000_000)),
            own_walk: None,
            shutdown_timeout_ms: None,
            interval_ms: 10_000,
            rings: None,
            zone_trends: Vec::new(),
            zone_samples: None,
            history_since_ms: None,
            reloads_at_ms: Vec::new(),
            nginx: nginx(),
            errors: Vec::new(),
            alloc_failures_at_begin: 0,
        }
    }

    fn measured(processes: Vec<ProcessSample>) -> Measured {
        let maps = include_str!("../../testdata/proc_maps_nginx_worker.txt");
        Measured {
            samples: ProcessSamples {
                maps: Ok(Mapping::parse_all(maps).0),
                smaps: None,
                glibc: Err(SampleError::NotGlibc),
                stacks: Ok(Vec::new()),
                other_allocators: Ok(None),
                mapped_chunks: Vec::new(),
                program_data: Ok(Default::default()),
                program_ranges: Default::default(),
            },
            zone_pages: vec![(Ok(64), 0)],
            lua_resident: [None, None],
            status: Ok(include_str!("../../testdata/proc_status_nginx_worker.txt").into()),
            processes,
            lua_walk: None,
            container: Ok(None),
        }
    }

    fn worker_sample(pid: u32, generation: u64) -> ProcessSample {
        use crate::analysis::server::{RegisteredKind, RegistryEntry};
        ProcessSample {
            pid,
            entry: Some(RegistryEntry {
                pid,
                kind: RegisteredKind::Worker,
                worker: Some(1),
                generation,
                started_at_ms: 1_600_000_000_000,
                published: None,
            }),
            title: Ok("nginx: worker process".into()),
            status: Ok(include_str!("../../testdata/proc_status_nginx_worker.txt").into()),
            rollup: None,
        }
    }

    #[test]
    fn the_answer_is_assembled_from_the_copies_and_the_reads() {
        let now = 1_700_000_000_000;
        let (report, mine) = assemble(loop_part(), measured(vec![worker_sample(4242, 3)]), || now);
        assert_eq!(report.collected_at_ms, now);
        assert_eq!(report.nginx.pid, 4242);
        // The thread's residency lands in the zone the loop copied.
        assert_eq!(report.zones.len(), 1);
        assert_eq!(report.zones[0].loaded_bytes, Some(64 * 4096));
        assert_eq!(report.process.resident_bytes, Some(4_384 << 10));
        // This worker is listed with this answer's own summary.
        assert_eq!(report.processes.len(), 1);
        let listed = report.processes[0].memory.as_ref().expect("own summary");
        assert_eq!(listed.sampled_at_ms, now);
        assert_eq!(mine.sampled_at_ms, now);
        assert_eq!(report.server.generation, 3);
        assert_eq!(report.server.workers, 1);
        // Without Lua, each VM says why; nothing else is missing.
        let sources: Vec<&str> = report.errors.iter().map(|e| e.source.as_str()).collect();
        assert!(sources.contains(&"lua.http"), "{sources:?}");
        assert!(!sources.contains(&"processes"), "{sources:?}");
        // No memory cgroup: the container is null, and says why.
        assert!(report.container.is_none());
        assert!(sources.contains(&"container"), "{sources:?}");
    }

    #[test]
    fn without_a_registry_the_answer_says_so() {
        let mut part = loop_part();
        part.registry = None;
        let (report, _) = assemble(part, measured(Vec::new()), || 1);
        assert!(report
            .errors
            .iter()
            .any(|e| e.source == "processes" && e.error.starts_with("no process registry")));
        assert_eq!(report.server.generation, 0);
    }
}
