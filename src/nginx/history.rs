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

use crate::model::history::{Fit, Sample};

use crate::analysis::history::SampleWindow;

use crate::analysis::assemble::RingView;
use crate::shm::ring::Ring;
use crate::shm::samples::{ZonesSample, SAMPLE_WORDS, ZONES_MAX, ZONES_SAMPLE_WORDS};
use crate::shm::{claim, seqlock};

pub const ZONE_NAME: &str = crate::analysis::zones::HISTORY_ZONE;
/// Reload times kept (the last ones).
const RELOADS: usize = 16;
/// Series whose trend a ring keeps (`history::series` order), and words each.
pub const TREND_SERIES: usize = crate::analysis::history::SERIES_COUNT;
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
    main: &mut super::conf::MainConf,
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
        (*zone).data = (main as *mut super::conf::MainConf).cast();
    }
    Ok(())
}

extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: `add_zone` set the zone's data to the configuration's MainConf.
    let (capacity, rings) = unsafe {
        let main = &*(*zone).data.cast::<super::conf::MainConf>();
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
    let Some(header) = (unsafe { super::zones::zone_struct(zone, data, bytes, fresh) }) else {
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
    h.reload_at_ms[load as usize % RELOADS].store(super::clock::now_ms(), Ordering::Release);
}

/// The running cycle's history zone (loop thread only).
fn header() -> Option<&'static Header> {
    // SAFETY: the zone's init stores a `Header` in its data; the reference is
    // used within the caller's run on the loop.
    unsafe { super::zones::own_zone::<Header>(ZONE_NAME) }.filter(|h| h.magic == MAGIC)
}

/// Ring `i`'s head and its samples.
fn ring(h: &'static Header, i: usize) -> (&'static RingHead, Ring<'static>) {
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
        (
            head,
            Ring::new(&head.written, &head.writing, words, SAMPLE_WORDS),
        )
    }
}

