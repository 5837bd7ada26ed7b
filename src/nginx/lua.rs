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
use crate::analysis::lua::{
    find_version_banner, AllocatorSample, CensusSample, LuaError, LuaRuntime, LuaVmSample,
};
use crate::sources::errors::ResidencyError;
use crate::sources::procfs::Mapping;

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

/// Looked up once per process: loaded modules do not change in a worker's
/// life. In single-process mode a reload can unload the Lua module and load it
/// again elsewhere: a LuaJIT no longer where it was found is not called.
fn luajit() -> Result<&'static LuaJit, LuaError> {
    static LUAJIT: OnceLock<Result<LuaJit, LuaError>> = OnceLock::new();
    if LUAJIT.get().is_none() {
        // Looked up while memory ran short, its facts may be cut short: not
        // kept, looked up again next time.
        let mark = crate::alloc_guard::failures();
        let looked_up = find_luajit();
        if crate::alloc_guard::failures() != mark {
            return Err(LuaError::OutOfMemory);
        }
        let _ = LUAJIT.set(looked_up);
    }
    let found = LUAJIT
        .get()
        .ok_or(LuaError::OutOfMemory)?
        .as_ref()
        .map_err(Clone::clone)?;
    // SAFETY: dlsym on a NUL-terminated name.
    let now = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"lua_gc".as_ptr()) };
    if now != found.gc as *mut c_void {
        return Err(LuaError::LoadedElsewhere);
    }
    Ok(found)
}

