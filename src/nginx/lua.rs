//! Copies figures out of the LuaJIT VMs of the http and stream Lua modules.
//!
//! Found at run time: the VM is the first field of the Lua module's main
//! configuration, and LuaJIT's API comes from `dlsym` (nginx loads modules with
//! `RTLD_GLOBAL`), so this module neither links LuaJIT nor needs it. What is
//! read beyond the public API (the allocator's state, the JIT flag) is read only
//! after run-time checks that the layout is LuaJIT 2.1's with GC64 (x86_64's
//! default), as in OpenResty's luajit2 and Debian's libluajit2.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::size_of;
use std::sync::OnceLock;

use ngx::ffi::{ngx_cycle_t, ngx_pagesize};

use super::cycle;
use super::residency::resident_pages;
use crate::lua::{find_version_banner, AllocatorSample, LuaRuntime, LuaVmSample};
use crate::procfs::Mapping;

const LUA_GCCOUNT: c_int = 3;
const LUA_GCCOUNTB: c_int = 4;

type LuaGc = unsafe extern "C" fn(*mut c_void, c_int, c_int) -> c_int;
type LuaGetAllocf = unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> *mut c_void;

/// LuaJIT as loaded into this process.
struct LuaJit {
    gc: LuaGc,
    getallocf: LuaGetAllocf,
    /// The shared object holding `lua_gc`, as the dynamic linker names it.
    library_path: Option<String>,
    runtime: LuaRuntime,
}

/// Looked up once per process: loaded modules do not change in a worker's life.
fn luajit() -> Result<&'static LuaJit, String> {
    static LUAJIT: OnceLock<Result<LuaJit, String>> = OnceLock::new();
    LUAJIT
        .get_or_init(find_luajit)
        .as_ref()
        .map_err(Clone::clone)
}

fn find_luajit() -> Result<LuaJit, String> {
    // SAFETY: dlsym on NUL-terminated names; the symbols have these C signatures.
    unsafe {
        let gc = libc::dlsym(libc::RTLD_DEFAULT, c"lua_gc".as_ptr());
        let getallocf = libc::dlsym(libc::RTLD_DEFAULT, c"lua_getallocf".as_ptr());
        if gc.is_null() || getallocf.is_null() {
            return Err("LuaJIT's lua_gc/lua_getallocf not found in the process".into());
        }
        let library_path = library_of(gc);
        let runtime = runtime_of(library_path.as_deref());
        Ok(LuaJit {
            gc: std::mem::transmute::<*mut c_void, LuaGc>(gc),
            getallocf: std::mem::transmute::<*mut c_void, LuaGetAllocf>(getallocf),
            library_path,
            runtime,
        })
    }
}

/// The shared object that holds `addr`, as the dynamic linker names it.
unsafe fn library_of(addr: *const c_void) -> Option<String> {
    let mut info: libc::Dl_info = std::mem::zeroed();
    if libc::dladdr(addr, &mut info) == 0 || info.dli_fname.is_null() {
        return None;
    }
    Some(
        CStr::from_ptr(info.dli_fname as *const c_char)
            .to_string_lossy()
            .into_owned(),
    )
}

/// The library's real path and the version banner in its read-only data.
fn runtime_of(library_path: Option<&str>) -> LuaRuntime {
    let Some(real) = library_path.and_then(|p| std::fs::canonicalize(p).ok()) else {
        return LuaRuntime::default();
    };
    let real = real.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let (maps, _) = Mapping::parse_all(&maps);
    let version = maps
        .iter()
        .filter(|m| m.path == real && m.read && !m.write && !m.exec)
        .find_map(|m| {
            // SAFETY: a readable, file-backed mapping of the library, which stays
            // loaded for the process's life.
            let bytes = unsafe {
                std::slice::from_raw_parts(m.start as *const u8, m.size_bytes() as usize)
            };
            find_version_banner(bytes)
        });
    LuaRuntime {
        version,
        library: Some(real),
    }
}

/// The http VM (`ngx_http_lua_module`) and the stream VM (`ngx_stream_lua_module`).
pub fn sample_vms() -> (Result<LuaVmSample, String>, Result<LuaVmSample, String>) {
    let cycle = cycle::current();
    (
        sample_vm(cycle, "http", "ngx_http_module", "ngx_http_lua_module"),
        sample_vm(
            cycle,
            "stream",
            "ngx_stream_module",
            "ngx_stream_lua_module",
        ),
    )
}

