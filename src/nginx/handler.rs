//! The content handler: GET/HEAD only, body discarded, the answer in the asked
//! format; in the manner of nginx's own `stub_status`.

use ngx::ffi::{
    ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, ngx_uint_t, NGX_DONE,
    NGX_HTTP_BAD_REQUEST, NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_INTERNAL_SERVER_ERROR,
    NGX_HTTP_NOT_ALLOWED, NGX_HTTP_NOT_FOUND, NGX_HTTP_OK, NGX_LOG_ALERT, NGX_OK,
};
use ngx::http::{HttpModuleLocationConf, Request};
use ngx::ngx_log_error;

use super::collect::{self, Measuring};
use super::offloop::{self, Ask};
use super::respond::{out_of_memory, push_header, send, send_reason};
use super::MemoryStatusModule;
use crate::alloc_guard;
use crate::analysis::history::{SampleWindow, HISTORY_POINTS};
use crate::analysis::lua_walk::DEFAULT_MAX_STALL_US;
use crate::format::{prometheus, Rendering, JSON_CONTENT_TYPE};
use crate::panic_guard::run_guarded;
use crate::query::{Format, Query};
use crate::sources::escape::echo;

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
    super::test_hooks::apply(r);
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

    match &query.zone {
        Some(name) => serve_zone(r, name, format, mark),
        None => {
            // The whole answer: the loop copies nginx's and the VMs' figures, a
            // thread measures the rest while the worker goes on serving.
            let ask = ask_of(&query, format);
            match offloop::submit(r, ask) {
                Ok(()) => NGX_DONE as ngx_int_t,
                Err(error) => offloop::answer_now(r, ask, error),
            }
        }
    }
}

/// What a whole answer asks: `?history=1` answers at most `HISTORY_POINTS`
/// samples per ring in JSON, spread over all kept or a page from
/// `history_since=`; the HTML page draws lines of at most `SPARK_POINTS`
/// each, with or without it; Prometheus shows no sample (only the trends,
/// read apart): none is read for it.
fn ask_of(query: &Query, format: Format) -> Ask {
    let window = match (query.history, format) {
        (_, Format::Html) => Some(SampleWindow::spread(crate::format::html::SPARK_POINTS)),
        (true, Format::Json) => Some(SampleWindow {
            points: HISTORY_POINTS,
            since_ms: query.history_since_ms,
        }),
        _ => None,
    };
    Ask {
        measuring: Measuring {
            depth: query.depth,
            lua_objects_limit: query.lua_objects_limit,
            lua_largest: query.lua_largest.then(|| {
                query.max_stall_us.unwrap_or_else(|| {
                    super::conf::running_conf()
                        .map_or(DEFAULT_MAX_STALL_US, |c| c.lua_walk_max_stall_us())
                })
            }),
            history_window: window,
        },
        rendering: Rendering {
            format,
            refresh_seconds: query.refresh_seconds,
        },
    }
}

/// `?zone=NAME`: that zone alone, read on the loop (one zone's lock and
/// residency), in JSON or Prometheus.
fn serve_zone(r: &mut ngx_http_request_t, name: &[u8], format: Format, mark: u64) -> ngx_int_t {
    let (content_type, body) = match collect::zone_report(name) {
        Some(zone) if format == Format::Prometheus => (
            prometheus::CONTENT_TYPE,
            prometheus::render_zone(&zone).map(String::into_bytes),
        ),
        Some(zone) => (JSON_CONTENT_TYPE, zone.to_json()),
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
