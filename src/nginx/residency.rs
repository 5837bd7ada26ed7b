//! How much of an address range is resident in memory.

use std::ffi::c_void;

use crate::analysis::lua::{residency_reusable, ResidencyMeasurement};
use crate::sources::errors::ResidencyError;

/// The one `mincore` call: one byte per page of `[start, start + len)`
/// into `vec` (bit 0: resident). `start` is rounded down to its page; `vec`
/// must have a byte for every page, else nothing is asked. An unmapped page
/// in the range is an error (ENOMEM), never a fault: `mincore` only reads
/// page tables.
pub fn mincore(start: usize, len: usize, page: usize, vec: &mut [u8]) -> std::io::Result<()> {
    if page == 0 {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    let base = start - start % page;
    let Some(end) = start.checked_add(len) else {
        return Err(std::io::ErrorKind::InvalidInput.into());
    };
    if vec.len() < (end - base).div_ceil(page) {
        return Err(std::io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: the kernel writes one byte per page of the range into `vec`,
    // which was checked to hold that many, and faults on nothing.
    match unsafe { libc::mincore(base as *mut c_void, end - base, vec.as_mut_ptr()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Pages up to which `resident_pages` needs no allocation (16 MiB of 4 KiB
/// pages; 4 KiB of the caller's stack).
const SMALL_RANGE_PAGES: usize = 4096;

/// Pages of `[addr, addr + size)` resident in memory, by `mincore`. For shared
/// memory that is pages any process has touched, not only this one.
pub fn resident_pages(addr: usize, size: usize, page_size: usize) -> Result<u64, ResidencyError> {
    if addr == 0 || size == 0 || page_size == 0 {
        return Ok(0);
    }
    let pages = size.div_ceil(page_size);
    // Most ranges (stacks, `.bss`, heaps, small zones) fit a buffer on the
    // stack: no allocation for each of an answer's dozens of ranges.
    let mut small = [0u8; SMALL_RANGE_PAGES];
    let mut big = Vec::new();
    let vec: &mut [u8] = match small.get_mut(..pages) {
        Some(small) => small,
        None => {
            big.resize(pages, 0);
            &mut big
        }
    };
    mincore(addr, size, page_size, vec).map_err(|e| ResidencyError::Mincore(e.to_string()))?;
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// Resident pages of each range (address, length) of this process's mappings
/// that stay mapped for the worker's life (zones), by `mincore`. Safe to call
/// from any thread.
pub fn resident_pages_of(ranges: &[(usize, usize)]) -> Vec<Result<u64, ResidencyError>> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    ranges
        .iter()
        .map(|&(addr, len)| resident_pages(addr, len, page))
        .collect()
}

/// Resident bytes of a Lua VM's allocator segments. The VM may release a
/// segment while this runs on another thread: `mincore` then fails, and so
/// does this, saying so.
fn segments_resident_bytes(segments: &[(u64, u64)]) -> Result<u64, ResidencyError> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    segments.iter().try_fold(0u64, |sum, &(start, end)| {
        resident_pages(start as usize, (end - start) as usize, page)
            .map(|pages| sum + pages * page as u64)
            .map_err(|e| ResidencyError::SegmentReleased(Box::new(e)))
    })
}

/// Resident bytes of VM `vm`'s (0 http, 1 stream) allocator segments, and the
/// figure's age in milliseconds: the last measurement while
/// `residency_reusable` says it still holds, else `mincore` now.
pub fn lua_resident_bytes(
    vm: usize,
    segments: &[(u64, u64)],
    gc_bytes: u64,
) -> (Result<u64, ResidencyError>, u64) {
    type Last = [Option<(ResidencyMeasurement, std::time::Instant)>; 2];
    static LAST: std::sync::Mutex<Last> = std::sync::Mutex::new([None, None]);
    let now = std::time::Instant::now();
    let reuse = {
        let last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        last[vm].as_ref().and_then(|(m, at)| {
            let age = now.duration_since(*at);
            residency_reusable(m, age, segments, gc_bytes)
                .then_some((m.resident_bytes, age.as_millis() as u64))
        })
    };
    if let Some((bytes, age_ms)) = reuse {
        return (Ok(bytes), age_ms);
    }
    let measured = segments_resident_bytes(segments);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    last[vm] = measured.as_ref().ok().map(|&resident_bytes| {
        let m = ResidencyMeasurement {
            segments: segments.to_vec(),
            gc_bytes,
            resident_bytes,
        };
        (m, now)
    });
    (measured, 0)
}

/// A zone to measure: its mapping, and its slab signature when it could be read.
#[derive(Debug, Clone, Copy)]
pub struct ZoneRange {
    pub range: (usize, usize),
    pub signature: Option<u64>,
}

/// How long a zone's residency is reused while its slab signature stays: pages
/// can still leave memory (swap) without any allocation.
const ZONE_RESIDENCY_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

struct Measurement {
    range: (usize, usize),
    signature: u64,
    pages: u64,
    at: std::time::Instant,
}

/// Resident pages of each zone, and the figure's age in milliseconds. A zone
/// whose slab signature has not moved since it was measured, less than
/// `ZONE_RESIDENCY_MAX_AGE` ago, is not measured again: `mincore` costs per page
/// of the zone (most for pages this worker never touched), an unchanged zone
/// has no newly touched page.
pub fn zones_resident_pages(zones: &[ZoneRange]) -> Vec<(Result<u64, ResidencyError>, u64)> {
    static LAST: std::sync::Mutex<Vec<Measurement>> = std::sync::Mutex::new(Vec::new());
    let now = std::time::Instant::now();
    let reusable = |z: &ZoneRange, last: &[Measurement]| {
        let signature = z.signature?;
        last.iter()
            .find(|m| m.range == z.range && m.signature == signature)
            .filter(|m| now.duration_since(m.at) < ZONE_RESIDENCY_MAX_AGE)
            .map(|m| (m.pages, now.duration_since(m.at).as_millis() as u64))
    };
    // The lock is the module's own, held for lookups and stores, not mincore.
    let known: Vec<Option<(u64, u64)>> = {
        let last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        zones.iter().map(|z| reusable(z, &last)).collect()
    };
    let results: Vec<(Result<u64, ResidencyError>, u64)> = zones
        .iter()
        .zip(&known)
        .map(|(z, known)| match known {
            Some((pages, age)) => (Ok(*pages), *age),
            None => (resident_pages_of(&[z.range]).remove(0), 0),
        })
        .collect();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    for (z, (result, age)) in zones.iter().zip(&results) {
        if let (Some(signature), Ok(pages), 0) = (z.signature, result, age) {
            last.retain(|m| m.range != z.range);
            last.push(Measurement {
                range: z.range,
                signature,
                pages: *pages,
                at: now,
            });
        }
    }
    results
}

/// Pages `mincore` is asked about at once in a walk (a 4 KiB vector).
const WINDOW_PAGES: u64 = 4096;

/// The residency of a stretch of this process's memory, asked of `mincore` a
/// window of pages at a time: a walk over many chunks costs one call per
/// window, not two per chunk. A window that another thread unmapped part of
/// meanwhile is asked again one page at a time; an unmapped page is absent.
pub struct PageWindow {
    /// The stretch's end: no window reaches past it.
    end: u64,
    page: u64,
    /// The window: residency of `[base, base + vec.len() pages)`.
    base: u64,
    vec: Vec<u8>,
}

impl PageWindow {
    /// A walk of `[.., end)`, a mapping (or part of one) just listed.
    pub fn new(end: u64) -> PageWindow {
        // SAFETY: a plain integer nginx sets at start.
        let page = unsafe { ngx::ffi::ngx_pagesize } as u64;
        PageWindow {
            end: end.div_ceil(page) * page,
            page,
            base: 0,
            vec: Vec::new(),
        }
    }

    fn fill(&mut self, base: u64, pages: u64) -> bool {
        self.vec.clear();
        if self.vec.try_reserve_exact(pages as usize).is_err() {
            return false;
        }
        self.vec.resize(pages as usize, 0);
        let len = (pages * self.page) as usize;
        if mincore(base as usize, len, self.page as usize, &mut self.vec).is_err() {
            self.vec.clear();
            return false;
        }
        self.base = base;
        true
    }

    /// Whether the page holding `addr` is resident; `None`: not mapped.
    pub fn present(&mut self, addr: u64) -> Option<bool> {
        let at = addr - addr % self.page;
        let inside = at >= self.base && at < self.base + self.vec.len() as u64 * self.page;
        if !inside {
            let pages = (self.end.saturating_sub(at) / self.page).clamp(1, WINDOW_PAGES);
            if !self.fill(at, pages) && !self.fill(at, 1) {
                return None;
            }
        }
        Some(self.vec[((at - self.base) / self.page) as usize] & 1 != 0)
    }

    /// Resident bytes of `[start, end)` (callers pass pages; otherwise the
    /// pages from `start`'s, as many as `end - start` spans); `Err` when a
    /// page of it is not mapped (released while measured). Counted a window
    /// at a time: a big chunk is a few slices summed, not a call per page.
    pub fn resident_bytes(&mut self, start: u64, end: u64) -> Result<u64, ResidencyError> {
        let mut pages = 0u64;
        let mut at = start - start % self.page;
        // The pages of `start`, `start + page`, ... below `end`.
        let mut left = end.saturating_sub(start).div_ceil(self.page) as usize;
        while left > 0 {
            if self.present(at).is_none() {
                return Err(ResidencyError::PageReleased);
            }
            let first = ((at - self.base) / self.page) as usize;
            let window = &self.vec[first..self.vec.len().min(first + left)];
            pages += window.iter().map(|&v| u64::from(v & 1)).sum::<u64>();
            at += window.len() as u64 * self.page;
            left -= window.len();
        }
        Ok(pages * self.page)
    }
}
