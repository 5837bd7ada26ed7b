//! Request bitfields, read and written by `src/c/request_bits.c`, compiled
//! against the nginx tree (see build.rs): bindgen's bitfield accessors are wrong
//! for `ngx_http_request_t` on nginx >= 1.29.3.

use ngx::ffi::{ngx_http_request_t, ngx_int_t, ngx_uint_t};

extern "C" {
    /// `r->header_only`.
    pub fn ngx_memory_status_header_only(r: *const ngx_http_request_t) -> ngx_uint_t;
    /// `r->main->count++`.
    pub fn ngx_memory_status_main_count_inc(r: *mut ngx_http_request_t);
    /// `ngx_http_v2_srv_conf_t.streams_index_mask` of an HTTP/2 connection's
    /// server, or -1. Only in a tree built with HTTP/2.
    #[cfg(ngx_feature = "http_v2")]
    pub fn ngx_memory_status_h2_streams_index_mask(
        h2c: *const ngx::ffi::ngx_http_v2_connection_t,
        ctx_index: usize,
    ) -> ngx_int_t;
}
