//! Copies numbers out of nginx's globals and the kernel into the report's plain
//! structs. No pointer into nginx outlives a call.

use std::time::{SystemTime, UNIX_EPOCH};

use ngx::ffi::{
    ngx_exiting, ngx_parent, ngx_pid, ngx_process, ngx_worker, NGINX_VERSION, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};

use super::lua::{sample_vms, CensusLimits};
use super::pools::sample_pools;
use super::process::{self, ProcessSamples};
use super::registry;
use super::residency::{lua_resident_bytes, resident_pages_of, zones_resident_pages, ZoneRange};
use super::zones::sample_zones;
use crate::analysis::breakdown::Inputs;
use crate::analysis::history::{series_name, SampleWindow};
use crate::analysis::lua::LuaVmSample;
use crate::analysis::pools::PoolsSample;
use crate::analysis::server::{self, ProcessSample, RegistryEntry};
use crate::analysis::zones::ZoneSample;
use crate::format::Rendering;
use crate::model::breakdown::{Breakdown, Depth, VirtualSplit};
use crate::model::history::{History, ProcessHistory, ProcessTrends, Sample, Trend};
use crate::model::lua::Lua;
use crate::model::pools::Pools;
use crate::model::report::{NginxInfo, Report, Role, SourceError, ZoneReport, SCHEMA_VERSION};
use crate::model::server::{ProcessRole, Published, PublishedPss};
use crate::model::zones::Zone;
use crate::shm::samples::ZonesSample;

/// The census's time bound: it walks the Lua heap inside the event loop.
const LUA_OBJECTS_MAX_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// What the event loop copies out of nginx and the Lua VMs: counts, lists and
/// addresses; nothing whose cost grows with bytes.
pub struct LoopPart {
    depth: Depth,
    zones: Vec<ZoneSample>,
    http: Result<LuaVmSample, String>,
    stream: Result<LuaVmSample, String>,
    pools: PoolsSample,
    /// The registry's generation and master start, when this process has one.
    registry: Option<(u64, u64)>,
    /// This process's last published walk, kept when this one makes none.
    own_walk: Option<PublishedPss>,
    shutdown_timeout_ms: Option<u64>,
    /// `memory_status_interval` of the running configuration.
    interval_ms: u64,
    /// Every live process's history ring: its trends, and its samples when asked.
    rings: Option<(Vec<super::history::RingView>, usize)>,
    /// The zones' trends, and their samples when asked.
    zone_trends: Vec<(u64, crate::model::history::Fit, u64)>,
    zone_samples: Option<Vec<crate::shm::samples::ZonesSample>>,
    /// `history_since=`, for the answer to repeat.
    history_since_ms: Option<u64>,
    /// When the history zone saw its last reloads.
    reloads_at_ms: Vec<u64>,
    nginx: NginxInfo,
    /// What went wrong before the measuring (no thread for it, say).
    errors: Vec<SourceError>,
    /// `alloc_guard::failures()` when the measuring began: a summary measured
    /// while an allocation failed is not published.
    alloc_failures_at_begin: u64,
}

impl LoopPart {
    /// Says in the answer's `errors` what went wrong around its measuring.
    pub fn add_error(&mut self, error: SourceError) {
        self.errors.push(error);
    }
}

/// What is measured from the kernel, on any thread: the walks and reads that
/// grow with the worker's size. Touches no nginx structure.
pub struct Job {
    depth: Depth,
    zones: Vec<ZoneRange>,
    /// Each VM's allocator segments and `gc_bytes`.
    lua_heaps: [Option<LuaHeap>; 2],
    /// A VM's `global_State` read through the GC64 layout, its empty
    /// string's type byte where GC64 puts it (`jit_enabled` read), on a
    /// little-endian machine.
    lua_gc64: bool,
    /// The server's processes to read: the master (no entry) and every
    /// registered process.
    processes: Vec<(u32, Option<RegistryEntry>)>,
    /// The title nginx gives this process now (it is shutting down or not).
    own_title: &'static str,
    /// Read `/proc/self/smaps` (a page-table walk): at `detail=full`, and for
    /// the summary a worker publishes on its timer.
    walk: bool,
}

