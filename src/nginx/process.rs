//! Copies the process-wide figures of the breakdown: mappings, glibc's
//! allocator, thread stacks and any other allocator in the process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};

use ngx::ffi::ngx_pagesize;

use super::residency::{resident_pages, PageWindow};
use crate::analysis::assemble::ProcessSamples;
use crate::analysis::breakdown::{
    copied_pages, GlibcHeaps, GlibcSample, LoadSegment, OtherAllocatorSample, ProgramDataRanges,
    ProgramDataSample, StackSample,
};
use crate::model::breakdown::Depth;
use crate::sources::errors::SampleError;
use crate::sources::glibc_heaps::{
    aligned_starts, is_private_anonymous_rw, link_heaps, main_arena_ranges, main_heap,
    reservation_bytes, HeapHeader,
};
use crate::sources::procfs::{
    parse_syscall_stack_pointer, read_proc_file, Mapping, MapsCache, SmapsEntry,
};

/// Room for the maps text made before it is read (it grows by doubling
/// when there is more): about 300 lines fit, and the buffer alone stays
/// below the 64 KiB whose `free` (merged with any free neighbour) makes
/// glibc consolidate its fast bins.
const MAPS_HINT_BYTES: usize = 32 << 10;

thread_local! {
    /// The maps text this thread parsed last, with its mappings: a cache,
    /// not a setting (an unchanged text is not parsed again).
    static LAST_MAPS: RefCell<MapsCache> = RefCell::new(MapsCache::default());
}

/// `walk`: read `/proc/self/smaps` too (a page-table walk). `known`: address
/// ranges already accounted for (LuaJIT's segments), not to be searched for
/// directly mapped chunks.
pub fn sample(
    depth: Depth,
    walk: bool,
    known: &[(u64, u64)],
    chunks: super::chunks::Context,
) -> ProcessSamples {
    let maps = read_proc_file("/proc/self/maps", MAPS_HINT_BYTES)
        .map(|text| LAST_MAPS.with_borrow_mut(|cache| cache.parse(text)))
        .map_err(|e| SampleError::os(&e));
    let smaps = walk.then(|| {
        read_proc_file("/proc/self/smaps", 1 << 20)
            .map(|text| SmapsEntry::parse_all(&text).0)
            .map_err(|e| SampleError::os(&e))
    });
    let empty = Vec::new();
    let mapped: &[Mapping] = maps.as_deref().unwrap_or(&empty);
    let stacks = maps
        .as_ref()
        .map_err(Clone::clone)
        .map(|m| sample_stacks(m));
    let mut skip = known.to_vec();
    if let Ok(stacks) = &stacks {
        skip.extend(stacks.iter().map(|s| (s.start, s.end)));
    }
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize } as u64;
    let data_ranges = ProgramDataRanges::of(mapped, &load_segments(), page);
    skip.extend(data_ranges.bss.iter().copied());
    let glibc = sample_glibc(mapped, depth);
    if let Ok(GlibcSample { heaps: Ok(h), .. }) = &glibc {
        skip.extend(h.ranges.iter().copied());
    }
    ProcessSamples {
        program_data: sample_program_data(&data_ranges),
        program_ranges: data_ranges,
        glibc,
        mapped_chunks: super::chunks::scan(mapped, &skip, chunks),
        stacks,
        other_allocators: sample_other_allocators(),
        maps,
        smaps,
    }
}

/// Copied-on-write pages of the program files' private mappings, by their
/// `/proc/self/pagemap` entries (8 bytes a page, no page-table walk beyond those
/// pages), and resident `.bss` pages by `mincore`.
fn sample_program_data(ranges: &ProgramDataRanges) -> Result<ProgramDataSample, SampleError> {
    use std::os::unix::fs::FileExt;
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize } as u64;
    let pagemap =
        std::fs::File::open("/proc/self/pagemap").map_err(|e| SampleError::file("pagemap", &e))?;
    let mut sample = ProgramDataSample::default();
    let mut buf = Vec::new();
    for &(start, end) in &ranges.private {
        let pages = ((end - start) / page) as usize;
        buf.resize(pages * 8, 0u8);
        pagemap
            .read_exact_at(&mut buf, start / page * 8)
            .map_err(|e| SampleError::file("pagemap", &e))?;
        sample.copied_bytes += copied_pages(&buf) * page;
    }
    for &(start, end) in &ranges.bss {
        let m = Mapping {
            start,
            end,
            ..anonymous_rw()
        };
        sample.bss_resident_bytes += resident_bytes_of(&m)?;
    }
    Ok(sample)
}

