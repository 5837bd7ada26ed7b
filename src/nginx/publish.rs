//! A worker publishes its own summary into the registry on a timer
//! (`memory_status_interval`, 10 s by default), measured like an answer (the
//! kernel's part off the loop), so that an idle worker is as fresh as a busy
//! one in any other worker's answer. The timer is cancelable: it never keeps a
//! worker that is shutting down, and an old-generation worker publishes until
//! it exits.

use std::ptr::addr_of_mut;

use ngx::ffi::{ngx_add_timer, ngx_cycle_t, ngx_event_t, ngx_msec_t};

use super::collect;
use super::offloop;

/// The first summary comes soon after the worker starts.
const FIRST_MS: ngx_msec_t = 200;

/// The timer of this worker (loop thread only). Process state, not a setting:
/// its interval is read from the running configuration at every tick.
static mut TIMER: std::mem::MaybeUninit<ngx_event_t> = std::mem::MaybeUninit::zeroed();

/// Starts the timer (in init_process, for a worker or the single process).
pub fn start(cycle: *mut ngx_cycle_t) {
    // SAFETY: the loop's thread, once per process; a zeroed event is what
    // nginx's own modules start from.
    unsafe {
        let ev = (*addr_of_mut!(TIMER)).as_mut_ptr();
        std::ptr::write_bytes(ev, 0, 1);
        (*ev).handler = Some(on_timer);
        (*ev).log = (*cycle).log;
        (*ev).data = ev.cast();
        (*ev).set_cancelable(1);
        ngx_add_timer(ev, FIRST_MS);
    }
}

extern "C" fn on_timer(ev: *mut ngx_event_t) {
    let interval_ms =
        super::conf::running_conf().map_or(super::conf::DEFAULT_INTERVAL_MS, |c| c.interval_ms());
    // SAFETY: nginx calls the handler with our event, on the loop's thread.
    // The running cycle's log: in single-process mode the cycle that started
    // the timer may be freed after a reload.
    unsafe {
        (*ev).log = (*ngx::ffi::ngx_cycle).log;
        ngx_add_timer(ev, interval_ms as ngx_msec_t);
    }
    let _ = crate::panic_guard::run_guarded(|| {
        // A slot or ring not had at start (all taken) is claimed once free.
        super::registry::ensure_registered();
        super::history::ensure_claimed();
        // Short of memory: no summary this time (the last one stays).
        if !crate::alloc_guard::restore_reserve() {
            return out_of_memory();
        }
        let mark = crate::alloc_guard::failures();
        // The Lua walk's child is waited for off the loop only.
        // A tick while a walk runs keeps no kinds: one child at a time.
        let walk = super::conf::running_conf()
            .filter(|c| c.lua_walk_history())
            .map(|c| c.lua_walk_max_stall_us())
            .filter(|_| !super::lua_walk::walking() && offloop::thread_available());
        let measuring = collect::Measuring {
            lua_largest: walk,
            ..Default::default()
        };
        let (part, job) = collect::begin(measuring);
        let job = job.for_summary();
        // The thread measures and assembles the summary; the loop publishes
        // it and adds it to the history. A failed allocation meanwhile may
        // have cut a list short: nothing of it is kept.
        let work: offloop::Work = Box::new(move || collect::summary_work(part, job));
        let done: offloop::Background = Box::new(move |finished| {
            let (Some(_), Some((sample, zones))) = (&finished.summary, &finished.samples) else {
                return out_of_memory();
            };
            if crate::alloc_guard::failures() != mark {
                return out_of_memory();
            }
            offloop::publish(&finished, mark);
            collect::note_history_walk(&finished.history_walk);
            super::history::record_summary(sample, zones);
        });
        if let Err(back) = offloop::submit_background(work, done) {
            // No thread: measured here, as an answer would be; never with a
            // walk, whose child would be waited for on the loop.
            let (work, done) = *back;
            if walk.is_none() {
                done(work());
            }
        }
    });
}

fn out_of_memory() {
    // SAFETY: the running cycle's log lives as long as the cycle.
    let log = unsafe { (*ngx::ffi::ngx_cycle).log };
    super::respond::log_out_of_memory(log, "the summary skipped");
}
