//! Copies numbers out of nginx's globals and the kernel into the report's plain
//! structs. No pointer into nginx outlives a call.

use std::time::{SystemTime, UNIX_EPOCH};

use ngx::ffi::{
    ngx_pid, ngx_process, ngx_worker, NGINX_VERSION, NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};

use super::lua::sample_vms;
use super::zones::sample_zones;
use crate::lua::Lua;
use crate::query::Query;
use crate::report::{self, NginxInfo, ProcessMemory, Report, Role, SCHEMA_VERSION};

/// Collects what the query asks for: everything, or only the zones for `?zone=`.
pub fn report(query: &Query) -> Report {
    let mut errors = Vec::new();
    let whole = query.zone.is_none();
    let process = if whole {
        report::process_memory(std::fs::read_to_string("/proc/self/status"), &mut errors)
    } else {
        ProcessMemory::default()
    };
    let zones = sample_zones()
        .iter()
        .map(|z| z.to_zone(&mut errors))
        .collect();
    let lua = if whole {
        let (http, stream) = sample_vms();
        Lua::from_samples(http, stream, &mut errors)
    } else {
        Lua::default()
    };
    Report {
        schema: SCHEMA_VERSION,
        nginx: nginx_info(),
        collected_at_ms: now_ms(),
        process,
        zones,
        lua,
        errors,
    }
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
