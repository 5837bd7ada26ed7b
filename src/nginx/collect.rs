//! Copies numbers out of nginx's globals and the kernel into the report's plain
//! structs. No pointer into nginx outlives a call.

use ngx::ffi::{
    ngx_exiting, ngx_parent, ngx_pid, ngx_process, ngx_worker, NGINX_VERSION, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};

use super::lua::{sample_vms, CensusLimits};
use super::lua_walk::Walk;
use super::pools::sample_pools;
use super::process;
use super::registry;
use super::residency::{lua_resident_bytes, resident_pages_of, zones_resident_pages, ZoneRange};
use super::zones::{sample_zones, SampledZone};
use crate::analysis::assemble::{assemble, LoopPart, Measured};
use crate::analysis::history::SampleWindow;
use crate::analysis::lua::{LuaError, LuaVmSample};
use crate::analysis::lua_walk::WalkError;
use crate::analysis::server::{self, ProcessSample, RegistryEntry};
use crate::format::Rendering;
use crate::model::breakdown::Depth;
use crate::model::history::Sample;
use crate::model::report::{NginxInfo, Role, SourceError, ZoneReport};
use crate::model::server::{Published, PublishedPss};
use crate::shm::samples::ZonesSample;

/// The census's time bound: it walks the Lua heap inside the event loop.
const LUA_OBJECTS_MAX_TIME: std::time::Duration = std::time::Duration::from_millis(100);

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
    /// `lua_largest=1`: the child walking the Lua heaps.
    lua_walk: Option<Result<Walk, WalkError>>,
}

type LuaHeap = (Vec<(u64, u64)>, u64);

/// What one measuring is made for: the depth, the Lua census's bound, the
/// history samples read. Requests that ask the same may share one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Measuring {
    pub depth: Depth,
    pub lua_objects_limit: Option<u64>,
    /// `lua_largest=1`: a walk of the Lua heaps from their roots, whose fork
    /// may hold the loop at most this long (µs).
    pub lua_largest: Option<u64>,
    pub history_window: Option<SampleWindow>,
}

