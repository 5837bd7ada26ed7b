//! Copies numbers out of nginx's globals and the kernel into the report's plain
//! structs. No pointer into nginx outlives a call.

use std::time::{SystemTime, UNIX_EPOCH};

use ngx::ffi::{
    ngx_pid, ngx_process, ngx_worker, NGINX_VERSION, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};

use super::lua::{sample_vms, CensusLimits};
use super::pools::sample_pools;
use super::process;
use super::zones::sample_zones;
use crate::breakdown::{Breakdown, Depth, Inputs, VirtualSplit};
use crate::lua::Lua;
use crate::pools::Pools;
use crate::report::{self, NginxInfo, Report, Role, SourceError, ZoneReport, SCHEMA_VERSION};
use crate::zones::Zone;

/// The census's time bound: it walks the Lua heap inside the event loop.
const LUA_OBJECTS_MAX_TIME: std::time::Duration = std::time::Duration::from_millis(100);

/// Everything, at the asked depth; with `lua_objects_limit`, the Lua census too.
pub fn report(depth: Depth, lua_objects_limit: Option<u64>) -> Report {
    let mut errors = Vec::new();
    let zones: Vec<Zone> = sample_zones(None)
        .iter()
        .map(|z| z.to_zone(&mut errors))
        .collect();
    let census = lua_objects_limit.map(|max_objects| CensusLimits {
        max_objects,
        max_time: LUA_OBJECTS_MAX_TIME,
    });
    let (http, stream) = sample_vms(census);
    let lua = Lua::from_samples(http, stream, &mut errors);
    let segments: Vec<(u64, u64)> = [&lua.http, &lua.stream]
        .iter()
        .filter_map(|vm| vm.as_ref()?.allocator.as_ref())
        .flat_map(|a| a.segment_ranges.iter().copied())
        .collect();
    let samples = process::sample(depth, &segments);
    // RSS last: pages the collection itself touched (its own allocations) are
    // then in RSS as well as in the owners' ranges, never only in the latter.
    let process = report::process_memory(
        crate::procfs::read_proc_file("/proc/self/status", 4 << 10),
        &mut errors,
    );
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
    let pool_sample = sample_pools();
    if let Some(reason) = &pool_sample.http2_unavailable {
        errors.push(SourceError::new("pools.requests.http2", reason.clone()));
    }
    Report {
        schema: SCHEMA_VERSION,
        nginx: nginx_info(),
        collected_at_ms: now_ms(),
        virtual_split: VirtualSplit::from_process(&process),
        process,
        breakdown,
        zones,
        lua,
        pools: Pools::from_sample(&pool_sample),
        errors,
    }
}

/// One zone alone (`?zone=NAME`, its bytes or its escaped name): that zone is
/// the only one read.
pub fn zone_report(name: &[u8]) -> Option<ZoneReport> {
    let mut errors = Vec::new();
    let zone = sample_zones(Some(name)).first()?.to_zone(&mut errors);
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
