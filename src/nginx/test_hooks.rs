//! Test-only triggers (feature `test-panic`), set by a request header
//! `X-Memory-Status-Test-Panic`: a panic here or later, a stalled measuring,
//! a filled history ring, a process that dies leaving its slot or ring half
//! written. Never built into the module users load.

use std::sync::atomic::{AtomicBool, Ordering};

use ngx::ffi::ngx_http_request_t;
use ngx::http::Request;

/// A panic on the measuring thread, for the next measuring.
static PANIC_MEASURING: AtomicBool = AtomicBool::new(false);
/// A 4 s stall on the measuring thread, for the next measuring.
static STALL_MEASURING: AtomicBool = AtomicBool::new(false);
/// A 600 ms measuring, for the next measuring (under the 2 s bound).
static SLOW_MEASURING: AtomicBool = AtomicBool::new(false);
/// A panic in the completion on the loop, for the next answer sent.
static PANIC_ANSWERING: AtomicBool = AtomicBool::new(false);

/// Applies what the request's header asks (a panic right now included).
pub fn apply(r: &ngx_http_request_t) {
    // SAFETY: `Request` is the request's transparent wrapper; only read here.
    let request: &Request = unsafe { &*(r as *const ngx_http_request_t).cast::<Request>() };
    let asked = |value: &[u8]| {
        request
            .headers_in_iterator()
            .any(|(k, v)| k.as_bytes() == b"X-Memory-Status-Test-Panic" && v.as_bytes() == value)
    };
    if asked(b"1") {
        panic!("test-panic: asked by the request");
    }
    for (value, flag) in [
        (&b"measuring"[..], &PANIC_MEASURING),
        (b"stall", &STALL_MEASURING),
        (b"slow", &SLOW_MEASURING),
        (b"answering", &PANIC_ANSWERING),
    ] {
        if asked(value) {
            flag.store(true, Ordering::Relaxed);
        }
    }
    if asked(b"fill-history") {
        let interval_ms = super::conf::running_conf().map_or(1000, |c| c.interval_ms());
        super::history::test_fill_ring(interval_ms);
    }
    for what in [&b"odd-seq"[..], b"stuck", b"full"] {
        if asked(&[b"die-", what].concat()) {
            die_leaving(what);
        }
    }
}

/// On the measuring thread, as it starts a measuring.
pub fn while_measuring() {
    if PANIC_MEASURING.swap(false, Ordering::Relaxed) {
        panic!("test-panic: while measuring");
    }
    if STALL_MEASURING.swap(false, Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_secs(4));
    }
    if SLOW_MEASURING.swap(false, Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(600));
    }
}

/// On the loop, as an answer is sent.
pub fn while_answering() {
    if PANIC_ANSWERING.swap(false, Ordering::Relaxed) {
        panic!("test-panic: while answering on the loop");
    }
}

/// This process dies (`SIGKILL`) leaving its registry slot and history
/// rings as a crash at the worst moment would (see `registry::test_leave_stuck`).
fn die_leaving(what: &[u8]) {
    let Some(writer) = super::registry::test_leave_stuck(what) else {
        return;
    };
    if writer != 0 {
        super::history::test_mark_rings(writer);
    }
    // SAFETY: ends this process, as `kill -9` would.
    unsafe { libc::raise(libc::SIGKILL) };
}
