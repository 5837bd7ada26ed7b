//! Copies every shared memory zone's figures out of nginx: the zone list of the
//! running cycle, each zone's slab pool (under its mutex) and its residency.

use std::ffi::c_void;
use std::ptr;

use std::time::{Duration, Instant};

use ngx::ffi::{
    ngx_cycle_t, ngx_list_t, ngx_pagesize, ngx_pagesize_shift, ngx_shm_zone_t, ngx_shmtx_t,
    ngx_shmtx_trylock, ngx_shmtx_unlock, ngx_slab_alloc, ngx_slab_page_t, ngx_slab_pool_t,
};

use super::cycle;
use crate::analysis::zones::{SlabError, SlabSample, SlotSample, ZoneSample};
use crate::sources::errors::ResidencyError;
use crate::sources::escape::{escape, name_matches};

/// How long one zone's lock is tried before its slab figures are given up: a
/// zone lock is held for a few microseconds by a healthy worker.
const LOCK_WAIT: Duration = Duration::from_micros(200);
/// How long an answer waits on zone locks in all: with many zones locked by a
/// frozen worker, the answer still comes at once.
const LOCK_WAIT_PER_ANSWER: Duration = Duration::from_millis(1);

/// A zone's figures and where it is mapped: its residency is measured apart
/// (`residency::resident_pages` over `range`), off the event loop when it can.
pub struct SampledZone {
    pub sample: ZoneSample,
    /// Address and length of the zone's mapping; zero length when unmapped.
    pub range: (usize, usize),
}

/// Every zone; with `only`, the zone of that name alone (nothing else is read).
/// The zones' `resident_pages` are left for `measure`.
pub fn sample_zones(only: Option<&[u8]>) -> Vec<SampledZone> {
    let cycle = cycle::current();
    let mut budget = LockBudget::new(LOCK_WAIT_PER_ANSWER);
    // SAFETY: in a worker the zone list and the zones stay put while a request runs.
    unsafe {
        let page_size = ngx_pagesize as u64;
        let mut zones = Vec::new();
        for_each_in_list::<ngx_shm_zone_t>(&cycle.shared_memory, |zone| {
            if only.map_or(true, |asked| name_matches(zone.shm.name.as_bytes(), asked)) {
                zones.push(sample_zone(cycle, zone, page_size, &mut budget));
            }
        });
        zones
    }
}

/// The structure its init put in the running cycle's zone of ours named
/// `name`; `None` when the running configuration has no such zone (a reload
/// that removed it, or a configuration without `memory_status`). Looked up in
/// the cycle each time, never kept: a zone pointer kept across a reload would
/// outlive the zone when nginx drops it.
///
/// # Safety
/// Loop thread only; the reference is used before control returns to nginx
/// (in single-process mode a reload may unmap the zone), and `T` is the type
/// the zone's init stored in its `data`.
pub unsafe fn own_zone<T>(name: &str) -> Option<&'static T> {
    // SAFETY: the running cycle; the caller's contract is this one's.
    unsafe { own_zone_in(cycle::current(), name) }
}

/// `own_zone` in a given cycle (the one just configured, in `init_module`).
///
/// # Safety
/// As `own_zone`, for `cycle`, whose zones are initialized.
pub unsafe fn own_zone_in<T>(cycle: &ngx_cycle_t, name: &str) -> Option<&'static T> {
    let tag = super::zone_tag();
    let mut found = None;
    // SAFETY: the running cycle's zone list; every entry's name and data are
    // nginx's for the cycle's life.
    unsafe {
        for_each_in_list::<ngx_shm_zone_t>(&cycle.shared_memory, |zone| {
            if found.is_none() && zone.tag == tag && zone.shm.name.as_bytes() == name.as_bytes() {
                found = zone.data.cast::<T>().cast_const().as_ref();
            }
        });
    }
    found
}

/// What is left of an answer's time for waiting on locks.
struct LockBudget {
    left: Duration,
}

impl LockBudget {
    fn new(total: Duration) -> Self {
        LockBudget { left: total }
    }
}

