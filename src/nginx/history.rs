//! The history zone: one ring of samples per process (a worker's summary, one
//! per `memory_status_interval`, the last `memory_status_history` of them), and
//! each ring's trends as its owner last fitted them. Like the registry, each
//! process writes only its own ring; a reader checks the samples it read were
//! not overwritten meanwhile, and never waits.

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use ngx::ffi::{
    ngx_conf_t, ngx_cycle_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_str_t,
    NGX_ERROR, NGX_OK,
};

use crate::history::{
    Fit, Sample, SampleWindow, ZonesSample, SAMPLE_WORDS, ZONES_MAX, ZONES_SAMPLE_WORDS,
};

pub const ZONE_NAME: &str = crate::zones::HISTORY_ZONE;
/// Reload times kept (the last ones).
const RELOADS: usize = 16;
/// Series whose trend a ring keeps (`history::series` order), and words each.
pub const TREND_SERIES: usize = crate::history::SERIES_COUNT;
const TREND_WORDS: usize = 5;
const MAGIC: u64 = 0x6d65_6d5f_6869_0000 | (ZONES_SAMPLE_WORDS << 8 | SAMPLE_WORDS) as u64;

/// The default history: one hour.
pub const DEFAULT_SPAN_MS: u64 = 3_600_000;
/// The most samples a ring takes: a day at 10 s (`?history=1` answers at
/// most `HISTORY_POINTS` of them, spread or paged).
pub const MAX_CAPACITY: usize = 8_640;
/// The trends are fitted through this many samples at most, evenly spread
/// over the window: the fit's cost on the loop is bounded whatever the length.
const FIT_POINTS: usize = 720;

#[repr(C)]
struct Header {
    magic: u64,
    rings: u64,
    capacity: u64,
    /// Configuration loads seen by this zone, and when the last `RELOADS` were.
    loads: AtomicU64,
    reload_at_ms: [AtomicU64; RELOADS],
    /// The zones' ring (after the processes' rings): written by one process,
    /// the first to claim it, until it exits.
    zones_owner: AtomicI32,
    zone_trend_seq: AtomicU32,
    zones_written: AtomicU64,
    zones_writing: AtomicU64,
    /// Per zone of the last sample: its name hash, then its fit.
    zone_trends: [AtomicU64; ZONES_MAX * (1 + TREND_WORDS)],
}

#[repr(C)]
struct RingHead {
    /// 0: free; minus a pid: being claimed by that process (taken back when
    /// it died there); else the owner's pid.
    pid: AtomicI32,
    trend_seq: AtomicU32,
    started_at_ms: AtomicU64,
    /// Samples ever written: the next goes to `written % capacity`.
    written: AtomicU64,
    /// `written` + 1 while a sample is being written, so a reader knows which
    /// slot may have changed under it.
    writing: AtomicU64,
    trends: [AtomicU64; TREND_SERIES * TREND_WORDS],
}

/// The ring this process claimed, if any: an index, used only while the
/// ring's pid is this process's.
static MY_RING: AtomicI32 = AtomicI32::new(-1);

fn ring_bytes(capacity: usize) -> usize {
    std::mem::size_of::<RingHead>() + capacity * SAMPLE_WORDS * 8
}

/// The header, every process's ring, and the zones' ring.
fn data_bytes(capacity: usize, rings: usize) -> usize {
    std::mem::size_of::<Header>() + rings * ring_bytes(capacity) + capacity * ZONES_SAMPLE_WORDS * 8
}

/// The zone's size for `rings` of `capacity` samples, slab pages included.
fn zone_bytes(capacity: usize, rings: usize) -> usize {
    let data = data_bytes(capacity, rings);
    data + data / 16 + (64 << 10)
}

/// Adds the history zone (after the `http` block, when its size is known).
/// The zone's init finds the capacity in `main`, which lives in the
/// configuration's pool as long as the zone's cycle.
pub fn add_zone(
    cf: *mut ngx_conf_t,
    tag: *mut c_void,
    main: &mut super::MainConf,
) -> Result<(), ()> {
    let (capacity, rings) = (main.history_capacity, main.history_rings);
    let mut name = ngx_str_t {
        len: ZONE_NAME.len(),
        data: ZONE_NAME.as_ptr().cast_mut(),
    };
    // SAFETY: called while nginx reads the configuration; the name is static.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, zone_bytes(capacity, rings), tag) };
    if zone.is_null() {
        return Err(());
    }
    // SAFETY: a zone nginx just returned; its init runs while `main` lives.
    unsafe {
        (*zone).init = Some(init_zone);
        (*zone).data = (main as *mut super::MainConf).cast();
    }
    Ok(())
}

extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `add_zone` set the zone's data to the configuration's MainConf.
    let (capacity, rings) = unsafe {
        let main = &*(*zone).data.cast::<super::MainConf>();
        (main.history_capacity, main.history_rings)
    };
    let bytes = data_bytes(capacity, rings);
    let fresh = |h: *mut Header| {
        // SAFETY: a new allocation of `bytes`.
        unsafe {
            (*h).magic = MAGIC;
            (*h).rings = rings as u64;
            (*h).capacity = capacity as u64;
        }
    };
    // SAFETY: nginx passes the zone being initialized and the previous
    // cycle's `zone->data`.
    let Some(header) = (unsafe { super::registry::zone_struct(zone, data, bytes, fresh) }) else {
        return NGX_ERROR as ngx_int_t;
    };
    // SAFETY: the header of this zone, mapped for the process's life.
    unsafe {
        if (*header).magic != MAGIC
            || (*header).capacity != capacity as u64
            || (*header).rings != rings as u64
        {
            return NGX_ERROR as ngx_int_t;
        }
    }
    NGX_OK as ngx_int_t
}

/// In the master, once a configuration load has succeeded: the reload's time,
/// where the trends' window starts (a failed reload marks nothing).
pub fn count_load(cycle: &ngx_cycle_t) {
    // SAFETY: the cycle just configured; its zones are initialized.
    let Some(h) = (unsafe { super::zones::own_zone_in::<Header>(cycle, ZONE_NAME) }) else {
        return;
    };
    if h.magic != MAGIC {
        return;
    }
    let load = h.loads.fetch_add(1, Ordering::AcqRel);
    h.reload_at_ms[load as usize % RELOADS].store(super::collect::now_ms(), Ordering::Release);
}

/// The running cycle's history zone (loop thread only).
fn header() -> Option<&'static Header> {
    // SAFETY: the zone's init stores a `Header` in its data; the reference is
    // used within the caller's run on the loop.
    unsafe { super::zones::own_zone::<Header>(ZONE_NAME) }.filter(|h| h.magic == MAGIC)
}

/// Ring `i`'s head and its samples' words.
fn ring(h: &'static Header, i: usize) -> (&'static RingHead, &'static [AtomicU64]) {
    let capacity = h.capacity as usize;
    // SAFETY: `i < h.rings`; the rings follow the header, each `ring_bytes`
    // long, inside the allocation `init_zone` made; every field is atomic.
    unsafe {
        let base = (h as *const Header as *const u8)
            .add(std::mem::size_of::<Header>() + i * ring_bytes(capacity));
        let head = &*base.cast::<RingHead>();
        let words = std::slice::from_raw_parts(
            base.add(std::mem::size_of::<RingHead>())
                .cast::<AtomicU64>(),
            capacity * SAMPLE_WORDS,
        );
        (head, words)
    }
}

