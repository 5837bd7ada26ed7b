//! The module's settings: the location's and the `http` block's. They live
//! in nginx's configuration structures, never in process globals: a reload
//! that fails leaves the running configuration's as they were. The
//! directives that fill them are in `directives`.

use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError};

use super::{cycle, MemoryStatusModule};
use crate::analysis::lua_walk::DEFAULT_MAX_STALL_US;
use crate::query::Format;

/// `memory_status_interval` when not given.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
/// The smallest interval the directive takes.
pub const MIN_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Default)]
pub struct LocationConf {
    /// `memory_status` was given in this location.
    pub(super) enabled: bool,
    /// `memory_status_format`: the answer's format when the request names none.
    pub(super) format: Option<Format>,
}

impl Merge for LocationConf {
    fn merge(&mut self, prev: &Self) -> Result<(), MergeConfigError> {
        // The content handler belongs to the location that names it; the format
        // is inherited from http and server levels.
        if self.format.is_none() {
            self.format = prev.format;
        }
        Ok(())
    }
}

// SAFETY: `create_loc_conf` and `merge_loc_conf` of the module context make
// and merge this type, so the location configuration nginx holds is one.
unsafe impl HttpModuleLocationConf for MemoryStatusModule {
    type LocationConf = LocationConf;
}

/// The module's settings of one configuration. They live in nginx's
/// configuration structures, so a reload that fails leaves the running
/// configuration's settings as they were, and a worker reads those of the
/// cycle it serves.
#[derive(Debug, Default)]
pub struct MainConf {
    /// Some location of this configuration says `memory_status`.
    pub(super) enabled: bool,
    /// `memory_status_interval`, when given.
    pub(super) interval_ms: Option<u64>,
    /// `memory_status_history`, when given.
    pub(super) history_samples: Option<usize>,
    /// Samples per history ring: known once the `http` block is read.
    pub(super) history_capacity: usize,
    /// History rings, from `worker_processes` (see `history::rings_for`).
    pub(super) history_rings: usize,
    /// `memory_status_lua_walk_history on`: each history sample walks the
    /// Lua heaps (a fork per interval) and keeps their bytes by kind.
    pub(super) lua_walk_history: Option<bool>,
    /// `memory_status_lua_walk_max_stall`: the longest a walk's fork may hold
    /// the event loop, unless a request says `max_stall=`.
    pub(super) lua_walk_max_stall_us: Option<u64>,
}

impl MainConf {
    /// How often each worker publishes its summary and samples its history.
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS)
    }

    /// Whether the history keeps the Lua heaps' bytes by kind (off unless said).
    pub fn lua_walk_history(&self) -> bool {
        self.lua_walk_history.unwrap_or(false)
    }

    /// The longest a walk's fork may hold the event loop (µs).
    pub fn lua_walk_max_stall_us(&self) -> u64 {
        self.lua_walk_max_stall_us.unwrap_or(DEFAULT_MAX_STALL_US)
    }
}

// SAFETY: `create_main_conf` of the module context makes this type.
unsafe impl HttpModuleMainConf for MemoryStatusModule {
    type MainConf = MainConf;
}

/// The running configuration's settings; `None` in a configuration without an
/// `http` block. Loop thread only: in single-process mode a reload changes the
/// running cycle.
pub fn running_conf() -> Option<&'static MainConf> {
    MemoryStatusModule::main_conf(cycle::current())
}