/// Calls `f` on every element of an `ngx_list_t` of `T`.
///
/// # Safety
/// `list` is an initialized nginx list of `T` that nothing changes meanwhile.
unsafe fn for_each_in_list<T>(list: &ngx_list_t, mut f: impl FnMut(&T)) {
    let mut part = &list.part;
    loop {
        let elts = part.elts as *const T;
        for i in 0..part.nelts {
            // SAFETY: a part holds `nelts` elements of `T` (the caller's contract).
            f(unsafe { &*elts.add(i) });
        }
        if part.next.is_null() {
            break;
        }
        // SAFETY: a non-null `next` is the list's next part.
        part = unsafe { &*part.next };
    }
}

/// One zone's figures, its slab pool read under its lock.
///
/// # Safety
/// `zone` is an entry of `cycle`'s zone list, on the loop's thread.
unsafe fn sample_zone(
    cycle: &ngx_cycle_t,
    zone: &ngx_shm_zone_t,
    page_size: u64,
    budget: &mut LockBudget,
) -> SampledZone {
    let addr = zone.shm.addr;
    let size = zone.shm.size;
    let sample = ZoneSample {
        name: escape(zone.shm.name.as_bytes()),
        // A zone's tag is its owner module's address, for dynamic modules too.
        owner: cycle::module_by_address(cycle, zone.tag)
            .and_then(cycle::module_name)
            .map(str::to_string),
        size_bytes: size as u64,
        page_size_bytes: page_size,
        resident_pages: Err(ResidencyError::NotMeasured),
        resident_age_ms: 0,
        slab: if addr.is_null() {
            Err(SlabError::NotMapped)
        } else {
            // SAFETY: a mapped zone of the cycle starts with its slab pool
            // (checked there), shared with the other processes.
            unsafe { sample_slab(addr.cast(), budget) }
        },
    };
    let range = if addr.is_null() {
        (0, 0)
    } else {
        (addr as usize, size)
    };
    SampledZone { sample, range }
}

/// Holds a zone's slab mutex and releases it however the scope is left.
struct ShmtxGuard(*mut ngx_shmtx_t);

impl ShmtxGuard {
    /// Takes the lock if it comes within `LOCK_WAIT` and the answer's budget;
    /// never blocks: a holder that is stopped (SIGSTOP, a debugger, a cgroup
    /// freezer) would otherwise stop this worker too.
    ///
    /// # Safety
    /// `mutex` is an initialized nginx shared mutex this process does not hold.
    unsafe fn try_lock(mutex: *mut ngx_shmtx_t, budget: &mut LockBudget) -> Option<Self> {
        // Most locks are free: taken at once, no clock read (two per zone
        // were 1.6% of a big worker's loop samples, 22 zones).
        // SAFETY: the caller's contract; trylock never blocks.
        if unsafe { ngx_shmtx_trylock(mutex) } != 0 {
            return Some(ShmtxGuard(mutex));
        }
        let started = Instant::now();
        let wait = LOCK_WAIT.min(budget.left);
        let taken = loop {
            // SAFETY: the caller's contract; trylock never blocks.
            if unsafe { ngx_shmtx_trylock(mutex) } != 0 {
                break true;
            }
            if started.elapsed() >= wait {
                break false;
            }
            std::hint::spin_loop();
        };
        budget.left = budget.left.saturating_sub(started.elapsed());
        taken.then_some(ShmtxGuard(mutex))
    }
}

impl Drop for ShmtxGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `lock` by this process.
        unsafe { ngx_shmtx_unlock(self.0) }
    }
}

/// Free runs walked at most; more than a zone of 2^20 pages (4 GiB) can hold
/// means a corrupt list, and the walk must end anyway.
const MAX_FREE_RUNS: u64 = 1 << 20;

