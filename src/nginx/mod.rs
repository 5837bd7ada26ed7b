//! The module as nginx sees it: the module static, the directive, its location
//! configuration. Request handling is in `handler`, reading nginx in `collect`.

mod collect;
mod cycle;
mod handler;
mod lua;
mod process;
mod residency;
mod zones;

use std::ffi::{c_char, c_void};
use std::ptr::{addr_of, addr_of_mut};

use ngx::core::NGX_CONF_OK;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_http_module_t, ngx_module_t, ngx_uint_t, NGX_CONF_NOARGS,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MODULE,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, Merge, MergeConfigError, NgxHttpCoreModule};
use ngx::ngx_string;

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
}

impl Merge for LocationConf {
    fn merge(&mut self, _prev: &Self) -> Result<(), MergeConfigError> {
        // The content handler belongs to the location that names it; nothing inherits.
        Ok(())
    }
}

unsafe impl HttpModuleLocationConf for MemoryStatusModule {
    type LocationConf = LocationConf;
}

static mut NGX_HTTP_MEMORY_STATUS_COMMANDS: [ngx_command_t; 2] = [
    ngx_command_t {
        name: ngx_string!("memory_status"),
        type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
        set: Some(set_memory_status),
        conf: NGX_HTTP_LOC_CONF_OFFSET,
        offset: 0,
        post: std::ptr::null_mut(),
    },
    ngx_command_t::empty(),
];

static NGX_HTTP_MEMORY_STATUS_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: None,
    postconfiguration: None,
    create_main_conf: None,
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
    ..ngx_module_t::default()
};

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
    NGX_CONF_OK
}
