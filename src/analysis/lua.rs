//! The LuaJIT VMs of the http and stream Lua modules: what the nginx layer
//! copies out of each VM, and the answer built from it.

use crate::model::lua::Census;
use crate::model::lua::Lua;
use crate::model::lua::LuaAllocator;
use crate::model::lua::LuaVm;
use crate::model::lua::TypeCount;
use crate::model::lua::OBJECT_TYPES;
use crate::model::source_error::SourceError;
use crate::sources::errors::ResidencyError;

/// Why a Lua VM, or a part of it, could not be read. Said in the answer's
/// `errors` as its `Display` text, converted once (`Lua::from_samples`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LuaError {
    /// Memory ran out while LuaJIT was looked up.
    OutOfMemory,
    /// A reload without a master process loaded LuaJIT again elsewhere.
    LoadedElsewhere,
    NoLuaJit,
    /// A module (the Lua module or its subsystem's core) is not loaded.
    NotLoaded(&'static str),
    /// No `http` or `stream` block.
    NoBlock(&'static str),
    /// The Lua module's configuration holds no VM.
    NoVm(&'static str),
    /// The census needs the allocator's segments.
    AllocatorUnknown(Box<LuaError>),
    StateLayout,
    GlobalLayout,
    GlobalLayoutPastGc,
    SystemAllocator,
    ForeignAllocator,
    /// lj_alloc's state is not as expected: which part.
    AllocatorLayout(&'static str),
    /// A GC object is not as expected: which one.
    ObjectLayout(&'static str),
}

impl std::fmt::Display for LuaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LuaError::OutOfMemory => f.write_str(crate::alloc_guard::OUT_OF_MEMORY),
            LuaError::LoadedElsewhere => f.write_str(
                "LuaJIT was loaded again elsewhere since it was first found \
                 (a reload without a master process): not read",
            ),
            LuaError::NoLuaJit => {
                f.write_str("LuaJIT's lua_gc/lua_getallocf not found in the process")
            }
            LuaError::NotLoaded(module) => write!(f, "{module} is not loaded"),
            LuaError::NoBlock(block) => write!(f, "no {block} block"),
            LuaError::NoVm(module) => write!(f, "{module} has no Lua VM"),
            LuaError::AllocatorUnknown(e) => write!(f, "allocator unknown: {e}"),
            LuaError::StateLayout => {
                f.write_str("unrecognized lua_State layout (not LuaJIT 2.1 GC64)")
            }
            LuaError::GlobalLayout => {
                f.write_str("unrecognized global_State layout (not LuaJIT 2.1 GC64)")
            }
            LuaError::GlobalLayoutPastGc => {
                f.write_str("unrecognized global_State layout past the GC state")
            }
            LuaError::SystemAllocator => f.write_str(
                "LuaJIT uses the system allocator (LUAJIT_USE_SYSMALLOC): \
                 its memory is counted in glibc's",
            ),
            LuaError::ForeignAllocator => f.write_str(
                "the VM's allocator is not LuaJIT's own (lua_setallocf): layout unknown",
            ),
            LuaError::AllocatorLayout(what) => {
                write!(f, "unrecognized LuaJIT allocator layout: {what}")
            }
            LuaError::ObjectLayout(what) => write!(f, "unrecognized LuaJIT object layout: {what}"),
        }
    }
}

/// A walk of one VM's GC objects: the string table and the GC root list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CensusSample {
    /// Count and bytes per type, in `OBJECT_TYPES` order.
    pub counts: [u64; 9],
    pub bytes: [u64; 9],
    pub walked: u64,
    pub truncated: bool,
    pub elapsed_us: u64,
    /// The string table's bucket array: in `gc_bytes`, but no object.
    pub string_table_bytes: u64,
}

/// One VM as copied out of LuaJIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaVmSample {
    /// `lua_gc(L, LUA_GCCOUNT) * 1024 + lua_gc(L, LUA_GCCOUNTB)`.
    pub gc_bytes: u64,
    pub allocator: Result<AllocatorSample, LuaError>,
    pub jit_enabled: Result<bool, LuaError>,
    pub runtime: LuaRuntime,
    /// `lua_objects=1` only: the census of GC objects.
    pub census: Option<Result<CensusSample, LuaError>>,
}

