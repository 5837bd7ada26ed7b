//! The answer's model: plain data copied out of nginx and the kernel, and its
//! JSON form. Nothing here touches nginx, so it is unit-tested on its own.

use serde::Serialize;

use crate::model::breakdown::{Breakdown, VirtualSplit};
use crate::model::lua::Lua;
use crate::model::pools::Pools;
use crate::model::process::ProcessMemory;
use crate::model::server::{Server, ServerProcess};
pub use crate::model::source_error::SourceError;
use crate::model::zones::Zone;

/// Version of the JSON shape. Raised only when a field changes meaning or goes away;
/// new fields do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub nginx: NginxInfo,
    pub collected_at_ms: u64,
    pub process: ProcessMemory,
    #[serde(rename = "virtual")]
    pub virtual_split: VirtualSplit,
    pub breakdown: Breakdown,
    pub zones: Vec<Zone>,
    pub lua: Lua,
    pub pools: Pools,
    /// Every process of this nginx, whichever worker answers.
    pub processes: Vec<ServerProcess>,
    pub server: Server,
    /// Each process's growth per series, fitted over its history.
    pub trends: Vec<crate::model::history::ProcessTrends>,
    /// Each zone's used bytes over time (one worker records the zones).
    pub zone_trends: Vec<crate::model::history::ZoneTrend>,
    /// `?history=1` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::model::history::History>,
    /// The memory cgroup's charge beside nginx's own; `null` where the
    /// group cannot be read (see `errors`).
    pub container: Option<crate::model::container::Container>,
    /// What the figures mean, most severe first (empty: no rule fired).
    pub findings: Vec<crate::model::findings::Finding>,
    pub errors: Vec<SourceError>,
}

/// The answer to `?zone=NAME`: the same envelope, with that zone alone.
#[derive(Debug, Serialize)]
pub struct ZoneReport {
    pub schema: u32,
    pub nginx: NginxInfo,
    pub collected_at_ms: u64,
    pub zones: Vec<Zone>,
    pub errors: Vec<SourceError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NginxInfo {
    pub version: String,
    pub module_version: &'static str,
    pub pid: u32,
    pub worker: u64,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A worker process under a master.
    Worker,
    /// `master_process off`: one process serves everything.
    Single,
    /// Any other process type (not expected to serve requests).
    Other,
}