fn sample_vm(
    cycle: &ngx_cycle_t,
    block: &str,
    core: &str,
    lua_module: &str,
) -> Result<LuaVmSample, String> {
    let lua = cycle::module_by_name(cycle, lua_module)
        .ok_or_else(|| format!("{lua_module} is not loaded"))?;
    let core = cycle::module_by_name(cycle, core).ok_or_else(|| format!("{core} is not loaded"))?;
    let luajit = luajit()?;
    // SAFETY: the cycle's configuration contexts live as long as the cycle; each
    // pointer is checked before it is followed.
    unsafe {
        // cycle->conf_ctx[core.index] is the subsystem's conf ctx, whose first
        // field is its main_conf array; the Lua module's main conf starts with
        // its `lua_State *` (lua-nginx-module and stream-lua-nginx-module alike).
        let ctx = *cycle.conf_ctx.add(core.index) as *const *const *const *mut c_void;
        if ctx.is_null() || (*ctx).is_null() {
            return Err(format!("no {block} block"));
        }
        let lmcf = *(*ctx).add(lua.ctx_index);
        if lmcf.is_null() || (*lmcf).is_null() {
            return Err(format!("{lua_module} has no Lua VM"));
        }
        let l = *lmcf;
        let total =
            (luajit.gc)(l, LUA_GCCOUNT, 0) as u64 * 1024 + (luajit.gc)(l, LUA_GCCOUNTB, 0) as u64;
        let mut ud = std::ptr::null_mut();
        let allocf = (luajit.getallocf)(l, &mut ud);
        let g = global_state(l, allocf, ud, total);
        Ok(LuaVmSample {
            gc_bytes: total,
            allocator: sample_allocator(allocf, ud, luajit.library_path.as_deref()),
            jit_enabled: g.and_then(|g| jit_enabled(g)),
            runtime: luajit.runtime.clone(),
        })
    }
}

// --- global_State (LuaJIT 2.1, GC64) ---------------------------------------

/// `lua_State.glref`: after the GC header (8 + 1 + 1), dummy_ffid and status.
const GLREF_OFFSET: usize = 16;
/// `global_State`: allocf 0, allocd 8, gc.total 16; `strempty` (a GCstr) at 120
/// with gct at +9 and len at +20; `stremptyz` 144; `dispatchmode` 146.
const G_ALLOCF: usize = 0;
const G_ALLOCD: usize = 8;
const G_GC_TOTAL: usize = 16;
const G_STREMPTY_GCT: usize = 120 + 9;
const G_STREMPTY_LEN: usize = 120 + 20;
const G_STREMPTYZ: usize = 144;
const G_DISPATCHMODE: usize = 146;
const GCT_STRING: u8 = 4; // ~LJ_TSTR
const DISPMODE_JIT: u8 = 0x10;

/// The VM's `global_State`, once three fields read through our layout match
/// what LuaJIT's own API returned.
unsafe fn global_state(
    l: *mut c_void,
    allocf: *mut c_void,
    ud: *mut c_void,
    gc_total: u64,
) -> Result<*const u8, String> {
    let g = *(l as *const u8).add(GLREF_OFFSET).cast::<*const u8>();
    // The main thread and its global_State sit side by side in GG_State.
    let distance = (g as usize).wrapping_sub(l as usize);
    if g.is_null() || distance == 0 || distance > 4096 {
        return Err("unrecognized lua_State layout (not LuaJIT 2.1 GC64)".into());
    }
    if *g.add(G_ALLOCF).cast::<*mut c_void>() != allocf
        || *g.add(G_ALLOCD).cast::<*mut c_void>() != ud
        || *g.add(G_GC_TOTAL).cast::<u64>() != gc_total
    {
        return Err("unrecognized global_State layout (not LuaJIT 2.1 GC64)".into());
    }
    Ok(g)
}

unsafe fn jit_enabled(g: *const u8) -> Result<bool, String> {
    if *g.add(G_STREMPTY_GCT) != GCT_STRING
        || *g.add(G_STREMPTY_LEN).cast::<u32>() != 0
        || *g.add(G_STREMPTYZ) != 0
    {
        return Err("unrecognized global_State layout past the GC state".into());
    }
    Ok(*g.add(G_DISPATCHMODE) & DISPMODE_JIT != 0)
}

