//! The whole server: every process once, and the summary each worker publishes.

use crate::model::process::ProcessMemory;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRole {
    Master,
    Worker,
    CacheManager,
    CacheLoader,
    Single,
}

/// What a worker publishes about itself into its registry slot, on a timer and
/// whenever it answers: the numbers a dashboard of the whole server needs,
/// as flat words (no pointer, no string), so any process can read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Published {
    pub sampled_at_ms: u64,
    /// How old the figures were when this answer read them.
    pub age_ms: u64,
    /// Each owner's `bytes` and `resident_bytes`, as in that worker's breakdown.
    pub breakdown: std::collections::BTreeMap<&'static str, OwnerFigures>,
    pub lua: PublishedLua,
    pub glibc: Option<GlibcFigures>,
    pub pools: PoolFigures,
    /// The worker's PSS, from a page-table walk it makes off its event loop
    /// on its timer (and at `detail=full`): kept until the next walk.
    pub pss: Option<PublishedPss>,
}

/// A worker's proportional share of its resident pages (a page shared by N
/// processes counts 1/N in each), split by owner, and the PSS of the processes
/// that publish nothing themselves (the master, the cache processes) as this
/// worker read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishedPss {
    pub sampled_at_ms: u64,
    pub age_ms: u64,
    pub bytes: u64,
    /// Each mapping's PSS under its owner; they add up to `bytes`.
    pub owners: std::collections::BTreeMap<&'static str, u64>,
    #[serde(skip)]
    pub others: Vec<(u32, u64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OwnerFigures {
    pub bytes: u64,
    pub resident_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishedLua {
    pub http: Option<VmFigures>,
    pub stream: Option<VmFigures>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VmFigures {
    pub gc_bytes: u64,
    pub allocator_mapped_bytes: Option<u64>,
    pub allocator_resident_bytes: Option<u64>,
    pub allocator_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GlibcFigures {
    pub in_use_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolFigures {
    pub cycle_bytes: u64,
    pub connections: u64,
    pub connection_bytes: u64,
    pub requests: u64,
    pub request_bytes: u64,
}

/// The owners a worker publishes, in slot order.
pub const PUBLISHED_OWNERS: [&str; 8] = [
    "glibc",
    "shm",
    "lua_http",
    "lua_stream",
    "text",
    "stacks",
    "other_allocators",
    "unattributed",
];
#[derive(Debug, Clone, Serialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub role: ProcessRole,
    pub worker: Option<u32>,
    pub generation: u64,
    pub exiting: bool,
    pub started_at_ms: u64,
    /// Its `/proc/PID/status` counters, as `process` has them for this worker.
    #[serde(flatten)]
    pub status: ProcessMemory,
    /// Its proportional share of its resident pages (a page shared by N
    /// processes counts 1/N in each): read by this answer at `detail=full`,
    /// else from the last page-table walk published (a worker's own, on its
    /// timer; the master's and cache processes', as a worker read them);
    /// `null` where none could be read.
    pub pss_bytes: Option<u64>,
    /// How old `pss_bytes` is (0: read by this answer).
    pub pss_age_ms: Option<u64>,
    /// A worker's own figures, as it last published them (the answering
    /// worker's: this answer's). `null` for the master and cache processes,
    /// and for a worker that has not published yet.
    pub memory: Option<Published>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    /// Configuration loads seen: 1 at start, +1 per reload.
    pub generation: u64,
    /// The server's resident memory with every page counted once: the sum of
    /// every process's PSS as published (see `Counted`), with estimates for
    /// the processes whose PSS is unknown.
    pub resident_bytes: u64,
    /// The part of `resident_bytes` that is estimated, not read.
    pub resident_estimated_bytes: u64,
    /// The oldest figure summed into `resident_bytes`.
    pub resident_age_ms: Option<u64>,
    /// `resident_bytes` by owner, each page once: the workers' PSS split by
    /// the owner of each mapping, the master's and cache processes' whole, and
    /// what was estimated.
    pub breakdown: std::collections::BTreeMap<&'static str, u64>,
    pub processes: u64,
    pub workers: u64,
    pub old_generation_workers: u64,
    /// Their RSS, each counted whole (pages they share with the current
    /// generation count in both).
    pub old_generation_resident_bytes: u64,
    /// How long the oldest worker still shutting down has lived.
    pub oldest_exiting_age_ms: Option<u64>,
}
