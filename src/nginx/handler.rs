//! The content handler: GET/HEAD only, body discarded, the answer in the asked
//! format; in the manner of nginx's own `stub_status`.

use std::ptr;

use ngx::ffi::{
    add_to_ngx_table, ngx_alloc_chain_link, ngx_chain_t, ngx_create_temp_buf,
    ngx_http_discard_request_body, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_int_t, ngx_list_push, ngx_table_elt_t, ngx_uint_t, NGX_DONE,
    NGX_ERROR, NGX_HTTP_BAD_REQUEST, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_NOT_ALLOWED, NGX_HTTP_NOT_FOUND, NGX_HTTP_OK, NGX_HTTP_SERVICE_UNAVAILABLE,
    NGX_LOG_ALERT, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, Request};
use ngx::ngx_log_error;

use super::offloop::{self, Answer, Complete};
use super::request_bits;
use super::{collect, MemoryStatusModule};
use crate::alloc_guard;
use crate::escape::echo;
use crate::format::{html, prometheus};
use crate::history::{SampleWindow, HISTORY_POINTS};
use crate::panic_guard::run_guarded;
use crate::query::{Format, Query};
use crate::report::Report;

const JSON: &[u8] = b"application/json";
const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// Test-only triggers (feature `test-panic`): a panic on the measuring thread,
/// or in the completion on the loop, for the next answer.
#[cfg(feature = "test-panic")]
pub static TEST_PANIC_MEASURING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
#[cfg(feature = "test-panic")]
pub static TEST_STALL_MEASURING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);
#[cfg(feature = "test-panic")]
static TEST_PANIC_ANSWERING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub extern "C" fn memory_status_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls a content handler with a valid request it owns for the call.
    let r = unsafe { &mut *r };
    match run_guarded(|| serve(r)) {
        Ok(rc) => rc,
        Err(message) => {
            // SAFETY: a request always has a connection with a log.
            let log = unsafe { (*r.connection).log };
            ngx_log_error!(NGX_LOG_ALERT, log, "memory_status: panic: {message}");
            NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t
        }
    }
}