/// Every loaded object's loadable segments, from the dynamic loader's list.
fn load_segments() -> Vec<LoadSegment> {
    /// # Safety
    /// Called by `dl_iterate_phdr` only: `info` is the loader's and `data`
    /// the vector passed to it.
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid info with `dlpi_phnum` headers, and
        // `data` is the vector below, alive for the whole call.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<LoadSegment>>()) };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: as above.
        let headers =
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        out.extend(
            headers
                .iter()
                .filter(|h| h.p_type == libc::PT_LOAD)
                .map(|h| LoadSegment {
                    start: info.dlpi_addr + h.p_vaddr,
                    file_bytes: h.p_filesz,
                    memory_bytes: h.p_memsz,
                }),
        );
        0
    }
    let mut segments: Vec<LoadSegment> = Vec::new();
    // SAFETY: the callback only reads what the loader passes and appends to
    // `segments`. The loader's lock is only ever contended by another thread of
    // this process loading a library (nginx's threads do not).
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut segments as *mut Vec<LoadSegment>).cast()) };
    segments
}

/// Resident bytes of a mapping of this process, by `mincore`.
fn resident_bytes_of(m: &Mapping) -> Result<u64, SampleError> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize };
    resident_pages(m.start as usize, m.size_bytes() as usize, page)
        .map(|pages| pages * page as u64)
        .map_err(SampleError::from)
}

/// The address of a symbol of the process by name; null when none has it.
fn symbol(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym only looks a NUL-terminated name up in the loader's tables.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

fn sample_glibc(maps: &[Mapping], depth: Depth) -> Result<GlibcSample, SampleError> {
    // SAFETY: symbols looked up by name and called with their C signatures.
    let mi = unsafe {
        if symbol(c"gnu_get_libc_version").is_null() {
            return Err(SampleError::NotGlibc);
        }
        let mallinfo2 = symbol(c"mallinfo2");
        if mallinfo2.is_null() {
            return Err(SampleError::GlibcWithoutMallinfo2);
        }
        let mallinfo2: unsafe extern "C" fn() -> libc::mallinfo2 = std::mem::transmute(mallinfo2);
        mallinfo2()
    };
    let heaps = find_heaps(maps, mi.arena as u64);
    Ok(GlibcSample {
        arena_in_use_bytes: mi.uordblks as u64,
        free_bytes: mi.fordblks as u64,
        arena_bytes: mi.arena as u64,
        mmapped_bytes: mi.hblkhd as u64,
        mmapped_chunks: mi.hblks as u64,
        // SAFETY: malloc_info writes into a memory stream of its own.
        arenas: (depth == Depth::Full).then(count_arenas).flatten(),
        heaps,
    })
}

/// Every other arena's heap, then the part of the `[heap]` pieces the main
/// arena took (`arena_bytes`, mallinfo2's `arena`, less the other arenas'
/// heaps), with their resident pages.
fn find_heaps(maps: &[Mapping], arena_bytes: u64) -> Result<GlibcHeaps, SampleError> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize } as u64;
    let mut heaps = GlibcHeaps::default();
    // Candidate arena heaps: aligned starts in anonymous read-write mappings,
    // read only where the page is present (a header is always written).
    let mut candidates = Vec::new();
    for (at, m) in maps.iter().enumerate() {
        if !is_private_anonymous_rw(m) {
            continue;
        }
        for start in aligned_starts(m.start, m.end) {
            if start + 32 <= m.end && PageWindow::new(start + page).present(start) == Some(true) {
                if let Some(words) = super::chunks::read_words::<4>(start) {
                    let reserved = reservation_bytes(maps, at, start);
                    candidates.push((start, HeapHeader::from_words(words), reserved));
                }
            }
        }
    }
    for heap in link_heaps(&candidates, page) {
        // Only the part glibc made writable can be resident; it ends where the
        // read-write mapping holding the header ends.
        let writable_end = maps
            .iter()
            .find(|m| m.start <= heap.start && heap.start < m.end)
            .map_or(heap.start, |m| m.end.min(heap.end));
        heaps.arena_heaps += 1;
        heaps.arena_heap_bytes += heap.size_bytes;
        heaps.resident_bytes += resident_bytes_in(heap.start, writable_end)?;
        heaps.ranges.push((heap.start, heap.end));
    }
    let pieces: Vec<(u64, u64)> = main_heap(maps).map(|m| (m.start, m.end)).collect();
    heaps.main_pieces = pieces.len() as u64;
    let main_arena_bytes = arena_bytes.saturating_sub(heaps.arena_heap_bytes);
    for (start, end) in main_arena_ranges(&pieces, main_arena_bytes, page) {
        heaps.main_bytes += end - start;
        heaps.resident_bytes += resident_bytes_in(start, end)?;
        heaps.ranges.push((start, end));
    }
    let break_bytes: u64 = pieces.iter().map(|(s, e)| e - s).sum();
    heaps.break_beyond_glibc_bytes = break_bytes.saturating_sub(heaps.main_bytes);
    Ok(heaps)
}

