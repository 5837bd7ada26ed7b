//! The article's two pies, from inside the worker: where resident memory goes,
//! owner by owner, and how the virtual address space splits.
//!
//! The rule: every owner's `resident_bytes` is this process's resident memory
//! that the owner's own ranges or a kernel counter account for, and
//! `unattributed.resident_bytes` is `process.resident_bytes` minus their sum, so
//! the owners and `unattributed` add up to RSS exactly, at every depth.

use std::collections::BTreeMap;

use crate::model::breakdown::Breakdown;
use crate::model::breakdown::Depth;
use crate::model::breakdown::MappingView;
use crate::model::breakdown::Owner;
use crate::model::breakdown::VirtualSplit;
use crate::model::lua::{Lua, LuaVm};
use crate::model::process::ProcessMemory;
use crate::model::source_error::SourceError;
use crate::model::zones::Zone;
use crate::sources::errors::SampleError;
use crate::sources::procfs::{Mapping, SmapsEntry};

/// glibc's allocator, from `mallinfo2()` and `mincore` over the main heap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlibcSample {
    /// `uordblks`: in use in the arenas.
    pub arena_in_use_bytes: u64,
    /// `fordblks`: free in the arenas, held by the allocator.
    pub free_bytes: u64,
    /// `arena`: taken from the system for the arenas (brk and arena heaps).
    pub arena_bytes: u64,
    /// `hblkhd`, `hblks`: chunks mapped directly with mmap.
    pub mmapped_bytes: u64,
    pub mmapped_chunks: u64,
    /// `<heap nr=...>` entries of `malloc_info()`: detail depth only.
    pub arenas: Option<u64>,
    /// The heaps of every arena, as found in the address space.
    pub heaps: Result<GlibcHeaps, SampleError>,
}

/// glibc's heaps: the main arena's `[heap]` pieces and other arenas' heaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlibcHeaps {
    /// Mappings named `[heap]`, and the bytes of them the main arena took.
    pub main_pieces: u64,
    pub main_bytes: u64,
    /// `[heap]` bytes beyond the main arena's: the program break grown by
    /// another allocator (tcmalloc).
    pub break_beyond_glibc_bytes: u64,
    /// Heaps of other arenas, and what their arenas use of them (`heap_info.size`).
    pub arena_heaps: u64,
    pub arena_heap_bytes: u64,
    /// Resident pages of all of them (`mincore`).
    pub resident_bytes: u64,
    /// Their address ranges (an arena heap's whole reservation).
    pub ranges: Vec<(u64, u64)>,
}

/// Whose large allocation a directly mapped chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// glibc's `malloc` above its mmap threshold.
    Glibc,
    /// LuaJIT's allocator, for allocations of 128 KiB and more.
    LuaJit,
}

/// A chunk an allocator mapped by itself, found by its header at the start of
/// an anonymous mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedChunk {
    pub kind: ChunkKind,
    pub start: u64,
    pub end: u64,
    pub resident_bytes: u64,
}

/// Tells a directly mapped chunk from the two words at the start of its mapping
/// (`prev`, `head`), and how long its mapping is. `fencepost` reads the word at
/// an offset into the chunk (LuaJIT marks the end of its chunks). `None`: not a
/// chunk either allocator would have written there.
pub fn mapped_chunk_at(
    prev: u64,
    head: u64,
    page_size: u64,
    mut fencepost: impl FnMut(u64) -> Option<u64>,
) -> Option<(ChunkKind, u64)> {
    let size = head & !7;
    if size == 0 || page_size == 0 {
        return None;
    }
    // glibc: prev_size is the alignment offset (0 for malloc), the size word has
    // IS_MMAPPED alone, and the chunk is the whole mapping.
    if prev == 0 && head & 7 == 2 && size % page_size == 0 {
        return Some((ChunkKind::Glibc, size));
    }
    // LuaJIT (direct_alloc): prev_foot is offset 0 | IS_DIRECT_BIT, head has
    // CINUSE alone, a fencepost head (INUSE_BITS | 8) follows the chunk, and the
    // mapping is the chunk plus a four-word foot.
    if prev == 1 && head & 7 == 2 && (size + 32) % page_size == 0 && fencepost(size + 8) == Some(11)
    {
        return Some((ChunkKind::LuaJit, size + 32));
    }
    None
}

/// The parts of `[start, end)` outside every range of `skip`.
pub fn uncovered(start: u64, end: u64, skip: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut inside: Vec<(u64, u64)> = skip
        .iter()
        .filter(|&&(s, e)| s < end && start < e)
        .map(|&(s, e)| (s.max(start), e.min(end)))
        .collect();
    inside.sort_unstable();
    let mut gaps = Vec::new();
    let mut at = start;
    for (s, e) in inside {
        if s > at {
            gaps.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        gaps.push((at, end));
    }
    gaps
}

/// One thread's stack: its mapping's size and resident part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSample {
    /// `main`, or the thread id.
    pub thread: String,
    pub start: u64,
    pub end: u64,
    pub resident_bytes: u64,
}

/// jemalloc or tcmalloc, with its own numeric statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherAllocatorSample {
    pub name: &'static str,
    /// What the allocator says is allocated to the application.
    pub allocated_bytes: u64,
    /// Every statistic read, under the allocator's own name.
    pub stats: BTreeMap<String, u64>,
}

pub struct Inputs<'a> {
    pub depth: Depth,
    pub process: &'a ProcessMemory,
    pub maps: &'a Result<Vec<Mapping>, SampleError>,
    pub smaps: Option<&'a Result<Vec<SmapsEntry>, SampleError>>,
    pub glibc: Result<GlibcSample, SampleError>,
    pub zones: &'a [Zone],
    pub lua: &'a Lua,
    pub stacks: Result<Vec<StackSample>, SampleError>,
    pub other_allocators: Result<Option<OtherAllocatorSample>, SampleError>,
    /// Chunks glibc and LuaJIT mapped directly, found in anonymous mappings.
    pub mapped_chunks: &'a [MappedChunk],
    /// The program's data outside its files' pages (default depth).
    pub program_data: Result<ProgramDataSample, SampleError>,
    /// Where that data lies.
    pub program_ranges: &'a ProgramDataRanges,
}

