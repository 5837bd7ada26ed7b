//! A failed allocation ends a measuring, never the process. Rust aborts when
//! an infallible allocation fails; nginx survives a failed `malloc`, and so
//! must we. Two parts:
//! - what grows with the server (files read from `/proc`, lists of mappings,
//!   the history samples read, JSON answers) is reserved fallibly
//!   (`try_reserve`, [`TryPush`]) and gives up with an error;
//! - the small infallible rest is covered by an emergency reserve of address
//!   space, mapped without access (never resident, never charged), that this
//!   allocator gives back at the first failure of a small request and
//!   retries: the measuring goes on to its next check ([`short`], between its
//!   stages and in the loops over what the server holds) and ends there; the
//!   loop takes the reserve again ([`restore_reserve`]) before it starts the
//!   next one.
//!
//! It is the process's allocator for Rust code only: nginx's own allocations
//! do not pass here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::TryReserveError;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// The reserve, in slots, so that the measuring thread and the loop failing at
/// the same moment each find one.
const SLOTS: usize = 4;
/// Bytes of one slot: more than the infallible allocations between two checks
/// of a measuring, each well below a slot.
pub const SLOT_BYTES: usize = 1 << 20;

/// The reserve's slots and the failures counted, in one place so that a
/// unit test can have its own.
struct Reserve {
    slots: [AtomicPtr<libc::c_void>; SLOTS],
    failures: AtomicU64,
    /// `failures` when the reserve was last taken again.
    failures_at_restore: AtomicU64,
}

/// The process's reserve, the allocator's.
static RESERVE: Reserve = Reserve::new();

/// The system allocator, with the reserve given back when it fails.
pub struct Guarded;

/// Requests up to this size are the infallible kind the reserve is for;
/// bigger ones grow with the server and are reserved fallibly: their failure
/// is counted but gives back nothing, or one buffer would take the reserve
/// the rest of the measuring needs.
const SMALL_BYTES: usize = 64 << 10;

// SAFETY: every call is the system allocator's, with the caller's arguments;
// a failure only adds an `munmap` of a mapping no allocation lives in.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(arena) = ChildArena::active() {
            return arena.bump(layout);
        }
        // SAFETY: the caller's contract is System's.
        RESERVE.or_after_release(layout.size(), unsafe { System.alloc(layout) }, || unsafe {
            System.alloc(layout)
        })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if let Some(arena) = ChildArena::active() {
            // Fresh anonymous pages are zero, and the arena never reuses one.
            return arena.bump(layout);
        }
        // SAFETY: as in `alloc`.
        RESERVE.or_after_release(
            layout.size(),
            unsafe { System.alloc_zeroed(layout) },
            || unsafe { System.alloc_zeroed(layout) },
        )
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if let Some(arena) = ChildArena::active() {
            // SAFETY: `block` holds `layout.size()` bytes (the caller's
            // contract); the new block is a fresh one of the arena.
            return unsafe { arena.moved(block, layout, new_size) };
        }
        // SAFETY: as in `alloc`; a failed realloc leaves the block as it was.
        RESERVE.or_after_release(
            new_size,
            unsafe { System.realloc(block, layout, new_size) },
            || unsafe { System.realloc(block, layout, new_size) },
        )
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if ChildArena::active().is_some() {
            // The arena frees nothing: the child exits when it is done. A
            // block from before the fork is left to the parent's copy.
            return;
        }
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(block, layout) }
    }
}

impl Reserve {
    const fn new() -> Self {
        Reserve {
            slots: [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS],
            failures: AtomicU64::new(0),
            failures_at_restore: AtomicU64::new(0),
        }
    }

