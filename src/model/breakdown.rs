//! The breakdown by owner: who holds the process's memory.

use std::collections::BTreeMap;

use serde::Serialize;

/// How deep the answer looks: `detail=full` adds what needs `/proc/self/smaps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Depth {
    #[default]
    Default,
    Full,
}

#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    pub glibc: Option<Owner>,
    pub shm: Option<Owner>,
    pub lua_http: Option<Owner>,
    pub lua_stream: Option<Owner>,
    pub text: Option<Owner>,
    pub stacks: Option<Owner>,
    pub other_allocators: Option<Owner>,
    pub unattributed: Owner,
    /// Where `/proc/self/smaps` was read: the process's PSS split by the owner
    /// each mapping belongs to (whole mappings; they add up to the PSS).
    #[serde(skip)]
    pub pss_by_owner: Option<BTreeMap<&'static str, u64>>,
}

/// One slice of the pie.
#[derive(Debug, Clone, Serialize)]
pub struct Owner {
    /// The owner's own figure, in the measure named by `measure`.
    pub bytes: u64,
    /// `allocated`, `loaded`, `mapped` or `resident`.
    pub measure: &'static str,
    /// This owner's share of the process's resident memory.
    pub resident_bytes: Option<i64>,
    /// Detail depth: proportional share of the owner's whole mappings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_bytes: Option<u64>,
    #[serde(flatten)]
    pub details: BTreeMap<&'static str, serde_json::Value>,
    /// Detail depth: the mappings this owner's figures come from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mappings: Option<Vec<MappingView>>,
}

/// A mapping as shown in detail mode: never its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MappingView {
    pub path: String,
    pub perms: String,
    pub size_bytes: u64,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub anonymous_bytes: u64,
    pub swap_bytes: u64,
}

/// The virtual pie: resident, swapped out, and mapped but never touched.
#[derive(Debug, Clone, Serialize)]
pub struct VirtualSplit {
    pub virtual_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub untouched_bytes: Option<u64>,
}
