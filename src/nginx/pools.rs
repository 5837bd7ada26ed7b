//! Walks nginx's pools: the cycle's, every connection's, and the requests in
//! flight (HTTP/1 requests behind `c->data`, HTTP/2 streams through the HTTP/2
//! connection's own stream index, stream sessions).

use std::ffi::c_void;

use ngx::ffi::{
    malloc_usable_size, ngx_connection_t, ngx_cycle_t, ngx_http_init_connection,
    ngx_http_request_t, ngx_http_v2_connection_t, ngx_pool_t, ngx_stream_session_t,
};

use super::cycle;
use crate::analysis::pools::{ConnectionSample, Http2Unavailable, PoolsSample, RequestSample};
use crate::model::pools::{ConnectionKind, PoolSample, RequestKind};

/// `r->signature` of an HTTP request: "HTTP".
const HTTP_SIGNATURE: u32 = 0x5054_5448;
/// `s->signature` of a stream session: "STRM".
const STREAM_SIGNATURE: u32 = 0x4d52_5453;
/// Blocks or large allocations walked at most in one pool.
const MAX_POOL_LINKS: u64 = 1 << 16;
/// HTTP/2 stream nodes walked at most in one connection.
const MAX_H2_NODES: usize = 1 << 16;

/// The cycle's pool, every connection's and the requests in flight. Loop
/// thread only: nginx changes them between events.
pub fn sample_pools() -> PoolsSample {
    let cycle = cycle::current();
    let mut sample = PoolsSample::default();
    let h2_index = http2_module_index(cycle);
    if let Err(e) = &h2_index {
        sample.http2_unavailable = Some(*e);
    }
    // SAFETY: dlsym on a NUL-terminated name; null when stream is not loaded.
    let stream_init =
        unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"ngx_stream_init_connection".as_ptr()) };
    // SAFETY: on the loop's thread.
    let now_ms = unsafe { super::clock::cached_now_ms() };
    let walk = Walk {
        h2_index,
        stream_init,
        now_ms,
    };
    // SAFETY: the running cycle's own pool and connection array, read on the
    // loop's thread between events: nothing frees them meanwhile.
    unsafe {
        sample.cycle = walk_pool(cycle.pool);
        for c in open_connections(cycle) {
            walk.connection(cycle, c, &mut sample);
        }
    }
    sample
}

/// What every connection's walk needs.
struct Walk {
    h2_index: Result<usize, Http2Unavailable>,
    stream_init: *mut c_void,
    now_ms: u64,
}

/// The cycle's connections that are open. Slots in use are `connection_n -
/// free_connection_n`: once that many open ones were seen the rest are free,
/// and the walk stops (Lua's fake connections are in use with fd -1: then it
/// goes to the end). A cycle reloaded in single-process mode has no connection
/// array of its own (nginx keeps serving from the first cycle's): nothing to
/// walk.
///
/// # Safety
/// `cycle` is the running cycle, on the loop's thread; the references are
/// used before control returns to nginx.
unsafe fn open_connections(cycle: &ngx_cycle_t) -> impl Iterator<Item = &ngx_connection_t> {
    let slots = if cycle.connections.is_null() {
        0
    } else {
        cycle.connection_n
    };
    let in_use = slots.saturating_sub(cycle.free_connection_n);
    let mut open_seen = 0;
    (0..slots)
        // SAFETY: the array holds `connection_n` connections (caller's contract).
        .map(move |i| unsafe { &*cycle.connections.add(i) })
        .take_while(move |c| {
            let more = open_seen < in_use;
            open_seen += (c.fd != -1) as usize;
            more
        })
        .filter(|c| c.fd != -1)
}

impl Walk {
    /// A connection's pool, and its request or stream session.
    ///
    /// # Safety
    /// `c` is an open connection of the running cycle, on the loop's thread.
    unsafe fn connection(&self, cycle: &ngx_cycle_t, c: &ngx_connection_t, out: &mut PoolsSample) {
        if c.pool.is_null() || c.pool == cycle.pool {
            return; // without a pool, or the master's channel
        }
        // SAFETY: the caller's contract.
        let Some(kind) = (unsafe { self.kind_of(c) }) else {
            return; // a listening socket
        };
        // SAFETY: an open connection's pool.
        let pool = unsafe { walk_pool(c.pool) };
        out.connections.push(ConnectionSample { kind, pool });
        match kind {
            // SAFETY: an HTTP connection's `data` (see `http_requests`).
            ConnectionKind::Http => unsafe {
                http_requests(c, &self.h2_index, self.now_ms, &mut out.requests)
            },
            ConnectionKind::Stream => {
                let s = c.data as *const ngx_stream_session_t;
                // SAFETY: a stream connection's `data` is its session, checked
                // by its signature before its start time is read.
                let start = unsafe {
                    (!s.is_null() && (*s).signature == STREAM_SIGNATURE)
                        .then(|| ((*s).start_sec as u64, (*s).start_msec as u64))
                };
                if let Some((sec, msec)) = start {
                    out.requests.push(RequestSample {
                        kind: RequestKind::Stream,
                        // A stream session lives in its connection's pool.
                        pool,
                        age_ms: age(self.now_ms, sec, msec),
                    });
                }
            }
            _ => {}
        }
    }

    /// What the connection serves, by its listening socket's handler; `None`
    /// for a listening socket itself.
    ///
    /// # Safety
    /// As `connection`.
    unsafe fn kind_of(&self, c: &ngx_connection_t) -> Option<ConnectionKind> {
        let listening = c.listening;
        if listening.is_null() {
            return Some(ConnectionKind::Upstream);
        }
        // SAFETY: a connection's listening socket outlives it.
        let (own, handler) = unsafe { ((*listening).connection, (*listening).handler) };
        if std::ptr::eq(own, c) {
            return None;
        }
        let handler = handler.map(|h| h as *const c_void);
        Some(
            if handler == Some(ngx_http_init_connection as *const c_void) {
                ConnectionKind::Http
            } else if handler.is_some() && handler == Some(self.stream_init as *const c_void) {
                ConnectionKind::Stream
            } else {
                ConnectionKind::Other
            },
        )
    }
}