impl VirtualSplit {
    pub fn from_process(p: &ProcessMemory) -> VirtualSplit {
        let untouched = match (p.virtual_bytes, p.resident_bytes, p.swap_bytes) {
            (Some(v), Some(r), Some(s)) => Some(v.saturating_sub(r + s)),
            _ => None,
        };
        VirtualSplit {
            virtual_bytes: p.virtual_bytes,
            resident_bytes: p.resident_bytes,
            swap_bytes: p.swap_bytes,
            untouched_bytes: untouched,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerId {
    Glibc,
    Shm,
    LuaHttp,
    LuaStream,
    Text,
    Stacks,
    Unattributed,
}

impl OwnerId {
    /// The owner's name in the answer.
    fn name(self) -> &'static str {
        match self {
            OwnerId::Glibc => "glibc",
            OwnerId::Shm => "shm",
            OwnerId::LuaHttp => "lua_http",
            OwnerId::LuaStream => "lua_stream",
            OwnerId::Text => "text",
            OwnerId::Stacks => "stacks",
            OwnerId::Unattributed => "unattributed",
        }
    }
}

fn details<const N: usize>(
    pairs: [(&'static str, serde_json::Value); N],
) -> BTreeMap<&'static str, serde_json::Value> {
    pairs.into_iter().collect()
}

fn owner(bytes: u64, measure: &'static str, resident: Option<u64>) -> Owner {
    Owner {
        bytes,
        measure,
        resident_bytes: resident.map(|r| r as i64),
        pss_bytes: None,
        details: BTreeMap::new(),
        mappings: None,
    }
}

/// Where the program's data lies beyond its files' pages: its files' private
/// mappings (relocated data and RELRO, whose written pages became anonymous
/// copies) and each loaded object's `.bss` beyond its file's last page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramDataRanges {
    pub private: Vec<(u64, u64)>,
    pub bss: Vec<(u64, u64)>,
}

/// A loadable segment of a loaded object (`PT_LOAD`), at its address in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    pub start: u64,
    pub file_bytes: u64,
    pub memory_bytes: u64,
}

impl ProgramDataRanges {
    /// `segments`: every loaded object's loadable segments (the dynamic
    /// loader's list); their `.bss` is what a segment holds beyond its file's
    /// bytes, past the page the file's bytes end in (that page is a private
    /// file mapping). An anonymous mapping that merely follows a file is not
    /// taken for `.bss`: the kernel may have put anything there.
    pub fn of(maps: &[Mapping], segments: &[LoadSegment], page_size: u64) -> ProgramDataRanges {
        let files = program_files(maps);
        let is_program = |m: &Mapping| !m.shared && files.binary_search(&m.path.as_ref()).is_ok();
        // Only written pages become copies: the writable mappings, and RELRO,
        // the read-only mapping right before a writable one of the same file
        // (written by relocation, then made read-only). Code and read-only
        // data are never written.
        let mut private: Vec<(u64, u64)> = Vec::new();
        for (i, m) in maps.iter().enumerate() {
            let next = maps.get(i + 1);
            let relro = !m.write
                && !m.exec
                && next.is_some_and(|n| n.write && n.path == m.path && n.start == m.end);
            if is_program(m) && (m.write || relro) {
                match private.last_mut() {
                    Some(last) if last.1 == m.start => last.1 = m.end,
                    _ => private.push((m.start, m.end)),
                }
            }
        }
        let page_up = |n: u64| n.div_ceil(page_size.max(1)) * page_size.max(1);
        let mut bss: Vec<(u64, u64)> = segments
            .iter()
            .filter(|s| s.memory_bytes > s.file_bytes)
            .map(|s| {
                (
                    page_up(s.start + s.file_bytes),
                    page_up(s.start + s.memory_bytes),
                )
            })
            .filter(|(start, end)| start < end)
            .collect();
        bss.sort_unstable();
        ProgramDataRanges { private, bss }
    }
}

/// The program's data measured: copied-on-write pages of its files' writable
/// mappings (from `/proc/self/pagemap`) and resident `.bss` pages (`mincore`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramDataSample {
    pub copied_bytes: u64,
    pub bss_resident_bytes: u64,
}

/// Pages of a private file mapping that are anonymous copies: present, and not
/// a file page (`/proc/PID/pagemap`: bit 63 present, bit 61 file or shared).
/// `pagemap` is the file's bytes as read: one native-endian `u64` a page.
pub fn copied_pages(pagemap: &[u8]) -> u64 {
    const PRESENT: u64 = 1 << 63;
    const FILE_OR_SHARED: u64 = 1 << 61;
    pagemap
        .chunks_exact(8)
        .map(|entry| u64::from_ne_bytes(entry.try_into().unwrap_or([0; 8])))
        .filter(|&e| e & PRESENT != 0 && e & FILE_OR_SHARED == 0)
        .count() as u64
}

/// Files that have an executable mapping: the nginx binary and shared objects.
fn program_files(maps: &[Mapping]) -> Vec<&str> {
    let mut files: Vec<&str> = maps
        .iter()
        .filter(|m| m.exec && m.path.starts_with('/') && m.inode != 0)
        .map(|m| m.path.as_ref())
        .collect();
    files.sort_unstable();
    files.dedup();
    files
}

fn overlaps(m: &Mapping, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|&(s, e)| s < m.end && m.start < e)
}

