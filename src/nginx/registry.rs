//! The process registry: a small zone of the module's own where every worker,
//! cache process (and the single process) writes who it is when it starts, so
//! that any worker can answer for the whole server. Each process writes only its
//! own slot; readers take a slot only when its pid reads the same before and
//! after its fields, so nobody ever waits on anyone.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_process, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_slab_alloc, ngx_slab_pool_t, ngx_str_t, ngx_worker, NGX_ERROR, NGX_OK, NGX_PROCESS_HELPER,
    NGX_PROCESS_SINGLE, NGX_PROCESS_WORKER,
};

use crate::server::{Published, RegisteredKind, RegistryEntry, PSS_AT, PUBLISHED_WORDS};

/// The zone's name: unlikely to meet a user's zone of the same name.
pub const ZONE_NAME: &str = "ngx_http_memory_status_module";
/// Slots for every process that can be alive at once: workers of every
/// generation still shutting down, and the cache processes. Fixed, so the zone
/// is the same across reloads (a zone of another size would be a new zone, and
/// the old generation would vanish from the new one's view).
const SLOTS: usize = 1024;
/// The zone: the registry plus the slab pool's own pages.
const ZONE_BYTES: usize = 512 << 10;
/// "mem_st" and the slot's words: a registry of another layout is refused.
const MAGIC: u64 = 0x6d65_6d5f_7374_0000 | PUBLISHED_WORDS as u64;

// The registry, with room left for the slab pool's own pages.
const _: () = assert!(std::mem::size_of::<Registry>() <= ZONE_BYTES - (64 << 10));

#[repr(C)]
struct Registry {
    magic: u64,
    /// Configuration loads: 1 at start, +1 per reload (the zone lives on).
    generation: AtomicU64,
    master_started_at_ms: AtomicU64,
    /// Slots ever claimed: readers look no further, so the pages of slots
    /// never used stay untouched (not resident in any process).
    used: AtomicU32,
    slots: [Slot; SLOTS],
}

#[repr(C)]
struct Slot {
    /// 0: free; -1: being written; else the owner's pid.
    pid: AtomicI32,
    kind: AtomicU32,
    /// `u32::MAX`: none.
    worker: AtomicU32,
    generation: AtomicU64,
    started_at_ms: AtomicU64,
    /// Odd while the owner writes `published`: a reader that sees it odd, or
    /// changed across its read, tries again (a few times, never waiting).
    seq: AtomicU32,
    published: [AtomicU64; PUBLISHED_WORDS],
}

/// The slot this process claimed, if any: an index, not a pointer, and only
/// used while the slot's pid is this process's (a registry of another cycle
/// holds another pid there).
static MY_SLOT: AtomicI32 = AtomicI32::new(-1);

/// Adds the registry zone to the configuration being read (once per cycle:
/// nginx returns the zone already added for the same name, size and tag).
pub fn add_zone(cf: *mut ngx_conf_t, tag: *mut c_void) -> Result<(), ()> {
    let mut name = ngx_str_t {
        len: ZONE_NAME.len(),
        data: ZONE_NAME.as_ptr().cast_mut(),
    };
    // SAFETY: called while nginx parses the configuration; nginx copies nothing
    // of `name` it does not keep in the cycle's pool (it points at a static).
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, ZONE_BYTES, tag) };
    if zone.is_null() {
        return Err(());
    }
    // SAFETY: a zone nginx just returned.
    unsafe { (*zone).init = Some(init_zone) };
    Ok(())
}

/// nginx's zone init, in the master at every configuration load: a new zone
/// gets a zeroed registry; a zone kept across a reload counts the new load.
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    let fresh = |r: *mut Registry| {
        // SAFETY: a new allocation of the registry's size.
        unsafe {
            (*r).magic = MAGIC;
            (*r).master_started_at_ms
                .store(super::collect::now_ms(), Ordering::Relaxed);
        }
    };
    // SAFETY: nginx passes the zone being initialized and the previous
    // cycle's `zone->data`.
    let Some(registry) =
        (unsafe { zone_struct(zone, data, std::mem::size_of::<Registry>(), fresh) })
    else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the registry of this zone, mapped for the process's life.
    unsafe {
        if (*registry).magic != MAGIC {
            return NGX_ERROR as ngx_int_t;
        }
    }
    NGX_OK as ngx_int_t
}