/// The loop's part of a measuring, and the job that measures the rest.
pub fn begin(measuring: Measuring) -> (LoopPart, Job) {
    let Measuring {
        depth,
        lua_objects_limit,
        lua_largest,
        history_window,
    } = measuring;
    let alloc_failures_at_begin = crate::alloc_guard::failures();
    // A slot or ring freed since the last tick is taken now: the answer then
    // says nothing stale about them (cheap when both are held).
    registry::ensure_registered();
    super::history::ensure_claimed();
    let zones = sample_zones(None);
    let census = lua_objects_limit.map(|max_objects| CensusLimits {
        max_objects,
        max_time: LUA_OBJECTS_MAX_TIME,
    });
    let (http, stream) = sample_vms(census);
    let lua_walk = lua_largest.and_then(start_walk);
    let registry = registry::read(super::clock::now_ms());
    let mut errors = Vec::new();
    history_walk_error(&mut errors);
    let (processes, own_walk) = processes_to_read(registry.as_ref(), &mut errors);
    let job = Job {
        depth,
        zones: zones.iter().map(zone_range).collect(),
        lua_heaps: [lua_heap(&http), lua_heap(&stream)],
        lua_gc64: cfg!(target_endian = "little")
            && [&http, &stream]
                .iter()
                .any(|vm| vm.as_ref().is_ok_and(|vm| vm.jit_enabled.is_ok())),
        processes,
        own_title: own_title(),
        walk: depth == Depth::Full,
        lua_walk,
    };
    let part = LoopPart {
        depth,
        zones: zones.into_iter().map(|z| z.sample).collect(),
        http,
        stream,
        pools: sample_pools(),
        oom_kills_at_start: registry.as_ref().and_then(|read| read.oom_kills_at_start),
        registry: registry.map(|read| (read.generation, read.master_started_at_ms)),
        own_walk,
        shutdown_timeout_ms: super::cycle::shutdown_timeout_ms(super::cycle::current()),
        interval_ms: super::conf::running_conf()
            .map_or(super::conf::DEFAULT_INTERVAL_MS, |c| c.interval_ms()),
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

/// Forks the child that walks the VMs there are (none: no child), when the
/// fork's estimate is within `max_stall_us`.
fn start_walk(max_stall_us: u64) -> Option<Result<Walk, WalkError>> {
    let states = super::lua::main_states();
    if states.iter().all(Option::is_none) {
        return None;
    }
    // SAFETY: the running cycle's VMs, on the loop's thread between events.
    Some(unsafe { super::lua_walk::start(states, max_stall_us) })
}

/// A zone to measure: its mapping, and its slab signature when it was read.
fn zone_range(z: &SampledZone) -> ZoneRange {
    ZoneRange {
        range: z.range,
        signature: z.sample.slab.as_ref().ok().map(|s| s.signature()),
    }
}

/// A VM's allocator segments and `gc_bytes`, when its allocator was read.
fn lua_heap(vm: &Result<LuaVmSample, LuaError>) -> Option<LuaHeap> {
    let vm = vm.as_ref().ok()?;
    let a = vm.allocator.as_ref().ok()?;
    Some((a.segment_ranges.clone(), vm.gc_bytes))
}

/// The title nginx gives this process now.
fn own_title() -> &'static str {
    // SAFETY: a plain integer nginx sets on the loop's thread, read there.
    if unsafe { ngx_exiting } != 0 {
        "nginx: worker process is shutting down"
    } else {
        "nginx: worker process"
    }
}

/// The server's processes to read: the master (no entry), every registered
/// process, and this one when it has no slot; and this process's last
/// published walk, kept for an answer that makes none.
fn processes_to_read(
    registry: Option<&registry::RegistryRead>,
    errors: &mut Vec<SourceError>,
) -> (Vec<(u32, Option<RegistryEntry>)>, Option<PublishedPss>) {
    // SAFETY: a plain integer nginx sets when the process starts.
    let own_pid = unsafe { ngx_pid } as u32;
    let own_walk = registry.and_then(|read| {
        let mine = read.entries.iter().find(|e| e.pid == own_pid)?;
        mine.published.as_ref()?.pss.clone()
    });
    let mut processes: Vec<(u32, Option<RegistryEntry>)> = Vec::new();
    if let Some(master) = master_pid(errors) {
        processes.push((master, None));
    }
    if let Some(read) = registry {
        processes.extend(read.entries.iter().map(|e| (e.pid, Some(e.clone()))));
        let registered = read.entries.iter().any(|e| e.pid == own_pid);
        if !registered {
            let me = registry::entry_without_slot(read.generation);
            processes.extend(me.map(|e| (e.pid, Some(e))));
        }
        errors.extend(registry_error(read.full, registered));
    }
    (processes, own_walk)
}

/// This process's parent while it is nginx's master (`Err`: the master
/// nginx started with, and the parent now); `Ok(None)` with no master
/// (`master_process off`). A worker whose master was killed is adopted by
/// another process (init, a container's init): that one is not nginx's.
/// Any thread: the integers are set before the worker runs.
fn nginx_master() -> Result<Option<u32>, (u32, u32)> {
    // SAFETY: plain integers nginx sets when the process starts.
    let (process, master) = unsafe { (ngx_process as u32, ngx_parent as u32) };
    if process == NGX_PROCESS_SINGLE {
        return Ok(None);
    }
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() } as u32;
    if parent == master {
        return Ok(Some(master));
    }
    Err((master, parent))
}

/// The master to list, saying why none is when it is gone.
fn master_pid(errors: &mut Vec<SourceError>) -> Option<u32> {
    let (master, parent) = match nginx_master() {
        Ok(master) => return master,
        Err(pids) => pids,
    };
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
        let lua_walk = self
            .lua_walk
            .map(|walk| walk.and_then(super::lua_walk::outcome));
        let samples = process::sample(self.depth, self.walk, &known, chunks);
        let own_pid = std::process::id();
        // Short of memory already: the answer is given up, the other
        // processes are not read.
        let others = if crate::alloc_guard::short() {
            Vec::new()
        } else {
            self.processes
        };
        let walk = self.walk;
        let mut processes: Vec<ProcessSample> = others
            .into_iter()
            .map(|(pid, entry)| {
                read_process(pid, entry, (pid == own_pid).then_some(self.own_title), walk)
            })
            .collect();
        // The parent only while it is nginx's master: a supervisor that runs
        // nginx with master_process off is one of the group's others.
        let mut nginx_pids: Vec<u32> = std::iter::once(own_pid)
            .chain(nginx_master().ok().flatten())
            .collect();
        nginx_pids.extend(processes.iter().map(|p| p.pid));
        let container = super::container::read(&nginx_pids);
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
            container,
            processes,
            lua_walk,
        }
    }
}