fn resident_bytes_in(start: u64, end: u64) -> Result<u64, SampleError> {
    resident_bytes_of(&Mapping {
        start,
        end,
        ..anonymous_rw()
    })
}

fn anonymous_rw() -> Mapping {
    Mapping {
        start: 0,
        end: 0,
        read: true,
        write: true,
        exec: false,
        shared: false,
        offset: 0,
        inode: 0,
        path: Default::default(),
    }
}

/// Arenas in `malloc_info()`'s XML (`<heap nr="N">` each). It walks every
/// arena's bins, so it is left to detail depth.
fn count_arenas() -> Option<u64> {
    let mut buf: *mut c_char = std::ptr::null_mut();
    let mut len: libc::size_t = 0;
    // SAFETY: open_memstream sets `buf` and `len` as the stream is written
    // and closed; malloc_info writes into the stream it is given.
    let (ok, buf, len) = unsafe {
        let stream = libc::open_memstream(&mut buf, &mut len);
        if stream.is_null() {
            return None;
        }
        let ok = libc::malloc_info(0, stream) == 0;
        libc::fclose(stream);
        (ok, buf, len)
    };
    if buf.is_null() {
        return None;
    }
    // SAFETY: after fclose, `buf` holds `len` bytes the stream wrote.
    let xml = unsafe { std::slice::from_raw_parts(buf as *const u8, len) };
    let count = ok.then(|| xml.windows(10).filter(|w| w == b"<heap nr=\"").count() as u64);
    // SAFETY: open_memstream's buffer is the caller's to free, once.
    unsafe { libc::free(buf.cast()) };
    count
}

/// The main thread's `[stack]`, and each other thread's stack: the mapping that
/// holds the stack pointer the kernel reports while the thread waits in a system
/// call (nginx's thread-pool threads wait on a condition variable).
fn sample_stacks(maps: &[Mapping]) -> Vec<StackSample> {
    let mut stacks = Vec::new();
    let mut add = |thread: String, m: &Mapping| {
        if let Ok(resident) = resident_bytes_of(m) {
            stacks.push(StackSample {
                thread,
                start: m.start,
                end: m.end,
                resident_bytes: resident,
            });
        }
    };
    if let Some(main) = maps.iter().find(|m| m.path.as_ref() == "[stack]") {
        add("main".into(), main);
    }
    let pid = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return stacks;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        if tid == pid {
            continue;
        }
        let Ok(syscall) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let Some(sp) = parse_syscall_stack_pointer(&syscall) else {
            continue;
        };
        if let Some(m) = maps
            .iter()
            .find(|m| m.start <= sp && sp < m.end && m.path.as_ref() != "[stack]")
        {
            add(tid, m);
        }
    }
    stacks
}

