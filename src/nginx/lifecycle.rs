//! A process's start and exit, as nginx calls the module: the history ring,
//! the registry slot and the worker's timer are taken in that order and
//! given back as the process leaves.

use ngx::ffi::{ngx_cycle_t, ngx_int_t, NGX_OK};

use super::{history, publish, registry};

/// The module's `init_process`: a worker, cache process or single process takes
/// a slot and writes who it is, and a worker starts its timer. Without a
/// registry (no location uses `memory_status`) it does nothing.
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    let Some(writes_history) = registry::begin_process() else {
        return NGX_OK as ngx_int_t;
    };
    // The ring before the slot: a process listed has its ring already.
    // Even without either (all taken) the timer starts: it claims them when
    // they are free.
    if writes_history {
        history::ensure_claimed();
    }
    registry::ensure_registered();
    if writes_history {
        publish::start(cycle);
    }
    NGX_OK as ngx_int_t
}

/// The module's `exit_process`: the ring and the slot are freed as the
/// process leaves.
pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    history::release();
    registry::release_slot();
}
