//! Writing a response: the whole answer's bytes, a one-line reason, the 503
//! of an answer memory ran out for. Used by the handler and by the
//! completion of a measuring on the loop.

use std::ptr;
use std::time::{Duration, Instant};

use ngx::ffi::{
    add_to_ngx_table, ngx_alloc_chain_link, ngx_chain_t, ngx_create_temp_buf,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_int_t, ngx_list_push,
    ngx_log_t, ngx_table_elt_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_SERVICE_UNAVAILABLE, NGX_LOG_ALERT, NGX_OK,
};
use ngx::ngx_log_error;

use super::request_bits;

pub const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// A 503 for an answer during which an allocation failed (on the loop or on
/// the measuring thread): what was measured may be incomplete, so it is
/// dropped. Its body is a constant: with no memory left, the answer
/// allocates only in the request's pool.
pub fn out_of_memory(r: &mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: a request always has a connection with a log.
    log_out_of_memory(unsafe { (*r.connection).log }, "answered 503");
    if push_header(r, b"X-Content-Type-Options", b"nosniff").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    let body = b"memory_status: out of memory while answering; the worker goes on\n";
    send(r, NGX_HTTP_SERVICE_UNAVAILABLE as usize, TEXT, body)
}

/// A 4xx answer with a one-line reason (whatever of the request it echoes is
/// escaped and bounded by `escape::echo`).
pub fn send_reason(r: &mut ngx_http_request_t, status: u32, reason: &str) -> ngx_int_t {
    let body = format!("memory_status: {reason}\n");
    if push_header(r, b"X-Content-Type-Options", b"nosniff").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    send(r, status as usize, TEXT, body.as_bytes())
}

/// Sends a complete response: status, content type, `Cache-Control: no-store`,
/// `Vary: Accept`, length, and the body unless this is a HEAD.
pub fn send(
    r: &mut ngx_http_request_t,
    status: usize,
    content_type: &'static [u8],
    body: &[u8],
) -> ngx_int_t {
    if push_header(r, b"Cache-Control", b"no-store").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    // The format follows Accept when the request names none.
    if push_header(r, b"Vary", b"Accept").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    r.headers_out.status = status as ngx_uint_t;
    r.headers_out.content_type.len = content_type.len();
    r.headers_out.content_type.data = content_type.as_ptr().cast_mut();
    r.headers_out.content_type_len = content_type.len();
    r.headers_out.content_length_n = body.len() as _;

    // SAFETY: valid request, headers set above.
    let rc = unsafe { ngx_http_send_header(r) };
    // SAFETY: a live request; the bitfield is read by C compiled against the tree.
    let header_only = unsafe { request_bits::ngx_memory_status_header_only(r) } != 0;
    if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t || header_only {
        return rc;
    }

    // SAFETY: buffers come from the request's pool and live as long as it does;
    // the copy stays within the `body.len()` bytes just allocated.
    unsafe {
        let b = ngx_create_temp_buf(r.pool, body.len().max(1));
        let out: *mut ngx_chain_t = ngx_alloc_chain_link(r.pool);
        if b.is_null() || out.is_null() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(body.as_ptr(), (*b).last, body.len());
        (*b).last = (*b).last.add(body.len());
        let is_main = ptr::eq(r, r.main);
        (*b).set_last_buf(is_main as u32);
        (*b).set_last_in_chain(1);
        (*out).buf = b;
        (*out).next = ptr::null_mut();
        ngx_http_output_filter(r, out)
    }
}

/// Adds a response header. `None` when the pool is out of memory.
pub fn push_header(r: &mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Option<()> {
    // SAFETY: the headers list belongs to the request; the new element is zeroed
    // first so fields newer nginx versions add (`next`) start out empty.
    unsafe {
        let h: *mut ngx_table_elt_t = ngx_list_push(&mut r.headers_out.headers).cast();
        if h.is_null() {
            return None;
        }
        ptr::write_bytes(h, 0, 1);
        add_to_ngx_table(h, r.pool, key, value)
    }
}

const ALERT_EVERY: Duration = Duration::from_secs(60);

thread_local! {
    /// Loop thread only: when an out-of-memory alert was last logged.
    static OUT_OF_MEMORY_ALERTED: std::cell::Cell<Option<Instant>> =
        const { std::cell::Cell::new(None) };
}

/// An [alert] for a measuring given up for memory, at most once a minute: a
/// server short of memory must not fill its disk with our complaints too.
pub fn log_out_of_memory(log: *mut ngx_log_t, what: &str) {
    let now = Instant::now();
    let last = OUT_OF_MEMORY_ALERTED.with(std::cell::Cell::get);
    if last.is_some_and(|at| now.duration_since(at) < ALERT_EVERY) {
        return;
    }
    OUT_OF_MEMORY_ALERTED.with(|c| c.set(Some(now)));
    ngx_log_error!(
        NGX_LOG_ALERT,
        log,
        "memory_status: out of memory while measuring, {what} (said at most once a minute)"
    );
}
