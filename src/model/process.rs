//! Whole-process figures: the counters of `/proc/PID/status`.

/// Process-wide counters from `/proc/PID/status`. The kernel keeps these as
/// counters, so reading them costs no page-table walk. `None`: absent or malformed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProcessMemory {
    pub virtual_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub resident_anon_bytes: Option<u64>,
    pub resident_file_bytes: Option<u64>,
    pub resident_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub peak_virtual_bytes: Option<u64>,
    pub peak_resident_bytes: Option<u64>,
    pub threads: Option<u64>,
}
