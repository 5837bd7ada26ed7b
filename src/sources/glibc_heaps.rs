//! glibc's heaps, wherever the kernel or glibc put them: the main arena's
//! `[heap]` (one mapping or several: after `fork` the part a worker grew is not
//! merged into the part inherited from the master) and the heaps of the other
//! arenas (threads that `malloc`), which are anonymous mappings aligned to
//! glibc's `HEAP_MAX_SIZE` that start with its `heap_info` header.

use crate::sources::procfs::Mapping;

/// glibc's `HEAP_MAX_SIZE` on 64-bit: `2 * DEFAULT_MMAP_THRESHOLD_MAX` = 64 MiB.
/// Every non-main arena heap is a reservation of this size, aligned to it. (The
/// `glibc.malloc.hugetlb` tunable changes it; such heaps are then not found and
/// stay unattributed.)
pub const HEAP_MAX_BYTES: u64 = 64 << 20;

/// Where `heap_info` places the arena (`malloc_state`) in an arena's first heap:
/// right after the header, which is 32 to 48 bytes depending on the release.
const ARENA_AFTER_HEADER: std::ops::RangeInclusive<u64> = 32..=64;

/// The first four words of a `heap_info`: `ar_ptr`, `prev`, `size`,
/// `mprotect_size` (stable since glibc 2.3; later fields vary by release).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapHeader {
    pub arena: u64,
    pub prev: u64,
    pub size: u64,
    pub mprotect_size: u64,
}

impl HeapHeader {
    pub fn from_words(words: [u64; 4]) -> HeapHeader {
        HeapHeader {
            arena: words[0],
            prev: words[1],
            size: words[2],
            mprotect_size: words[3],
        }
    }
}

/// A heap of a non-main arena: its whole reservation and the arena it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaHeap {
    pub start: u64,
    /// End of the reservation (`start + HEAP_MAX_BYTES`); only the first
    /// `writable_bytes` are readable and writable, the rest is `PROT_NONE`.
    pub end: u64,
    pub arena: u64,
    /// `heap_info.size`: what the arena uses of this heap.
    pub size_bytes: u64,
}

/// Addresses in `[start, end)` where an arena heap could start.
pub fn aligned_starts(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let first = start.div_ceil(HEAP_MAX_BYTES) * HEAP_MAX_BYTES;
    (first..end).step_by(HEAP_MAX_BYTES as usize)
}

/// Is the header at `start` one glibc wrote, given how many bytes from `start`
/// the maps listed as the heap's reservation (`reserved_bytes`, see
/// [`reservation_bytes`])? Checks only what holds for every arena heap; the
/// arena itself is checked by [`link_heaps`].
fn plausible(start: u64, h: &HeapHeader, reserved_bytes: u64, page_size: u64) -> bool {
    let page_multiple = |n: u64| page_size != 0 && n % page_size == 0;
    start % HEAP_MAX_BYTES == 0
        && h.size > 0
        && h.size <= HEAP_MAX_BYTES
        && page_multiple(h.size)
        && h.mprotect_size >= h.size
        && h.mprotect_size <= HEAP_MAX_BYTES
        && page_multiple(h.mprotect_size)
        && h.size <= reserved_bytes
        && h.arena % 8 == 0
        && h.prev % HEAP_MAX_BYTES == 0
}

fn arena_follows(start: u64, arena: u64) -> bool {
    arena
        .checked_sub(start)
        .is_some_and(|offset| ARENA_AFTER_HEADER.contains(&offset))
}

/// Bytes from `start` (inside `maps[at]`) to the end of the run of adjacent
/// private anonymous mappings that begins with `maps[at]`, within one heap's
/// reservation: the read-write part and the inaccessible rest a heap grows
/// into. The header is read live, after the maps: a heap that grew in between
/// (the measuring's own allocations grow its thread's heap) has a `size`
/// beyond the read-write part the maps listed, never beyond its reservation.
pub fn reservation_bytes(maps: &[Mapping], at: usize, start: u64) -> u64 {
    let limit = start.saturating_add(HEAP_MAX_BYTES);
    let mut end = maps.get(at).map_or(start, |m| m.end);
    for m in maps.iter().skip(at + 1) {
        if m.start != end || end >= limit || !m.path.is_empty() || m.shared || m.exec {
            break;
        }
        end = m.end;
    }
    end.min(limit).saturating_sub(start)
}