/// Tells which owner a mapping belongs to, from the ranges each owner's own
/// source names.
struct Classifier<'a> {
    files: Vec<&'a str>,
    bss: Vec<(u64, u64)>,
    /// glibc's heaps (every arena's) and its directly mapped chunks.
    glibc: Vec<(u64, u64)>,
    stacks: Vec<(u64, u64)>,
    lua_segments: [Vec<(u64, u64)>; 2],
    luajit_chunks: Vec<(u64, u64)>,
    /// LuaJIT's direct chunks carry no mark of their VM: with one VM they are
    /// its own, with two they cannot be told apart and stay unattributed.
    single_vm: Option<OwnerId>,
}

impl<'a> Classifier<'a> {
    fn new(inputs: &Inputs<'_>, maps: &'a [Mapping]) -> Classifier<'a> {
        let chunks = |kind: ChunkKind| -> Vec<(u64, u64)> {
            inputs
                .mapped_chunks
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| (c.start, c.end))
                .collect()
        };
        let segments = |vm: &Option<LuaVm>| -> Vec<(u64, u64)> {
            vm.as_ref()
                .and_then(|v| v.allocator.as_ref())
                .map(|a| a.segment_ranges.clone())
                .unwrap_or_default()
        };
        let mut glibc = chunks(ChunkKind::Glibc);
        if let Ok(GlibcSample { heaps: Ok(h), .. }) = &inputs.glibc {
            glibc.extend(h.ranges.iter().copied());
        }
        Classifier {
            files: program_files(maps),
            bss: inputs.program_ranges.bss.clone(),
            glibc,
            stacks: match &inputs.stacks {
                Ok(stacks) => stacks.iter().map(|s| (s.start, s.end)).collect(),
                Err(_) => Vec::new(),
            },
            lua_segments: [segments(&inputs.lua.http), segments(&inputs.lua.stream)],
            luajit_chunks: chunks(ChunkKind::LuaJit),
            single_vm: match (&inputs.lua.http, &inputs.lua.stream) {
                (Some(_), None) => Some(OwnerId::LuaHttp),
                (None, Some(_)) => Some(OwnerId::LuaStream),
                _ => None,
            },
        }
    }

    fn is_program_file(&self, m: &Mapping) -> bool {
        self.files.binary_search(&m.path.as_ref()).is_ok()
    }

    fn classify(&self, m: &Mapping) -> OwnerId {
        if m.shared {
            OwnerId::Shm
        } else if self.is_program_file(m) {
            OwnerId::Text
        } else if overlaps(m, &self.glibc) {
            OwnerId::Glibc
        } else if overlaps(m, &self.stacks) {
            OwnerId::Stacks
        } else if overlaps(m, &self.lua_segments[0]) {
            OwnerId::LuaHttp
        } else if overlaps(m, &self.lua_segments[1]) {
            OwnerId::LuaStream
        } else if let Some(vm) = self.single_vm.filter(|_| overlaps(m, &self.luajit_chunks)) {
            vm
        } else if overlaps(m, &self.bss) {
            // Last: the kernel may merge .bss with whatever is mapped after it.
            OwnerId::Text
        } else {
            OwnerId::Unattributed
        }
    }
}

/// What every owner's figures are built from.
struct Context<'a> {
    depth: Depth,
    process: &'a ProcessMemory,
    maps: &'a [Mapping],
    /// Detail depth: every mapping with its page-table counts.
    smaps: Option<&'a [SmapsEntry]>,
    classifier: Classifier<'a>,
    mapped_chunks: &'a [MappedChunk],
}

impl<'a> Context<'a> {
    /// Detail depth: every mapping under the owner it belongs to.
    fn grouped(&self, id: OwnerId) -> Option<Vec<&'a SmapsEntry>> {
        let smaps = self.smaps?;
        Some(
            smaps
                .iter()
                .filter(|e| self.classifier.classify(&e.mapping) == id)
                .collect(),
        )
    }

    /// Every mapping's PSS under the owner the classifier gives it.
    fn pss_by_owner(&self) -> Option<BTreeMap<&'static str, u64>> {
        let mut split = BTreeMap::new();
        for e in self.smaps? {
            *split
                .entry(self.classifier.classify(&e.mapping).name())
                .or_insert(0) += e.pss_bytes;
        }
        Some(split)
    }

    /// Adds detail's mapping list and PSS to an owner.
    fn with_mappings(&self, mut o: Owner, id: OwnerId) -> Owner {
        if let Some(entries) = self.grouped(id) {
            o.pss_bytes = Some(entries.iter().map(|e| e.pss_bytes).sum());
            o.mappings = Some(view(&entries));
        }
        o
    }

    /// Directly mapped chunks of one allocator: how many, and their resident bytes.
    fn chunks(&self, kind: ChunkKind) -> (u64, u64) {
        let mine = self.mapped_chunks.iter().filter(|c| c.kind == kind);
        (
            mine.clone().count() as u64,
            mine.map(|c| c.resident_bytes).sum(),
        )
    }
}

fn perms(m: &Mapping) -> String {
    [
        if m.read { 'r' } else { '-' },
        if m.write { 'w' } else { '-' },
        if m.exec { 'x' } else { '-' },
        if m.shared { 's' } else { 'p' },
    ]
    .iter()
    .collect()
}

fn view(entries: &[&SmapsEntry]) -> Vec<MappingView> {
    entries
        .iter()
        .map(|e| MappingView {
            path: e.mapping.path.to_string(),
            perms: perms(&e.mapping),
            size_bytes: e.mapping.size_bytes(),
            rss_bytes: e.rss_bytes,
            pss_bytes: e.pss_bytes,
            anonymous_bytes: e.anonymous_bytes,
            swap_bytes: e.swap_bytes,
        })
        .collect()
}

fn rss_sum(entries: &[&SmapsEntry]) -> u64 {
    entries.iter().map(|e| e.rss_bytes).sum()
}