/// In the master, once a configuration load has succeeded (`init_module`
/// runs after every step that can fail): one more generation. A reload that
/// fails after its zones were initialized counts nothing.
pub fn count_load(cycle: &ngx_cycle_t) {
    // SAFETY: the cycle just configured; its zones are initialized.
    if let Some(r) = unsafe { super::zones::own_zone_in::<Registry>(cycle, ZONE_NAME) } {
        if r.magic == MAGIC {
            r.generation.fetch_add(1, Ordering::AcqRel);
        }
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

/// The running cycle's registry (loop thread only).
fn registry() -> Option<&'static Registry> {
    // SAFETY: the registry zone's init stores a `Registry` in its data; the
    // reference is used within the caller's run on the loop.
    unsafe { super::zones::own_zone::<Registry>(ZONE_NAME) }.filter(|r| r.magic == MAGIC)
}

/// The module's `init_process`: a worker, cache process or single process takes
/// a slot and writes who it is, and a worker starts its timer. Without a
/// registry (no location uses `memory_status`) it does nothing.
pub extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    if registry().is_none() {
        return NGX_OK as ngx_int_t;
    }
    // The ring before the slot: a process listed has its ring already.
    // Even without either (all taken) the timer starts: it claims them when
    // they are free.
    let writes_history = matches!(
        own_kind(),
        Some(RegisteredKind::Worker | RegisteredKind::Single)
    );
    if writes_history {
        super::history::ensure_claimed();
    }
    ensure_registered();
    if writes_history {
        super::publish::start(cycle);
    }
    NGX_OK as ngx_int_t
}

/// This process's kind as the registry names it; `None` for the master.
fn own_kind() -> Option<RegisteredKind> {
    // SAFETY: a plain integer nginx sets before calling init_process.
    match unsafe { ngx_process } as u32 {
        NGX_PROCESS_WORKER => Some(RegisteredKind::Worker),
        NGX_PROCESS_HELPER => Some(RegisteredKind::Helper),
        NGX_PROCESS_SINGLE => Some(RegisteredKind::Single),
        _ => None,
    }
}

/// Takes a slot in the running registry unless this process holds one:
/// at start, and again on the timer (a registry that was full, or a new one
/// after a reload in single-process mode). `None`: no registry, no slot free,
/// or not a process that registers.
pub fn ensure_registered() -> Option<RegisteredKind> {
    let r = registry()?;
    let kind = own_kind()?;
    let pid = std::process::id() as i32;
    let held = usize::try_from(MY_SLOT.load(Ordering::Relaxed))
        .ok()
        .and_then(|i| r.slots.get(i))
        .is_some_and(|s| s.pid.load(Ordering::Relaxed) == pid);
    if held {
        return Some(kind);
    }
    let i = claim_slot(r)?;
    write_slot(r, i, kind, pid);
    MY_SLOT.store(i as i32, Ordering::Relaxed);
    Some(kind)
}

