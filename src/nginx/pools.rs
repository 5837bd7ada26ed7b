//! Walks nginx's pools: the cycle's, every connection's, and the requests in
//! flight (HTTP/1 requests behind `c->data`, HTTP/2 streams through the HTTP/2
//! connection's own stream index, stream sessions).

use std::ffi::c_void;

use ngx::ffi::{
    malloc_usable_size, ngx_connection_t, ngx_cycle_t, ngx_http_init_connection,
    ngx_http_request_t, ngx_http_v2_connection_t, ngx_pool_t, ngx_stream_session_t,
};

use super::cycle;
use crate::analysis::pools::{ConnectionSample, PoolsSample, RequestSample};
use crate::model::pools::{ConnectionKind, PoolSample, RequestKind};

/// `r->signature` of an HTTP request: "HTTP".
const HTTP_SIGNATURE: u32 = 0x5054_5448;
/// `s->signature` of a stream session: "STRM".
const STREAM_SIGNATURE: u32 = 0x4d52_5453;
/// Blocks or large allocations walked at most in one pool.
const MAX_POOL_LINKS: u64 = 1 << 16;
/// HTTP/2 stream nodes walked at most in one connection.
const MAX_H2_NODES: usize = 1 << 16;

pub fn sample_pools() -> PoolsSample {
    let cycle = cycle::current();
    let mut sample = PoolsSample::default();
    // SAFETY: single-threaded worker; every pointer followed is one nginx keeps
    // valid while the connection or request exists, checked for NULL first.
    unsafe {
        sample.cycle = walk_pool(cycle.pool);
        let h2_index = http2_module_index(cycle);
        if let Err(e) = &h2_index {
            sample.http2_unavailable = Some(e.clone());
        }
        let stream_init = libc::dlsym(libc::RTLD_DEFAULT, c"ngx_stream_init_connection".as_ptr());
        let now_ms = super::clock::cached_now_ms();
        // Slots in use are `connection_n - free_connection_n`: once that many
        // open ones were seen the rest are free, and the walk stops (Lua's fake
        // connections are in use with fd -1: then it goes to the end).
        // A cycle reloaded in single-process mode has no connection array of
        // its own (nginx keeps serving from the first cycle's): nothing to walk.
        let slots = if cycle.connections.is_null() {
            0
        } else {
            cycle.connection_n
        };
        let in_use = slots.saturating_sub(cycle.free_connection_n);
        let mut open_seen = 0;
        for i in 0..slots {
            if open_seen >= in_use {
                break;
            }
            let c = &*cycle.connections.add(i);
            if c.fd != -1 {
                open_seen += 1;
            }
            if c.fd == -1 || c.pool.is_null() || c.pool == cycle.pool {
                continue; // free, without a pool, or the master's channel
            }
            let listening = c.listening;
            if !listening.is_null() && std::ptr::eq((*listening).connection, c) {
                continue; // a listening socket
            }
            let kind = if listening.is_null() {
                ConnectionKind::Upstream
            } else {
                let handler = (*listening).handler.map(|h| h as *const c_void);
                if handler == Some(ngx_http_init_connection as *const c_void) {
                    ConnectionKind::Http
                } else if handler.is_some() && handler == Some(stream_init as *const c_void) {
                    ConnectionKind::Stream
                } else {
                    ConnectionKind::Other
                }
            };
            let pool = walk_pool(c.pool);
            sample.connections.push(ConnectionSample { kind, pool });
            match kind {
                ConnectionKind::Http => http_requests(c, &h2_index, now_ms, &mut sample.requests),
                ConnectionKind::Stream => {
                    let s = c.data as *const ngx_stream_session_t;
                    if !s.is_null() && (*s).signature == STREAM_SIGNATURE {
                        sample.requests.push(RequestSample {
                            kind: RequestKind::Stream,
                            // A stream session lives in its connection's pool.
                            pool,
                            age_ms: age(now_ms, (*s).start_sec as u64, (*s).start_msec as u64),
                        });
                    }
                }
                _ => {}
            }
        }
    }
    sample
}