    /// `got`, or when it is null: counts the failure, then, for a small
    /// request, gives back the reserve a slot at a time, retrying after each.
    fn or_after_release(&self, size: usize, got: *mut u8, retry: impl Fn() -> *mut u8) -> *mut u8 {
        if !got.is_null() {
            return got;
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        if size > SMALL_BYTES {
            return ptr::null_mut();
        }
        for slot in &self.slots {
            let mapping = slot.swap(ptr::null_mut(), Ordering::AcqRel);
            if mapping.is_null() {
                continue;
            }
            // SAFETY: a mapping `restore` made of `SLOT_BYTES`, taken out of
            // its slot by this swap alone.
            unsafe { libc::munmap(mapping, SLOT_BYTES) };
            let got = retry();
            if !got.is_null() {
                return got;
            }
        }
        ptr::null_mut()
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn short(&self) -> bool {
        self.failures() != self.failures_at_restore.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    fn held_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| !s.load(Ordering::Relaxed).is_null())
            .count()
    }

    fn restore(&self) -> bool {
        self.failures_at_restore
            .store(self.failures(), Ordering::Relaxed);
        let mut held = false;
        for slot in &self.slots {
            if !slot.load(Ordering::Acquire).is_null() {
                held = true;
                continue;
            }
            let Some(mapping) = map_slot() else { continue };
            if slot
                .compare_exchange(
                    ptr::null_mut(),
                    mapping,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
            {
                // SAFETY: the mapping just made, in no slot.
                unsafe { libc::munmap(mapping, SLOT_BYTES) };
            }
            held = true;
        }
        held
    }
}

/// The allocator of a forked child (the Lua heap's walk): a bump arena of its
/// own mapping, so that the child never takes a lock of glibc's malloc,
/// which a thread of the parent may have held at the fork. Only a child
/// with no other thread switches it on; it is never switched off.
struct ChildArena {
    next: AtomicUsize,
    end: AtomicUsize,
}

static CHILD_ARENA: ChildArena = ChildArena {
    next: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
};

impl ChildArena {
    fn active() -> Option<&'static ChildArena> {
        (CHILD_ARENA.end.load(Ordering::Relaxed) != 0).then_some(&CHILD_ARENA)
    }

    fn bump(&self, layout: Layout) -> *mut u8 {
        let next = self.next.load(Ordering::Relaxed);
        let start = next.next_multiple_of(layout.align().max(16));
        match start.checked_add(layout.size()) {
            Some(end) if end <= self.end.load(Ordering::Relaxed) => {
                self.next.store(end, Ordering::Relaxed);
                start as *mut u8
            }
            _ => ptr::null_mut(),
        }
    }

    /// # Safety
    /// `block` is a live block of `layout`.
    unsafe fn moved(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and within isize (realloc's contract).
        let new = self.bump(unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) });
        if !new.is_null() {
            // SAFETY: both blocks hold at least the bytes copied; the new one
            // is fresh, so they do not overlap.
            unsafe { ptr::copy_nonoverlapping(block, new, layout.size().min(new_size)) };
        }
        new
    }
}

