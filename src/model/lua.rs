//! The Lua VMs: GC heap, LuaJIT's allocator, the optional object census.

use serde::Serialize;

/// GC objects by type, as LuaJIT's `gct` numbers them (`~LJ_T*`).
pub const OBJECT_TYPES: [&str; 9] = [
    "string", "upvalue", "thread", "proto", "function", "trace", "cdata", "table", "userdata",
];

/// The kinds of object a walk from the roots reaches through Lua's API.
pub const WALK_KINDS: [&str; 6] = ["table", "string", "function", "userdata", "thread", "cdata"];

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
    /// `lua_largest=1` only: the walk from the roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub largest: Option<LuaLargest>,
    /// `lua_largest=1` only: what grew since this worker's previous walk
    /// (`null` at its first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Option<LuaGrowth>>,
}

/// A walk of the heap from its roots (`_G`, `package.loaded`, the registry),
/// in a forked copy of the worker.
#[derive(Debug, Clone, Serialize)]
pub struct LuaLargest {
    pub walked: u64,
    pub truncated: bool,
    pub elapsed_us: u64,
    /// How long the fork held the event loop.
    pub fork_us: u64,
    /// What it was estimated to hold it before it was made (a walk is made
    /// only when this is within the allowed stall).
    pub fork_estimate_us: u64,
    pub bytes: u64,
    pub types: std::collections::BTreeMap<&'static str, TypeCount>,
    pub tables: Vec<LuaObject>,
    pub strings: Vec<LuaObject>,
    pub functions: Vec<LuaObject>,
    pub userdata: Vec<LuaObject>,
    pub threads: Vec<LuaObject>,
    pub cdata: Vec<LuaObject>,
    /// The cdata waiting on each finalizer (`ffi.gc`), most bytes first.
    pub cdata_finalizers: Vec<CdataFinalizer>,
}

/// The cdata one finalizer will free.
#[derive(Debug, Clone, Serialize)]
pub struct CdataFinalizer {
    /// `function at chunk:line` (every closure of that code), a C function's
    /// symbol, or `a C function`.
    pub finalizer: String,
    pub count: u64,
    /// Those the walk reached from the roots; the rest are garbage not yet
    /// finalized.
    pub reached: u64,
    pub bytes: u64,
}

impl LuaLargest {
    /// Each kind's list, tables first; `rows(kind)` of each.
    pub fn lists(&self, rows: impl Fn(&str) -> usize) -> Vec<(&'static str, &[LuaObject])> {
        [
            ("table", &self.tables),
            ("string", &self.strings),
            ("function", &self.functions),
            ("userdata", &self.userdata),
            ("thread", &self.threads),
            ("cdata", &self.cdata),
        ]
        .into_iter()
        .map(|(kind, list)| (kind, &list[..list.len().min(rows(kind))]))
        .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LuaObject {
    pub path: String,
    pub own_bytes: u64,
    pub retained_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LuaGrowth {
    pub age_ms: u64,
    pub types: std::collections::BTreeMap<&'static str, TypeGrowth>,
    pub paths: Vec<GrownPath>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TypeGrowth {
    pub count: i64,
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrownPath {
    pub path: String,
    pub kind: &'static str,
    pub retained_bytes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<i64>,
    /// Not among the previous walk's largest: counted from zero.
    pub new: bool,
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