type LuaHeap = (Vec<(u64, u64)>, u64);

pub struct Measured {
    samples: ProcessSamples,
    zone_pages: Vec<(Result<u64, String>, u64)>,
    lua_resident: [Option<(Result<u64, String>, u64)>; 2],
    status: std::io::Result<String>,
    processes: Vec<ProcessSample>,
    cgroup: Result<Option<crate::sources::cgroup::CgroupMemory>, String>,
}

/// What one measuring is made for: the depth, the Lua census's bound, the
/// history samples read. Requests that ask the same may share one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Measuring {
    pub depth: Depth,
    pub lua_objects_limit: Option<u64>,
    pub history_window: Option<SampleWindow>,
}

/// The loop's part of a measuring, and the job that measures the rest.
pub fn begin(measuring: Measuring) -> (LoopPart, Job) {
    let Measuring {
        depth,
        lua_objects_limit,
        history_window,
    } = measuring;
    let alloc_failures_at_begin = crate::alloc_guard::failures();
    // A slot or ring freed since the last tick is taken now: the answer then
    // says nothing stale about them (cheap when both are held).
    registry::ensure_registered();
    super::history::ensure_claimed();
    let zones = sample_zones(None);
    let zone_ranges = zones
        .iter()
        .map(|z| ZoneRange {
            range: z.range,
            signature: z.sample.slab.as_ref().ok().map(|s| s.signature()),
        })
        .collect();
    let census = lua_objects_limit.map(|max_objects| CensusLimits {
        max_objects,
        max_time: LUA_OBJECTS_MAX_TIME,
    });
    let (http, stream) = sample_vms(census);
    let heap = |vm: &Result<LuaVmSample, String>| {
        let vm = vm.as_ref().ok()?;
        let a = vm.allocator.as_ref().ok()?;
        Some((a.segment_ranges.clone(), vm.gc_bytes))
    };
    let registry = registry::read(now_ms());
    // SAFETY: a plain integer nginx sets when the process starts.
    let own_pid = unsafe { ngx_pid } as u32;
    let own_walk = registry.as_ref().and_then(|read| {
        let mine = read.entries.iter().find(|e| e.pid == own_pid)?;
        mine.published.as_ref()?.pss.clone()
    });
    let mut errors = Vec::new();
    let mut processes: Vec<(u32, Option<RegistryEntry>)> = Vec::new();
    if let Some(master) = master_pid(&mut errors) {
        processes.push((master, None));
    }
    if let Some(read) = &registry {
        processes.extend(read.entries.iter().map(|e| (e.pid, Some(e.clone()))));
        let registered = read.entries.iter().any(|e| e.pid == own_pid);
        if !registered {
            let me = registry::entry_without_slot(read.generation);
            processes.extend(me.map(|e| (e.pid, Some(e))));
        }
        errors.extend(registry_error(read.full, registered));
    }
    let job = Job {
        depth,
        zones: zone_ranges,
        lua_heaps: [heap(&http), heap(&stream)],
        lua_gc64: cfg!(target_endian = "little")
            && [&http, &stream]
                .iter()
                .any(|vm| vm.as_ref().is_ok_and(|vm| vm.jit_enabled.is_ok())),
        processes,
        // SAFETY: a plain integer nginx sets on the loop's thread, read there.
        own_title: if unsafe { ngx_exiting } != 0 {
            "nginx: worker process is shutting down"
        } else {
            "nginx: worker process"
        },
        walk: depth == Depth::Full,
    };
    let part = LoopPart {
        depth,
        zones: zones.into_iter().map(|z| z.sample).collect(),
        http,
        stream,
        pools: sample_pools(),
        registry: registry.map(|read| (read.generation, read.master_started_at_ms)),
        own_walk,
        shutdown_timeout_ms: super::cycle::shutdown_timeout_ms(super::cycle::current()),
        interval_ms: super::running_conf()
            .map_or(super::publish::DEFAULT_INTERVAL_MS, |c| c.interval_ms()),
        rings: super::history::read(history_window),
        zone_trends: super::history::zone_trends(),
        zone_samples: history_window.map(super::history::zone_samples),
        history_since_ms: history_window.and_then(|w| w.since_ms),
        reloads_at_ms: super::history::reloads_at_ms(),
        nginx: nginx_info(),
        errors,
        alloc_failures_at_begin,
    };
    (part, job)
}