unsafe fn http_requests(
    c: &ngx_connection_t,
    h2_index: &Result<usize, String>,
    now_ms: u64,
    out: &mut Vec<RequestSample>,
) {
    let data = c.data;
    if data.is_null() {
        return;
    }
    if *(data as *const u32) == HTTP_SIGNATURE {
        // c->data may be the active subrequest: its pool is the main request's.
        let r = (*(data as *const ngx_http_request_t)).main;
        if !r.is_null() {
            out.push(request(RequestKind::Http1, r, std::ptr::null_mut(), now_ms));
        }
        return;
    }
    // An HTTP/2 connection's first field points back to its connection; a
    // keep-alive connection's ngx_http_connection_t starts with its addr_conf.
    let h2c = data as *const ngx_http_v2_connection_t;
    if !std::ptr::eq((*h2c).connection, c) {
        return;
    }
    if let Ok(index) = h2_index {
        http2_streams(h2c, *index, now_ms, out);
    }
}

#[cfg(ngx_feature = "http_v2")]
unsafe fn http2_streams(
    h2c: *const ngx_http_v2_connection_t,
    module_index: usize,
    now_ms: u64,
    out: &mut Vec<RequestSample>,
) {
    if (*h2c).streams_index.is_null() {
        return;
    }
    // The server configuration's layout is the tree's: read by C (build.rs).
    let mask = super::request_bits::ngx_memory_status_h2_streams_index_mask(h2c, module_index);
    let Ok(mask) = usize::try_from(mask) else {
        return;
    };
    let mut walked = 0;
    for i in 0..=mask {
        let mut node = *(*h2c).streams_index.add(i);
        while !node.is_null() && walked < MAX_H2_NODES {
            walked += 1;
            let stream = (*node).stream;
            if !stream.is_null() && !(*stream).request.is_null() {
                out.push(request(
                    RequestKind::Http2,
                    (*stream).request,
                    (*stream).pool,
                    now_ms,
                ));
            }
            node = (*node).index;
        }
    }
}

#[cfg(not(ngx_feature = "http_v2"))]
unsafe fn http2_streams(
    _h2c: *const ngx_http_v2_connection_t,
    _module_index: usize,
    _now_ms: u64,
    _out: &mut Vec<RequestSample>,
) {
}

/// `ngx_http_v2_module`'s index into a server's configurations.
unsafe fn http2_module_index(cycle: &ngx_cycle_t) -> Result<usize, String> {
    if !cfg!(ngx_feature = "http_v2") {
        return Err("this nginx is built without HTTP/2".into());
    }
    cycle::module_by_name(cycle, "ngx_http_v2_module")
        .map(|m| m.ctx_index)
        .ok_or_else(|| "ngx_http_v2_module is not in this nginx".into())
}

/// A request's pool, plus its HTTP/2 stream's own pool where that differs.
unsafe fn request(
    kind: RequestKind,
    r: *const ngx_http_request_t,
    stream_pool: *mut ngx_pool_t,
    now_ms: u64,
) -> RequestSample {
    let mut pool = walk_pool((*r).pool);
    if !stream_pool.is_null() && stream_pool != (*r).pool {
        pool.add(&walk_pool(stream_pool));
    }
    RequestSample {
        kind,
        pool,
        age_ms: age(now_ms, (*r).start_sec as u64, (*r).start_msec as u64),
    }
}

/// Walks a pool's blocks and large allocations; `large` keeps no sizes, so
/// `malloc_usable_size` tells each one's real size.
unsafe fn walk_pool(pool: *const ngx_pool_t) -> PoolSample {
    let mut s = PoolSample::default();
    let mut block = pool;
    while !block.is_null() {
        if s.blocks >= MAX_POOL_LINKS {
            s.truncated = true;
            break;
        }
        let d = &(*block).d;
        s.blocks += 1;
        s.block_bytes += (d.end as usize).saturating_sub(block as usize) as u64;
        s.used_bytes += (d.last as usize).saturating_sub(block as usize) as u64;
        block = d.next;
    }
    if pool.is_null() {
        return s;
    }
    let mut large = (*pool).large;
    let mut links = 0;
    while !large.is_null() {
        links += 1;
        if links > MAX_POOL_LINKS {
            s.truncated = true;
            break;
        }
        let alloc = (*large).alloc;
        if !alloc.is_null() {
            s.large_allocations += 1;
            s.large_bytes += malloc_usable_size(alloc) as u64;
        }
        large = (*large).next;
    }
    s
}

fn age(now_ms: u64, start_sec: u64, start_msec: u64) -> u64 {
    now_ms.saturating_sub(start_sec * 1000 + start_msec)
}
