//! Request bitfields, read and written by `src/c/request_bits.c`, compiled
//! against the nginx tree (see build.rs): bindgen's bitfield accessors are wrong
//! for `ngx_http_request_t` on nginx >= 1.29.3.

use ngx::ffi::{ngx_http_request_t, ngx_uint_t};

extern "C" {
    /// `r->header_only`.
    pub fn ngx_memory_status_header_only(r: *const ngx_http_request_t) -> ngx_uint_t;
    /// `r->main->count++`.
    pub fn ngx_memory_status_main_count_inc(r: *mut ngx_http_request_t);
}
