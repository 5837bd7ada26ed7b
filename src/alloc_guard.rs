//! A failed allocation ends a measuring, never the process. Rust aborts when
//! an infallible allocation fails; nginx survives a failed `malloc`, and so
//! must we. Two parts:
//! - what grows with the server (files read from `/proc`, lists of mappings,
//!   history samples, rendered answers) is reserved fallibly (`try_reserve`,
//!   [`TryPush`]) and gives up with an error;
//! - the small infallible rest is covered by an emergency reserve of address
//!   space, mapped without access (never resident, never charged), that this
//!   allocator gives back at the first failure and retries: the measuring
//!   goes on to its next check ([`short`]) and ends there; the loop takes the
//!   reserve again ([`restore_reserve`]) before it starts the next one.
//!
//! It is the process's allocator for Rust code only: nginx's own allocations
//! do not pass here.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::TryReserveError;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

/// The reserve, in slots, so that the measuring thread and the loop failing at
/// the same moment each find one.
const SLOTS: usize = 4;
/// Bytes of one slot: more than the infallible allocations between two checks
/// of a measuring, each well below a slot.
pub const SLOT_BYTES: usize = 1 << 20;

static RESERVE: [AtomicPtr<libc::c_void>; SLOTS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// `FAILURES` when the reserve was last taken again.
static FAILURES_AT_RESTORE: AtomicU64 = AtomicU64::new(0);

/// The system allocator, with the reserve given back when it fails.
pub struct Guarded;

// SAFETY: every call is the system allocator's, with the caller's arguments;
// a failure only adds an `munmap` of a mapping no allocation lives in.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is System's.
        or_after_release(unsafe { System.alloc(layout) }, || unsafe {
            System.alloc(layout)
        })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        or_after_release(unsafe { System.alloc_zeroed(layout) }, || unsafe {
            System.alloc_zeroed(layout)
        })
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `alloc`; a failed realloc leaves the block as it was.
        or_after_release(
            unsafe { System.realloc(block, layout, new_size) },
            || unsafe { System.realloc(block, layout, new_size) },
        )
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        unsafe { System.dealloc(block, layout) }
    }
}

/// `got`, or when it is null: counts the failure, then gives back the
/// reserve a slot at a time, retrying after each.
fn or_after_release(got: *mut u8, retry: impl Fn() -> *mut u8) -> *mut u8 {
    if !got.is_null() {
        return got;
    }
    FAILURES.fetch_add(1, Ordering::Relaxed);
    for slot in &RESERVE {
        let mapping = slot.swap(ptr::null_mut(), Ordering::AcqRel);
        if mapping.is_null() {
            continue;
        }
        // SAFETY: a mapping `restore_reserve` made of `SLOT_BYTES`, taken out
        // of its slot by this swap alone.
        unsafe { libc::munmap(mapping, SLOT_BYTES) };
        let got = retry();
        if !got.is_null() {
            return got;
        }
    }
    ptr::null_mut()
}

/// Allocations that failed in this process so far: a measuring compares the
/// figure at its start and at its end.
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// Whether an allocation failed since the reserve was last taken again: a
/// measuring then stops at its next check.
pub fn short() -> bool {
    failures() != FAILURES_AT_RESTORE.load(Ordering::Relaxed)
}

/// Takes the reserve again, as much of it as can be had; false when none can
/// (then no measuring should start: nothing would cover its small
/// allocations).
pub fn restore_reserve() -> bool {
    FAILURES_AT_RESTORE.store(failures(), Ordering::Relaxed);
    let mut held = false;
    for slot in &RESERVE {
        if !slot.load(Ordering::Acquire).is_null() {
            held = true;
            continue;
        }
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let mapping = unsafe {
            libc::mmap(
                ptr::null_mut(),
                SLOT_BYTES,
                // No access: the kernel never merges it with a neighbouring
                // read-write mapping (a malloc'd chunk would then look like
                // part of it), and it is never resident or charged.
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            continue;
        }
        name_mapping(mapping);
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

    #[test]
    fn a_failed_allocation_is_counted_and_the_reserve_taken_again() {
        assert!(restore_reserve());
        let before = failures();
        // More than the machine can map: the system allocator refuses it,
        // the reserve is given back and the retries fail too.
        let mut huge: Vec<u8> = Vec::new();
        assert!(huge.try_reserve(1 << 50).is_err());
        assert!(failures() > before);
        assert!(short());
        assert!(restore_reserve());
        assert!(!short());
        // An allocation that succeeds changes nothing.
        let before = failures();
        let small = vec![0u8; 4096];
        assert_eq!(small.len(), 4096);
        assert_eq!(failures(), before);
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