/// The master to list: this process's parent while it is nginx's master.
/// A worker whose master was killed is adopted by another process (init, a
/// container's init): that one is not nginx's and is not listed.
fn master_pid(errors: &mut Vec<SourceError>) -> Option<u32> {
    // SAFETY: plain integers nginx sets when the process starts.
    let (process, master) = unsafe { (ngx_process as u32, ngx_parent as u32) };
    if process == NGX_PROCESS_SINGLE {
        return None;
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    if parent == master {
        return Some(master);
    }
    errors.push(SourceError::new(
        "processes",
        format!(
            "the master (pid {master}) is gone: this worker's parent is now pid {parent}, \
             not listed; the workers left run without a master"
        ),
    ));
    None
}

/// What the answer says when the registry cannot list every process.
fn registry_error(full: bool, registered: bool) -> Option<SourceError> {
    let slots = registry::SLOT_COUNT;
    let reason = if !registered {
        format!("this process has no registry slot (all {slots} are taken): other processes' answers do not list it")
    } else if full {
        format!("the registry is full ({slots} slots): a process started now is not listed until a slot frees")
    } else {
        return None;
    };
    Some(SourceError::new("processes", reason))
}

impl Job {
    /// The job of a worker's own summary, on its timer: its own page-table
    /// walk, and the PSS of the processes that publish nothing themselves
    /// (the master, the cache processes), published for them.
    pub fn for_summary(mut self) -> Job {
        self.processes
            .retain(|(_, entry)| server::publishes_nothing(entry.as_ref()));
        self.walk = true;
        self
    }

    pub fn measure(self) -> Measured {
        #[cfg(feature = "test-panic")]
        super::test_hooks::while_measuring();
        let zone_pages = zones_resident_pages(&self.zones);
        let lua_resident = [0, 1].map(|vm| {
            self.lua_heaps[vm]
                .as_ref()
                .map(|(segments, gc_bytes)| lua_resident_bytes(vm, segments, *gc_bytes))
        });
        let known: Vec<(u64, u64)> = self
            .lua_heaps
            .iter()
            .flatten()
            .flat_map(|(segments, _)| segments)
            .copied()
            .collect();
        let chunks = super::chunks::Context {
            lua_gc64: self.lua_gc64,
        };
        let samples = process::sample(self.depth, self.walk, &known, chunks);
        let own_pid = std::process::id();
        // Short of memory already: the answer is given up, the other
        // processes are not read.
        let others = if crate::alloc_guard::short() {
            Vec::new()
        } else {
            self.processes
        };
        let mut processes: Vec<ProcessSample> = others
            .into_iter()
            .map(|(pid, entry)| {
                let read = |file: &str, size: usize| {
                    crate::sources::procfs::read_proc_file(&format!("/proc/{pid}/{file}"), size)
                };
                // This process's own title and status are known without reading
                // them again (its status is read last, below).
                let own = pid == own_pid;
                ProcessSample {
                    pid,
                    entry,
                    title: if own {
                        Ok(self.own_title.to_string())
                    } else {
                        read("cmdline", 512)
                    },
                    status: if own {
                        Ok(String::new())
                    } else {
                        read("status", 4 << 10)
                    },
                    rollup: self.walk.then(|| read("smaps_rollup", 2 << 10)),
                }
            })
            .collect();
        // RSS last: pages the collection itself touched (its own allocations) are
        // then in RSS as well as in the owners' ranges, never only in the latter.
        let status = crate::sources::procfs::read_proc_file("/proc/self/status", 4 << 10);
        if let Some(own) = processes.iter_mut().find(|p| p.pid == own_pid) {
            own.status = match &status {
                Ok(text) => Ok(text.clone()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
        }
        Measured {
            samples,
            zone_pages,
            lua_resident,
            status,
            processes,
            cgroup: crate::sources::cgroup::read_own_recent(),
        }
    }
}

/// What the measuring thread hands back to the loop: the bytes of each asked
/// rendering, and this worker's summary for the loop to publish (the
/// registry and rings are reached through the running cycle, on the loop
/// only). Nothing when an allocation failed on the way: what was measured
/// may be cut short.
pub struct Finished {
    pub summary: Option<Published>,
    /// The timer's: its next sample and the zones', for this worker's ring.
    pub samples: Option<(Sample, ZonesSample)>,
    /// One per rendering asked, in order.
    pub bodies: Vec<Vec<u8>>,
}

impl Finished {
    const FAILED: Finished = Finished {
        summary: None,
        samples: None,
        bodies: Vec::new(),
    };
}

/// An answer's whole work off the loop: measured, assembled, and rendered
/// once per asked rendering. `Finished::bodies` is empty when memory ran out.
pub fn answer_work(part: LoopPart, job: Job, renderings: &[Rendering]) -> Finished {
    let mark = part.alloc_failures_at_begin;
    let failed = || crate::alloc_guard::failures() != mark;
    let measured = job.measure();
    if failed() {
        return Finished::FAILED;
    }
    let (report, summary) = finish(part, measured);
    let mut bodies = Vec::new();
    for rendering in renderings {
        match rendering.render(&report) {
            Some(body) if !failed() => bodies.push(body),
            _ => return Finished::FAILED,
        }
    }
    Finished {
        summary: Some(summary),
        samples: None,
        bodies,
    }
}

/// The timer's work off the loop: this worker's summary and its next history
/// samples, nothing rendered.
pub fn summary_work(part: LoopPart, job: Job) -> Finished {
    let mark = part.alloc_failures_at_begin;
    let measured = job.measure();
    if crate::alloc_guard::failures() != mark {
        return Finished::FAILED;
    }
    let (report, summary) = finish(part, measured);
    let sample = Sample::of(&summary, report.process.resident_bytes.unwrap_or(0));
    let zones = ZonesSample::of(report.collected_at_ms, &report.zones);
    if crate::alloc_guard::failures() != mark {
        return Finished::FAILED;
    }
    Finished {
        summary: Some(summary),
        samples: Some((sample, zones)),
        bodies: Vec::new(),
    }
}

/// The answer, from the loop's part and what was measured, and this worker's
/// summary as the answer lists it. Runs on any thread: touches nothing of
/// nginx's.
fn finish(part: LoopPart, measured: Measured) -> (Report, Published) {
    let LoopPart {
        depth,
        mut zones,
        mut http,
        mut stream,
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
    } = part;
    for (zone, (pages, age_ms)) in zones.iter_mut().zip(measured.zone_pages) {
        zone.resident_pages = pages;
        zone.resident_age_ms = age_ms;
    }
    let zones: Vec<Zone> = zones.iter().map(|z| z.to_zone(&mut errors)).collect();
    for (vm, resident) in [&mut http, &mut stream]
        .into_iter()
        .zip(measured.lua_resident)
    {
        if let (Ok(vm), Some((resident, age_ms))) = (vm, resident) {
            if let Ok(a) = &mut vm.allocator {
                a.resident_bytes = resident;
                a.resident_age_ms = age_ms;
            }
        }
    }
    let lua = Lua::from_samples(http, stream, &mut errors);
    let samples = measured.samples;
    let process = crate::analysis::assemble::process_memory(measured.status, &mut errors);
    let breakdown = Breakdown::build(
        Inputs {
            depth,
            process: &process,
            maps: &samples.maps,
            smaps: samples.smaps.as_ref(),
            glibc: samples.glibc,
            zones: &zones,
            lua: &lua,
            stacks: samples.stacks,
            other_allocators: samples.other_allocators,
            mapped_chunks: &samples.mapped_chunks,
            program_data: samples.program_data,
            program_ranges: &samples.program_ranges,
        },
        &mut errors,
    );
    if let Some(reason) = &pools.http2_unavailable {
        errors.push(SourceError::new("pools.requests.http2", reason.clone()));
    }
    let (generation, master_started_at_ms) = registry.unwrap_or_else(|| {
        errors.push(SourceError::new(
            "processes",
            "no process registry in this process: only the master and this worker are listed",
        ));
        (0, 0)
    });
    let now = now_ms();
    let mut report = Report {
        schema: SCHEMA_VERSION,
        nginx,
        collected_at_ms: now,
        virtual_split: VirtualSplit::from_process(&process),
        process,
        breakdown,
        zones,
        lua,
        pools: Pools::from_sample(&pools),
        processes: Vec::new(),
        server: Default::default(),
        trends: Vec::new(),
        zone_trends: Vec::new(),
        history: None,
        findings: Vec::new(),
        errors: Vec::new(),
    };
    // This worker's own summary: published for the others, and its entry in
    // this answer's list is this answer's.
    let mut mine = Published::from_report(&report, now);
    let mut samples = measured.processes;
    match &mut mine.pss {
        Some(walk) => walk.others = server::others_pss(&samples),
        None => mine.pss = own_walk,
    }
    for s in &mut samples {
        if let Some(e) = s.entry.as_mut().filter(|e| e.pid == report.nginx.pid) {
            e.published = Some(mine.clone());
        }
    }
    let (processes, server) =
        server::build(samples, generation, master_started_at_ms, now, &mut errors);
    report.processes = processes;
    report.server = server;
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
    report.findings = crate::analysis::findings::evaluate(
        &crate::analysis::findings::Inputs {
            report: &report,
            cgroup: &measured.cgroup,
            shutdown_timeout_ms,
            now_ms: now,
        },
        &mut errors,
    );
    report.errors = errors;
    (report, mine)
}

/// The trends of every listed process, and its samples where they were read.
/// `(capacity, interval_ms, since_ms, reloads_at_ms)`: the rings' length and
/// spacing, the page asked for, and the last reloads.
fn history_of(
    report: &Report,
    rings: Vec<super::history::RingView>,
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

/// One zone alone (`?zone=NAME`, its bytes or its escaped name): that zone is
/// the only one read.
pub fn zone_report(name: &[u8]) -> Option<ZoneReport> {
    let mut errors = Vec::new();
    let mut zone = sample_zones(Some(name)).into_iter().next()?;
    zone.sample.resident_pages = resident_pages_of(&[zone.range]).remove(0);
    let zone = zone.sample.to_zone(&mut errors);
    Some(ZoneReport::new(nginx_info(), now_ms(), zone, errors))
}

fn nginx_info() -> NginxInfo {
    // SAFETY: plain integers nginx sets once when the process starts.
    let (pid, worker, process) = unsafe { (ngx_pid, ngx_worker, ngx_process) };
    let role = match process as u32 {
        NGX_PROCESS_WORKER => Role::Worker,
        NGX_PROCESS_SINGLE => Role::Single,
        _ => Role::Other,
    };
    NginxInfo {
        version: NGINX_VERSION.to_string_lossy().into_owned(),
        module_version: env!("CARGO_PKG_VERSION"),
        pid: pid as u32,
        worker: worker as u64,
        role,
    }
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
