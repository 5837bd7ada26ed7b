//! Shared memory zones: configured size, resident pages, the slab allocator's fill.

use serde::Serialize;

/// A zone in the answer.
#[derive(Debug, Clone, Serialize)]
pub struct Zone {
    pub name: String,
    pub owner: Option<String>,
    pub kind: &'static str,
    pub size_bytes: u64,
    pub mapped_bytes: u64,
    pub loaded_bytes: Option<u64>,
    /// Age of `loaded_bytes`: 0 when measured for this answer; more when the
    /// zone's slab counters have not moved since it was (see `SlabSample::signature`).
    pub loaded_age_ms: Option<u64>,
    pub slab: Option<Slab>,
    /// `ngx.shared.DICT:capacity()`: lua_shared_dict zones only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// `ngx.shared.DICT:free_space()`: lua_shared_dict zones only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_space_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slab {
    pub page_size_bytes: u64,
    pub pages_total: u64,
    /// NGINX Plus / Angie shape: `{"used": N, "free": N}`, in pages.
    pub pages: PageCounts,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// NGINX Plus / Angie shape, keyed by slot size in bytes.
    pub slots: Slots,
    pub free_runs: u64,
    pub largest_free_run_pages: u64,
    /// The largest single allocation of whole pages that can still succeed.
    pub largest_free_run_bytes: u64,
    pub free_runs_truncated: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PageCounts {
    pub used: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SlotCounts {
    pub used: u64,
    pub free: u64,
    pub reqs: u64,
    pub fails: u64,
}

/// Slots in size order, serialized as a JSON object keyed by size.
#[derive(Debug, Clone, Default)]
pub struct Slots(pub Vec<(u64, SlotCounts)>);
