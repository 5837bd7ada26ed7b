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
