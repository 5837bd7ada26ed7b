//! Chunks that glibc's malloc and LuaJIT's allocator mapped by themselves
//! (their large allocations), found by their headers at the start of anonymous
//! mappings; several may share one mapping when the kernel merged them.
//!
//! A walk from a stretch's start reads a chunk's header, jumps over the chunk,
//! and reads the next, until a word is no chunk's. What it finds follows from
//! the words it read and the pages it found absent, nothing else: a later walk
//! of the same stretch that reads the same words (all at once, in one
//! `process_vm_readv`) and finds the same pages absent would find the same
//! chunks, so it is not walked again. A walk that stopped for another cause (a
//! word it could not read: a chunk released under it) is not kept. The
//! chunks' resident bytes are measured at every answer: a chunk's pages become
//! resident as the program fills it (a LuaJIT `string.buffer` reserved, then
//! written; a large `malloc`ed buffer), which changes no word a walk reads.

use std::ffi::c_void;
use std::sync::Mutex;

use ngx::ffi::ngx_pagesize;

use super::process::read_words;
use super::residency::PageWindow;
use crate::alloc_guard::TryPush;
use crate::breakdown::{mapped_chunk_at, uncovered, ChunkKind, MappedChunk};
use crate::glibc_heaps::is_private_anonymous_rw;
use crate::procfs::Mapping;

/// A stretch as last walked.
struct Walk {
    stretch: (u64, u64),
    /// Every word the walk read: its address and value.
    words: Vec<(u64, u64)>,
    /// Pages the walk found absent (a header it did not read).
    absent: Vec<u64>,
    chunks: Vec<MappedChunk>,
    /// It stopped only for causes `words`, `absent` and the stretch record:
    /// the same inputs would make the same walk.
    whole: bool,
}

/// The last walk of each stretch (the measuring thread's; a lock of the
/// module's own, held for a lookup or a store).
static WALKS: Mutex<Vec<Walk>> = Mutex::new(Vec::new());

/// Every directly mapped chunk in the private anonymous mappings outside
/// `skip` (ranges already accounted for).
pub fn scan(maps: &[Mapping], skip: &[(u64, u64)]) -> Vec<MappedChunk> {
    let mut last = std::mem::take(&mut *WALKS.lock().unwrap_or_else(|p| p.into_inner()));
    let mut walks = Vec::new();
    let mut found = Vec::new();
    let anonymous = maps.iter().filter(|m| is_private_anonymous_rw(m));
    'mappings: for m in anonymous {
        for stretch in uncovered(m.start, m.end, skip) {
            let kept = last.iter().position(|w| w.stretch == stretch);
            let walk = match kept.map(|i| last.swap_remove(i)) {
                Some(w) if unchanged(&w) => Some(measured(w)),
                _ => walk(stretch),
            };
            let Some(walk) = walk else {
                break 'mappings;
            };
            if found.try_reserve(walk.chunks.len()).is_err() {
                break 'mappings;
            }
            found.extend_from_slice(&walk.chunks);
            if walk.whole && walks.try_push(walk).is_err() {
                break 'mappings;
            }
        }
    }
    *WALKS.lock().unwrap_or_else(|p| p.into_inner()) = walks;
    found
}

/// Whether a stretch would be walked the same way now: the words the walk
/// read read the same, and the pages it found absent still are.
fn unchanged(w: &Walk) -> bool {
    let mut pages = PageWindow::new(w.stretch.1);
    w.absent.iter().all(|&p| pages.present(p) != Some(true)) && same_words(&w.words)
}

/// The kept walk with its chunks' resident bytes measured now. A chunk
/// released since the words were read has none (the next walk drops it).
fn measured(mut w: Walk) -> Walk {
    let mut pages = PageWindow::new(w.stretch.1);
    for c in &mut w.chunks {
        c.resident_bytes = pages.resident_bytes(c.start, c.end).unwrap_or(0);
    }
    w
}

/// Walks a stretch: the chunks one after another from its start, until a
/// word is not a chunk's header. Words are read only on pages `mincore` shows
/// present, through `read_words`. `None`: memory is short.
fn walk(stretch: (u64, u64)) -> Option<Walk> {
    let (start, end) = stretch;
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize } as u64;
    let mut pages = PageWindow::new(end);
    let mut walk = Walk {
        stretch,
        words: Vec::new(),
        absent: Vec::new(),
        chunks: Vec::new(),
        whole: true,
    };
    let mut at = start;
    while at + 16 <= end {
        let Some((kind, len)) = chunk_at(at, end, page, &mut pages, &mut walk)? else {
            break;
        };
        let Ok(resident_bytes) = pages.resident_bytes(at, at + len) else {
            // Released under the walk: what follows is not known.
            walk.whole = false;
            break;
        };
        let chunk = MappedChunk {
            kind,
            start: at,
            end: at + len,
            resident_bytes,
        };
        walk.chunks.try_push(chunk).ok()?;
        at += len;
    }
    Some(walk)
}

/// The chunk at `at`, if one starts there and fits before `end`; every word
/// read and page found absent recorded in `walk`. `None`: memory is short.
fn chunk_at(
    at: u64,
    end: u64,
    page: u64,
    pages: &mut PageWindow,
    walk: &mut Walk,
) -> Option<Option<(ChunkKind, u64)>> {
    let mut short = false;
    let mut word_at = |addr: u64| -> Option<u64> {
        if addr % 8 != 0 || addr + 8 > end {
            return None;
        }
        if pages.present(addr) != Some(true) {
            short |= walk.absent.try_push(addr - addr % page).is_err();
            return None;
        }
        let Some([w]) = read_words::<1>(addr) else {
            // Present a moment ago, released now: a cause no later walk
            // could check, so this one is not kept.
            walk.whole = false;
            return None;
        };
        short |= walk.words.try_push((addr, w)).is_err();
        Some(w)
    };
    let found = match (word_at(at), word_at(at + 8)) {
        (Some(prev), Some(head)) => {
            mapped_chunk_at(prev, head, page, |offset| word_at(at.checked_add(offset)?))
                .filter(|&(_, len)| at + len <= end)
        }
        _ => None,
    };
    (!short).then_some(found)
}

/// Whether every word reads as recorded, all read at once (`process_vm_readv`
/// on ourselves, in batches of `IOV_MAX` words): a word another thread
/// released gives `false`, not a fault.
fn same_words(words: &[(u64, u64)]) -> bool {
    const BATCH: usize = 1024;
    let mut now = [0u64; BATCH];
    words.chunks(BATCH).all(|batch| {
        let mut local = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        let mut remote = local;
        for (i, &(addr, _)) in batch.iter().enumerate() {
            local[i] = libc::iovec {
                iov_base: (&mut now[i] as *mut u64).cast::<c_void>(),
                iov_len: 8,
            };
            remote[i] = libc::iovec {
                iov_base: addr as *mut c_void,
                iov_len: 8,
            };
        }
        let n = batch.len();
        // SAFETY: the kernel writes at most 8 bytes into each of `n` words of
        // `now` and checks the remote ranges itself.
        let read = unsafe {
            libc::process_vm_readv(
                libc::getpid(),
                local.as_ptr(),
                n as libc::c_ulong,
                remote.as_ptr(),
                n as libc::c_ulong,
                0,
            )
        };
        read == (n * 8) as isize && batch.iter().zip(&now).all(|(&(_, w), &v)| w == v)
    })
}