/// A free slot, else one whose owner died without leaving (kill -9), marked
/// as being written.
fn claim_slot(r: &Registry) -> Option<usize> {
    let claim = |free: &dyn Fn(i32) -> bool| {
        r.slots.iter().position(|s| {
            let owner = s.pid.load(Ordering::Acquire);
            free(owner)
                && s.pid
                    .compare_exchange(owner, -1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
    };
    claim(&|owner| owner == 0).or_else(|| claim(&|owner| owner > 0 && !alive(owner)))
}

/// Writes who this process is into claimed slot `i`, then its pid.
fn write_slot(r: &Registry, i: usize, kind: RegisteredKind, pid: i32) {
    r.used.fetch_max(i as u32 + 1, Ordering::AcqRel);
    let slot = &r.slots[i];
    // A reclaimed slot may hold its dead owner's summary and walk.
    slot.published[0].store(0, Ordering::Relaxed);
    slot.published[PSS_AT].store(0, Ordering::Relaxed);
    slot.kind.store(kind as u32, Ordering::Relaxed);
    // SAFETY: a plain integer nginx sets before calling init_process.
    let number = (kind == RegisteredKind::Worker).then_some(unsafe { ngx_worker } as u32);
    slot.worker
        .store(number.unwrap_or(u32::MAX), Ordering::Relaxed);
    slot.generation
        .store(r.generation.load(Ordering::Acquire), Ordering::Relaxed);
    slot.started_at_ms
        .store(super::collect::now_ms(), Ordering::Relaxed);
    slot.pid.store(pid, Ordering::Release);
}

/// The module's `exit_process`: the slot is freed as the process leaves.
pub extern "C" fn exit_process(_cycle: *mut ngx_cycle_t) {
    super::history::release();
    let (Some(r), Ok(i)) = (registry(), usize::try_from(MY_SLOT.load(Ordering::Relaxed))) else {
        return;
    };
    let Some(slot) = r.slots.get(i) else { return };
    let _ = slot.pid.compare_exchange(
        std::process::id() as i32,
        0,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

/// Writes this process's summary into its slot (nothing without one); a
/// summary without a page-table walk leaves the last walk's words.
pub fn publish(summary: &Published) {
    let (Some(r), Ok(i)) = (registry(), usize::try_from(MY_SLOT.load(Ordering::Relaxed))) else {
        return;
    };
    let Some(slot) = r.slots.get(i) else { return };
    if slot.pid.load(Ordering::Relaxed) != std::process::id() as i32 {
        return;
    }
    let words = summary.to_words();
    let upto = if summary.pss.is_some() {
        PUBLISHED_WORDS
    } else {
        PSS_AT
    };
    slot.seq.fetch_add(1, Ordering::AcqRel);
    std::sync::atomic::fence(Ordering::Release);
    for (cell, w) in slot.published[..upto].iter().zip(words) {
        cell.store(w, Ordering::Relaxed);
    }
    slot.seq.fetch_add(1, Ordering::Release);
}

/// A slot's summary as its owner last wrote it whole; `None` if it is being
/// written at every one of a few tries, or was never written.
fn published_of(slot: &Slot, now_ms: u64) -> Option<Published> {
    for _ in 0..4 {
        let before = slot.seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let mut words = [0u64; PUBLISHED_WORDS];
        for (w, cell) in words.iter_mut().zip(&slot.published) {
            *w = cell.load(Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) == before {
            return Published::from_words(&words, now_ms);
        }
    }
    None
}

pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// What the registry holds now: the generation, the master's start, and every
/// slot whose owner is alive. `None` when this process has no registry.
pub fn read(now_ms: u64) -> Option<(u64, u64, Vec<RegistryEntry>)> {
    let r = registry()?;
    let mut entries = Vec::new();
    let used = (r.used.load(Ordering::Acquire) as usize).min(SLOTS);
    for slot in &r.slots[..used] {
        let pid = slot.pid.load(Ordering::Acquire);
        if pid <= 0 {
            continue;
        }
        let kind = match slot.kind.load(Ordering::Relaxed) {
            k if k == RegisteredKind::Worker as u32 => RegisteredKind::Worker,
            k if k == RegisteredKind::Helper as u32 => RegisteredKind::Helper,
            _ => RegisteredKind::Single,
        };
        let worker = slot.worker.load(Ordering::Relaxed);
        let entry = RegistryEntry {
            pid: pid as u32,
            kind,
            worker: (worker != u32::MAX).then_some(worker),
            generation: slot.generation.load(Ordering::Relaxed),
            started_at_ms: slot.started_at_ms.load(Ordering::Relaxed),
            published: published_of(slot, now_ms),
        };
        // Taken only if the slot kept its owner while its fields were read.
        if slot.pid.load(Ordering::Acquire) == pid {
            entries.push(entry);
        }
    }
    Some((
        r.generation.load(Ordering::Acquire),
        r.master_started_at_ms.load(Ordering::Relaxed),
        entries,
    ))
}
