//! How much of an address range is resident in memory.

use std::ffi::c_void;

/// Pages of `[addr, addr + size)` resident in memory, by `mincore`. For shared
/// memory that is pages any process has touched, not only this one.
///
/// # Safety
/// `[addr, addr + size)` must be mapped and `addr` page-aligned.
pub unsafe fn resident_pages(
    addr: *mut c_void,
    size: usize,
    page_size: usize,
) -> Result<u64, String> {
    if addr.is_null() || size == 0 || page_size == 0 {
        return Ok(0);
    }
    let mut vec = vec![0u8; size.div_ceil(page_size)];
    if libc::mincore(addr, size, vec.as_mut_ptr()) != 0 {
        return Err(format!("mincore: {}", std::io::Error::last_os_error()));
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// Resident pages of each range (address, length) of this process's mappings
/// that stay mapped for the worker's life (zones), by `mincore`. Safe to call
/// from any thread.
pub fn resident_pages_of(ranges: &[(usize, usize)]) -> Vec<Result<u64, String>> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    ranges
        .iter()
        // SAFETY: each range is a zone's whole mapping, page-aligned.
        .map(|&(addr, len)| unsafe { resident_pages(addr as *mut c_void, len, page) })
        .collect()
}

/// Resident bytes of a Lua VM's allocator segments. The VM may release a
/// segment while this runs on another thread: `mincore` then fails, and so
/// does this, saying so.
pub fn segments_resident_bytes(segments: &[(u64, u64)]) -> Result<u64, String> {
    // SAFETY: a plain integer nginx sets at start.
    let page = unsafe { ngx::ffi::ngx_pagesize };
    segments.iter().try_fold(0u64, |sum, &(start, end)| {
        // SAFETY: mincore only inspects page tables; an unmapped range is ENOMEM.
        unsafe { resident_pages(start as *mut c_void, (end - start) as usize, page) }
            .map(|pages| sum + pages * page as u64)
            .map_err(|e| format!("{e} (segment released while measuring?)"))
    })
}