/// What is read of one process of the server: its title and status (this
/// process's own are known without reading them: its status is read last,
/// by `measure`), and its PSS when `walk`.
fn read_process(
    pid: u32,
    entry: Option<RegistryEntry>,
    own_title: Option<&str>,
    walk: bool,
) -> ProcessSample {
    let read = |file: &str, size: usize| {
        crate::sources::procfs::read_proc_file(&format!("/proc/{pid}/{file}"), size)
    };
    ProcessSample {
        pid,
        entry,
        title: match own_title {
            Some(title) => Ok(title.to_string()),
            None => read("cmdline", 512),
        },
        status: match own_title {
            Some(_) => Ok(String::new()),
            None => read("status", 4 << 10),
        },
        rollup: walk.then(|| read("smaps_rollup", 2 << 10)),
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
    /// The timer's walk of the Lua heap, when it asked one: `Err` with why
    /// it was not made or did not finish.
    pub history_walk: Option<Result<(), String>>,
}

impl Finished {
    const FAILED: Finished = Finished {
        summary: None,
        samples: None,
        bodies: Vec::new(),
        history_walk: None,
    };
}

/// Why the timer's last walk of the Lua heap gave no kinds, if it did not
/// (loop thread only: set when a summary is published, read by each
/// answer's loop part).
static HISTORY_WALK_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// With `memory_status_lua_walk_history on`: why the timer's last walk gave
/// no kinds to the history, if it did not.
fn history_walk_error(errors: &mut Vec<SourceError>) {
    if !super::conf::running_conf().is_some_and(|c| c.lua_walk_history()) {
        return;
    }
    if let Some(reason) = &*HISTORY_WALK_ERROR.lock().unwrap_or_else(|p| p.into_inner()) {
        errors.push(SourceError::new(
            "history.lua_http_kind_bytes",
            format!("the history's last walk gave no kinds: {reason}"),
        ));
    }
}

/// Keeps how the timer's walk went, for the answers to say.
pub fn note_history_walk(walk: &Option<Result<(), String>>) {
    if let Some(result) = walk {
        *HISTORY_WALK_ERROR.lock().unwrap_or_else(|p| p.into_inner()) = result.clone().err();
    }
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
    let (report, summary) = assemble(part, measured, super::clock::now_ms);
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
        history_walk: None,
    }
}

/// The timer's work off the loop: this worker's summary and its next history
/// samples, nothing rendered.
pub fn summary_work(part: LoopPart, job: Job) -> Finished {
    let mark = part.alloc_failures_at_begin;
    let walk_asked = job.lua_walk.is_some();
    let measured = job.measure();
    if crate::alloc_guard::failures() != mark {
        return Finished::FAILED;
    }
    let (report, summary) = assemble(part, measured, super::clock::now_ms);
    let sample = Sample::of(
        &summary,
        report.process.resident_bytes.unwrap_or(0),
        report.container.as_ref(),
        report.lua.http.as_ref().and_then(|vm| vm.largest.as_ref()),
    );
    let zones = ZonesSample::of(report.collected_at_ms, &report.zones);
    if crate::alloc_guard::failures() != mark {
        return Finished::FAILED;
    }
    let walk_error = report
        .errors
        .iter()
        .find(|e| e.source == "lua.http.largest")
        .map(|e| e.error.clone());
    Finished {
        summary: Some(summary),
        samples: Some((sample, zones)),
        bodies: Vec::new(),
        history_walk: walk_asked.then(|| walk_error.map_or(Ok(()), Err)),
    }
}

/// One zone alone (`?zone=NAME`, its bytes or its escaped name): that zone is
/// the only one read.
pub fn zone_report(name: &[u8]) -> Option<ZoneReport> {
    let mut errors = Vec::new();
    let mut zone = sample_zones(Some(name)).into_iter().next()?;
    zone.sample.resident_pages = resident_pages_of(&[zone.range]).remove(0);
    let zone = zone.sample.to_zone(&mut errors);
    Some(ZoneReport::new(
        nginx_info(),
        super::clock::now_ms(),
        zone,
        errors,
    ))
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
