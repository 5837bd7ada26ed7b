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
//! word it could not read: a chunk released under it) is not kept.
//!
//! A chunk's pages become resident as the program fills it (a LuaJIT
//! `string.buffer` reserved, then written; a large `malloc`ed buffer), which
//! changes no word a walk reads: resident bytes are measured at every answer,
//! but for one kind of chunk. A Lua string is written whole when it is made
//! and never changed, and with no swap on the host an anonymous page cannot
//! leave memory: a chunk that holds a string (its GC header says so, and the
//! walk's words keep its type and its hash and length words) and was found
//! wholly resident stays so while the host has no swap. (A string being
//! written has its header before its bytes: found not yet whole, it is
//! measured again at the next answer.)

use std::ffi::c_void;
use std::sync::Mutex;

use ngx::ffi::ngx_pagesize;

use super::residency::PageWindow;
use crate::alloc_guard::TryPush;
use crate::analysis::breakdown::{mapped_chunk_at, uncovered, ChunkKind, MappedChunk};
use crate::analysis::chunk_words::{spans_of, words_match, Word};
use crate::sources::glibc_heaps::is_private_anonymous_rw;
use crate::sources::procfs::Mapping;

/// LuaJIT (2.1, GC64): an object's type is the byte after its `marked` byte,
/// after the 8-byte `nextgc` link (`GCHeader`); a string's is 4 (`~LJ_TSTR`).
/// A direct chunk's object follows the chunk's two header words.
const GC_TYPE_WORD: u64 = 16 + 8;
const GC_TYPE_MASK: u64 = 0xff00;
const GC_TYPE_STRING: u64 = 4 << 8;
/// The string's hash and length (where either layout of 2.1 keeps them).
const STRING_ID_WORD: u64 = 16 + 16;

/// What the measuring knows that the walk's rule rests on.
#[derive(Clone, Copy)]
pub struct Context {
    /// The Lua VMs' layout is LuaJIT 2.1's with GC64, its strings' type byte
    /// where `GC_TYPE_WORD` says (the VM reader found the empty string's
    /// there), on a little-endian machine (the byte's place in the word).
    pub lua_gc64: bool,
}

/// A stretch as last walked.
struct Walk {
    stretch: (u64, u64),
    /// Every word the walk read, by address (sorted once, when the walk is
    /// made: each later answer reads them again in that order).
    words: Vec<Word>,
    /// Pages the walk found absent (a header it did not read).
    absent: Vec<u64>,
    chunks: Vec<MappedChunk>,
    /// Per chunk: it holds a Lua string (its resident bytes stay while the
    /// host has no swap).
    strings: Vec<bool>,
    /// It stopped only for causes `words`, `absent` and the stretch record:
    /// the same inputs would make the same walk.
    whole: bool,
}

/// The last walk of each stretch (the measuring thread's; a lock of the
/// module's own, held for a lookup or a store).
static WALKS: Mutex<Vec<Walk>> = Mutex::new(Vec::new());