/// The arena heaps among candidate headers (`(start, header, reserved_bytes)`):
/// an arena's first heap holds its arena right after the header and has no
/// `prev`; any later heap names that arena and a `prev` heap of the same arena.
pub fn link_heaps(candidates: &[(u64, HeapHeader, u64)], page_size: u64) -> Vec<ArenaHeap> {
    let plausible: Vec<&(u64, HeapHeader, u64)> = candidates
        .iter()
        .filter(|(start, h, reserved)| plausible(*start, h, *reserved, page_size))
        .collect();
    let first_of = |arena: u64| {
        plausible
            .iter()
            .any(|(start, h, _)| h.prev == 0 && h.arena == arena && arena_follows(*start, arena))
    };
    let is_heap_of = |start: u64, arena: u64| {
        plausible
            .iter()
            .any(|(s, h, _)| *s == start && h.arena == arena)
    };
    plausible
        .iter()
        .filter(|(start, h, _)| {
            if h.prev == 0 {
                arena_follows(*start, h.arena)
            } else {
                first_of(h.arena) && is_heap_of(h.prev, h.arena)
            }
        })
        .map(|(start, h, _)| ArenaHeap {
            start: *start,
            end: start + HEAP_MAX_BYTES,
            arena: h.arena,
            size_bytes: h.size,
        })
        .collect()
}

/// The main arena's heap: every mapping the kernel names `[heap]`.
pub fn main_heap(maps: &[Mapping]) -> impl Iterator<Item = &Mapping> {
    maps.iter().filter(|m| m.path.as_ref() == "[heap]")
}

/// The part of the `[heap]` pieces (in address order, from the program break's
/// start) that glibc's main arena took: its first `glibc_bytes` (the main
/// arena's system memory, page-rounded). What lies beyond was taken with `sbrk`
/// by someone else (tcmalloc grows the program break itself).
pub fn main_arena_ranges(
    pieces: &[(u64, u64)],
    glibc_bytes: u64,
    page_size: u64,
) -> Vec<(u64, u64)> {
    let Some(&(start, _)) = pieces.first() else {
        return Vec::new();
    };
    let page = page_size.max(1);
    let end = start.saturating_add(glibc_bytes.div_ceil(page) * page);
    pieces
        .iter()
        .filter(|&&(s, _)| s < end)
        .map(|&(s, e)| (s, e.min(end)))
        .collect()
}