// --- lj_alloc's malloc_state (LuaJIT 2.1) ------------------------------------

// Mirrors of LuaJIT's structs; some fields are only there for the layout.
#[allow(dead_code)]
#[repr(C)]
struct Chunk {
    prev_foot: usize,
    head: usize,
    fd: *const Chunk,
    bk: *const Chunk,
}

#[allow(dead_code)]
#[repr(C)]
struct TreeChunk {
    prev_foot: usize,
    head: usize,
    fd: *const TreeChunk,
    bk: *const TreeChunk,
    child: [*const TreeChunk; 2],
    parent: *const TreeChunk,
    index: u32,
}

#[repr(C)]
struct Segment {
    base: *const u8,
    size: usize,
    next: *const Segment,
}

const NSMALLBINS: usize = 32;
const NTREEBINS: usize = 32;

#[allow(dead_code)]
#[repr(C)]
struct MallocState {
    smallmap: u32,
    treemap: u32,
    dvsize: usize,
    topsize: usize,
    dv: *const Chunk,
    top: *const Chunk,
    trim_check: usize,
    release_checks: usize,
    smallbins: [*const Chunk; (NSMALLBINS + 1) * 2],
    treebins: [*const TreeChunk; NTREEBINS],
    seg: Segment,
}

const CINUSE_BIT: usize = 2;
const INUSE_BITS: usize = 3;
/// `pad_request(sizeof(struct malloc_state))`: 872 bytes (our mirror plus the
/// `prng` pointer) + 8 of overhead, rounded to 8.
const STATE_CHUNK_SIZE: usize = (size_of::<MallocState>() + 8 + 8 + 7) & !7;
/// `chunk2mem`: a chunk's payload starts two words in.
const CHUNK_HEADER: usize = 16;
const MAX_SEGMENTS: usize = 1 << 16;
/// Free chunks walked at most; past it the walk stops and says so.
const MAX_FREE_CHUNKS: u64 = 1 << 20;

fn chunk_size(head: usize) -> usize {
    head & !INUSE_BITS
}

/// The allocator's segments, sorted, to check every pointer before following it.
struct Segments(Vec<(usize, usize)>);

impl Segments {
    fn holds(&self, addr: usize, len: usize) -> bool {
        let i = self.0.partition_point(|&(base, _)| base <= addr);
        i > 0
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.0[i - 1].1)
    }
}

/// Whether `[addr, addr + len)` is mapped: `mincore` fails with ENOMEM where not.
fn is_mapped(addr: usize, len: usize, page: usize) -> bool {
    let start = addr - addr % page;
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut vec = [0u8; 2];
    let pages = (end - start).div_ceil(page);
    // SAFETY: mincore only inspects the page tables; `vec` holds `pages` (<= 2) entries.
    pages <= vec.len()
        && unsafe { libc::mincore(start as *mut c_void, end - start, vec.as_mut_ptr()) } == 0
}

