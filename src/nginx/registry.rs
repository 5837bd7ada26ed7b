//! The process registry: a small zone of the module's own where every worker,
//! cache process (and the single process) writes who it is when it starts, so
//! that any worker can answer for the whole server. Each process writes only its
//! own slot; readers take a slot only when its pid reads the same before and
//! after its fields, so nobody ever waits on anyone.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_process, ngx_shared_memory_add, ngx_shm_zone_t,
    ngx_str_t, ngx_worker, NGX_ERROR, NGX_OK, NGX_PROCESS_HELPER, NGX_PROCESS_SINGLE,
    NGX_PROCESS_WORKER,
};

use crate::alloc_guard::TryPush;
use crate::analysis::server::{RegisteredKind, RegistryEntry};
use crate::model::server::Published;
use crate::shm::summary::{PSS_AT, PUBLISHED_WORDS};
use crate::shm::{claim, seqlock};

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
    /// The memory cgroup's OOM kills when nginx started (`u64::MAX`: not
    /// known), so an answer counts the kills since then.
    oom_kills_at_start: AtomicU64,
    /// Slots ever claimed: readers look no further, so the pages of slots
    /// never used stay untouched (not resident in any process).
    used: AtomicU32,
    slots: [Slot; SLOTS],
}

#[repr(C)]
struct Slot {
    /// 0: free; minus a pid: being written by that process (a slot whose
    /// writer died there is claimed again); else the owner's pid.
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

/// The memory cgroup's OOM kills now (the master, as nginx starts).
fn oom_kills_now() -> Option<u64> {
    crate::sources::cgroup::read_own().ok()??.events.oom_kill
}

/// nginx's zone init, in the master at every configuration load: a new zone
/// gets a zeroed registry; a zone kept across a reload counts the new load.
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    let fresh = |r: *mut Registry| {
        // SAFETY: a new allocation of the registry's size.
        unsafe {
            (*r).magic = MAGIC;
            (*r).master_started_at_ms
                .store(super::clock::now_ms(), Ordering::Relaxed);
            (*r).oom_kills_at_start
                .store(oom_kills_now().unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    };
    // SAFETY: nginx passes the zone being initialized and the previous
    // cycle's `zone->data`.
    let Some(registry) =
        (unsafe { super::zones::zone_struct(zone, data, std::mem::size_of::<Registry>(), fresh) })
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

/// The running cycle's registry (loop thread only).
fn registry() -> Option<&'static Registry> {
    // SAFETY: the registry zone's init stores a `Registry` in its data; the
    // reference is used within the caller's run on the loop.
    unsafe { super::zones::own_zone::<Registry>(ZONE_NAME) }.filter(|r| r.magic == MAGIC)
}

/// At the process's start: `None` without a registry (no location uses
/// `memory_status`); else whether this process writes a history (a worker or
/// the single process), its start time noted for an entry without a slot.
pub fn begin_process() -> Option<bool> {
    registry()?;
    STARTED_AT_MS.store(super::clock::now_ms(), Ordering::Relaxed);
    Some(matches!(
        own_kind(),
        Some(RegisteredKind::Worker | RegisteredKind::Single)
    ))
}

/// As the process leaves: its slot is freed.
pub fn release_slot() {
    let (Some(r), Ok(i)) = (registry(), usize::try_from(MY_SLOT.load(Ordering::Relaxed))) else {
        return;
    };
    let Some(slot) = r.slots.get(i) else { return };
    claim::release(&slot.pid, std::process::id() as i32);
}

/// When this process started (`init_process`): for its entry when it has
/// no slot. Process state, not a setting.
static STARTED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// This process as its slot would list it, for an answer of a process that
/// has none (all taken): the answer still counts the process that gives it.
pub fn entry_without_slot(generation: u64) -> Option<RegistryEntry> {
    let kind = own_kind()?;
    // SAFETY: a plain integer nginx sets before calling init_process.
    let number = (kind == RegisteredKind::Worker).then_some(unsafe { ngx_worker } as u32);
    Some(RegistryEntry {
        pid: std::process::id(),
        kind,
        worker: number,
        generation,
        started_at_ms: STARTED_AT_MS.load(Ordering::Relaxed),
        published: None,
    })
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
    let i = claim_slot(r, pid)?;
    write_slot(r, i, kind, pid);
    MY_SLOT.store(i as i32, Ordering::Relaxed);
    Some(kind)
}

/// The first slot that is free, or whose owner or writer died without
/// leaving (`kill -9`, also between this claim and its pid's store), marked
/// as being written by `pid`.
fn claim_slot(r: &Registry, pid: i32) -> Option<usize> {
    claim::begin(r.slots.iter().map(|s| &s.pid), pid, alive)
}

/// Whether a slot (or ring) whose pid word reads `owner` may be taken by
/// `claimer`, by whether processes run now.
pub(super) fn reclaimable(owner: i32, claimer: i32) -> bool {
    claim::reclaimable(owner, claimer, alive)
}

/// Writes who this process is into claimed slot `i`, then its pid.
fn write_slot(r: &Registry, i: usize, kind: RegisteredKind, pid: i32) {
    r.used.fetch_max(i as u32 + 1, Ordering::AcqRel);
    let slot = &r.slots[i];
    // A reclaimed slot may hold its dead owner's summary and walk, and a
    // sequence left odd by an owner killed while it published.
    seqlock::reset(&slot.seq);
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
        .store(super::clock::now_ms(), Ordering::Relaxed);
    claim::own(&slot.pid, pid);
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
    seqlock::write(&slot.seq, &slot.published, &words[..upto]);
}

/// A slot's summary as its owner last wrote it whole; `None` if it is being
/// written at every one of a few tries, or was never written.
fn published_of(slot: &Slot, now_ms: u64) -> Option<Published> {
    let mut words = [0u64; PUBLISHED_WORDS];
    seqlock::read(&slot.seq, &slot.published, &mut words)
        .then(|| Published::from_words(&words, now_ms))
        .flatten()
}

pub(super) fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// What the registry holds now.
pub struct RegistryRead {
    pub generation: u64,
    pub master_started_at_ms: u64,
    pub oom_kills_at_start: Option<u64>,
    /// Every slot with an owner (a dead one's until its slot is taken again:
    /// the process list checks who still runs).
    pub entries: Vec<RegistryEntry>,
    /// No slot free: a process started now would not be listed.
    pub full: bool,
}

/// Slots in the registry, for what the answer says when it is full.
pub const SLOT_COUNT: usize = SLOTS;

/// What the registry holds now; `None` when this process has no registry.
pub fn read(now_ms: u64) -> Option<RegistryRead> {
    let r = registry()?;
    let mut entries = Vec::new();
    let used = (r.used.load(Ordering::Acquire) as usize).min(SLOTS);
    for slot in &r.slots[..used] {
        let Some(pid) = claim::owner(&slot.pid) else {
            continue;
        };
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
        if slot.pid.load(Ordering::Acquire) == pid && entries.try_push(entry).is_err() {
            break;
        }
    }
    Some(RegistryRead {
        generation: r.generation.load(Ordering::Acquire),
        master_started_at_ms: r.master_started_at_ms.load(Ordering::Relaxed),
        oom_kills_at_start: Some(r.oom_kills_at_start.load(Ordering::Relaxed))
            .filter(|&n| n != u64::MAX),
        entries,
        full: used == SLOTS
            && !r
                .slots
                .iter()
                .any(|s| reclaimable(s.pid.load(Ordering::Relaxed), 0)),
    })
}

/// Test-only build: leaves this process's registry as a crash at the worst
/// moment would, for `test_hooks` to kill the process then; the pid the
/// stuck claims name (0: none), `None` when nothing was done. `odd-seq`: in the middle of publishing.
/// `stuck`: every free slot and ring, and its own, as if their writers died
/// between the claim and the pid's store. `full`: the same, claimed by the
/// live master: no slot or ring is left for the process respawned next.
#[cfg(feature = "test-panic")]
pub fn test_leave_stuck(what: &[u8]) -> Option<i32> {
    /// Above Linux's largest pid (`PID_MAX_LIMIT`, 2^22): never alive.
    const NEVER_A_PID: i32 = (1 << 22) + 1;
    let r = registry()?;
    let own = usize::try_from(MY_SLOT.load(Ordering::Relaxed))
        .ok()
        .and_then(|i| r.slots.get(i))?;
    let writer = match what {
        b"odd-seq" => {
            own.seq.fetch_add(1, Ordering::AcqRel);
            0
        }
        b"stuck" => NEVER_A_PID,
        // SAFETY: a plain integer nginx sets when the process starts.
        b"full" => unsafe { ngx::ffi::ngx_parent },
        _ => return None,
    };
    if writer != 0 {
        for slot in &r.slots {
            let owner = slot.pid.load(Ordering::Acquire);
            if reclaimable(owner, 0) {
                let _ =
                    slot.pid
                        .compare_exchange(owner, -writer, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
        own.pid.store(-writer, Ordering::Release);
        r.used.store(SLOTS as u32, Ordering::Release);
    }
    Some(writer)
}