impl Breakdown {
    pub fn build(inputs: Inputs<'_>, errors: &mut Vec<SourceError>) -> Breakdown {
        let maps: &[Mapping] = match inputs.maps {
            Ok(maps) => maps,
            Err(e) => {
                errors.push(SourceError::new("/proc/self/maps", e.to_string()));
                &[]
            }
        };
        let smaps: Option<&[SmapsEntry]> = match inputs.smaps {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                errors.push(SourceError::new("/proc/self/smaps", e.to_string()));
                None
            }
            None => None,
        };
        let cx = Context {
            depth: inputs.depth,
            process: inputs.process,
            maps,
            smaps,
            classifier: Classifier::new(&inputs, maps),
            mapped_chunks: inputs.mapped_chunks,
        };
        let mut breakdown = Breakdown {
            glibc: glibc_owner(&cx, &inputs.glibc, errors),
            shm: Some(shm_owner(&cx, inputs.zones)),
            lua_http: lua_owner(&cx, &inputs.lua.http, OwnerId::LuaHttp),
            lua_stream: lua_owner(&cx, &inputs.lua.stream, OwnerId::LuaStream),
            text: text_owner(&cx, &inputs.program_data, errors),
            stacks: stacks_owner(&cx, &inputs.stacks, errors),
            other_allocators: other_allocators_owner(inputs.other_allocators, errors),
            unattributed: owner(0, "resident", None),
            pss_by_owner: cx.pss_by_owner(),
        };
        // What no owner's own ranges account for: RSS less their shares.
        let attributed: i64 = breakdown
            .owners()
            .iter()
            .filter_map(|(_, o)| o.as_ref()?.resident_bytes)
            .sum();
        let rest = cx.process.resident_bytes.map(|rss| rss as i64 - attributed);
        let includes = unattributed_includes(&cx, breakdown.other_allocators.is_some());
        let (lua_chunks, lua_chunks_resident) = unattributed_lua_chunks(&cx, errors);
        let unattributed = &mut breakdown.unattributed;
        unattributed.bytes = rest.unwrap_or(0).max(0) as u64;
        unattributed.resident_bytes = rest;
        unattributed.details.insert("includes", includes.into());
        unattributed
            .details
            .insert("lua_direct_chunks_found", lua_chunks.into());
        unattributed
            .details
            .insert("lua_direct_resident_bytes", lua_chunks_resident.into());
        if let Some(entries) = cx.grouped(OwnerId::Unattributed) {
            unattributed.mappings = Some(view(&entries));
        }
        breakdown
    }
}

