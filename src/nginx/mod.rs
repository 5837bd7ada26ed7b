//! The module as nginx sees it: the module static, its command table and
//! context. The settings and directives are in `conf`, the process's start
//! and exit in `lifecycle`, request handling in `handler`, copying nginx's
//! structures in `collect`. All of the crate's `unsafe` code is under here.

mod chunks;
mod clock;
mod collect;
mod conf;
mod container;
mod cycle;
mod directives;
mod handler;
mod history;
mod lifecycle;
mod lua;
mod lua_walk;
mod offloop;
mod pools;
mod process;
mod publish;
mod registry;
mod request_bits;
mod residency;
mod respond;
mod runner;
#[cfg(feature = "test-panic")]
mod test_hooks;
mod zones;

use std::ffi::c_void;
use std::ptr::{addr_of, addr_of_mut};

use ngx::ffi::{
    ngx_command_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t,
    NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_MODULE, NGX_HTTP_SRV_CONF, NGX_OK,
};
use ngx::http::HttpModule;
use ngx::ngx_string;

pub struct MemoryStatusModule;

impl HttpModule for MemoryStatusModule {
    fn module() -> &'static ngx_module_t {
        // SAFETY: the static is only written by nginx while it loads the module.
        unsafe { &*addr_of!(ngx_http_memory_status_module) }
    }
}

/// The tag of the module's own zones: the module static's address.
pub(super) fn zone_tag() -> *mut c_void {
    addr_of_mut!(ngx_http_memory_status_module).cast::<c_void>()
}

static mut NGX_HTTP_MEMORY_STATUS_COMMANDS: [ngx_command_t; 7] = [
    ngx_command_t {
        name: ngx_string!("memory_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(directives::set_memory_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_format"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1)
            as ngx_uint_t,
        set: Some(directives::set_memory_status_format),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_interval"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(directives::set_memory_status_interval),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_history"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(directives::set_memory_status_history),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_lua_walk_history"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(directives::set_memory_status_lua_walk_history),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t {
        name: ngx_string!("memory_status_lua_walk_max_stall"),
        type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
        set: Some(directives::set_memory_status_lua_walk_max_stall),
        conf: NGX_HTTP_MAIN_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static NGX_HTTP_MEMORY_STATUS_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: Some(directives::postconfiguration),
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
    init_process: Some(lifecycle::init_process),
    exit_process: Some(lifecycle::exit_process),
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