fn find_luajit() -> Result<LuaJit, LuaError> {
    // SAFETY: dlsym on NUL-terminated names; the symbols have these C signatures.
    unsafe {
        let gc = libc::dlsym(libc::RTLD_DEFAULT, c"lua_gc".as_ptr());
        let getallocf = libc::dlsym(libc::RTLD_DEFAULT, c"lua_getallocf".as_ptr());
        if gc.is_null() || getallocf.is_null() {
            return Err(LuaError::NoLuaJit);
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
fn library_of(addr: *const c_void) -> Option<String> {
    // SAFETY: dladdr only looks `addr` up in the loader's tables (any value
    // is fine) and fills `info`; a zeroed Dl_info is a valid start.
    let (found, info) = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        (libc::dladdr(addr, &mut info), info)
    };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: the loader's own NUL-terminated name of a loaded object, which
    // stays loaded while it is copied here.
    let name = unsafe { CStr::from_ptr(info.dli_fname as *const c_char) };
    Some(name.to_string_lossy().into_owned())
}

/// The library's real path and the version banner in its read-only data
/// (called once per process, by `luajit()`).
fn runtime_of(library_path: Option<&str>) -> LuaRuntime {
    let Some(real) = library_path.and_then(|p| std::fs::canonicalize(p).ok()) else {
        return LuaRuntime::default();
    };
    let real = real.to_string_lossy().into_owned();
    let maps =
        crate::sources::procfs::read_proc_file("/proc/self/maps", 64 << 10).unwrap_or_default();
    let (maps, _) = Mapping::parse_all(&maps);
    let version = maps
        .iter()
        .filter(|m| m.path.as_ref() == real && m.read && !m.write && !m.exec)
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

/// Bounds of the GC object census: it walks the heap, so it stops at either.
#[derive(Debug, Clone, Copy)]
pub struct CensusLimits {
    pub max_objects: u64,
    pub max_time: std::time::Duration,
}

/// The http VM (`ngx_http_lua_module`) and the stream VM (`ngx_stream_lua_module`);
/// with `census`, each VM's GC objects counted too.
pub fn sample_vms(
    census: Option<CensusLimits>,
) -> (Result<LuaVmSample, LuaError>, Result<LuaVmSample, LuaError>) {
    let cycle = cycle::current();
    (
        sample_vm(
            cycle,
            "http",
            "ngx_http_module",
            "ngx_http_lua_module",
            census,
        ),
        sample_vm(
            cycle,
            "stream",
            "ngx_stream_module",
            "ngx_stream_lua_module",
            census,
        ),
    )
}

/// The main threads of the http and stream VMs, those the cycle has.
pub fn main_states() -> [Option<*mut c_void>; 2] {
    let cycle = cycle::current();
    [
        main_state(cycle, "http", "ngx_http_module", "ngx_http_lua_module").ok(),
        main_state(
            cycle,
            "stream",
            "ngx_stream_module",
            "ngx_stream_lua_module",
        )
        .ok(),
    ]
}

/// A VM's main thread, as the Lua module's main configuration holds it.
fn main_state(
    cycle: &ngx_cycle_t,
    block: &'static str,
    core: &'static str,
    lua_module: &'static str,
) -> Result<*mut c_void, LuaError> {
    let lua = cycle::module_by_name(cycle, lua_module).ok_or(LuaError::NotLoaded(lua_module))?;
    let core = cycle::module_by_name(cycle, core).ok_or(LuaError::NotLoaded(core))?;
    // SAFETY: the cycle's configuration contexts live as long as the cycle;
    // each pointer is checked before it is followed. cycle->conf_ctx[core.index]
    // is the subsystem's conf ctx, whose first field is its main_conf array;
    // the Lua module's main conf starts with its `lua_State *`
    // (lua-nginx-module and stream-lua-nginx-module alike).
    unsafe {
        let ctx = *cycle.conf_ctx.add(core.index) as *const *const *const *mut c_void;
        if ctx.is_null() || (*ctx).is_null() {
            return Err(LuaError::NoBlock(block));
        }
        let lmcf = *(*ctx).add(lua.ctx_index);
        if lmcf.is_null() || (*lmcf).is_null() {
            return Err(LuaError::NoVm(lua_module));
        }
        Ok(*lmcf)
    }
}

fn sample_vm(
    cycle: &ngx_cycle_t,
    block: &'static str,
    core: &'static str,
    lua_module: &'static str,
    census: Option<CensusLimits>,
) -> Result<LuaVmSample, LuaError> {
    let l = main_state(cycle, block, core, lua_module)?;
    let luajit = luajit()?;
    // SAFETY: the VM found is live and does not run meanwhile: this is the
    // loop's thread, between events, so LuaJIT's API, its global_State,
    // allocator and heap may be read (the contracts of `global_state`,
    // `sample_allocator`, `census_of` and `jit_enabled`), each of which
    // checks the layout before it trusts it.
    unsafe {
        let total =
            (luajit.gc)(l, LUA_GCCOUNT, 0) as u64 * 1024 + (luajit.gc)(l, LUA_GCCOUNTB, 0) as u64;
        let mut ud = std::ptr::null_mut();
        let allocf = (luajit.getallocf)(l, &mut ud);
        let g = global_state(l, allocf, ud, total);
        let allocator = sample_allocator(allocf, ud, luajit.library_path.as_deref());
        let census = census.map(|limits| {
            let g = g.clone()?;
            let segments = match &allocator {
                Ok(a) => a
                    .segment_ranges
                    .iter()
                    .map(|&(s, e)| (s as usize, e as usize))
                    .collect(),
                Err(e) => return Err(LuaError::AllocatorUnknown(Box::new(e.clone()))),
            };
            census_of(g, &Segments(segments), limits)
        });
        Ok(LuaVmSample {
            gc_bytes: total,
            allocator,
            jit_enabled: g.and_then(|g| jit_enabled(g)),
            runtime: luajit.runtime.clone(),
            census,
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
///
/// # Safety
/// `l` is a live `lua_State` of LuaJIT 2.1 (the VM's main thread, as the Lua
/// module's configuration holds it), read on the loop's thread while the VM
/// does not run.
unsafe fn global_state(
    l: *mut c_void,
    allocf: *mut c_void,
    ud: *mut c_void,
    gc_total: u64,
) -> Result<*const u8, LuaError> {
    // SAFETY: `glref` lies within the lua_State's fixed header, whatever the
    // build's layout (the caller's contract).
    let g: *const u8 = unsafe { read(l as *const u8, GLREF_OFFSET) };
    // The main thread and its global_State sit side by side in GG_State.
    let distance = (g as usize).wrapping_sub(l as usize);
    if g.is_null() || distance == 0 || distance > 4096 {
        return Err(LuaError::StateLayout);
    }
    // SAFETY: `g` is within 4 KiB past the lua_State, inside GG_State, whose
    // global_State spans more than its first three words; each is read only
    // once the one before it matched, as the API's figures say it should.
    let matches = unsafe {
        read::<*mut c_void>(g, G_ALLOCF) == allocf
            && read::<*mut c_void>(g, G_ALLOCD) == ud
            && read::<u64>(g, G_GC_TOTAL) == gc_total
    };
    if !matches {
        return Err(LuaError::GlobalLayout);
    }
    Ok(g)
}

/// Whether the VM's JIT compiler is on, after its empty string checked where
/// the GC64 layout puts it.
///
/// # Safety
/// `g` is a `global_State` that `global_state` accepted.
unsafe fn jit_enabled(g: *const u8) -> Result<bool, LuaError> {
    // SAFETY: the empty string's fields lie within global_State's first 160
    // bytes (the caller's contract: its layout was checked to be GC64's).
    let (gct, len, z) = unsafe {
        (
            read::<u8>(g, G_STREMPTY_GCT),
            read::<u32>(g, G_STREMPTY_LEN),
            read::<u8>(g, G_STREMPTYZ),
        )
    };
    if gct != GCT_STRING || len != 0 || z != 0 {
        return Err(LuaError::GlobalLayoutPastGc);
    }
    // SAFETY: `dispatchmode`, where the layout just checked puts it.
    let dispatch = unsafe { read::<u8>(g, G_DISPATCHMODE) };
    Ok(dispatch & DISPMODE_JIT != 0)
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
    let pages = (addr % page + len).div_ceil(page);
    let mut small = [0u8; 2];
    let mut large = Vec::new();
    let vec = if pages <= small.len() {
        &mut small[..]
    } else {
        large.resize(pages, 0u8);
        &mut large[..]
    };
    super::residency::mincore(addr, len, page, vec).is_ok()
}

/// lj_alloc's free lists as walked: bytes and chunks, and whether the walk
/// stopped at its bound.
#[derive(Default)]
struct FreeTally {
    bytes: u64,
    chunks: u64,
    truncated: bool,
}

impl FreeTally {
    /// Counts a free chunk by its head word; `false` once the bound is reached.
    fn add(&mut self, head: usize) -> bool {
        if self.chunks >= MAX_FREE_CHUNKS {
            self.truncated = true;
            return false;
        }
        self.bytes += chunk_size(head) as u64;
        self.chunks += 1;
        true
    }
}

fn unknown_allocator(what: &'static str) -> LuaError {
    LuaError::AllocatorLayout(what)
}

/// LuaJIT's own allocator (`lj_alloc`): its segments and its free chunks.
///
/// # Safety
/// `ud` is the `allocd` that `lua_getallocf` returned for a live VM, read on
/// the loop's thread while the VM does not run.
unsafe fn sample_allocator(
    allocf: *mut c_void,
    ud: *mut c_void,
    luajit_path: Option<&str>,
) -> Result<AllocatorSample, LuaError> {
    if ud.is_null() {
        return Err(LuaError::SystemAllocator);
    }
    if library_of(allocf).as_deref() != luajit_path {
        return Err(LuaError::ForeignAllocator);
    }
    let m = ud as *const MallocState;
    // SAFETY: `m` is lj_alloc's state, LuaJIT's own allocator being the VM's
    // (checked above; the caller's contract for the rest).
    let segments = unsafe { segment_list(m)? };
    // SAFETY: as above; each chunk is checked to lie in a segment first.
    let free = unsafe {
        check_state_and_top(m, &segments)?;
        let mut free = FreeTally::default();
        let (topsize, dvsize) = ((*m).topsize, (*m).dvsize);
        free.bytes = (topsize + dvsize) as u64;
        free.chunks = (topsize > 0) as u64 + (dvsize > 0) as u64;
        count_small_bins(m, &segments, &mut free)?;
        count_tree_bins(m, &segments, &mut free)?;
        free
    };
    let mapped_bytes: u64 = segments.0.iter().map(|&(b, e)| (e - b) as u64).sum();
    Ok(AllocatorSample {
        segments: segments.0.len() as u64,
        mapped_bytes,
        // Residency grows with the heap: measured apart (`measure`), off the loop.
        resident_bytes: Err(ResidencyError::NotMeasured),
        resident_age_ms: 0,
        free_bytes: free.bytes,
        free_chunks: free.chunks,
        walk_truncated: free.truncated,
        segment_ranges: segments
            .0
            .iter()
            .map(|&(b, e)| (b as u64, e as u64))
            .collect(),
    })
}

/// The allocator's segments. The first record is embedded in the state; each
/// later one was pushed into an older segment's tail, so it is checked to be
/// mapped before it is read, and to lie inside a segment once the list is
/// known.
///
/// # Safety
/// `m` is lj_alloc's `malloc_state` (see `sample_allocator`).
unsafe fn segment_list(m: *const MallocState) -> Result<Segments, LuaError> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize };
    let mut list = Vec::new();
    let mut records = Vec::new();
    // SAFETY: the first record is a field of the state (the caller's contract).
    let mut seg: *const Segment = unsafe { &(*m).seg };
    while !seg.is_null() {
        // SAFETY: the state's own record, or one checked mapped below before
        // the loop came back to it.
        let (base, size, next) = unsafe { ((*seg).base as usize, (*seg).size, (*seg).next) };
        if list.len() >= MAX_SEGMENTS
            || base == 0
            || base % page != 0
            || size == 0
            || size % page != 0
        {
            return Err(unknown_allocator("segment list"));
        }
        list.push((base, base + size));
        if !next.is_null() {
            if !is_mapped(next as usize, size_of::<Segment>(), page) {
                return Err(unknown_allocator("segment record not mapped"));
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
        return Err(unknown_allocator("segment record outside the segments"));
    }
    Ok(segments)
}

/// lj_alloc_create makes the state itself an in-use chunk of a segment: its
/// header's size is the struct's (with the trailing `prng` pointer), padded.
/// (Its "previous in use" bit may be clear: segments can grow downwards.)
/// The top chunk lies in a segment and its size is the state's `topsize`.
///
/// # Safety
/// `m` is lj_alloc's `malloc_state` (see `sample_allocator`).
unsafe fn check_state_and_top(m: *const MallocState, segments: &Segments) -> Result<(), LuaError> {
    if !segments.holds(m as usize - CHUNK_HEADER, STATE_CHUNK_SIZE) {
        return Err(unknown_allocator("state chunk"));
    }
    // SAFETY: the state's chunk header, checked above to lie in a segment.
    let state_head = unsafe { *(m as *const usize).sub(1) };
    if state_head & CINUSE_BIT == 0 || chunk_size(state_head) != STATE_CHUNK_SIZE {
        return Err(unknown_allocator("state chunk"));
    }
    // SAFETY: fields of the state; `top`'s head only once `top` is in a segment.
    let top_fits = unsafe {
        let (top, topsize) = ((*m).top, (*m).topsize);
        segments.holds(top as usize, size_of::<Chunk>()) && chunk_size((*top).head) == topsize
    };
    if !top_fits {
        return Err(unknown_allocator("top chunk"));
    }
    Ok(())
}

/// Small bins: circular lists through a fake chunk at `&smallbins[2 * i]`.
/// Only bins marked in `smallmap` hold chunks: emptying a bin leaves stale
/// links.
///
/// # Safety
/// `m` is lj_alloc's `malloc_state` (see `sample_allocator`).
unsafe fn count_small_bins(
    m: *const MallocState,
    segments: &Segments,
    free: &mut FreeTally,
) -> Result<(), LuaError> {
    // SAFETY: a field of the state.
    let smallmap = unsafe { (*m).smallmap };
    for i in (0..NSMALLBINS).filter(|i| smallmap & (1 << i) != 0) {
        // SAFETY: bin `i`'s fake chunk is inside the state's `smallbins`
        // array, whose `fd` word is the array's entry `2 * i + 2`.
        let bin = unsafe { (*m).smallbins.as_ptr().add(i * 2) as *const Chunk };
        // SAFETY: as above.
        let mut p = unsafe { (*bin).fd };
        while p != bin {
            if !segments.holds(p as usize, size_of::<Chunk>()) {
                return Err(unknown_allocator("small-bin chunk outside the segments"));
            }
            // SAFETY: `p` was just checked to lie in a segment.
            let (head, fd) = unsafe { ((*p).head, (*p).fd) };
            if !free.add(head) {
                return Ok(());
            }
            p = fd;
        }
    }
    Ok(())
}

/// Tree bins: tries of chunks, each node heading a ring of same-size chunks.
/// Only a node's own children are set; the rest of its ring has none.
///
/// # Safety
/// `m` is lj_alloc's `malloc_state` (see `sample_allocator`).
unsafe fn count_tree_bins(
    m: *const MallocState,
    segments: &Segments,
    free: &mut FreeTally,
) -> Result<(), LuaError> {
    // SAFETY: fields of the state.
    let (treemap, bins) = unsafe { ((*m).treemap, (*m).treebins) };
    let mut stack: Vec<*const TreeChunk> = (0..NTREEBINS)
        .filter(|i| treemap & (1 << i) != 0)
        .map(|i| bins[i])
        .filter(|t| !t.is_null())
        .collect();
    let outside = || Err(unknown_allocator("tree-bin chunk outside the segments"));
    while let Some(t) = stack.pop() {
        if !segments.holds(t as usize, size_of::<TreeChunk>()) {
            return outside();
        }
        // SAFETY: `t` was just checked to lie in a segment.
        stack.extend(
            unsafe { (*t).child }
                .iter()
                .copied()
                .filter(|c| !c.is_null()),
        );
        let mut u = t;
        loop {
            // SAFETY: `u` is `t` or was checked below before the loop came back.
            let (head, fd) = unsafe { ((*u).head, (*u).fd) };
            if !free.add(head) {
                return Ok(());
            }
            u = fd;
            if u == t {
                break;
            }
            if !segments.holds(u as usize, size_of::<TreeChunk>()) {
                return outside();
            }
        }
    }
    Ok(())
}

// --- The GC object census (LuaJIT 2.1, GC64) -----------------------------------

/// `global_State`: `gc.root` (the list of every GC object but strings and the
/// main thread), the string table `str.{tab,mask,num}`, and `nilnode` (the
/// shared empty hash part, two nil TValues).
const G_GC_ROOT: usize = 16 + 24;
const G_STR_TAB: usize = 152;
const G_STR_MASK: usize = 160;
const G_STR_NUM: usize = 164;
const G_NILNODE: usize = 248;
const NIL: u64 = u64::MAX;

/// Object sizes and field offsets of LuaJIT 2.1 with GC64 (lj_obj.h): every
/// object starts with `nextgc` (8 bytes), `marked`, `gct`.
const GCT_OFFSET: usize = 9;
const STR_HEADER: u64 = 24;
const STR_LEN: usize = 20;
const UPVAL_SIZE: u64 = 48;
const THREAD_SIZE: u64 = 112;
const THREAD_GLREF: usize = 16;
const THREAD_STACKSIZE: usize = 88;
const PROTO_SIZEPT: usize = 56;
const FUNC_FFID: usize = 10;
const FUNC_NUPVALUES: usize = 11;
const FUNC_L_BASE: u64 = 40;
const FUNC_C_BASE: u64 = 48;
const TAB_SIZE: u64 = 64;
const TAB_COLO: usize = 11;
const TAB_NODE: usize = 40;
const TAB_ASIZE: usize = 48;
const TAB_HMASK: usize = 52;
const NODE_SIZE: u64 = 24;
const UDATA_SIZE: u64 = 48;
const UDATA_LEN: usize = 24;
/// `marked` bit of a variable-length cdata, and its `GCcdataVar` just before it.
const CDATA_VAR: u8 = 0x80;
/// `GCcdataVar` fields, counted back from the cdata: extra at -6, len at -4.
const CDATA_VAR_EXTRA_BACK: usize = 6;
const CDATA_VAR_LEN_BACK: usize = 4;

/// The payload size of the allocator chunk an object starts: its head word is
/// the 8 bytes before it, size in all but the low 3 bits, "in use" set.
///
/// # Safety
/// The 8 bytes before `o` are readable (an object in the allocator's heap).
unsafe fn allocated_size(o: *const u8) -> Option<u64> {
    // SAFETY: the caller's contract.
    let head: usize = unsafe { std::ptr::read_unaligned(o.sub(8).cast()) };
    let size = chunk_size(head);
    (head & CINUSE_BIT != 0 && (16..(1 << 40)).contains(&size)).then(|| size as u64 - 8)
}

/// A `T` at `base + offset`, unaligned.
///
/// # Safety
/// `[base + offset, base + offset + size_of::<T>())` is readable memory and
/// any bit pattern is a valid `T` (plain integers and raw pointers here).
unsafe fn read<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned(base.add(offset).cast::<T>()) }
}

fn unknown_object(what: &'static str) -> LuaError {
    LuaError::ObjectLayout(what)
}

/// One walk of a VM's GC objects: what may be read, the bounds, the tally.
struct CensusWalk<'a> {
    g: *const u8,
    segments: &'a Segments,
    page: usize,
    limits: CensusLimits,
    started: std::time::Instant,
    /// `global_State.nilnode`: a table whose hash part is this has none.
    nilnode: usize,
    c: CensusSample,
}

/// Counts and sizes every GC object of the VM: read-only, allocates nothing in
/// the VM, changes no GC state. Every object pointer is checked to lie in the
/// allocator's segments (or in mapped memory, for directly mapped chunks)
/// before it is read; the string count must match the string table's own.
///
/// # Safety
/// `g` is a `global_State` that `global_state` accepted, of a VM that does
/// not run meanwhile (the loop's thread); `segments` are its allocator's.
unsafe fn census_of(
    g: *const u8,
    segments: &Segments,
    limits: CensusLimits,
) -> Result<CensusSample, LuaError> {
    // SAFETY: `nilnode`'s two words lie within global_State (GC64 layout,
    // the caller's contract).
    let nil = unsafe { [read::<u64>(g, G_NILNODE), read::<u64>(g, G_NILNODE + 8)] };
    if nil != [NIL, NIL] {
        return Err(unknown_object("global_State.nilnode"));
    }
    let mut walk = CensusWalk {
        g,
        segments,
        // SAFETY: a plain integer nginx sets at start.
        page: unsafe { ngx_pagesize },
        limits,
        started: std::time::Instant::now(),
        nilnode: g as usize + G_NILNODE,
        c: CensusSample::default(),
    };
    // SAFETY: the caller's contract, passed on.
    unsafe {
        walk.strings()?;
        walk.roots()?;
    }
    walk.c.elapsed_us = walk.started.elapsed().as_micros() as u64;
    Ok(walk.c)
}

impl CensusWalk<'_> {
    fn readable(&self, p: *const u8, len: usize) -> bool {
        !p.is_null()
            && (self.segments.holds(p as usize, len) || is_mapped(p as usize, len, self.page))
    }

    /// Whether the walk stops here: its object or time bound reached.
    fn over_limit(&mut self) -> bool {
        let c = &mut self.c;
        if c.walked >= self.limits.max_objects
            || (c.walked % 1024 == 0 && self.started.elapsed() >= self.limits.max_time)
        {
            c.truncated = true;
        }
        c.truncated
    }

    fn count(&mut self, index: usize, bytes: u64) {
        self.c.counts[index] += 1;
        self.c.bytes[index] += bytes;
        self.c.walked += 1;
    }

    /// Strings: chained from the string table's buckets (the low bit of an
    /// anchor is a flag).
    ///
    /// # Safety
    /// As `census_of`.
    unsafe fn strings(&mut self) -> Result<(), LuaError> {
        // SAFETY: fields of global_State (the caller's contract).
        let (tab, mask, num) = unsafe {
            (
                read::<*const u64>(self.g, G_STR_TAB),
                read::<u32>(self.g, G_STR_MASK),
                read::<u32>(self.g, G_STR_NUM),
            )
        };
        if !self.readable(tab as *const u8, (mask as usize + 1) * 8) {
            return Err(unknown_object("string table"));
        }
        self.c.string_table_bytes = (mask as u64 + 1) * 8;
        'strings: for i in 0..=mask as usize {
            // SAFETY: bucket `i` of the table, checked readable above.
            let mut o = unsafe { (*tab.add(i) & !1) as *const u8 };
            while !o.is_null() {
                if self.over_limit() {
                    break 'strings;
                }
                if !self.readable(o, STR_HEADER as usize) {
                    return Err(unknown_object("string chain"));
                }
                // SAFETY: the string's header, checked readable above.
                if unsafe { read::<u8>(o, GCT_OFFSET) } != GCT_STRING {
                    return Err(unknown_object("string chain"));
                }
                // SAFETY: the string's header, checked readable above.
                let (len, next) = unsafe { (read::<u32>(o, STR_LEN), read::<*const u8>(o, 0)) };
                self.count(0, STR_HEADER + ((len as u64 + 4) & !3));
                o = next;
            }
        }
        if !self.c.truncated && self.c.counts[0] != num as u64 {
            return Err(unknown_object(
                "string count differs from the string table's",
            ));
        }
        Ok(())
    }

    /// Everything but strings and the main thread: the root list.
    ///
    /// # Safety
    /// As `census_of`.
    unsafe fn roots(&mut self) -> Result<(), LuaError> {
        // SAFETY: a field of global_State (the caller's contract).
        let mut o: *const u8 = unsafe { read(self.g, G_GC_ROOT) };
        while !o.is_null() {
            if self.over_limit() {
                break;
            }
            if !self.readable(o, 16) {
                return Err(unknown_object("root list"));
            }
            // SAFETY: the object's first 16 bytes were checked readable.
            let (gct, next) = unsafe { (read::<u8>(o, GCT_OFFSET), read::<*const u8>(o, 0)) };
            // SAFETY: as above; `object_size` checks what it reads further.
            let (index, bytes) = unsafe { self.object_size(o, gct)? };
            self.count(index, bytes);
            o = next;
        }
        Ok(())
    }

    /// The census index and bytes of the object at `o` of type `gct`.
    ///
    /// # Safety
    /// `o`'s first 16 bytes are readable; it is an object of the root list.
    unsafe fn object_size(&self, o: *const u8, gct: u8) -> Result<(usize, u64), LuaError> {
        // SAFETY: `o` is a live object of the root list, in an allocator
        // chunk of the VM's heap (the caller's contract). A thread and a
        // table are checked readable whole before their fields are read; an
        // upvalue, proto, function or userdata is read within the fixed
        // header its type has (lj_obj.h, GC64), inside its own chunk; a
        // trace's and a fixed cdata's sizes come from the chunk header 8
        // bytes before them, a variable cdata's from the `GCcdataVar` that
        // LuaJIT puts right before it in the same chunk.
        unsafe {
            Ok(match gct {
                5 => (1, UPVAL_SIZE),
                6 => {
                    if !self.readable(o, THREAD_SIZE as usize)
                        || read::<*const u8>(o, THREAD_GLREF) != self.g
                    {
                        return Err(unknown_object("thread"));
                    }
                    (2, THREAD_SIZE + read::<u32>(o, THREAD_STACKSIZE) as u64 * 8)
                }
                7 => (3, read::<u32>(o, PROTO_SIZEPT) as u64),
                8 => {
                    let n = read::<u8>(o, FUNC_NUPVALUES) as u64;
                    let base = if read::<u8>(o, FUNC_FFID) == 0 {
                        FUNC_L_BASE
                    } else {
                        FUNC_C_BASE
                    };
                    (4, base + 8 * n)
                }
                // A trace's size is its allocator chunk's, whose header precedes it.
                9 => (
                    5,
                    allocated_size(o).ok_or_else(|| unknown_object("trace chunk"))?,
                ),
                // cdata: a variable-length one has its length before it
                // (`GCcdataVar`: offset, extra, len); a fixed one is a whole
                // allocator chunk.
                10 if read::<u8>(o, 8) & CDATA_VAR != 0 => {
                    let extra: u16 = read(o.sub(CDATA_VAR_EXTRA_BACK), 0);
                    let len: u32 = read(o.sub(CDATA_VAR_LEN_BACK), 0);
                    (6, len as u64 + extra as u64)
                }
                10 => (
                    6,
                    allocated_size(o).ok_or_else(|| unknown_object("cdata chunk"))?,
                ),
                11 => (7, self.table_size(o)?),
                12 => (8, UDATA_SIZE + read::<u32>(o, UDATA_LEN) as u64),
                _ => return Err(unknown_object("object type in the root list")),
            })
        }
    }

    /// A table's own bytes: its header, its array part (colocated or not) and
    /// its hash part unless it is the shared empty one.
    ///
    /// # Safety
    /// `o` is a table of the root list whose first 16 bytes are readable.
    unsafe fn table_size(&self, o: *const u8) -> Result<u64, LuaError> {
        if !self.readable(o, TAB_SIZE as usize) {
            return Err(unknown_object("table"));
        }
        // SAFETY: the table's header, checked readable above.
        let (colo, asize, hmask, node) = unsafe {
            (
                read::<i8>(o, TAB_COLO),
                read::<u32>(o, TAB_ASIZE) as u64,
                read::<u32>(o, TAB_HMASK) as u64,
                read::<usize>(o, TAB_NODE),
            )
        };
        let mut bytes = TAB_SIZE;
        if colo != 0 {
            bytes += ((colo as u8) & 0x7f) as u64 * 8;
        }
        if colo <= 0 {
            bytes += asize * 8;
        }
        if node != self.nilnode {
            bytes += (hmask + 1) * NODE_SIZE;
        }
        Ok(bytes)
    }
}