/// A zone's slab pool: its pages, its slots' counters and its free runs,
/// copied under the pool's mutex, only tried (see `ShmtxGuard::try_lock`).
///
/// # Safety
/// `addr` is the start of a mapped shared memory zone of the running cycle.
unsafe fn sample_slab(addr: *mut c_void, budget: &mut LockBudget) -> Result<SlabSample, SlabError> {
    let sp = addr.cast::<ngx_slab_pool_t>();
    // nginx puts a slab pool at the start of every zone and records its address.
    // SAFETY: the zone is mapped and larger than a slab pool header.
    if unsafe { (*sp).addr } != addr {
        return Err(SlabError::NoSlabPool);
    }
    // SAFETY: as above, a slab pool's header.
    let min_shift = unsafe { (*sp).min_shift };
    // SAFETY: a plain integer nginx sets at start.
    let slot_count = unsafe { ngx_pagesize_shift }.saturating_sub(min_shift);
    // Allocate before taking the lock: the lock is shared by all workers.
    let mut slots = Vec::with_capacity(slot_count);

    // SAFETY: the pool's own mutex, initialized by nginx with the zone.
    let Some(locked) = (unsafe { ShmtxGuard::try_lock(ptr::addr_of_mut!((*sp).mutex), budget) })
    else {
        return Err(SlabError::LockHeld {
            wait_us: LOCK_WAIT.as_micros(),
        });
    };
    // SAFETY: under the pool's lock, the pool's fields, its `stats` array of
    // `slot_count` entries and its free list are consistent and in the zone.
    let (pages_total, pages_free, runs, largest, truncated) = unsafe {
        let pages_total = (*sp).last.offset_from((*sp).pages).max(0) as u64;
        let pages_free = (*sp).pfree as u64;
        if !(*sp).stats.is_null() {
            for i in 0..slot_count {
                let st = &*(*sp).stats.add(i);
                slots.push(SlotSample {
                    size_bytes: 1u64 << (min_shift + i),
                    total: st.total as u64,
                    used: st.used as u64,
                    reqs: st.reqs as u64,
                    fails: st.fails as u64,
                });
            }
        }
        let (runs, largest, truncated) = free_runs(sp);
        (pages_total, pages_free, runs, largest, truncated)
    };
    drop(locked);

    Ok(SlabSample {
        pages_total,
        pages_free,
        slots,
        free_runs: runs,
        largest_free_run_pages: largest,
        free_runs_truncated: truncated,
    })
}

/// The pool's free runs: their count, the largest's pages, and whether the
/// walk stopped at its bound.
///
/// # Safety
/// `sp` is a slab pool whose lock this process holds.
unsafe fn free_runs(sp: *mut ngx_slab_pool_t) -> (u64, u64, bool) {
    // SAFETY: the pool's free list head and its pages, under the pool's lock.
    unsafe {
        let head: *mut ngx_slab_page_t = ptr::addr_of_mut!((*sp).free);
        let (mut runs, mut largest) = (0u64, 0u64);
        let mut page = (*sp).free.next;
        while page != head && !page.is_null() && runs < MAX_FREE_RUNS {
            runs += 1;
            // The first page of a free run holds the run's length in pages.
            largest = largest.max((*page).slab as u64);
            page = (*page).next;
        }
        (runs, largest, page != head)
    }
}

/// The one structure a zone of ours holds: the previous cycle's (the zone was
/// kept across a reload), the one the zone already has, or a new one of
/// `bytes` from the zone's slab pool, which `fresh` writes. A new zone's pages
/// are the kernel's zeroed pages: writing only a header keeps the rest
/// untouched. Sets the zone's `data`.
///
/// # Safety
/// `zone` is the zone nginx is initializing and `data` what nginx passed with it.
pub(super) unsafe fn zone_struct<T>(
    zone: *mut ngx_shm_zone_t,
    data: *mut c_void,
    bytes: usize,
    fresh: impl FnOnce(*mut T),
) -> Option<*mut T> {
    // SAFETY: the caller's contract: nginx's zone being initialized, mapped
    // with its slab pool at its start; `data` is the previous cycle's.
    unsafe {
        let found: *mut T = if !data.is_null() {
            data.cast()
        } else {
            let pool = (*zone).shm.addr.cast::<ngx_slab_pool_t>();
            if (*zone).shm.exists != 0 {
                (*pool).data.cast()
            } else {
                let t = ngx_slab_alloc(pool, bytes).cast::<T>();
                if t.is_null() {
                    return None;
                }
                fresh(t);
                (*pool).data = t.cast();
                t
            }
        };
        (*zone).data = found.cast();
        Some(found)
    }
}
