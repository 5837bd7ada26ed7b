//! The Lua VMs: GC heap, LuaJIT's allocator, the optional object census.

use serde::Serialize;

/// GC objects by type, as LuaJIT's `gct` numbers them (`~LJ_T*`).
pub const OBJECT_TYPES: [&str; 9] = [
    "string", "upvalue", "thread", "proto", "function", "trace", "cdata", "table", "userdata",
];

#[derive(Debug, Clone, Serialize)]
pub struct Census {
    pub walked: u64,
    pub truncated: bool,
    pub elapsed_us: u64,
    pub bytes: u64,
    pub string_table_bytes: u64,
    pub types: std::collections::BTreeMap<&'static str, TypeCount>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TypeCount {
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Lua {
    pub http: Option<LuaVm>,
    pub stream: Option<LuaVm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LuaVm {
    pub gc_bytes: u64,
    pub allocator: Option<LuaAllocator>,
    pub version: Option<String>,
    pub library: Option<String>,
    pub jit_enabled: Option<bool>,
    /// `lua_objects=1` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<Census>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LuaAllocator {
    pub kind: &'static str,
    pub segments: u64,
    pub mapped_bytes: u64,
    pub resident_bytes: Option<u64>,
    /// `null` with `resident_bytes`; else how old that figure is.
    pub resident_age_ms: Option<u64>,
    pub free_bytes: u64,
    pub free_chunks: u64,
    pub walk_truncated: bool,
    #[serde(skip)]
    pub segment_ranges: Vec<(u64, u64)>,
}