/// Memory known to be inside `unattributed` because its pages cannot be told
/// from other anonymous memory: another allocator's (jemalloc, tcmalloc), and
/// LuaJIT's direct chunks when two VMs could own them.
fn unattributed_includes(cx: &Context<'_>, other_allocator: bool) -> Vec<&'static str> {
    let mut includes = Vec::new();
    if other_allocator {
        includes.push("other_allocators");
    }
    if cx.classifier.single_vm.is_none() && cx.chunks(ChunkKind::LuaJit).0 > 0 {
        includes.push("lua_direct_chunks");
    }
    includes
}

/// LuaJIT's direct chunks left in `unattributed` (two VMs: a chunk carries no
/// mark of its VM), said in `errors` too: how many, and their resident bytes.
fn unattributed_lua_chunks(cx: &Context<'_>, errors: &mut Vec<SourceError>) -> (u64, u64) {
    if cx.classifier.single_vm.is_some() {
        return (0, 0);
    }
    let (found, resident) = cx.chunks(ChunkKind::LuaJit);
    if found > 0 {
        errors.push(SourceError::new(
            "breakdown.lua",
            format!(
                "{found} LuaJIT direct chunks ({resident} bytes resident) belong to the http or the \
                 stream VM, which nothing in them tells: counted in unattributed"
            ),
        ));
    }
    (found, resident)
}

/// glibc: what `mallinfo2` says is in use; resident is every arena's heap and
/// every directly mapped chunk.
fn glibc_owner(
    cx: &Context<'_>,
    glibc: &Result<GlibcSample, SampleError>,
    errors: &mut Vec<SourceError>,
) -> Option<Owner> {
    let g = match glibc {
        Ok(g) => g,
        Err(e) => {
            errors.push(SourceError::new("breakdown.glibc", e.to_string()));
            return None;
        }
    };
    let (chunks_found, chunks_resident) = cx.chunks(ChunkKind::Glibc);
    let heaps = match &g.heaps {
        Ok(h) => Some(h),
        Err(e) => {
            errors.push(SourceError::new("breakdown.glibc", format!("heaps: {e}")));
            None
        }
    };
    let resident = heaps.map(|h| h.resident_bytes + chunks_resident);
    let in_use = g.arena_in_use_bytes + g.mmapped_bytes;
    let mut o = owner(in_use, "allocated", resident);
    o.details = details([
        ("mmapped_chunks_found", chunks_found.into()),
        ("mmapped_resident_bytes", chunks_resident.into()),
        ("in_use_bytes", in_use.into()),
        ("free_bytes", g.free_bytes.into()),
        ("arena_bytes", g.arena_bytes.into()),
        ("mmapped_bytes", g.mmapped_bytes.into()),
        ("mmapped_chunks", g.mmapped_chunks.into()),
        ("arenas", g.arenas.into()),
        ("main_heap_pieces", heaps.map(|h| h.main_pieces).into()),
        ("main_heap_bytes", heaps.map(|h| h.main_bytes).into()),
        (
            "break_beyond_glibc_bytes",
            heaps.map(|h| h.break_beyond_glibc_bytes).into(),
        ),
        ("arena_heaps_found", heaps.map(|h| h.arena_heaps).into()),
        ("arena_heap_bytes", heaps.map(|h| h.arena_heap_bytes).into()),
        (
            "heap_resident_bytes",
            heaps.map(|h| h.resident_bytes).into(),
        ),
    ]);
    Some(cx.with_mappings(o, OwnerId::Glibc))
}

/// shm: every zone together. `bytes` is what is loaded (touched by any worker);
/// resident_bytes is what this worker has mapped (RssShmem).
fn shm_owner(cx: &Context<'_>, zones: &[Zone]) -> Owner {
    let loaded: u64 = zones.iter().filter_map(|z| z.loaded_bytes).sum();
    let resident = match (cx.depth, cx.grouped(OwnerId::Shm)) {
        (Depth::Full, Some(entries)) => Some(rss_sum(&entries)),
        _ => cx.process.resident_shmem_bytes,
    };
    let mut shm = owner(loaded, "loaded", resident);
    shm.details = details([
        ("zones", (zones.len() as u64).into()),
        (
            "size_bytes",
            zones.iter().map(|z| z.size_bytes).sum::<u64>().into(),
        ),
        (
            "mapped_bytes",
            zones.iter().map(|z| z.mapped_bytes).sum::<u64>().into(),
        ),
    ]);
    cx.with_mappings(shm, OwnerId::Shm)
}

/// A Lua VM: reasons for a missing VM are already in errors (lua.http, ...).
fn lua_owner(cx: &Context<'_>, vm: &Option<LuaVm>, id: OwnerId) -> Option<Owner> {
    let vm = vm.as_ref()?;
    let (direct_found, direct_resident) = if cx.classifier.single_vm == Some(id) {
        cx.chunks(ChunkKind::LuaJit)
    } else {
        (0, 0)
    };
    let allocator = vm.allocator.as_ref();
    let resident = allocator
        .and_then(|a| a.resident_bytes)
        .map(|r| r + direct_resident);
    let mut o = owner(vm.gc_bytes, "allocated", resident);
    o.details = details([
        (
            "allocator_mapped_bytes",
            allocator.map(|a| a.mapped_bytes).into(),
        ),
        (
            "allocator_free_bytes",
            allocator.map(|a| a.free_bytes).into(),
        ),
        ("direct_chunks_found", direct_found.into()),
        ("direct_resident_bytes", direct_resident.into()),
    ]);
    let mut o = cx.with_mappings(o, id);
    o.pss_bytes = None; // a mapping may hold more than the VM's segments
    Some(o)
}

/// text: executable mappings; resident is every resident page of the program's
/// files (code and read-only data) and of its data that became anonymous.
fn text_owner(
    cx: &Context<'_>,
    program_data: &Result<ProgramDataSample, SampleError>,
    errors: &mut Vec<SourceError>,
) -> Option<Owner> {
    if cx.maps.is_empty() {
        return None;
    }
    let files = &cx.classifier.files;
    let exec_bytes: u64 = cx
        .maps
        .iter()
        .filter(|m| m.exec && cx.classifier.is_program_file(m))
        .map(Mapping::size_bytes)
        .sum();
    let entries = cx.grouped(OwnerId::Text);
    let data = match program_data {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            errors.push(SourceError::new(
                "breakdown.text",
                format!("program data: {e}"),
            ));
            None
        }
    };
    // Default depth: the file pages (RssFile) plus the program's data that
    // became anonymous (copied-on-write pages, .bss).
    let resident = match (cx.depth, &entries) {
        (Depth::Full, Some(entries)) => Some(rss_sum(entries)),
        _ => cx.process.resident_file_bytes.map(|f| {
            f + data
                .as_ref()
                .map_or(0, |d| d.copied_bytes + d.bss_resident_bytes)
        }),
    };
    let mut o = owner(exec_bytes, "mapped", resident);
    o.details = details([
        ("files", (files.len() as u64).into()),
        (
            "data_copied_bytes",
            data.as_ref().map(|d| d.copied_bytes).into(),
        ),
        (
            "bss_resident_bytes",
            data.as_ref().map(|d| d.bss_resident_bytes).into(),
        ),
    ]);
    if let Some(entries) = &entries {
        o.details
            .insert("exec_resident_bytes", exec_rss(entries).into());
        o.details
            .insert("per_file", per_file(files, entries).into());
    }
    Some(cx.with_mappings(o, OwnerId::Text))
}

/// Resident bytes of the executable mappings among `list`.
fn exec_rss(list: &[&SmapsEntry]) -> u64 {
    list.iter()
        .filter(|e| e.mapping.exec)
        .map(|e| e.rss_bytes)
        .sum()
}

/// Detail depth: each program file's mapped, resident and PSS bytes.
fn per_file(files: &[&str], entries: &[&SmapsEntry]) -> Vec<serde_json::Value> {
    files
        .iter()
        .map(|f| {
            let mine: Vec<&SmapsEntry> = entries
                .iter()
                .copied()
                .filter(|e| e.mapping.path.as_ref() == *f)
                .collect();
            serde_json::json!({
                "path": f,
                "mapped_bytes": mine.iter().filter(|e| e.mapping.exec).map(|e| e.mapping.size_bytes()).sum::<u64>(),
                "resident_bytes": rss_sum(&mine),
                "exec_resident_bytes": exec_rss(&mine),
                "pss_bytes": mine.iter().map(|e| e.pss_bytes).sum::<u64>(),
            })
        })
        .collect()
}

fn stacks_owner(
    cx: &Context<'_>,
    stacks: &Result<Vec<StackSample>, SampleError>,
    errors: &mut Vec<SourceError>,
) -> Option<Owner> {
    let stacks = match stacks {
        Ok(stacks) => stacks,
        Err(e) => {
            errors.push(SourceError::new("breakdown.stacks", e.to_string()));
            return None;
        }
    };
    let size: u64 = stacks.iter().map(|s| s.end - s.start).sum();
    let resident: u64 = stacks.iter().map(|s| s.resident_bytes).sum();
    let mut o = owner(size, "mapped", Some(resident));
    let list: Vec<serde_json::Value> = stacks
        .iter()
        .map(|s| {
            serde_json::json!({
                "thread": s.thread,
                "size_bytes": s.end - s.start,
                "resident_bytes": s.resident_bytes,
            })
        })
        .collect();
    o.details = details([
        ("threads", cx.process.threads.into()),
        ("stacks_found", (stacks.len() as u64).into()),
        ("stacks", list.into()),
    ]);
    Some(cx.with_mappings(o, OwnerId::Stacks))
}