/// Anonymous, private, read-write mappings: where allocators keep their memory.
pub fn is_private_anonymous_rw(m: &Mapping) -> bool {
    m.path.is_empty() && m.read && m.write && !m.exec && !m.shared
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;
    const H1: u64 = 0x7f00_0000_0000;
    const H2: u64 = H1 + HEAP_MAX_BYTES;
    const H3: u64 = H1 + 4 * HEAP_MAX_BYTES;

    fn header(arena: u64, prev: u64, size: u64) -> HeapHeader {
        HeapHeader::from_words([arena, prev, size, size])
    }

    #[test]
    fn aligned_starts_in_a_range() {
        assert_eq!(aligned_starts(H1, H1 + 4096).collect::<Vec<_>>(), [H1]);
        assert_eq!(aligned_starts(H1 + 1, H2).count(), 0);
        assert_eq!(
            aligned_starts(H1 - 4096, H2 + 1).collect::<Vec<_>>(),
            [H1, H2]
        );
    }

    #[test]
    fn first_heaps_and_their_successors() {
        let arena1 = H1 + 48;
        let arena2 = H3 + 32;
        let found = link_heaps(
            &[
                (H1, header(arena1, 0, 33 * PAGE), 33 * PAGE),
                (H2, header(arena1, H1, 2 * PAGE), 4 * PAGE),
                (H3, header(arena2, 0, PAGE), PAGE),
            ],
            PAGE,
        );
        assert_eq!(
            found.iter().map(|h| (h.start, h.arena)).collect::<Vec<_>>(),
            [(H1, arena1), (H2, arena1), (H3, arena2)]
        );
        assert_eq!(found[0].end, H1 + HEAP_MAX_BYTES);
        assert_eq!(found[0].size_bytes, 33 * PAGE);
    }

    #[test]
    fn what_glibc_would_not_write_is_refused() {
        let arena = H1 + 48;
        let refused = |start: u64, h: HeapHeader, writable: u64| {
            link_heaps(&[(start, h, writable)], PAGE).is_empty()
        };
        // The arena far from the header, a size beyond the reservation, odd
        // sizes, mprotect_size below size, a misaligned start or prev.
        assert!(refused(H1, header(H1 + 4096, 0, PAGE), PAGE));
        assert!(refused(H1, header(arena, 0, 2 * PAGE), PAGE));
        assert!(refused(H1, header(arena, 0, PAGE + 8), 2 * PAGE));
        assert!(refused(
            H1,
            HeapHeader::from_words([arena, 0, 2 * PAGE, PAGE]),
            2 * PAGE
        ));
        assert!(refused(H1 + PAGE, header(H1 + PAGE + 48, 0, PAGE), PAGE));
        assert!(refused(H1, header(arena, 0, 0), PAGE));
        assert!(refused(H1, header(arena, 0, 2 * HEAP_MAX_BYTES), u64::MAX));
        // A later heap whose arena has no first heap, or whose prev is not one
        // of that arena's heaps.
        assert!(refused(H2, header(arena, H1, PAGE), PAGE));
        let found = link_heaps(
            &[
                (H1, header(arena, 0, PAGE), PAGE),
                (H2, header(arena, H3, PAGE), PAGE),
            ],
            PAGE,
        );
        assert_eq!(found.len(), 1);
        // Zeroed memory is no heap.
        assert!(refused(H1, header(0, 0, 0), PAGE));
    }

    #[test]
    fn a_reservation_runs_through_the_inaccessible_rest() {
        let anon = |start: u64, end: u64, write: bool| Mapping {
            start,
            end,
            read: write,
            write,
            exec: false,
            shared: false,
            offset: 0,
            inode: 0,
            path: Default::default(),
        };
        let grown = H1 + 300 * PAGE;
        let maps = [
            anon(H1 - PAGE, H1, true),
            anon(H1, H1 + 33 * PAGE, true),
            anon(H1 + 33 * PAGE, H2, false),
            anon(H2, H2 + PAGE, true),
        ];
        // The read-write part and the rest up to the next heap's start: a
        // header that grew to `grown` since the maps were read is plausible.
        assert_eq!(reservation_bytes(&maps, 1, H1), HEAP_MAX_BYTES);
        let header_now = header(H1 + 48, 0, grown - H1);
        assert_eq!(
            link_heaps(&[(H1, header_now, reservation_bytes(&maps, 1, H1))], PAGE).len(),
            1
        );
        // A gap, a file or a shared mapping ends the run.
        let mut gap = maps.clone();
        gap[2].start += PAGE;
        assert_eq!(reservation_bytes(&gap, 1, H1), 33 * PAGE);
        let mut file = maps.clone();
        file[2].path = "/lib/x.so".into();
        assert_eq!(reservation_bytes(&file, 1, H1), 33 * PAGE);
        let mut shared = maps.clone();
        shared[2].shared = true;
        assert_eq!(reservation_bytes(&shared, 1, H1), 33 * PAGE);
        // A start past the mapping's own start counts from there.
        assert_eq!(reservation_bytes(&maps, 0, H1 - PAGE), HEAP_MAX_BYTES);
    }

    #[test]
    fn main_arena_takes_its_own_part_of_the_program_break() {
        let pieces = [(0x1000, 0x5000), (0x5000, 0x9000)];
        // glibc alone: all of it (a partial last page is glibc's).
        assert_eq!(main_arena_ranges(&pieces, 0x8000 - 16, PAGE), pieces);
        // tcmalloc grew the break after glibc's 0x2000 bytes.
        assert_eq!(main_arena_ranges(&pieces, 0x2000, PAGE), [(0x1000, 0x3000)]);
        assert_eq!(
            main_arena_ranges(&pieces, 0x5000, PAGE),
            [(0x1000, 0x5000), (0x5000, 0x6000)]
        );
        // glibc's malloc never used: none of it.
        assert!(main_arena_ranges(&pieces, 0, PAGE).is_empty());
        assert!(main_arena_ranges(&[], 0x1000, PAGE).is_empty());
    }

    #[test]
    fn every_heap_piece_is_the_main_heap() {
        let (maps, _) = Mapping::parse_all(
            "55d2c34c3000-55d2c36ac000 rw-p 00000000 00:00 0                          [heap]\n\
             55d2c36ac000-55d2c446b000 rw-p 00000000 00:00 0                          [heap]\n\
             7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n",
        );
        assert_eq!(main_heap(&maps).count(), 2);
        assert!(is_private_anonymous_rw(&maps[2]));
        assert!(!is_private_anonymous_rw(&maps[0]));
    }
}