unsafe fn sample_allocator(
    allocf: *mut c_void,
    ud: *mut c_void,
    luajit_path: Option<&str>,
) -> Result<AllocatorSample, String> {
    if ud.is_null() {
        return Err("LuaJIT uses the system allocator (LUAJIT_USE_SYSMALLOC): \
                    its memory is counted in glibc's"
            .into());
    }
    if library_of(allocf).as_deref() != luajit_path {
        return Err(
            "the VM's allocator is not LuaJIT's own (lua_setallocf): layout unknown".into(),
        );
    }
    let m = ud as *const MallocState;
    let page = ngx_pagesize;
    let unknown = |what: &str| format!("unrecognized LuaJIT allocator layout: {what}");

    // Segments: the first record is embedded in the state; each later one was
    // pushed into an older segment's tail, so it is checked to be mapped before
    // it is read, and to lie inside a segment once the list is known.
    let mut list = Vec::new();
    let mut records = Vec::new();
    let mut seg: *const Segment = &(*m).seg;
    while !seg.is_null() {
        let (base, size) = ((*seg).base as usize, (*seg).size);
        if list.len() >= MAX_SEGMENTS
            || base == 0
            || base % page != 0
            || size == 0
            || size % page != 0
        {
            return Err(unknown("segment list"));
        }
        list.push((base, base + size));
        let next = (*seg).next;
        if !next.is_null() {
            if !is_mapped(next as usize, size_of::<Segment>(), page) {
                return Err(unknown("segment record not mapped"));
            }
            records.push(next as usize);
        }
        seg = next;
    }
    list.sort_unstable();
    let segments = Segments(list);
    if !records
        .iter()
        .all(|&r| segments.holds(r, size_of::<Segment>()))
    {
        return Err(unknown("segment record outside the segments"));
    }
    // lj_alloc_create makes the state itself an in-use chunk of a segment: its
    // header's size is the struct's (with the trailing `prng` pointer), padded.
    // (Its "previous in use" bit may be clear: segments can grow downwards.)
    let state_head = *(m as *const usize).sub(1);
    if !segments.holds(m as usize - CHUNK_HEADER, STATE_CHUNK_SIZE)
        || state_head & CINUSE_BIT == 0
        || chunk_size(state_head) != STATE_CHUNK_SIZE
    {
        return Err(unknown("state chunk"));
    }
    let (top, topsize, dvsize) = ((*m).top, (*m).topsize, (*m).dvsize);
    if !segments.holds(top as usize, size_of::<Chunk>()) || chunk_size((*top).head) != topsize {
        return Err(unknown("top chunk"));
    }

    let mut free_bytes = (topsize + dvsize) as u64;
    let mut free_chunks = (topsize > 0) as u64 + (dvsize > 0) as u64;
    let mut truncated = false;

    // Small bins: circular lists through a fake chunk at &smallbins[2 * i]. Only
    // bins marked in `smallmap` hold chunks: emptying a bin leaves stale links.
    let (smallmap, treemap) = ((*m).smallmap, (*m).treemap);
    'small: for i in (0..NSMALLBINS).filter(|i| smallmap & (1 << i) != 0) {
        let bin = (*m).smallbins.as_ptr().add(i * 2) as *const Chunk;
        let mut p = (*bin).fd;
        while p != bin {
            if !segments.holds(p as usize, size_of::<Chunk>()) {
                return Err(unknown("small-bin chunk outside the segments"));
            }
            if free_chunks >= MAX_FREE_CHUNKS {
                truncated = true;
                break 'small;
            }
            free_bytes += chunk_size((*p).head) as u64;
            free_chunks += 1;
            p = (*p).fd;
        }
    }

    // Tree bins: tries of chunks, each node heading a ring of same-size chunks.
    // Only a node's own children are set; the rest of its ring has none.
    let mut stack: Vec<*const TreeChunk> = (0..NTREEBINS)
        .filter(|i| treemap & (1 << i) != 0)
        .map(|i| (*m).treebins[i])
        .filter(|t| !t.is_null())
        .collect();
    'tree: while let Some(t) = stack.pop() {
        if !segments.holds(t as usize, size_of::<TreeChunk>()) {
            return Err(unknown("tree-bin chunk outside the segments"));
        }
        stack.extend((*t).child.iter().copied().filter(|c| !c.is_null()));
        let mut u = t;
        loop {
            if free_chunks >= MAX_FREE_CHUNKS {
                truncated = true;
                break 'tree;
            }
            free_bytes += chunk_size((*u).head) as u64;
            free_chunks += 1;
            u = (*u).fd;
            if u == t {
                break;
            }
            if !segments.holds(u as usize, size_of::<TreeChunk>()) {
                return Err(unknown("tree-bin chunk outside the segments"));
            }
        }
    }

    let mapped_bytes: u64 = segments.0.iter().map(|&(b, e)| (e - b) as u64).sum();
    let resident = segments.0.iter().try_fold(0u64, |sum, &(b, e)| {
        resident_pages(b as *mut c_void, e - b, page).map(|p| sum + p * page as u64)
    });
    Ok(AllocatorSample {
        segments: segments.0.len() as u64,
        mapped_bytes,
        resident_bytes: resident,
        free_bytes,
        free_chunks,
        walk_truncated: truncated,
        segment_ranges: segments
            .0
            .iter()
            .map(|&(b, e)| (b as u64, e as u64))
            .collect(),
    })
}
