//! The running cycle's modules: one walker for every lookup by address or name.

use std::ffi::{c_void, CStr};

use ngx::ffi::{ngx_core_conf_t, ngx_core_module, ngx_cycle, ngx_cycle_t, ngx_module_t};

/// The running cycle. In a worker it stays put while a request runs.
pub fn current() -> &'static ngx_cycle_t {
    // SAFETY: nginx sets `ngx_cycle` before any request is served.
    unsafe { &*ngx_cycle }
}

/// Every module of the cycle, static and dynamic, in load order.
pub fn modules(cycle: &ngx_cycle_t) -> impl Iterator<Item = &ngx_module_t> {
    let count = if cycle.modules.is_null() {
        0
    } else {
        cycle.modules_n
    };
    // SAFETY: `modules` holds `modules_n` valid module pointers for the cycle's life.
    (0..count).filter_map(move |i| unsafe { (*cycle.modules.add(i)).as_ref() })
}

pub fn module_name(module: &ngx_module_t) -> Option<&str> {
    if module.name.is_null() {
        return None;
    }
    // SAFETY: nginx sets each module's name from its static, NUL-terminated name table.
    unsafe { CStr::from_ptr(module.name) }.to_str().ok()
}

/// Every answer asks for a few modules by name among the cycle's 60-odd:
/// each name is compared only as far as it agrees (no length taken, no UTF-8
/// check: those were 3% of the loop's part of an answer).
pub fn module_by_name<'a>(cycle: &'a ngx_cycle_t, name: &str) -> Option<&'a ngx_module_t> {
    modules(cycle).find(|m| name_is(m, name))
}

/// Whether the module's name is `name`.
fn name_is(module: &ngx_module_t, name: &str) -> bool {
    if module.name.is_null() || name.bytes().any(|b| b == 0) {
        return false;
    }
    let at = module.name as *const u8;
    // SAFETY: nginx sets each module's name from its static, NUL-terminated
    // name table. A byte is read only while every byte before it agreed with
    // `name`, which holds no NUL: at the latest the name's own terminator
    // disagrees, so no read passes it.
    unsafe { name.bytes().enumerate().all(|(i, b)| *at.add(i) == b) && *at.add(name.len()) == 0 }
}

pub fn module_by_address(cycle: &ngx_cycle_t, address: *const c_void) -> Option<&ngx_module_t> {
    modules(cycle).find(|m| std::ptr::eq(*m as *const ngx_module_t as *const c_void, address))
}

/// `worker_shutdown_timeout` of the running configuration; `None` when not set.
pub fn shutdown_timeout_ms(cycle: &ngx_cycle_t) -> Option<u64> {
    // SAFETY: the core module's configuration is made for every cycle, at its
    // module index in `conf_ctx`; `ngx_core_module` is nginx's static.
    let ms = unsafe {
        let ctx = cycle.conf_ctx as *const *const ngx_core_conf_t;
        let ccf = *ctx.add(ngx_core_module.index);
        ccf.as_ref()?.shutdown_timeout
    };
    // nginx writes 0 when the directive is absent.
    (ms != 0).then_some(ms as u64)
}

/// `worker_processes` as far as the configuration being read has set it
/// (`auto` is the number of CPUs); the CPUs online where it is not set yet
/// (it comes after the `http` block, or not at all: nginx's default is 1).
pub fn worker_processes(cycle: &ngx_cycle_t) -> usize {
    // SAFETY: as in `shutdown_timeout_ms`: the core module's configuration is
    // created before any other module's directives are read.
    let set = unsafe {
        let ctx = cycle.conf_ctx as *const *const ngx_core_conf_t;
        (*ctx.add(ngx_core_module.index))
            .as_ref()
            .map(|ccf| ccf.worker_processes)
    };
    match set {
        Some(n) if n > 0 => n as usize,
        // SAFETY: sysconf has no preconditions.
        _ => unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
    }
}
