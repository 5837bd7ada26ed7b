//! History and trends: samples kept per process and the lines fitted over them.

use serde::Serialize;

/// One sample, as flat words (no pointer: any process reads them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at_ms: u64,
    pub resident_bytes: u64,
    /// The process's PSS at its last walk; `None` before any.
    pub pss_bytes: Option<u64>,
    /// Each owner's `resident_bytes` (`PUBLISHED_OWNERS` order; unattributed may
    /// be negative).
    pub owners: std::collections::BTreeMap<&'static str, i64>,
    pub lua_http_gc_bytes: Option<u64>,
    pub lua_stream_gc_bytes: Option<u64>,
    pub lua_http_allocator_bytes: Option<u64>,
    pub lua_stream_allocator_bytes: Option<u64>,
    pub glibc_in_use_bytes: Option<u64>,
    pub glibc_free_bytes: Option<u64>,
    /// The memory cgroup's usage and working set (the same group for every
    /// worker; `None` where it cannot be read).
    pub container_usage_bytes: Option<u64>,
    pub container_working_set_bytes: Option<u64>,
    /// The http VM's bytes by kind (`WALK_KINDS` order) when the history
    /// walks its heap (`memory_status_lua_walk_history on`).
    #[serde(
        skip_serializing_if = "no_kind_bytes",
        serialize_with = "kind_bytes_by_name"
    )]
    pub lua_http_kind_bytes: [Option<u64>; 6],
}

fn no_kind_bytes(bytes: &[Option<u64>; 6]) -> bool {
    bytes.iter().all(Option::is_none)
}

/// `{"table": 123, ...}`, the kinds measured.
fn kind_bytes_by_name<S: serde::Serializer>(
    bytes: &[Option<u64>; 6],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(None)?;
    for (kind, b) in super::lua::WALK_KINDS.iter().zip(bytes) {
        if let Some(b) = b {
            map.serialize_entry(kind, b)?;
        }
    }
    map.end()
}

/// A zone's growth: it stops at the zone's size (`cap_bytes`), never a leak.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneTrend {
    pub zone: String,
    #[serde(flatten)]
    pub fit: Fit,
    pub cap_bytes: u64,
    pub last_bytes: u64,
}

/// `?history=1`: a zone's samples.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneHistory {
    pub name: String,
    pub size_bytes: u64,
    pub samples: Vec<ZonePoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZonePoint {
    pub at_ms: u64,
    pub used_bytes: u64,
    pub fails: u64,
}

/// A least-squares line through (ms, bytes) points: its slope in bytes per
/// hour and how well it fits (R², 1 for a straight line).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    pub bytes_per_hour: f64,
    pub r_squared: f64,
    pub samples: usize,
    pub span_ms: u64,
}

/// One series' trend over a process's window.
#[derive(Debug, Clone, Serialize)]
pub struct Trend {
    /// `resident`, an owner's name, `lua_http_gc`, `lua_stream_gc`, `glibc_in_use`.
    pub series: &'static str,
    #[serde(flatten)]
    pub fit: Fit,
    /// For `shm`: growth stops at the zones' size; shown, never a leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap_bytes: Option<u64>,
    pub last_bytes: i64,
}

/// A process's trends, as its owner last fitted them.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessTrends {
    pub pid: u32,
    pub trends: Vec<Trend>,
}

/// `?history=1`: every process's samples, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub interval_ms: u64,
    /// Samples a process keeps (`memory_status_history`).
    pub capacity: u64,
    /// Samples answered per ring at most (`HISTORY_POINTS`).
    pub points_max: u64,
    /// `history_since=`: the page's start; `None`: spread over all kept.
    pub since_ms: Option<u64>,
    /// When the configuration was loaded (the start, then each reload).
    pub reloads_at_ms: Vec<u64>,
    pub processes: Vec<ProcessHistory>,
    /// The zones, as one worker recorded them (the first `ZONES_MAX`).
    pub zones: Vec<ZoneHistory>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessHistory {
    pub pid: u32,
    pub started_at_ms: u64,
    /// Samples the ring holds: more than `samples` when spread or paged.
    pub kept: u64,
    pub samples: Vec<Sample>,
}