/// The requests of an HTTP connection: its HTTP/1 request, or its HTTP/2
/// streams' requests.
///
/// # Safety
/// `c` is an open HTTP connection of the running cycle, on the loop's thread.
unsafe fn http_requests(
    c: &ngx_connection_t,
    h2_index: &Result<usize, Http2Unavailable>,
    now_ms: u64,
    out: &mut Vec<RequestSample>,
) {
    let data = c.data;
    if data.is_null() {
        return;
    }
    // SAFETY: an HTTP connection's `data` is a request (signature first), an
    // HTTP/2 connection or an ngx_http_connection_t, each at least a word.
    if unsafe { *(data as *const u32) } == HTTP_SIGNATURE {
        // c->data may be the active subrequest: its pool is the main request's.
        // SAFETY: a request, by its signature; `main` is a live request.
        let r = unsafe { (*(data as *const ngx_http_request_t)).main };
        if !r.is_null() {
            // SAFETY: as above.
            out.push(unsafe { request(RequestKind::Http1, r, std::ptr::null_mut(), now_ms) });
        }
        return;
    }
    // An HTTP/2 connection's first field points back to its connection; a
    // keep-alive connection's ngx_http_connection_t starts with its addr_conf.
    let h2c = data as *const ngx_http_v2_connection_t;
    // SAFETY: the first word of either structure.
    if !std::ptr::eq(unsafe { (*h2c).connection }, c) {
        return;
    }
    if let Ok(index) = h2_index {
        // SAFETY: an HTTP/2 connection, by its first field.
        unsafe { http2_streams(h2c, *index, now_ms, out) };
    }
}

/// The requests of an HTTP/2 connection's streams, through its stream index.
///
/// # Safety
/// `h2c` is a live HTTP/2 connection on the loop's thread and `module_index`
/// `ngx_http_v2_module`'s index into server configurations.
#[cfg(ngx_feature = "http_v2")]
unsafe fn http2_streams(
    h2c: *const ngx_http_v2_connection_t,
    module_index: usize,
    now_ms: u64,
    out: &mut Vec<RequestSample>,
) {
    // SAFETY: the caller's contract.
    let index = unsafe { (*h2c).streams_index };
    if index.is_null() {
        return;
    }
    // The server configuration's layout is the tree's: read by C (build.rs).
    // SAFETY: the caller's contract.
    let mask =
        unsafe { super::request_bits::ngx_memory_status_h2_streams_index_mask(h2c, module_index) };
    let Ok(mask) = usize::try_from(mask) else {
        return;
    };
    let mut walked = 0;
    for i in 0..=mask {
        // SAFETY: the index has `mask + 1` buckets; its nodes and their
        // streams live while the connection does, each checked for null.
        unsafe {
            let mut node = *index.add(i);
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
}

/// Without HTTP/2 in the tree there are no streams.
///
/// # Safety
/// None needed; unsafe as its HTTP/2 twin.
#[cfg(not(ngx_feature = "http_v2"))]
unsafe fn http2_streams(
    _h2c: *const ngx_http_v2_connection_t,
    _module_index: usize,
    _now_ms: u64,
    _out: &mut Vec<RequestSample>,
) {
}

/// `ngx_http_v2_module`'s index into a server's configurations.
fn http2_module_index(cycle: &ngx_cycle_t) -> Result<usize, Http2Unavailable> {
    if !cfg!(ngx_feature = "http_v2") {
        return Err(Http2Unavailable::NotBuilt);
    }
    cycle::module_by_name(cycle, "ngx_http_v2_module")
        .map(|m| m.ctx_index)
        .ok_or(Http2Unavailable::ModuleMissing)
}

/// A request's pool, plus its HTTP/2 stream's own pool where that differs.
///
/// # Safety
/// `r` is a live request, and `stream_pool` null or a live pool, on the
/// loop's thread.
unsafe fn request(
    kind: RequestKind,
    r: *const ngx_http_request_t,
    stream_pool: *mut ngx_pool_t,
    now_ms: u64,
) -> RequestSample {
    // SAFETY: the caller's contract.
    unsafe {
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
}

/// Walks a pool's blocks and large allocations; `large` keeps no sizes, so
/// `malloc_usable_size` tells each one's real size.
///
/// # Safety
/// `pool` is null or a live nginx pool, on the loop's thread.
unsafe fn walk_pool(pool: *const ngx_pool_t) -> PoolSample {
    let mut s = PoolSample::default();
    let mut block = pool;
    while !block.is_null() {
        if s.blocks >= MAX_POOL_LINKS {
            s.truncated = true;
            break;
        }
        // SAFETY: a block of a live pool (the caller's contract).
        let d = unsafe { &(*block).d };
        s.blocks += 1;
        s.block_bytes += (d.end as usize).saturating_sub(block as usize) as u64;
        s.used_bytes += (d.last as usize).saturating_sub(block as usize) as u64;
        block = d.next;
    }
    if pool.is_null() {
        return s;
    }
    // SAFETY: the pool's list of large allocations: a link's `alloc` is a
    // live malloc'ed block, or null once `ngx_pfree` freed it (the link
    // stays), checked before it is measured.
    unsafe {
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
    }
    s
}

fn age(now_ms: u64, start_sec: u64, start_msec: u64) -> u64 {
    now_ms.saturating_sub(start_sec * 1000 + start_msec)
}