fn other_allocators_owner(
    sample: Result<Option<OtherAllocatorSample>, SampleError>,
    errors: &mut Vec<SourceError>,
) -> Option<Owner> {
    match sample {
        Ok(Some(a)) => {
            // The allocator's own "resident" is its estimate, not a measure of
            // its pages in this process: its share stays in unattributed.
            let mut o = owner(a.allocated_bytes, "allocated", None);
            o.details = details([
                ("name", a.name.into()),
                ("stats", serde_json::to_value(&a.stats).unwrap_or_default()),
            ]);
            Some(o)
        }
        Ok(None) => {
            errors.push(SourceError::new(
                "breakdown.other_allocators",
                "not present (neither jemalloc nor tcmalloc is loaded)",
            ));
            None
        }
        Err(e) => {
            errors.push(SourceError::new(
                "breakdown.other_allocators",
                e.to_string(),
            ));
            None
        }
    }
}

impl Breakdown {
    /// The owners other than `unattributed`, by name, in the pie's order.
    pub fn owners(&self) -> [(&'static str, &Option<Owner>); 7] {
        [
            ("glibc", &self.glibc),
            ("shm", &self.shm),
            ("lua_http", &self.lua_http),
            ("lua_stream", &self.lua_stream),
            ("text", &self.text),
            ("stacks", &self.stacks),
            ("other_allocators", &self.other_allocators),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lua::{LuaAllocator, LuaVm};
    use serde_json::Value;

    const MAPS: &str = include_str!("../../testdata/proc_maps_nginx_worker.txt");
    const SMAPS: &str = include_str!("../../testdata/proc_smaps_nginx_worker.txt");

    fn process() -> ProcessMemory {
        ProcessMemory {
            virtual_bytes: Some(60 << 20),
            resident_bytes: Some(10 << 20),
            resident_anon_bytes: Some(5 << 20),
            resident_file_bytes: Some(3 << 20),
            resident_shmem_bytes: Some(2 << 20),
            swap_bytes: Some(1 << 20),
            peak_virtual_bytes: None,
            peak_resident_bytes: None,
            threads: Some(1),
        }
    }

    fn lua() -> Lua {
        Lua {
            http: Some(LuaVm {
                gc_bytes: 300_000,
                allocator: Some(LuaAllocator {
                    kind: "luajit",
                    segments: 1,
                    mapped_bytes: 1 << 20,
                    resident_bytes: Some(400_000),
                    resident_age_ms: Some(0),
                    free_bytes: 100_000,
                    free_chunks: 3,
                    walk_truncated: false,
                    segment_ranges: vec![],
                }),
                version: None,
                library: None,
                jit_enabled: Some(true),
                objects: None,
                largest: None,
                growth: None,
            }),
            stream: None,
        }
    }

    fn glibc() -> GlibcSample {
        GlibcSample {
            arena_in_use_bytes: 700_000,
            free_bytes: 50_000,
            arena_bytes: 800_000,
            mmapped_bytes: 1 << 20,
            mmapped_chunks: 1,
            arenas: None,
            heaps: Ok(GlibcHeaps {
                main_pieces: 1,
                main_bytes: 700_000,
                resident_bytes: 600_000,
                ..GlibcHeaps::default()
            }),
        }
    }

    fn build(depth: Depth, chunks: &[MappedChunk], errors: &mut Vec<SourceError>) -> Breakdown {
        let p = process();
        let lua = lua();
        let maps = Ok(Mapping::parse_all(MAPS).0);
        let smaps = Ok(SmapsEntry::parse_all(SMAPS).0);
        Breakdown::build(
            Inputs {
                depth,
                process: &p,
                maps: &maps,
                smaps: (depth == Depth::Full).then_some(&smaps),
                glibc: Ok(glibc()),
                zones: &[],
                lua: &lua,
                stacks: Ok(vec![StackSample {
                    thread: "main".into(),
                    start: 0,
                    end: 135_168,
                    resident_bytes: 20_480,
                }]),
                other_allocators: Ok(None),
                mapped_chunks: chunks,
                program_data: Ok(ProgramDataSample {
                    copied_bytes: 4096,
                    bss_resident_bytes: 8192,
                }),
                program_ranges: &ProgramDataRanges::of(
                    maps.as_ref().unwrap(),
                    &nginx_load_segments(),
                    4096,
                ),
            },
            errors,
        )
    }

    fn total(b: &Breakdown) -> i64 {
        [
            &b.glibc,
            &b.shm,
            &b.lua_http,
            &b.lua_stream,
            &b.text,
            &b.stacks,
            &b.other_allocators,
        ]
        .iter()
        .filter_map(|o| o.as_ref()?.resident_bytes)
        .sum::<i64>()
            + b.unattributed.resident_bytes.unwrap_or(0)
    }

    #[test]
    fn owners_and_unattributed_add_up_to_rss_at_both_depths() {
        for depth in [Depth::Default, Depth::Full] {
            let b = build(depth, &[], &mut Vec::new());
            assert_eq!(total(&b), 10 << 20, "{depth:?}");
        }
    }

    #[test]
    fn the_pss_split_covers_every_mapping_once() {
        let b = build(Depth::Full, &[], &mut Vec::new());
        let split = b.pss_by_owner.as_ref().unwrap();
        let pss: u64 = SmapsEntry::parse_all(SMAPS)
            .0
            .iter()
            .map(|e| e.pss_bytes)
            .sum();
        assert_eq!(split.values().sum::<u64>(), pss);
        assert_eq!(
            split.get("text"),
            b.text.as_ref().unwrap().pss_bytes.as_ref()
        );
        assert_eq!(split.get("shm"), b.shm.as_ref().unwrap().pss_bytes.as_ref());
        assert!(build(Depth::Default, &[], &mut Vec::new())
            .pss_by_owner
            .is_none());
    }

    #[test]
    fn default_depth_uses_kernel_counters_for_files_and_shm() {
        let b = build(Depth::Default, &[], &mut Vec::new());
        assert_eq!(b.shm.as_ref().unwrap().resident_bytes, Some(2 << 20));
        assert_eq!(
            b.text.as_ref().unwrap().resident_bytes,
            Some((3 << 20) + 4096 + 8192)
        );
        assert_eq!(b.glibc.as_ref().unwrap().resident_bytes, Some(600_000));
        assert_eq!(b.lua_http.as_ref().unwrap().resident_bytes, Some(400_000));
        assert_eq!(b.stacks.as_ref().unwrap().resident_bytes, Some(20_480));
        assert!(b.text.as_ref().unwrap().mappings.is_none());
    }

    #[test]
    fn text_is_the_executable_mappings_of_program_files() {
        let b = build(Depth::Full, &[], &mut Vec::new());
        let text = b.text.as_ref().unwrap();
        let (maps, _) = Mapping::parse_all(MAPS);
        let exec: u64 = maps
            .iter()
            .filter(|m| m.exec && m.path.starts_with('/'))
            .map(Mapping::size_bytes)
            .sum();
        assert_eq!(text.bytes, exec);
        assert_eq!(text.measure, "mapped");
        // Detail depth: the Rss of every mapping of those files and of their
        // .bss, from smaps.
        let (smaps, _) = SmapsEntry::parse_all(SMAPS);
        let files: Vec<&str> = program_files(&maps);
        let bss = ProgramDataRanges::of(&maps, &nginx_load_segments(), 4096).bss;
        let rss: u64 = smaps
            .iter()
            .filter(|e| {
                files.contains(&e.mapping.path.as_ref())
                    || bss.contains(&(e.mapping.start, e.mapping.end))
            })
            .map(|e| e.rss_bytes)
            .sum();
        assert_eq!(text.resident_bytes, Some(rss as i64));
        let v: Value = serde_json::to_value(text).unwrap();
        assert!(v["per_file"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "/usr/sbin/nginx"));
        assert!(v["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("start").is_none()));
    }

    #[test]
    fn mapped_chunks_join_their_owner() {
        let chunks = [
            MappedChunk {
                kind: ChunkKind::Glibc,
                start: 0x1000,
                end: 0x101000,
                resident_bytes: 1 << 20,
            },
            MappedChunk {
                kind: ChunkKind::LuaJit,
                start: 0x200000,
                end: 0x240000,
                resident_bytes: 1 << 18,
            },
        ];
        let b = build(Depth::Default, &chunks, &mut Vec::new());
        assert_eq!(
            b.glibc.as_ref().unwrap().resident_bytes,
            Some(600_000 + (1 << 20))
        );
        assert_eq!(
            b.lua_http.as_ref().unwrap().resident_bytes,
            Some(400_000 + (1 << 18))
        );
        assert_eq!(total(&b), 10 << 20);
    }

    #[test]
    fn absent_sources_are_null_with_reasons() {
        let p = process();
        let lua = Lua::default();
        let mut errors = Vec::new();
        let b = Breakdown::build(
            Inputs {
                depth: Depth::Default,
                process: &p,
                maps: &Err(SampleError::Os("Permission denied".into())),
                smaps: None,
                glibc: Err(SampleError::NotGlibc),
                zones: &[],
                lua: &lua,
                stacks: Err(SampleError::Os("Permission denied".into())),
                other_allocators: Ok(None),
                mapped_chunks: &[],
                program_data: Err(SampleError::Os("Permission denied".into())),
                program_ranges: &ProgramDataRanges::default(),
            },
            &mut errors,
        );
        assert!(
            b.glibc.is_none() && b.text.is_none() && b.stacks.is_none() && b.lua_http.is_none()
        );
        let said: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.source.as_str(), e.error.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("/proc/self/maps", "Permission denied"),
                (
                    "breakdown.glibc",
                    "the C library is not glibc (musl?): no mallinfo2"
                ),
                ("breakdown.stacks", "Permission denied"),
                (
                    "breakdown.other_allocators",
                    "not present (neither jemalloc nor tcmalloc is loaded)"
                )
            ]
        );
        // Still adds up: what no owner could claim is unattributed.
        assert_eq!(total(&b), 10 << 20);
        assert_eq!(b.unattributed.resident_bytes, Some((10 << 20) - (2 << 20)));
    }

    #[test]
    fn virtual_split() {
        let v = VirtualSplit::from_process(&process());
        assert_eq!(v.untouched_bytes, Some((60 << 20) - (11 << 20)));
        assert_eq!(
            VirtualSplit::from_process(&ProcessMemory::default()).untouched_bytes,
            None
        );
    }

    /// The nginx binary's data segment in the captured worker: its file bytes
    /// end inside 56505e34c000, its memory at 56505e36b2f0 (the anonymous
    /// mapping 56505e34d000-56505e36c000 in MAPS).
    fn nginx_load_segments() -> Vec<LoadSegment> {
        vec![
            LoadSegment {
                start: 0x5650_5e33_3e10,
                file_bytes: 0x5650_5e34_c5a0 - 0x5650_5e33_3e10,
                memory_bytes: 0x5650_5e36_b2f0 - 0x5650_5e33_3e10,
            },
            // Code: no .bss.
            LoadSegment {
                start: 0x5650_5e23_b000,
                file_bytes: 0xc0000,
                memory_bytes: 0xc0000,
            },
        ]
    }

    #[test]
    fn program_data_ranges_in_a_real_worker() {
        let (maps, _) = Mapping::parse_all(MAPS);
        let r = ProgramDataRanges::of(&maps, &nginx_load_segments(), 4096);
        // The writable mappings of the nginx binary and the shared objects, each
        // with its RELRO mapping before it, merged: one range per file.
        let files = program_files(&maps);
        let writable = maps
            .iter()
            .filter(|m| files.contains(&m.path.as_ref()) && !m.shared && m.write)
            .count();
        assert_eq!(r.private.len(), writable);
        assert!(writable >= 10, "{writable}");
        // nginx: RELRO 56505e333000-56505e335000, data 56505e335000-56505e34d000.
        assert!(r.private.contains(&(0x5650_5e33_3000, 0x5650_5e34_d000)));
        let covered = |m: &Mapping| r.private.iter().any(|&(s, e)| s <= m.start && m.end <= e);
        assert!(maps.iter().filter(|m| m.exec).all(|m| !covered(m)));
        // .bss: what the loader's segments say, never a mapping only because
        // it follows a file.
        assert_eq!(r.bss, [(0x5650_5e34_d000, 0x5650_5e36_c000)]);
        assert!(ProgramDataRanges::of(&maps, &[], 4096).bss.is_empty());
        // A .bss that fits in the file's last page has no anonymous part.
        let small = LoadSegment {
            start: 0x1000,
            file_bytes: 0x100,
            memory_bytes: 0x900,
        };
        assert!(ProgramDataRanges::of(&maps, &[small], 4096).bss.is_empty());
    }

    #[test]
    fn an_anonymous_mapping_after_a_file_is_not_taken_for_its_bss() {
        // A Lua segment the kernel placed right after a library's data: it is
        // Lua's, not the library's .bss (it was once counted by both).
        let mut maps = Mapping::parse_all(MAPS).0;
        let lib_data = maps
            .iter()
            .rposition(|m| m.path.starts_with("/usr/lib") && m.write)
            .unwrap();
        let at = maps[lib_data].end;
        if maps.get(lib_data + 1).is_some_and(|m| m.start == at) {
            maps.remove(lib_data + 1);
        }
        let segment =
            Mapping::parse_line(&format!("{at:x}-{:x} rw-p 00000000 00:00 0", at + 0x60000))
                .unwrap();
        maps.insert(lib_data + 1, segment.clone());
        let ranges = ProgramDataRanges::of(&maps, &[], 4096);
        let mut lua = lua();
        lua.http
            .as_mut()
            .unwrap()
            .allocator
            .as_mut()
            .unwrap()
            .segment_ranges = vec![(at, at + 0x60000)];
        let inputs = Inputs {
            depth: Depth::Full,
            process: &process(),
            maps: &Ok(maps.clone()),
            smaps: None,
            glibc: Ok(glibc()),
            zones: &[],
            lua: &lua,
            stacks: Ok(vec![]),
            other_allocators: Ok(None),
            mapped_chunks: &[],
            program_data: Ok(ProgramDataSample::default()),
            program_ranges: &ranges,
        };
        let classifier = Classifier::new(&inputs, &maps);
        assert_eq!(classifier.classify(&segment), OwnerId::LuaHttp);
    }

    #[test]
    fn copied_pages_from_pagemap() {
        let present = 1u64 << 63;
        let file = 1u64 << 61;
        let swapped = 1u64 << 62;
        let bytes =
            |entries: &[u64]| -> Vec<u8> { entries.iter().flat_map(|e| e.to_ne_bytes()).collect() };
        let entries = bytes(&[present, present | file, 0, swapped, present | 1 << 56]);
        assert_eq!(copied_pages(&entries), 2);
        // A short read's partial entry is not a page.
        assert_eq!(copied_pages(&entries[..entries.len() - 1]), 1);
        assert_eq!(copied_pages(&[]), 0);
    }

    #[test]
    fn uncovered_stretches() {
        assert_eq!(uncovered(0, 100, &[]), vec![(0, 100)]);
        assert_eq!(
            uncovered(0, 100, &[(20, 30), (0, 10), (90, 200)]),
            vec![(10, 20), (30, 90)]
        );
        assert_eq!(uncovered(0, 100, &[(0, 100)]), vec![]);
        assert_eq!(
            uncovered(50, 100, &[(0, 10), (40, 60), (55, 70)]),
            vec![(70, 100)]
        );
    }

    #[test]
    fn chunk_headers() {
        let page = 4096;
        let no_fence = |_| None;
        assert_eq!(
            mapped_chunk_at(0, 0x21000 | 2, page, no_fence),
            Some((ChunkKind::Glibc, 0x21000))
        );
        // PREV_INUSE or NON_MAIN_ARENA set, odd sizes, offsets: not a mapped glibc chunk.
        assert_eq!(mapped_chunk_at(0, 0x21000 | 3, page, no_fence), None);
        assert_eq!(mapped_chunk_at(0, 0x21010 | 2, page, no_fence), None);
        assert_eq!(mapped_chunk_at(16, 0x21000 | 2, page, no_fence), None);
        assert_eq!(mapped_chunk_at(0, 0, page, no_fence), None);
        // LuaJIT: size + 32 is the mapping, and the fencepost must be there.
        let psize = 0x40000 - 32;
        let fence = |off: u64| (off == psize + 8).then_some(11);
        assert_eq!(
            mapped_chunk_at(1, psize | 2, page, fence),
            Some((ChunkKind::LuaJit, 0x40000))
        );
        assert_eq!(mapped_chunk_at(1, psize | 2, page, no_fence), None);
        assert_eq!(mapped_chunk_at(1, psize | 3, page, fence), None);
    }
}
