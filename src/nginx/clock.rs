//! The module's clocks. Answers, summaries and history samples are stamped
//! with the wall clock, read anew (`now_ms`): the measuring thread has no
//! cached time. nginx's own timestamps (a connection's or request's start)
//! are in its cached time, so their ages are taken against that one.

use std::time::{SystemTime, UNIX_EPOCH};

use ngx::ffi::ngx_cached_time;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// nginx's cached time in milliseconds since the epoch, as its loop last
/// updated it.
///
/// # Safety
/// On the loop's thread, after nginx's time is initialized (any module
/// callback or handler): nginx writes `ngx_cached_time` there.
pub unsafe fn cached_now_ms() -> u64 {
    // SAFETY: the caller is on the loop's thread; nginx keeps the pointer on
    // one of its time slots, never null once initialized.
    let t = unsafe { &*ngx_cached_time };
    t.sec as u64 * 1000 + t.msec as u64
}
