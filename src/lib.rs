//! ngx-memory-status: an nginx module that answers, from inside a worker, where
//! that worker's memory goes.
//!
//! `nginx/` is the thin `unsafe` layer: it registers the directive, serves the
//! request and copies numbers out of nginx and the kernel into plain structs.
//! Everything else is safe Rust over plain data, unit-tested without nginx.

// The nginx layer is left out of test builds (its `#[used]` module static would
// pull every nginx symbol into the test binary), so some items look unused there.
#![cfg_attr(test, allow(dead_code))]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::missing_safety_doc, clippy::undocumented_unsafe_blocks)]

mod alloc_guard;
mod analysis;
mod fnv;
mod format;
mod model;
mod panic_guard;
mod query;
mod shm;
mod sources;

#[cfg(not(test))]
mod nginx;

/// Rust's allocations in every process nginx runs the module in: the system's,
/// with a reserve given back when it fails (see `alloc_guard`).
#[global_allocator]
static ALLOCATOR: alloc_guard::Guarded = alloc_guard::Guarded;