/// Every directly mapped chunk in the private anonymous mappings outside
/// `skip` (ranges already accounted for).
pub fn scan(maps: &[Mapping], skip: &[(u64, u64)], cx: Context) -> Vec<MappedChunk> {
    let no_swap = host_has_no_swap();
    let mut last = std::mem::take(&mut *WALKS.lock().unwrap_or_else(|p| p.into_inner()));
    let mut walks = Vec::new();
    let mut found = Vec::new();
    let anonymous = maps.iter().filter(|m| is_private_anonymous_rw(m));
    'mappings: for m in anonymous {
        for stretch in uncovered(m.start, m.end, skip) {
            let kept = last.iter().position(|w| w.stretch == stretch);
            let walk = match kept.map(|i| last.swap_remove(i)) {
                Some(w) if unchanged(&w) => Some(measured(w, no_swap)),
                _ => walk(stretch, cx.lua_gc64 && no_swap),
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

/// The kept walk with its chunks' resident bytes measured now, but for the
/// strings' while the host has no swap. A chunk released since the words
/// were read has none (the next walk drops it).
fn measured(mut w: Walk, no_swap: bool) -> Walk {
    let mut pages = PageWindow::new(w.stretch.1);
    for (c, &string) in w.chunks.iter_mut().zip(&w.strings) {
        c.resident_bytes = if string && no_swap {
            // Found wholly resident (a figure measured while there was swap
            // may be less: not kept).
            c.end - c.start
        } else {
            pages.resident_bytes(c.start, c.end).unwrap_or(0)
        };
    }
    w
}

/// No swap device is active (`/proc/swaps` lists none): an anonymous page
/// cannot leave memory. Unreadable: as if there were swap.
fn host_has_no_swap() -> bool {
    crate::sources::procfs::read_proc_file("/proc/swaps", 1024)
        .is_ok_and(|text| !crate::sources::procfs::swaps_active(&text))
}

/// Walks a stretch: the chunks one after another from its start, until a
/// word is not a chunk's header. Words are read only on pages `mincore` shows
/// present, through `read_words`. `None`: memory is short.
/// `strings`: chunks that hold a Lua string are told apart (the layout is
/// known and the host has no swap).
fn walk(stretch: (u64, u64), strings: bool) -> Option<Walk> {
    let (start, end) = stretch;
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx_pagesize } as u64;
    let mut pages = PageWindow::new(end);
    let mut walk = Walk {
        stretch,
        words: Vec::new(),
        absent: Vec::new(),
        chunks: Vec::new(),
        strings: Vec::new(),
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
        // Only a string found whole in memory after its header was read: one
        // being written now (its header comes before its bytes) is measured
        // again next time. Asked anew: the window may predate this chunk.
        let string = strings
            && kind == ChunkKind::LuaJit
            && resident_bytes == len
            && holds_string(at, &mut walk)?
            && PageWindow::new(at + len).resident_bytes(at, at + len) == Ok(len);
        walk.chunks.try_push(chunk).ok()?;
        walk.strings.try_push(string).ok()?;
        at += len;
    }
    walk.words.sort_unstable_by_key(|w| w.addr);
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
        short |= walk
            .words
            .try_push(Word {
                addr,
                value: w,
                mask: u64::MAX,
            })
            .is_err();
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

/// Whether the LuaJIT chunk at `at` holds a string; its type and its hash and
/// length words are kept with the walk's words, so that a later walk that
/// finds them the same finds the same string. `None`: memory is short.
fn holds_string(at: u64, walk: &mut Walk) -> Option<bool> {
    const _: () = assert!(STRING_ID_WORD == GC_TYPE_WORD + 8);
    let Some([type_word, id_word]) = read_words::<2>(at + GC_TYPE_WORD) else {
        return Some(false);
    };
    if type_word & GC_TYPE_MASK != GC_TYPE_STRING {
        return Some(false);
    }
    let kept = [
        Word {
            addr: at + GC_TYPE_WORD,
            value: type_word,
            mask: GC_TYPE_MASK,
        },
        Word {
            addr: at + STRING_ID_WORD,
            value: id_word,
            mask: u64::MAX,
        },
    ];
    for word in kept {
        walk.words.try_push(word).ok()?;
    }
    Some(true)
}

/// Whether every word reads as recorded (in the bits that count). The words
/// are read by spans of neighbours (`chunk_words`), a read of them at once
/// (`process_vm_readv` on ourselves: the kernel pins the pages of each span,
/// so a span costs what a word would): a word another thread released gives
/// `false`, not a fault. `false` too when memory is short.
fn same_words(words: &[Word]) -> bool {
    // Sorted when the walk was made; a walk whose words are not is not kept.
    if words.windows(2).any(|p| p[0].addr > p[1].addr) {
        return false;
    }
    let mut rest = words;
    while !rest.is_empty() {
        let (spans, taken) = spans_of(rest);
        if !spans_read_the_same(&rest[..taken], &spans) {
            return false;
        }
        rest = &rest[taken..];
    }
    true
}

/// Reads `spans` at once and compares `words` (the words they cover).
fn spans_read_the_same(words: &[Word], spans: &[(u64, u64)]) -> bool {
    let total: u64 = spans.iter().map(|&(start, end)| end - start).sum();
    let mut bytes: Vec<u8> = Vec::new();
    if bytes.try_reserve_exact(total as usize).is_err() {
        return false;
    }
    bytes.resize(total as usize, 0);
    let mut local = Vec::with_capacity(spans.len());
    let mut remote = Vec::with_capacity(spans.len());
    let mut offset = 0usize;
    for &(start, end) in spans {
        let len = (end - start) as usize;
        local.push(libc::iovec {
            iov_base: bytes.as_mut_ptr().wrapping_add(offset).cast::<c_void>(),
            iov_len: len,
        });
        remote.push(libc::iovec {
            iov_base: start as *mut c_void,
            iov_len: len,
        });
        offset += len;
    }
    // SAFETY: the kernel writes at most `total` bytes, span by span, into
    // `bytes`, which holds that many, and checks the remote ranges itself.
    let read = unsafe {
        libc::process_vm_readv(
            libc::getpid(),
            local.as_ptr(),
            local.len() as libc::c_ulong,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    read == total as isize && words_match(words, spans, &bytes)
}

/// `N` words of this process's memory at `addr`, read by the kernel
/// (`process_vm_readv` on ourselves): memory that is not an allocation of
/// ours, and that another thread may unmap meanwhile, gives `None` rather than
/// a fault.
pub(super) fn read_words<const N: usize>(addr: u64) -> Option<[u64; N]> {
    let mut words = [0u64; N];
    let len = std::mem::size_of_val(&words);
    let local = libc::iovec {
        iov_base: words.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: len,
    };
    // SAFETY: the kernel writes at most `len` bytes into `words` and checks
    // the remote range itself.
    let read = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    (read == len as isize).then_some(words)
}