/// The zones' ring, after the processes' rings.
fn zones_ring(h: &'static Header) -> Ring<'static> {
    let capacity = h.capacity as usize;
    // SAFETY: inside the allocation `init_zone` made (`data_bytes`); atomic words.
    let words = unsafe {
        let base = (h as *const Header as *const u8)
            .add(std::mem::size_of::<Header>() + h.rings as usize * ring_bytes(capacity));
        std::slice::from_raw_parts(base.cast::<AtomicU64>(), capacity * ZONES_SAMPLE_WORDS)
    };
    Ring::new(
        &h.zones_written,
        &h.zones_writing,
        words,
        ZONES_SAMPLE_WORDS,
    )
}

/// A trend's words: its fit, then the series' last value.
fn trend_words(f: &Fit, last: u64) -> [u64; TREND_WORDS] {
    [
        f.bytes_per_hour.to_bits(),
        f.r_squared.to_bits(),
        f.samples as u64,
        f.span_ms,
        last,
    ]
}

/// A trend from its words: its fit and the series' last value.
fn trend_of(w: &[u64]) -> (Fit, u64) {
    let fit = Fit {
        bytes_per_hour: f64::from_bits(w[0]),
        r_squared: f64::from_bits(w[1]),
        samples: w[2] as usize,
        span_ms: w[3],
    };
    (fit, w[4])
}

/// Records the zones if this process writes them: the first to claim the
/// ring, until it exits (then another claims it).
fn record_zones(sample: &ZonesSample, fit_since_ms: u64) {
    let Some(h) = header() else { return };
    if !claim::take(
        &h.zones_owner,
        std::process::id() as i32,
        super::registry::alive,
    ) {
        return;
    }
    // A writer killed while it wrote the trends left their sequence odd.
    seqlock::reset(&h.zone_trend_seq);
    let ring = zones_ring(h);
    ring.push(&sample.to_words());
    let samples = read_zones_ring(&ring, SampleWindow::spread(FIT_POINTS));
    let trends = crate::analysis::history::zone_trends(&samples, fit_since_ms);
    let mut words = [0u64; ZONES_MAX * (1 + TREND_WORDS)];
    for (w, (hash, f, last)) in words.chunks_exact_mut(1 + TREND_WORDS).zip(trends) {
        w[0] = hash;
        w[1..].copy_from_slice(&trend_words(&f, last));
    }
    seqlock::write(&h.zone_trend_seq, &h.zone_trends, &words);
}

/// The zones' samples the window picks, oldest first; those overwritten
/// while read are dropped.
fn read_zones_ring(ring: &Ring, window: SampleWindow) -> Vec<ZonesSample> {
    let (first, before) = ring.kept();
    let picked = crate::analysis::history::pick(first, before, window, |n| ring.word(n, 0));
    ring.read(&picked, ZonesSample::from_words)
        .unwrap_or_default()
}

/// The zones' trends as their writer last fitted them: (name hash, fit, last).
pub fn zone_trends() -> Vec<(u64, Fit, u64)> {
    let Some(h) = header() else { return Vec::new() };
    let mut words = [0u64; ZONES_MAX * (1 + TREND_WORDS)];
    if !seqlock::read(&h.zone_trend_seq, &h.zone_trends, &mut words) {
        return Vec::new();
    }
    words
        .chunks_exact(1 + TREND_WORDS)
        .filter(|w| w[0] != 0)
        .map(|w| {
            let (fit, last) = trend_of(&w[1..]);
            (w[0], fit, last)
        })
        .collect()
}

/// The zones' samples the window picks (`?history=1`, the HTML page).
pub fn zone_samples(window: SampleWindow) -> Vec<ZonesSample> {
    header()
        .map(|h| read_zones_ring(&zones_ring(h), window))
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
    let heads = (0..h.rings as usize).map(|i| &ring(h, i).0.pid);
    let Some(i) = claim::begin(heads, pid, super::registry::alive) else {
        return;
    };
    let (head, samples) = ring(h, i);
    samples.reset();
    // The dead owner's trends are not this process's.
    seqlock::reset(&head.trend_seq);
    seqlock::write(
        &head.trend_seq,
        &head.trends,
        &[0; TREND_SERIES * TREND_WORDS],
    );
    head.started_at_ms
        .store(super::clock::now_ms(), Ordering::Relaxed);
    claim::own(&head.pid, pid);
    MY_RING.store(i as i32, Ordering::Relaxed);
}

/// The ring (and the zones', if this process wrote them) is freed as its
/// process exits.
pub fn release() {
    let pid = std::process::id() as i32;
    if let Some(h) = header() {
        claim::release(&h.zones_owner, pid);
    }
    if let Some((head, _)) = my_ring() {
        claim::release(&head.pid, pid);
    }
}

fn my_ring() -> Option<(&'static RingHead, Ring<'static>)> {
    let h = header()?;
    let i = usize::try_from(MY_RING.load(Ordering::Relaxed)).ok()?;
    if i >= h.rings as usize {
        return None;
    }
    let (head, samples) = ring(h, i);
    (head.pid.load(Ordering::Relaxed) == std::process::id() as i32).then_some((head, samples))
}

/// The timer's summary, as this process's next sample (and the zones').
pub fn record_summary(sample: &Sample, zones: &ZonesSample) {
    let since = reloads_at_ms().last().copied().unwrap_or(0);
    record(sample, since);
    record_zones(zones, since);
}

/// Appends a sample to this process's ring, then fits and writes its trends.
pub fn record(sample: &Sample, fit_since_ms: u64) {
    let Some((head, samples)) = my_ring() else {
        return;
    };
    samples.push(&sample.to_words());
    let (fitted, _) = read_ring(&samples, SampleWindow::spread(FIT_POINTS));
    let trends = crate::analysis::history::trends(&fitted, fit_since_ms, 0);
    let mut words = [0u64; TREND_SERIES * TREND_WORDS];
    for t in &trends {
        let Some(slot) = crate::analysis::history::series_index(t.series) else {
            continue;
        };
        words[slot * TREND_WORDS..][..TREND_WORDS]
            .copy_from_slice(&trend_words(&t.fit, t.last_bytes as u64));
    }
    seqlock::write(&head.trend_seq, &head.trends, &words);
}

/// A ring's samples the window picks, oldest first, and how many it keeps;
/// those overwritten while read are dropped.
fn read_ring(ring: &Ring, window: SampleWindow) -> (Vec<Sample>, u64) {
    let (first, before) = ring.kept();
    let picked = crate::analysis::history::pick(first, before, window, |n| ring.word(n, 0));
    let samples = ring.read(&picked, Sample::from_words).unwrap_or_default();
    (samples, before - first)
}

/// Every ring with a live owner: its trends, and with a window, the samples
/// it picks.
pub fn read(window: Option<SampleWindow>) -> Option<(Vec<RingView>, usize)> {
    let h = header()?;
    let mut out = Vec::new();
    for i in 0..h.rings as usize {
        let (head, samples) = ring(h, i);
        let Some(pid) = claim::owner(&head.pid) else {
            continue;
        };
        let view = RingView {
            pid: pid as u32,
            started_at_ms: head.started_at_ms.load(Ordering::Relaxed),
            trends: read_trends(head),
            samples: window.map(|w| read_ring(&samples, w)),
        };
        // Taken only if the ring kept its owner while it was read.
        if head.pid.load(Ordering::Acquire) == pid {
            out.push(view);
        }
    }
    Some((out, h.capacity as usize))
}

fn read_trends(head: &RingHead) -> Vec<(usize, Fit, i64)> {
    let mut words = [0u64; TREND_SERIES * TREND_WORDS];
    if !seqlock::read(&head.trend_seq, &head.trends, &mut words) {
        return Vec::new();
    }
    words
        .chunks_exact(TREND_WORDS)
        .enumerate()
        .map(|(i, w)| (i, trend_of(w)))
        // A series without a fit has none of its words written.
        .filter(|(_, (fit, _))| fit.samples > 0)
        .map(|(i, (fit, last))| (i, fit, last as i64))
        .collect()
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
    let Some((_, samples)) = my_ring() else {
        return;
    };
    let (newest, _) = read_ring(&samples, SampleWindow::spread(1));
    let sample = newest.into_iter().next().unwrap_or_default();
    let now = super::clock::now_ms();
    let capacity = samples.capacity() as u64;
    for i in 0..capacity {
        let mut s = sample.clone();
        s.at_ms = now.saturating_sub((capacity - i) * interval_ms);
        samples.push(&s.to_words());
    }
}