impl From<&CensusSample> for Census {
    fn from(s: &CensusSample) -> Census {
        Census {
            walked: s.walked,
            truncated: s.truncated,
            elapsed_us: s.elapsed_us,
            bytes: s.bytes.iter().sum(),
            string_table_bytes: s.string_table_bytes,
            types: OBJECT_TYPES
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        *name,
                        TypeCount {
                            count: s.counts[i],
                            bytes: s.bytes[i],
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The LuaJIT library the VMs run on: the same for both VMs of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LuaRuntime {
    pub version: Option<String>,
    pub library: Option<String>,
}

/// LuaJIT's own allocator (`lj_alloc`, a dlmalloc): its segments and free chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocatorSample {
    pub segments: u64,
    pub mapped_bytes: u64,
    pub resident_bytes: Result<u64, ResidencyError>,
    /// How old `resident_bytes` is (0: measured for this answer).
    pub resident_age_ms: u64,
    /// Free chunks in the segments: freed by the GC, kept by the allocator.
    pub free_bytes: u64,
    pub free_chunks: u64,
    pub walk_truncated: bool,
    /// The segments' address ranges: never printed, used to group mappings.
    pub segment_ranges: Vec<(u64, u64)>,
}

impl Lua {
    pub fn from_samples(
        http: Result<LuaVmSample, LuaError>,
        stream: Result<LuaVmSample, LuaError>,
        errors: &mut Vec<SourceError>,
    ) -> Lua {
        Lua {
            http: vm("lua.http", http, errors),
            stream: vm("lua.stream", stream, errors),
        }
    }
}

fn vm(
    source: &str,
    sample: Result<LuaVmSample, LuaError>,
    errors: &mut Vec<SourceError>,
) -> Option<LuaVm> {
    let sample = match sample {
        Ok(s) => s,
        Err(e) => {
            errors.push(SourceError::new(source, e.to_string()));
            return None;
        }
    };
    let mut note =
        |part: &str, e: String| errors.push(SourceError::new(format!("{source}.{part}"), e));
    let allocator = match sample.allocator {
        Ok(a) => Some(LuaAllocator {
            kind: "luajit",
            segments: a.segments,
            mapped_bytes: a.mapped_bytes,
            resident_age_ms: a.resident_bytes.is_ok().then_some(a.resident_age_ms),
            resident_bytes: a
                .resident_bytes
                .map_err(|e| note("allocator", e.to_string()))
                .ok(),
            free_bytes: a.free_bytes,
            free_chunks: a.free_chunks,
            walk_truncated: a.walk_truncated,
            segment_ranges: a.segment_ranges,
        }),
        Err(e) => {
            note("allocator", e.to_string());
            None
        }
    };
    let jit_enabled = sample
        .jit_enabled
        .map_err(|e| note("jit", e.to_string()))
        .ok();
    let objects = match sample.census {
        Some(Ok(c)) => Some(Census::from(&c)),
        Some(Err(e)) => {
            note("objects", e.to_string());
            None
        }
        None => None,
    };
    Some(LuaVm {
        gc_bytes: sample.gc_bytes,
        allocator,
        version: sample.runtime.version,
        library: sample.runtime.library,
        jit_enabled,
        objects,
        largest: None,
        growth: None,
    })
}

/// Finds LuaJIT's version banner (`LuaJIT 2.1.0-beta3`) in the library's
/// read-only data: LuaJIT exports no call that returns it without running Lua.
pub fn find_version_banner(bytes: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"LuaJIT 2.";
    let start = bytes.windows(PREFIX.len()).position(|w| w == PREFIX)?;
    let tail = &bytes[start..];
    let end = tail
        .iter()
        .position(|&b| b == 0 || !(b.is_ascii_graphic() || b == b' '))
        .unwrap_or(tail.len().min(64));
    std::str::from_utf8(&tail[..end.min(64)])
        .ok()
        .map(str::to_string)
}

/// How long a VM's measured residency may be reused (pages can also leave
/// memory with no allocation at all: swap).
pub const RESIDENCY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// A VM's allocator residency as last measured: by `mincore` over its
/// segments, which costs per byte of heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencyMeasurement {
    pub segments: Vec<(u64, u64)>,
    pub gc_bytes: u64,
    pub resident_bytes: u64,
}

/// Whether `last` still tells the VM's residency: the same segments (none
/// mapped or released) and a heap within 1 MiB + 1% of its size then, measured
/// less than `RESIDENCY_MAX_AGE` ago. Pages become resident when the heap grows
/// into them; a heap that has not grown past that bound has touched at most
/// that much more. An answer that reuses it says the figure's age.
pub fn residency_reusable(
    last: &ResidencyMeasurement,
    age: std::time::Duration,
    segments: &[(u64, u64)],
    gc_bytes: u64,
) -> bool {
    let bound = (1 << 20) + last.gc_bytes / 100;
    age < RESIDENCY_MAX_AGE
        && last.segments == segments
        && gc_bytes.abs_diff(last.gc_bytes) <= bound
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample() -> LuaVmSample {
        LuaVmSample {
            gc_bytes: 1_000_000,
            allocator: Ok(AllocatorSample {
                segments: 2,
                mapped_bytes: 4 << 20,
                resident_bytes: Ok(3 << 20),
                resident_age_ms: 0,
                free_bytes: 2 << 20,
                free_chunks: 17,
                walk_truncated: false,
                segment_ranges: vec![(0x1000, 0x2000)],
            }),
            jit_enabled: Ok(true),
            runtime: LuaRuntime {
                version: Some("LuaJIT 2.1.0-beta3".into()),
                library: Some("/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2.1.0".into()),
            },
            census: None,
        }
    }

    #[test]
    fn residency_is_reused_only_while_the_heap_stays() {
        let segs = vec![(0x1000, 0x9000), (0x20000, 0x40000)];
        let last = ResidencyMeasurement {
            segments: segs.clone(),
            gc_bytes: 100 << 20,
            resident_bytes: 64 << 20,
        };
        let s = std::time::Duration::from_secs;
        assert!(residency_reusable(&last, s(1), &segs, 100 << 20));
        // Within 1 MiB + 1% (2 MiB here): churn of a busy VM.
        assert!(residency_reusable(
            &last,
            s(1),
            &segs,
            (100 << 20) + (2 << 20)
        ));
        assert!(residency_reusable(
            &last,
            s(1),
            &segs,
            (100 << 20) - (2 << 20)
        ));
        assert!(!residency_reusable(
            &last,
            s(1),
            &segs,
            (100 << 20) + (2 << 20) + 1
        ));
        assert!(
            !residency_reusable(&last, s(1), &segs, 30 << 20),
            "a freed heap"
        );
        assert!(
            !residency_reusable(&last, s(10), &segs, 100 << 20),
            "too old"
        );
        assert!(
            !residency_reusable(&last, s(1), &segs[..1], 100 << 20),
            "a segment released"
        );
        let small = ResidencyMeasurement {
            gc_bytes: 200 << 10,
            ..last
        };
        assert!(residency_reusable(
            &small,
            s(1),
            &segs,
            (200 << 10) + (1 << 20)
        ));
        assert!(!residency_reusable(
            &small,
            s(1),
            &segs,
            (200 << 10) + (1 << 20) + (2 << 10) + 1
        ));
    }

    #[test]
    fn lua_errors_read_as_the_answer_says_them() {
        let e = LuaError::AllocatorUnknown(Box::new(LuaError::AllocatorLayout("top chunk")));
        assert_eq!(
            e.to_string(),
            "allocator unknown: unrecognized LuaJIT allocator layout: top chunk"
        );
        assert_eq!(
            LuaError::SystemAllocator.to_string(),
            "LuaJIT uses the system allocator (LUAJIT_USE_SYSMALLOC): its memory is counted in glibc's"
        );
        assert_eq!(
            LuaError::NoVm("ngx_http_lua_module").to_string(),
            "ngx_http_lua_module has no Lua VM"
        );
        assert_eq!(
            LuaError::OutOfMemory.to_string(),
            crate::alloc_guard::OUT_OF_MEMORY
        );
    }

    #[test]
    fn a_vm_and_an_absent_one() {
        let mut errors = Vec::new();
        let lua = Lua::from_samples(
            Ok(sample()),
            Err(LuaError::NotLoaded("ngx_stream_lua_module")),
            &mut errors,
        );
        let v: Value = serde_json::to_value(&lua).unwrap();
        assert_eq!(v["http"]["gc_bytes"], 1_000_000);
        assert_eq!(v["http"]["allocator"]["kind"], "luajit");
        assert_eq!(v["http"]["allocator"]["mapped_bytes"], 4 << 20);
        assert_eq!(v["http"]["allocator"]["resident_bytes"], 3 << 20);
        assert_eq!(v["http"]["allocator"]["free_bytes"], 2 << 20);
        assert_eq!(v["http"]["jit_enabled"], true);
        assert_eq!(v["http"]["version"], "LuaJIT 2.1.0-beta3");
        assert!(v["stream"].is_null());
        assert_eq!(
            errors,
            vec![SourceError::new(
                "lua.stream",
                "ngx_stream_lua_module is not loaded"
            )]
        );
    }

    #[test]
    fn unknown_allocator_and_jit_are_null_with_reasons() {
        let mut s = sample();
        s.allocator = Err(LuaError::SystemAllocator);
        s.jit_enabled = Err(LuaError::GlobalLayoutPastGc);
        let mut errors = Vec::new();
        let lua = Lua::from_samples(Ok(s), Err(LuaError::NoBlock("stream")), &mut errors);
        let v: Value = serde_json::to_value(&lua).unwrap();
        assert!(v["http"]["allocator"].is_null());
        assert!(v["http"]["jit_enabled"].is_null());
        assert_eq!(v["http"]["gc_bytes"], 1_000_000);
        let sources: Vec<&str> = errors.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(
            sources,
            ["lua.http.allocator", "lua.http.jit", "lua.stream"]
        );
    }

    #[test]
    fn census_by_type() {
        let mut s = sample();
        let mut c = CensusSample {
            walked: 12,
            elapsed_us: 40,
            ..Default::default()
        };
        c.counts[0] = 10;
        c.bytes[0] = 400;
        c.counts[7] = 2;
        c.bytes[7] = 128;
        s.census = Some(Ok(c));
        let lua = Lua::from_samples(Ok(s), Err(LuaError::NoBlock("stream")), &mut Vec::new());
        let v: Value = serde_json::to_value(&lua).unwrap();
        let o = &v["http"]["objects"];
        assert_eq!(
            o["types"]["string"],
            serde_json::json!({"count": 10, "bytes": 400})
        );
        assert_eq!(o["types"]["table"]["count"], 2);
        assert_eq!(o["types"].as_object().unwrap().len(), 9);
        assert_eq!(o["bytes"], 528);
        assert_eq!(o["truncated"], false);
        // Not asked for: not in the answer at all.
        let lua = Lua::from_samples(
            Ok(sample()),
            Err(LuaError::NoBlock("stream")),
            &mut Vec::new(),
        );
        assert!(serde_json::to_value(&lua).unwrap()["http"]
            .get("objects")
            .is_none());
    }

    #[test]
    fn version_banner() {
        let blob = b"\x00\x01junk LuaJIT 2.1.0-beta3\x00more";
        assert_eq!(
            find_version_banner(blob).as_deref(),
            Some("LuaJIT 2.1.0-beta3")
        );
        assert_eq!(find_version_banner(b"no banner here"), None);
        assert_eq!(find_version_banner(b"LuaJIT 2."), Some("LuaJIT 2.".into()));
        let long = [b"LuaJIT 2.".as_slice(), &[b'x'; 200]].concat();
        assert_eq!(find_version_banner(&long).unwrap().len(), 64);
    }
}