fn serve(r: &mut ngx_http_request_t) -> ngx_int_t {
    #[cfg(feature = "test-panic")]
    {
        // SAFETY: `Request` is the request's transparent wrapper; only read here.
        let request: &Request = unsafe { &*(r as *const ngx_http_request_t).cast::<Request>() };
        let asked = |value: &[u8]| {
            request.headers_in_iterator().any(|(k, v)| {
                k.as_bytes() == b"X-Memory-Status-Test-Panic" && v.as_bytes() == value
            })
        };
        if asked(b"1") {
            panic!("test-panic: asked by the request");
        }
        if asked(b"measuring") {
            TEST_PANIC_MEASURING.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if asked(b"stall") {
            TEST_STALL_MEASURING.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if asked(b"answering") {
            TEST_PANIC_ANSWERING.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if asked(b"fill-history") {
            let interval_ms = super::running_conf().map_or(1000, |c| c.interval_ms());
            super::history::test_fill_ring(interval_ms);
        }
        for what in [&b"odd-seq"[..], b"stuck", b"full"] {
            if asked(&[b"die-", what].concat()) {
                super::registry::test_die_leaving(what);
            }
        }
    }
    // A failed allocation gave back some of the reserve: taken again first
    // (parsing the query allocates too); with none of it, nothing starts.
    if !alloc_guard::restore_reserve() {
        return out_of_memory(r);
    }
    let mark = alloc_guard::failures();
    if r.method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as ngx_uint_t == 0 {
        if push_header(r, b"Allow", b"GET, HEAD").is_none() {
            return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        }
        return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
    }

    // SAFETY: valid request; nginx reads and drops the body.
    let rc = unsafe { ngx_http_discard_request_body(r) };
    if rc != NGX_OK as ngx_int_t {
        return rc;
    }

    let (accept, configured) = format_hints(r);
    let query = Query::parse(r.args.as_bytes());
    let (query, format) =
        match query.and_then(|q| q.resolve_format(accept, configured).map(|f| (q, f))) {
            Ok(resolved) => resolved,
            Err(err) => return send_reason(r, NGX_HTTP_BAD_REQUEST, &err.to_string()),
        };

    let Some(name) = &query.zone else {
        // The whole answer: the loop copies nginx's and the VMs' figures, a
        // thread measures the rest while the worker goes on serving.
        // `?history=1` answers at most `HISTORY_POINTS` samples per ring in
        // JSON, spread over all kept or a page from `history_since=`; the
        // HTML page draws lines of at most `SPARK_POINTS` each, with or
        // without it; Prometheus shows no sample (only the trends, read
        // apart): none is read for it.
        let window = match (query.history, format) {
            (_, Format::Html) => Some(SampleWindow::spread(crate::format::html::SPARK_POINTS)),
            (true, Format::Json) => Some(SampleWindow {
                points: HISTORY_POINTS,
                since_ms: query.history_since_ms,
            }),
            _ => None,
        };
        let (part, job) = collect::begin(query.depth, query.lua_objects_limit, window);
        let refresh = query.refresh_seconds;
        let complete: Complete = Box::new(move |r, part, measured| {
            #[cfg(feature = "test-panic")]
            if TEST_PANIC_ANSWERING.swap(false, std::sync::atomic::Ordering::Relaxed) {
                panic!("test-panic: while answering on the loop");
            }
            // Failed while measuring: nothing more is built.
            if alloc_guard::failures() != mark {
                return out_of_memory(r);
            }
            answer(r, &collect::finish(part, measured), format, refresh, mark)
        });
        let answer = Answer {
            part,
            job,
            complete,
        };
        return match offloop::submit(r, answer) {
            Ok(()) => NGX_DONE as ngx_int_t,
            Err(answer) => answer.now(r),
        };
    };
    let (content_type, body) = match collect::zone_report(name) {
        Some(zone) if format == Format::Prometheus => (
            prometheus::CONTENT_TYPE,
            Some(prometheus::render_zone(&zone).into_bytes()),
        ),
        Some(zone) => (JSON, zone.to_json()),
        None => {
            let reason = format!("no zone named \"{}\"", echo(name));
            return send_reason(r, NGX_HTTP_NOT_FOUND, &reason);
        }
    };
    match body {
        Some(body) if alloc_guard::failures() == mark => {
            send(r, NGX_HTTP_OK as usize, content_type, &body)
        }
        _ => out_of_memory(r),
    }
}

/// A 503 for an answer during which an allocation failed (here or on the
/// measuring thread): what was measured may be incomplete, so it is dropped.
/// Its body is a constant: with no memory left, the answer allocates only in
/// the request's pool.
fn out_of_memory(r: &mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: a request always has a connection with a log.
    offloop::log_out_of_memory(unsafe { (*r.connection).log }, "answered 503");
    if push_header(r, b"X-Content-Type-Options", b"nosniff").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    let body = b"memory_status: out of memory while answering; the worker goes on\n";
    send(r, NGX_HTTP_SERVICE_UNAVAILABLE as usize, TEXT, body)
}

/// Sends the whole answer in its format.
fn answer(
    r: &mut ngx_http_request_t,
    report: &Report,
    format: Format,
    refresh: Option<u32>,
    mark: u64,
) -> ngx_int_t {
    if alloc_guard::failures() != mark {
        return out_of_memory(r);
    }
    let (content_type, body) = match format {
        Format::Json => (JSON, report.to_json()),
        Format::Prometheus => (
            prometheus::CONTENT_TYPE,
            Some(prometheus::render(report).into_bytes()),
        ),
        Format::Html => (
            html::CONTENT_TYPE,
            Some(html::render(report, refresh).into_bytes()),
        ),
    };
    match body {
        Some(body) if alloc_guard::failures() == mark => {
            send(r, NGX_HTTP_OK as usize, content_type, &body)
        }
        _ => out_of_memory(r),
    }
}

/// The format the `Accept` header asks for, and the location's configured one.
fn format_hints(r: &ngx_http_request_t) -> (Option<Format>, Option<Format>) {
    // SAFETY: `Request` is the request's transparent wrapper; only read here.
    let request: &Request = unsafe { &*(r as *const ngx_http_request_t).cast::<Request>() };
    let configured = MemoryStatusModule::location_conf(request).and_then(|c| c.format);
    // Every Accept header counts, as if joined with commas (RFC 9110).
    let accept = request
        .headers_in_iterator()
        .filter(|(k, _)| k.as_bytes().eq_ignore_ascii_case(b"accept"))
        .find_map(|(_, v)| Format::from_accept(&String::from_utf8_lossy(v.as_bytes())));
    (accept, configured)
}

/// A 4xx answer with a one-line reason (whatever of the request it echoes is
/// escaped and bounded by `escape::echo`).
fn send_reason(r: &mut ngx_http_request_t, status: u32, reason: &str) -> ngx_int_t {
    let body = format!("memory_status: {reason}\n");
    if push_header(r, b"X-Content-Type-Options", b"nosniff").is_none() {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    }
    send(r, status as usize, TEXT, body.as_bytes())
}

/// Sends a complete response: status, content type, `Cache-Control: no-store`,
/// length, and the body unless this is a HEAD.
fn send(
    r: &mut ngx_http_request_t,
    status: usize,
    content_type: &'static [u8],
    body: &[u8],
) -> ngx_int_t {
    if push_header(r, b"Cache-Control", b"no-store").is_none() {
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
fn push_header(r: &mut ngx_http_request_t, key: &[u8], value: &[u8]) -> Option<()> {
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