/// Switches this process's Rust allocations to an arena of `bytes` of its
/// own (mapped without reserve: only what is used is charged). For a forked
/// child with a single thread, before it allocates; false when the mapping
/// cannot be had (then the child must not allocate).
pub fn use_child_arena(bytes: usize) -> bool {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let mapping = unsafe {
        libc::mmap(
            ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mapping == libc::MAP_FAILED {
        return false;
    }
    CHILD_ARENA.next.store(mapping as usize, Ordering::Relaxed);
    CHILD_ARENA
        .end
        .store(mapping as usize + bytes, Ordering::Relaxed);
    true
}

/// A new slot of the reserve, if the address space for it can be had.
fn map_slot() -> Option<*mut libc::c_void> {
    // SAFETY: a new private anonymous mapping; nothing else refers to it.
    let mapping = unsafe {
        libc::mmap(
            ptr::null_mut(),
            SLOT_BYTES,
            // No access: the kernel never merges it with a neighbouring
            // read-write mapping (a malloc'd chunk would then look like part
            // of it), and it is never resident or charged.
            libc::PROT_NONE,
            // Without MAP_NORESERVE: glibc's unused heap tails have it, and
            // the same flags would merge with them.
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mapping == libc::MAP_FAILED {
        return None;
    }
    name_mapping(mapping);
    Some(mapping)
}

/// Allocations that failed in this process so far: a measuring compares the
/// figure at its start and at its end.
pub fn failures() -> u64 {
    RESERVE.failures()
}

/// Whether an allocation failed since the reserve was last taken again: a
/// measuring then stops at its next check.
pub fn short() -> bool {
    RESERVE.short()
}

/// Takes the reserve again, as much of it as can be had; false when none can
/// (then no measuring should start: nothing would cover its small
/// allocations).
pub fn restore_reserve() -> bool {
    RESERVE.restore()
}

/// Names the reserve in `/proc/PID/maps` (Linux 5.17 and later; older kernels
/// refuse, and it stays anonymous).
fn name_mapping(mapping: *mut libc::c_void) {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    // SAFETY: names a mapping of ours; the name is a NUL-terminated constant.
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            mapping as libc::c_ulong,
            SLOT_BYTES as libc::c_ulong,
            c"memory_status reserve".as_ptr() as libc::c_ulong,
        );
    }
}

/// What a source says when it was given up for memory.
pub const OUT_OF_MEMORY: &str = "out of memory";

/// A push that fails instead of aborting when the vector cannot grow.
pub trait TryPush<T> {
    fn try_push(&mut self, value: T) -> Result<(), TryReserveError>;
}

impl<T> TryPush<T> for Vec<T> {
    fn try_push(&mut self, value: T) -> Result<(), TryReserveError> {
        if self.len() == self.capacity() {
            // Doubling, as `push` does, but fallible.
            self.try_reserve(self.capacity().max(4))?;
        }
        self.push(value);
        Ok(())
    }
}

/// A buffer that an `io::Write` grows fallibly: a writer (serde_json) then
/// stops with an error where a `Vec` would abort.
#[derive(Default)]
pub struct FallibleBuffer(pub Vec<u8>);

impl std::io::Write for FallibleBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .try_reserve(bytes.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reserve of the test's own: the process's is left alone (its state
    /// would cut other tests' parses short).
    #[test]
    fn a_failure_gives_back_the_reserve_a_slot_at_a_time() {
        use std::cell::Cell;
        let r = Reserve::new();
        assert!(r.restore());
        assert_eq!(r.held_slots(), SLOTS);
        assert!(!r.short());
        // A success changes nothing.
        let fake = ptr::NonNull::<u8>::dangling().as_ptr();
        assert_eq!(r.or_after_release(64, fake, || unreachable!()), fake);
        assert_eq!((r.failures(), r.held_slots()), (0, SLOTS));
        // A small request that fails: retried after each slot given back.
        let tries = Cell::new(0);
        let got = r.or_after_release(64, ptr::null_mut(), || {
            tries.set(tries.get() + 1);
            if tries.get() == 2 {
                fake
            } else {
                ptr::null_mut()
            }
        });
        assert_eq!(got, fake);
        assert_eq!(
            (r.failures(), r.held_slots(), tries.get()),
            (1, SLOTS - 2, 2)
        );
        assert!(r.short());
        // Nothing left to give: null, and every slot is gone.
        let got = r.or_after_release(64, ptr::null_mut(), ptr::null_mut);
        assert!(got.is_null());
        assert_eq!(r.held_slots(), 0);
        assert!(r.restore());
        assert_eq!(r.held_slots(), SLOTS);
        assert!(!r.short());
        // A big request (fallible by rule) is counted and gives back nothing.
        assert!(r
            .or_after_release(1 << 20, ptr::null_mut(), || unreachable!())
            .is_null());
        assert_eq!((r.failures(), r.held_slots()), (3, SLOTS));
        assert!(r.short());
        assert!(r.restore());
        for slot in &r.slots {
            // SAFETY: the test's own mappings, in no other slot.
            unsafe { libc::munmap(slot.swap(ptr::null_mut(), Ordering::AcqRel), SLOT_BYTES) };
        }
    }

    #[test]
    fn a_fallible_buffer_takes_what_it_is_given() {
        use std::io::Write;
        let mut b = FallibleBuffer::default();
        b.write_all(b"abc").unwrap();
        b.write_all(&[b'd'; 100_000]).unwrap();
        assert_eq!(b.0.len(), 100_003);
        assert_eq!(&b.0[..4], b"abcd");
    }

    #[test]
    fn try_push_grows_like_push() {
        let mut v = Vec::new();
        for i in 0..1000 {
            v.try_push(i).unwrap();
        }
        assert_eq!(v.len(), 1000);
        assert_eq!(v[999], 999);
    }
}