/// The zones' ring: its samples' words, after the processes' rings.
fn zones_ring(h: &'static Header) -> &'static [AtomicU64] {
    let capacity = h.capacity as usize;
    // SAFETY: inside the allocation `init_zone` made (`data_bytes`); atomic words.
    unsafe {
        let base = (h as *const Header as *const u8)
            .add(std::mem::size_of::<Header>() + h.rings as usize * ring_bytes(capacity));
        std::slice::from_raw_parts(base.cast::<AtomicU64>(), capacity * ZONES_SAMPLE_WORDS)
    }
}

/// Records the zones if this process writes them: the first to claim the
/// ring, until it exits (then another claims it).
fn record_zones(sample: &ZonesSample, fit_since_ms: u64) {
    let Some(h) = header() else { return };
    let pid = std::process::id() as i32;
    let owner = h.zones_owner.load(Ordering::Acquire);
    if owner != pid {
        let taken = super::registry::reclaimable(owner, pid)
            && h.zones_owner
                .compare_exchange(owner, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok();
        if !taken {
            return;
        }
        // A writer killed while it wrote the trends left their sequence odd.
        if h.zone_trend_seq.load(Ordering::Acquire) % 2 == 1 {
            h.zone_trend_seq.fetch_add(1, Ordering::AcqRel);
        }
    }
    let capacity = h.capacity as usize;
    let words = zones_ring(h);
    let n = h.zones_written.load(Ordering::Relaxed);
    let at = (n as usize % capacity) * ZONES_SAMPLE_WORDS;
    h.zones_writing.store(n + 1, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    for (cell, w) in words[at..at + ZONES_SAMPLE_WORDS]
        .iter()
        .zip(sample.to_words())
    {
        cell.store(w, Ordering::Relaxed);
    }
    h.zones_written.store(n + 1, Ordering::Release);
    let samples = read_zones_ring(h, SampleWindow::spread(FIT_POINTS));
    let trends = crate::history::zone_trends(&samples, fit_since_ms);
    h.zone_trend_seq.fetch_add(1, Ordering::AcqRel);
    std::sync::atomic::fence(Ordering::Release);
    for cell in h.zone_trends.iter() {
        cell.store(0, Ordering::Relaxed);
    }
    for (i, (hash, f, last)) in trends.into_iter().take(ZONES_MAX).enumerate() {
        let w = [
            hash,
            f.bytes_per_hour.to_bits(),
            f.r_squared.to_bits(),
            f.samples as u64,
            f.span_ms,
            last,
        ];
        for (cell, v) in h.zone_trends[i * (1 + TREND_WORDS)..][..1 + TREND_WORDS]
            .iter()
            .zip(w)
        {
            cell.store(v, Ordering::Relaxed);
        }
    }
    h.zone_trend_seq.fetch_add(1, Ordering::Release);
}

/// The zones' samples the window picks, oldest first; those overwritten
/// while read are dropped.
fn read_zones_ring(h: &'static Header, window: SampleWindow) -> Vec<ZonesSample> {
    let capacity = h.capacity as usize;
    let words = zones_ring(h);
    let before = h.zones_written.load(Ordering::Acquire);
    let first = before.saturating_sub(capacity as u64);
    let at_ms_of =
        |n: u64| words[(n as usize % capacity) * ZONES_SAMPLE_WORDS].load(Ordering::Relaxed);
    let picked = crate::history::pick(first, before, window, at_ms_of);
    let mut out = Vec::new();
    if out.try_reserve(picked.len()).is_err() {
        return Vec::new();
    }
    for n in picked {
        let at = (n as usize % capacity) * ZONES_SAMPLE_WORDS;
        let mut w = [0u64; ZONES_SAMPLE_WORDS];
        for (v, cell) in w.iter_mut().zip(&words[at..at + ZONES_SAMPLE_WORDS]) {
            *v = cell.load(Ordering::Relaxed);
        }
        out.push((n, ZonesSample::from_words(&w)));
    }
    std::sync::atomic::fence(Ordering::Acquire);
    let valid_from = h
        .zones_writing
        .load(Ordering::Relaxed)
        .saturating_sub(capacity as u64);
    out.into_iter()
        .filter(|(n, _)| *n >= valid_from)
        .map(|(_, s)| s)
        .collect()
}

/// The zones' trends as their writer last fitted them: (name hash, fit, last).
pub fn zone_trends() -> Vec<(u64, Fit, u64)> {
    let Some(h) = header() else { return Vec::new() };
    for _ in 0..4 {
        let before = h.zone_trend_seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let words: Vec<u64> = h
            .zone_trends
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        std::sync::atomic::fence(Ordering::Acquire);
        if h.zone_trend_seq.load(Ordering::Relaxed) != before {
            continue;
        }
        return words
            .chunks_exact(1 + TREND_WORDS)
            .filter(|w| w[0] != 0)
            .map(|w| {
                let fit = Fit {
                    bytes_per_hour: f64::from_bits(w[1]),
                    r_squared: f64::from_bits(w[2]),
                    samples: w[3] as usize,
                    span_ms: w[4],
                };
                (w[0], fit, w[5])
            })
            .collect();
    }
    Vec::new()
}

/// The zones' samples the window picks (`?history=1`, the HTML page).
pub fn zone_samples(window: SampleWindow) -> Vec<ZonesSample> {
    header()
        .map(|h| read_zones_ring(h, window))
        .unwrap_or_default()
}

/// The last reload of the configuration (or the start), for the trends' window.
pub fn reloads_at_ms() -> Vec<u64> {
    let Some(h) = header() else { return Vec::new() };
    let loads = h.loads.load(Ordering::Acquire) as usize;
    (loads.saturating_sub(RELOADS)..loads)
        .map(|n| h.reload_at_ms[n % RELOADS].load(Ordering::Acquire))
        .collect()
}

/// A worker (or the single process) takes a ring unless it holds one: as it
/// starts, and again on its timer (all rings were taken, or a reload in
/// single-process mode made a new zone): a free one, else one whose owner died.
pub fn ensure_claimed() {
    if my_ring().is_some() {
        return;
    }
    let Some(h) = header() else { return };
    let pid = std::process::id() as i32;
    // Marked as being written by this pid: a process killed before its pid's
    // store leaves a ring the next claim takes back.
    let Some(i) = (0..h.rings as usize).find(|&i| {
        let (head, _) = ring(h, i);
        let owner = head.pid.load(Ordering::Acquire);
        super::registry::reclaimable(owner, pid)
            && head
                .pid
                .compare_exchange(owner, -pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }) else {
        return;
    };
    let (head, _) = ring(h, i);
    head.written.store(0, Ordering::Relaxed);
    head.writing.store(0, Ordering::Relaxed);
    head.trend_seq.store(0, Ordering::Relaxed);
    head.trends[0].store(0, Ordering::Relaxed);
    head.started_at_ms
        .store(super::collect::now_ms(), Ordering::Relaxed);
    head.pid.store(pid, Ordering::Release);
    MY_RING.store(i as i32, Ordering::Relaxed);
}

/// The ring (and the zones', if this process wrote them) is freed as its
/// process exits.
pub fn release() {
    if let Some(h) = header() {
        let pid = std::process::id() as i32;
        let _ = h
            .zones_owner
            .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
    let Some((head, _, _)) = my_ring() else {
        return;
    };
    let _ = head.pid.compare_exchange(
        std::process::id() as i32,
        0,
        Ordering::AcqRel,
        Ordering::Relaxed,
    );
}

fn my_ring() -> Option<(&'static RingHead, &'static [AtomicU64], usize)> {
    let h = header()?;
    let i = usize::try_from(MY_RING.load(Ordering::Relaxed)).ok()?;
    if i >= h.rings as usize {
        return None;
    }
    let (head, words) = ring(h, i);
    (head.pid.load(Ordering::Relaxed) == std::process::id() as i32).then_some((
        head,
        words,
        h.capacity as usize,
    ))
}

/// The timer's summary, as this process's next sample (and the zones').
pub fn record_summary(sample: &Sample, zones: &ZonesSample) {
    let since = reloads_at_ms().last().copied().unwrap_or(0);
    record(sample, since);
    record_zones(zones, since);
}

/// Appends a sample to this process's ring, then fits and writes its trends.
pub fn record(sample: &Sample, fit_since_ms: u64) {
    let Some((head, words, capacity)) = my_ring() else {
        return;
    };
    let n = head.written.load(Ordering::Relaxed);
    let at = (n as usize % capacity) * SAMPLE_WORDS;
    head.writing.store(n + 1, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    for (cell, w) in words[at..at + SAMPLE_WORDS].iter().zip(sample.to_words()) {
        cell.store(w, Ordering::Relaxed);
    }
    head.written.store(n + 1, Ordering::Release);
    let (samples, _) = read_ring(head, words, capacity, SampleWindow::spread(FIT_POINTS));
    let trends = crate::history::trends(&samples, fit_since_ms, 0);
    head.trend_seq.fetch_add(1, Ordering::AcqRel);
    std::sync::atomic::fence(Ordering::Release);
    for cell in head.trends.iter() {
        cell.store(0, Ordering::Relaxed);
    }
    for t in &trends {
        let Some(slot) = crate::history::series_index(t.series) else {
            continue;
        };
        let f = t.fit;
        let w = [
            f.bytes_per_hour.to_bits(),
            f.r_squared.to_bits(),
            f.samples as u64,
            f.span_ms,
            t.last_bytes as u64,
        ];
        for (cell, v) in head.trends[slot * TREND_WORDS..][..TREND_WORDS]
            .iter()
            .zip(w)
        {
            cell.store(v, Ordering::Relaxed);
        }
    }
    head.trend_seq.fetch_add(1, Ordering::Release);
}

/// A ring's samples the window picks, oldest first, and how many it keeps;
/// those overwritten while read are dropped.
fn read_ring(
    head: &RingHead,
    words: &[AtomicU64],
    capacity: usize,
    window: SampleWindow,
) -> (Vec<Sample>, u64) {
    let before = head.written.load(Ordering::Acquire);
    let first = before.saturating_sub(capacity as u64);
    let at_ms_of = |n: u64| words[(n as usize % capacity) * SAMPLE_WORDS].load(Ordering::Relaxed);
    let picked = crate::history::pick(first, before, window, at_ms_of);
    let mut out = Vec::new();
    if out.try_reserve(picked.len()).is_err() {
        return (Vec::new(), before - first);
    }
    for n in picked {
        let at = (n as usize % capacity) * SAMPLE_WORDS;
        let mut w = [0u64; SAMPLE_WORDS];
        for (v, cell) in w.iter_mut().zip(&words[at..at + SAMPLE_WORDS]) {
            *v = cell.load(Ordering::Relaxed);
        }
        out.push((n, Sample::from_words(&w)));
    }
    std::sync::atomic::fence(Ordering::Acquire);
    // A write begun since overwrote the slot of the sample `capacity` older.
    let writing = head.writing.load(Ordering::Relaxed);
    let valid_from = writing.saturating_sub(capacity as u64);
    out.retain(|(n, _)| *n >= valid_from);
    (out.into_iter().map(|(_, s)| s).collect(), before - first)
}

/// One ring as read for an answer.
pub struct RingView {
    pub pid: u32,
    pub started_at_ms: u64,
    pub trends: Vec<(usize, Fit, i64)>,
    /// `?history=1` (or the HTML page) only: those the window picks, and
    /// how many the ring keeps.
    pub samples: Option<(Vec<Sample>, u64)>,
}

/// Every ring with a live owner: its trends, and with a window, the samples
/// it picks.
pub fn read(window: Option<SampleWindow>) -> Option<(Vec<RingView>, usize)> {
    let h = header()?;
    let capacity = h.capacity as usize;
    let mut out = Vec::new();
    for i in 0..h.rings as usize {
        let (head, words) = ring(h, i);
        let pid = head.pid.load(Ordering::Acquire);
        if pid <= 0 {
            continue;
        }
        let view = RingView {
            pid: pid as u32,
            started_at_ms: head.started_at_ms.load(Ordering::Relaxed),
            trends: read_trends(head),
            samples: window.map(|w| read_ring(head, words, capacity, w)),
        };
        // Taken only if the ring kept its owner while it was read.
        if head.pid.load(Ordering::Acquire) == pid {
            out.push(view);
        }
    }
    Some((out, capacity))
}

fn read_trends(head: &RingHead) -> Vec<(usize, Fit, i64)> {
    for _ in 0..4 {
        let before = head.trend_seq.load(Ordering::Acquire);
        if before % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let words: Vec<u64> = head
            .trends
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        std::sync::atomic::fence(Ordering::Acquire);
        if head.trend_seq.load(Ordering::Relaxed) != before {
            continue;
        }
        return words
            .chunks_exact(TREND_WORDS)
            .enumerate()
            .filter(|(_, w)| w[2] > 0)
            .map(|(i, w)| {
                (
                    i,
                    Fit {
                        bytes_per_hour: f64::from_bits(w[0]),
                        r_squared: f64::from_bits(w[1]),
                        samples: w[2] as usize,
                        span_ms: w[3],
                    },
                    w[4] as i64,
                )
            })
            .collect();
    }
    Vec::new()
}

/// Test-only build: every ring free or left by a dead process, and this
/// process's, marked as being
/// written by `writer` (a live pid: no ring is left; a pid that cannot exist:
/// rings whose writer died before its pid's store).
#[cfg(feature = "test-panic")]
pub fn test_mark_rings(writer: i32) {
    let Some(h) = header() else { return };
    let own = std::process::id() as i32;
    for i in 0..h.rings as usize {
        let (head, _) = ring(h, i);
        let owner = head.pid.load(Ordering::Acquire);
        if super::registry::reclaimable(owner, own) {
            let _ = head
                .pid
                .compare_exchange(owner, -writer, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// Test-only build: fills this process's ring to its capacity with copies of
/// its newest sample, one `interval_ms` apart up to now, as a day of
/// sampling would (`scripts/bench` measures `?history=1` at its maximum).
#[cfg(feature = "test-panic")]
pub fn test_fill_ring(interval_ms: u64) {
    let Some((head, words, capacity)) = my_ring() else {
        return;
    };
    let (newest, _) = read_ring(head, words, capacity, SampleWindow::spread(1));
    let sample = newest.into_iter().next().unwrap_or_default();
    let now = super::collect::now_ms();
    let n = head.written.load(Ordering::Relaxed);
    for i in 0..capacity as u64 {
        let mut s = sample.clone();
        s.at_ms = now.saturating_sub((capacity as u64 - i) * interval_ms);
        let at = ((n + i) as usize % capacity) * SAMPLE_WORDS;
        head.writing.store(n + i + 1, Ordering::Relaxed);
        for (cell, w) in words[at..at + SAMPLE_WORDS].iter().zip(s.to_words()) {
            cell.store(w, Ordering::Relaxed);
        }
        head.written.store(n + i + 1, Ordering::Release);
    }
}
