//! The module as nginx sees it: the module static, the directive, its location
//! configuration. Request handling is in `handler`, reading nginx in `collect`.

mod chunks;
mod collect;
mod cycle;
mod handler;
mod history;
mod lua;
mod offloop;
mod pools;
mod process;
mod publish;
mod registry;
mod request_bits;
mod residency;
mod respond;
#[cfg(feature = "test-panic")]
mod test_hooks;
mod zones;

use std::ffi::{c_char, c_void};
use std::ptr::{addr_of, addr_of_mut};

use ngx::core::{NGX_CONF_ERROR, NGX_CONF_OK};
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t,
    ngx_parse_time, ngx_str_t, ngx_uint_t, NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_ERROR,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_LOG_EMERG, NGX_OK,
};
use ngx::http::{
    HttpModule, HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError,
    NgxHttpCoreModule,
};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::query::Format;

pub struct MemoryStatusModule;

impl HttpModule for MemoryStatusModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the static is only written by nginx while it loads the module.
        unsafe { &*addr_of!(ngx_http_memory_status_module) }
    }
}

#[derive(Debug, Default)]
pub struct LocationConf {
    /// `memory_status` was given in this location.
    enabled: bool,
    /// `memory_status_format`: the answer's format when the request names none.
    format: Option<Format>,
}

impl Merge for LocationConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        // The content handler belongs to the location that names it; the format
        // is inherited from http and server levels.
        if self.format.is_none() {
            self.format = prev.format;
        }
        Ok(())
    }
}

unsafe impl HttpModuleLocationConf for MemoryStatusModule {
    type LocationConf = LocationConf;
}

/// The module's settings of one configuration. They live in nginx's
/// configuration structures, so a reload that fails leaves the running
/// configuration's settings as they were, and a worker reads those of the
/// cycle it serves.
#[derive(Debug, Default)]
pub struct MainConf {
    /// Some location of this configuration says `memory_status`.
    enabled: bool,
    /// `memory_status_interval`, when given.
    interval_ms: Option<u64>,
    /// `memory_status_history`, when given.
    history_samples: Option<usize>,
    /// Samples per history ring: known once the `http` block is read.
    history_capacity: usize,
    /// History rings, from `worker_processes` (see `history::rings_for`).
    history_rings: usize,
}

impl MainConf {
    /// How often each worker publishes its summary and samples its history.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(publish::DEFAULT_INTERVAL_MS)
    }
}

unsafe impl HttpModuleMainConf for MemoryStatusModule {
    type MainConf = MainConf;
}

/// The running configuration's settings; `None` in a configuration without an
/// `http` block. Loop thread only: in single-process mode a reload changes the
/// running cycle.
pub fn running_conf() -> Option<&'static MainConf> {
    MemoryStatusModule::main_conf(cycle::current())
}

/// The tag of the module's own zones: the module static's address.
fn zone_tag() -> *mut c_void {
    addr_of_mut!(ngx_http_memory_status_module).cast::<c_void>()
}

static mut NGX_HTTP_MEMORY_STATUS_COMMANDS: [ngx_command_t; 5] = [
    ngx_command_t {
        name: ngx_string!("memory_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(set_memory_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_format"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1)
            as ngx_uint_t,
        set: Some(set_memory_status_format),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_interval"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_memory_status_interval),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_history"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(set_memory_status_history),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static NGX_HTTP_MEMORY_STATUS_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(postconfiguration),
    create_main_conf: Some(MemoryStatusModule::create_main_conf),
    init_main_conf: None,
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(MemoryStatusModule::create_loc_conf),
    merge_loc_conf: Some(MemoryStatusModule::merge_loc_conf),
};

#[cfg(feature = "export-modules")]
ngx::ngx_modules!(ngx_http_memory_status_module);

#[used]
#[allow(non_upper_case_globals)]
#[cfg_attr(not(feature = "export-modules"), no_mangle)]
pub static mut ngx_http_memory_status_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(NGX_HTTP_MEMORY_STATUS_MODULE_CTX) as *mut c_void,
    // SAFETY: nginx reads the command table; nothing else touches it.
    commands: unsafe { addr_of_mut!(NGX_HTTP_MEMORY_STATUS_COMMANDS[0]) },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_module: Some(init_module),
    init_process: Some(registry::init_process),
    exit_process: Some(registry::exit_process),
    ..ngx_module_t::default()
};

/// In the master, after a configuration load succeeded: the load is counted
/// in the zones (a reload that fails after its zones were initialized must
/// not count).
extern "C" fn init_module(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the cycle just configured.
    let cycle = unsafe { &*cycle };
    registry::count_load(cycle);
    history::count_load(cycle);
    NGX_OK as ngx_int_t
}

/// `memory_status;`: makes this location answer with the worker's memory.
extern "C" fn set_memory_status(
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
extern "C" fn postconfiguration(cf: *mut ngx_conf_t) -> ngx_int_t {
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
extern "C" fn set_memory_status_history(
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
extern "C" fn set_memory_status_interval(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let main = unsafe { &mut *conf.cast::<MainConf>() };
    if main.interval_ms.is_some() {
        return c"is duplicate".as_ptr().cast_mut();
    }
    // SAFETY: `cf->args` holds the directive and its one argument (NGX_CONF_TAKE1).
    let args: &mut [ngx_str_t] = unsafe { (*(*cf).args).as_slice_mut() };
    // SAFETY: nginx's own time parser over the argument.
    let ms = unsafe { ngx_parse_time(&mut args[1], 0) };
    if ms == NGX_ERROR as ngx_int_t || (ms as u64) < publish::MIN_INTERVAL_MS {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "invalid value \"{}\" in \"memory_status_interval\" directive, it must be a time of 1s or more",
            String::from_utf8_lossy(args[1].as_bytes())
        );
        return NGX_CONF_ERROR;
    }
    main.interval_ms = Some(ms as u64);
    NGX_CONF_OK
}

/// `memory_status_format json|prometheus|html;`
extern "C" fn set_memory_status_format(
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
