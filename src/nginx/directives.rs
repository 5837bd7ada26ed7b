//! The module's directives and its postconfiguration: each fills the
//! settings of `conf`, and a wrong value fails `nginx -t` with an `[emerg]`
//! naming the directive, its file and line.

use std::ffi::{c_char, c_void};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_int_t, ngx_parse_time, ngx_str_t, NGX_ERROR, NGX_LOG_EMERG,
    NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;

use super::conf::{LocationConf, MainConf, MIN_INTERVAL_MS};
use super::{cycle, handler, history, registry, zone_tag, MemoryStatusModule};
use crate::analysis::lua_walk::MAX_STALL_LIMIT_US;
use crate::query::Format;

/// `memory_status;`: makes this location answer with the worker's memory.
pub(super) extern "C" fn set_memory_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration, created by
    // `create_loc_conf` as a `LocationConf`.
    let conf = unsafe { &mut *conf.cast::<LocationConf>() };
    if conf.enabled {
        // nginx prints: "memory_status" directive is duplicate in FILE:LINE
        return c"is duplicate".as_ptr().cast_mut();
    }
    conf.enabled = true;

    // SAFETY: `cf` is valid during directive parsing, inside a location block.
    let cf = unsafe { &mut *cf };
    let Some(clcf) = NgxHttpCoreModule::location_conf_mut(cf) else {
        return c"has no location configuration".as_ptr().cast_mut();
    };
    clcf.handler = Some(handler::memory_status_handler);
    let Some(main) = MemoryStatusModule::main_conf_mut(cf) else {
        return c"has no http configuration".as_ptr().cast_mut();
    };
    main.enabled = true;
    // The registry every process of the server writes itself into, so any
    // worker can answer for all of them.
    if registry::add_zone(cf, zone_tag()).is_err() {
        return c"could not add the module's shared memory zone"
            .as_ptr()
            .cast_mut();
    }
    NGX_CONF_OK
}

/// After the `http` block: the history zone, sized now that the interval and
/// the history's length are known.
pub(super) extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
    // SAFETY: nginx calls postconfiguration with the `http` block's context.
    let Some(main) = MemoryStatusModule::main_conf_mut(unsafe { &*cf }) else {
        return NGX_ERROR as ngx_int_t;
    };
    if !main.enabled {
        return NGX_OK as ngx_int_t;
    }
    main.history_capacity = main
        .history_samples
        .unwrap_or_else(|| history::DEFAULT_SPAN_MS.div_ceil(main.interval_ms()) as usize);
    // SAFETY: nginx passes a valid conf with its cycle.
    let cycle = unsafe { &*(*cf).cycle };
    main.history_rings = crate::analysis::history::rings_for(cycle::worker_processes(cycle));
    match history::add_zone(cf, zone_tag(), main) {
        Ok(()) => NGX_OK as ngx_int_t,
        Err(()) => NGX_ERROR as ngx_int_t,
    }
}

/// `memory_status_history N;`: samples each process keeps.
pub(super) extern "C" fn set_memory_status_history(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    if main.history_samples.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf->args` holds the directive and its one argument (NGX_CONF_TAKE1).
    let args: &mut [ngx_str_t] = unsafe { (*(*cf).args).as_slice_mut() };
    let value = String::from_utf8_lossy(args[1].as_bytes()).into_owned();
    match value.parse::<usize>() {
        Ok(n) if (3..=history::MAX_CAPACITY).contains(&n) => {
            main.history_samples = Some(n);
            NGX_CONF_OK
        }
        _ => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid value \"{}\" in \"memory_status_history\" directive, it must be a number of samples from 3 to {}",
                value,
                history::MAX_CAPACITY
            );
            NGX_CONF_ERROR
        }
    }
}

/// `memory_status_interval TIME;`: how often each worker publishes its own
/// summary for the others' answers.
pub(super) extern "C" fn set_memory_status_interval(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    if main.interval_ms.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: nginx calls the handler with its configuration and the directive's one argument.
    let Some(ms) = (unsafe {
        time_argument(cf, "memory_status_interval", "a time of 1s or more", |ms| {
            ms >= MIN_INTERVAL_MS
        })
    }) else {
        return NGX_CONF_ERROR;
    };
    main.interval_ms = Some(ms);
    NGX_CONF_OK
}

/// The directive's one argument as nginx's time in milliseconds, when
/// `accepted` takes it; else an `[emerg]` saying what it `must` be.
///
/// # Safety
/// `cf` is nginx's configuration being parsed, its `args` the directive and
/// its one argument (NGX_CONF_TAKE1).
unsafe fn time_argument(
    cf: *mut ngx_conf_t,
    name: &str,
    must: &str,
    accepted: impl Fn(u64) -> bool,
) -> Option<u64> {
    // SAFETY: the caller's contract.
    let args: &mut [ngx_str_t] = unsafe { (*(*cf).args).as_slice_mut() };
    // SAFETY: nginx's own time parser over the argument.
    let ms = unsafe { ngx_parse_time(&mut args[1], 0) };
    if ms != NGX_ERROR as ngx_int_t && ms >= 0 && accepted(ms as u64) {
        return Some(ms as u64);
    }
    ngx_conf_log_error!(
        NGX_LOG_EMERG,
        cf,
        "invalid value \"{}\" in \"{name}\" directive, it must be {must}",
        String::from_utf8_lossy(args[1].as_bytes())
    );
    None
}

/// `memory_status_lua_walk_history on|off;`: whether each history sample
/// walks the Lua heaps and keeps their bytes by kind.
pub(super) extern "C" fn set_memory_status_lua_walk_history(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    if main.lua_walk_history.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf->args` holds the directive and its one argument (NGX_CONF_TAKE1).
    let args: &mut [ngx_str_t] = unsafe { (*(*cf).args).as_slice_mut() };
    main.lua_walk_history = Some(match args[1].as_bytes() {
        b"on" => true,
        b"off" => false,
        other => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid value \"{}\" in \"memory_status_lua_walk_history\" directive, it must be \"on\" or \"off\"",
                String::from_utf8_lossy(other)
            );
            return NGX_CONF_ERROR;
        }
    });
    NGX_CONF_OK
}

/// `memory_status_lua_walk_max_stall TIME;`: the longest a Lua walk's fork
/// may hold the event loop (1ms to 10s).
pub(super) extern "C" fn set_memory_status_lua_walk_max_stall(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    if main.lua_walk_max_stall_us.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    let name = "memory_status_lua_walk_max_stall";
    // SAFETY: nginx calls the handler with its configuration and the directive's one argument.
    let Some(ms) = (unsafe {
        time_argument(cf, name, "a time from 1ms to 10s", |ms| {
            (1..=MAX_STALL_LIMIT_US / 1000).contains(&ms)
        })
    }) else {
        return NGX_CONF_ERROR;
    };
    main.lua_walk_max_stall_us = Some(ms * 1000);
    NGX_CONF_OK
}

/// `memory_status_format json|prometheus|html;`
pub(super) extern "C" fn set_memory_status_format(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let conf = unsafe { &mut *conf.cast::<LocationConf>() };
    if conf.format.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf->args` holds the directive and its one argument (NGX_CONF_TAKE1).
    let args: &[ngx_str_t] = unsafe { (*(*cf).args).as_slice() };
    let value = String::from_utf8_lossy(args[1].as_bytes());
    match Format::from_name(&value) {
        Some(format) => {
            conf.format = Some(format);
            NGX_CONF_OK
        }
        None => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid value \"{}\" in \"memory_status_format\" directive, it must be one of: {}",
                value,
                Format::NAMES
            );
            NGX_CONF_ERROR
        }
    }
}