type Mallctl = unsafe extern "C" fn(
    *const c_char,
    *mut c_void,
    *mut libc::size_t,
    *mut c_void,
    libc::size_t,
) -> c_int;
type TcmallocProperty = unsafe extern "C" fn(*const c_char, *mut libc::size_t) -> c_int;

/// jemalloc (`mallctl`) or tcmalloc (`MallocExtension_GetNumericProperty`), found
/// at run time; `Ok(None)` when neither is in the process.
fn sample_other_allocators() -> Result<Option<OtherAllocatorSample>, SampleError> {
    let mallctl = symbol(c"mallctl");
    if !mallctl.is_null() {
        // SAFETY: jemalloc's `mallctl`, found by its name, has this signature.
        let mallctl: Mallctl = unsafe { std::mem::transmute(mallctl) };
        // SAFETY: jemalloc's, as just found.
        return unsafe { jemalloc_stats(mallctl) }.map(Some);
    }
    let property = symbol(c"MallocExtension_GetNumericProperty");
    if !property.is_null() {
        // SAFETY: tcmalloc's C entry point, found by its name, has this signature.
        let property: TcmallocProperty = unsafe { std::mem::transmute(property) };
        // SAFETY: tcmalloc's, as just found.
        return unsafe { tcmalloc_stats(property) }.map(Some);
    }
    Ok(None)
}

/// jemalloc's statistics, after advancing its epoch (they are cached until
/// then).
///
/// # Safety
/// `mallctl` is jemalloc's `mallctl` of this process.
unsafe fn jemalloc_stats(mallctl: Mallctl) -> Result<OtherAllocatorSample, SampleError> {
    let mut epoch: u64 = 1;
    let mut len = std::mem::size_of::<u64>();
    let epoch_ptr = (&mut epoch as *mut u64).cast::<c_void>();
    // SAFETY: "epoch" reads and writes a u64 of `len` bytes.
    if unsafe { mallctl(c"epoch".as_ptr(), epoch_ptr, &mut len, epoch_ptr, len) } != 0 {
        return Err(SampleError::JemallocEpoch);
    }
    let mut stats = BTreeMap::new();
    for name in [
        c"stats.allocated",
        c"stats.active",
        c"stats.resident",
        c"stats.mapped",
        c"stats.retained",
        c"stats.metadata",
    ] {
        let mut value: libc::size_t = 0;
        let mut len = std::mem::size_of::<libc::size_t>();
        let out = (&mut value as *mut libc::size_t).cast();
        // SAFETY: each of these statistics reads a size_t of `len` bytes.
        if unsafe { mallctl(name.as_ptr(), out, &mut len, std::ptr::null_mut(), 0) } == 0 {
            stats.insert(name.to_string_lossy().into_owned(), value as u64);
        }
    }
    let Some(&allocated) = stats.get("stats.allocated") else {
        return Err(SampleError::JemallocWithoutStats);
    };
    Ok(OtherAllocatorSample {
        name: "jemalloc",
        allocated_bytes: allocated,
        stats,
    })
}

/// tcmalloc's numeric properties.
///
/// # Safety
/// `property` is tcmalloc's `MallocExtension_GetNumericProperty`.
unsafe fn tcmalloc_stats(property: TcmallocProperty) -> Result<OtherAllocatorSample, SampleError> {
    let mut stats = BTreeMap::new();
    for name in [
        c"generic.current_allocated_bytes",
        c"generic.heap_size",
        c"tcmalloc.pageheap_free_bytes",
        c"tcmalloc.pageheap_unmapped_bytes",
    ] {
        let mut value: libc::size_t = 0;
        // SAFETY: a NUL-terminated property name and a size_t to write.
        if unsafe { property(name.as_ptr(), &mut value) } != 0 {
            stats.insert(name.to_string_lossy().into_owned(), value as u64);
        }
    }
    let Some(&allocated) = stats.get("generic.current_allocated_bytes") else {
        return Err(SampleError::TcmallocWithoutAllocatedBytes);
    };
    Ok(OtherAllocatorSample {
        name: "tcmalloc",
        allocated_bytes: allocated,
        stats,
    })
}
