//! Shared memory zones: what the nginx layer copies out of each zone (plain
//! samples), and the answer built from them. Slab arithmetic lives here.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::model::source_error::SourceError;
use crate::model::zones::PageCounts;
use crate::model::zones::Slab;
use crate::model::zones::SlotCounts;
use crate::model::zones::Slots;
use crate::model::zones::Zone;
use crate::sources::errors::ResidencyError;

/// One zone as copied out of nginx, before any arithmetic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSample {
    pub name: String,
    /// Name of the module whose address is the zone's tag.
    pub owner: Option<String>,
    /// `shm.size`: the size the configuration asked for.
    pub size_bytes: u64,
    pub page_size_bytes: u64,
    /// Pages of the mapping resident in memory (`mincore`), or why not known.
    pub resident_pages: Result<u64, ResidencyError>,
    /// How old the residency figure is: 0 when measured for this answer.
    pub resident_age_ms: u64,
    pub slab: Result<SlabSample, SlabError>,
}

/// Why a zone's slab pool was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlabError {
    NotMapped,
    /// nginx puts a slab pool at the start of every zone: not this one.
    NoSlabPool,
    /// Its mutex was not free within the wait, in microseconds.
    LockHeld {
        wait_us: u128,
    },
}

impl std::fmt::Display for SlabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlabError::NotMapped => f.write_str("zone is not mapped"),
            SlabError::NoSlabPool => f.write_str("no slab pool at the start of the zone"),
            SlabError::LockHeld { wait_us } => write!(
                f,
                "lock held by another process (not free within {wait_us} µs)"
            ),
        }
    }
}

/// A slab pool's counters, copied under its mutex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlabSample {
    pub pages_total: u64,
    pub pages_free: u64,
    /// One per slot size, smallest first.
    pub slots: Vec<SlotSample>,
    pub free_runs: u64,
    pub largest_free_run_pages: u64,
    /// The free-list walk stopped at its bound before the end of the list.
    pub free_runs_truncated: bool,
}

impl SlabSample {
    /// Changes whenever the zone's allocations do: the free pages and runs and
    /// every slot's used, requests and failures. While it stays the same, no
    /// page of the zone was newly allocated, so none newly touched.
    pub fn signature(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.pages_total, self.pages_free, self.free_runs).hash(&mut h);
        for slot in &self.slots {
            (slot.size_bytes, slot.used, slot.reqs, slot.fails).hash(&mut h);
        }
        h.finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSample {
    pub size_bytes: u64,
    /// Chunks of this size in pages given to the slot.
    pub total: u64,
    pub used: u64,
    pub reqs: u64,
    pub fails: u64,
}

impl Serialize for Slots {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (size, counts) in &self.0 {
            map.serialize_entry(size, counts)?;
        }
        map.end()
    }
}

/// The module's own history zone (the other is its registry).
pub const HISTORY_ZONE: &str = "ngx_http_memory_status_history";

/// What a zone is for, told by the module that owns it (and, for ours, its name).
pub fn zone_kind(owner: Option<&str>, name: &str) -> &'static str {
    match owner.unwrap_or("") {
        "ngx_http_memory_status_module" if name == HISTORY_ZONE => "memory_status history",
        "ngx_http_lua_module" | "ngx_stream_lua_module" => "lua_shared_dict",
        "ngx_http_limit_req_module" | "ngx_stream_limit_req_module" => "limit_req",
        "ngx_http_limit_conn_module" | "ngx_stream_limit_conn_module" => "limit_conn",
        "ngx_http_ssl_module" | "ngx_stream_ssl_module" | "ngx_mail_ssl_module" => {
            "ssl_session_cache"
        }
        "ngx_http_proxy_module" => "proxy_cache keys_zone",
        "ngx_http_fastcgi_module" => "fastcgi_cache keys_zone",
        "ngx_http_uwsgi_module" => "uwsgi_cache keys_zone",
        "ngx_http_scgi_module" => "scgi_cache keys_zone",
        "ngx_http_upstream_module" | "ngx_stream_upstream_module" => "upstream zone",
        "ngx_http_memory_status_module" => "memory_status registry",
        _ => "unknown",
    }
}

fn round_up(n: u64, to: u64) -> u64 {
    if to == 0 {
        n
    } else {
        n.div_ceil(to).saturating_mul(to)
    }
}

impl SlabSample {
    fn to_slab(&self, page_size_bytes: u64) -> Slab {
        let used = self.pages_total.saturating_sub(self.pages_free);
        Slab {
            page_size_bytes,
            pages_total: self.pages_total,
            pages: PageCounts {
                used,
                free: self.pages_free,
            },
            total_bytes: self.pages_total * page_size_bytes,
            used_bytes: used * page_size_bytes,
            free_bytes: self.pages_free * page_size_bytes,
            slots: Slots(
                self.slots
                    .iter()
                    .map(|s| {
                        let counts = SlotCounts {
                            used: s.used,
                            free: s.total.saturating_sub(s.used),
                            reqs: s.reqs,
                            fails: s.fails,
                        };
                        (s.size_bytes, counts)
                    })
                    .collect(),
            ),
            free_runs: self.free_runs,
            largest_free_run_pages: self.largest_free_run_pages,
            largest_free_run_bytes: self.largest_free_run_pages * page_size_bytes,
            free_runs_truncated: self.free_runs_truncated,
        }
    }
}

impl ZoneSample {
    /// The zone's answer; what could not be read goes to `errors` as `zone NAME`.
    pub fn to_zone(&self, errors: &mut Vec<SourceError>) -> Zone {
        let source = || format!("zone {}", self.name);
        let kind = zone_kind(self.owner.as_deref(), &self.name);
        let loaded_bytes = match &self.resident_pages {
            Ok(pages) => Some(pages * self.page_size_bytes),
            Err(e) => {
                errors.push(SourceError::new(source(), format!("loaded pages: {e}")));
                None
            }
        };
        let slab = match &self.slab {
            Ok(s) => Some(s.to_slab(self.page_size_bytes)),
            Err(e) => {
                errors.push(SourceError::new(source(), format!("slab: {e}")));
                None
            }
        };
        let is_dict = kind == "lua_shared_dict";
        Zone {
            name: self.name.clone(),
            owner: self.owner.clone(),
            kind,
            size_bytes: self.size_bytes,
            mapped_bytes: round_up(self.size_bytes, self.page_size_bytes),
            loaded_age_ms: loaded_bytes.map(|_| self.resident_age_ms),
            loaded_bytes,
            capacity_bytes: is_dict.then_some(self.size_bytes),
            free_space_bytes: slab.as_ref().filter(|_| is_dict).map(|s| s.free_bytes),
            slab,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_moves_with_allocations() {
        let slab = |reqs: u64, free: u64| SlabSample {
            pages_total: 100,
            pages_free: free,
            slots: vec![SlotSample {
                size_bytes: 8,
                total: 0,
                used: 1,
                reqs,
                fails: 0,
            }],
            free_runs: 1,
            largest_free_run_pages: free,
            free_runs_truncated: false,
        };
        assert_eq!(slab(5, 10).signature(), slab(5, 10).signature());
        assert_ne!(slab(5, 10).signature(), slab(6, 10).signature());
        assert_ne!(slab(5, 10).signature(), slab(5, 9).signature());
    }
    use serde_json::Value;

    fn slot(size_bytes: u64, total: u64, used: u64) -> SlotSample {
        SlotSample {
            size_bytes,
            total,
            used,
            reqs: used + 5,
            fails: 0,
        }
    }

    fn dict_sample() -> ZoneSample {
        ZoneSample {
            name: "sessions".into(),
            owner: Some("ngx_http_lua_module".into()),
            size_bytes: 10 * 1024 * 1024,
            page_size_bytes: 4096,
            resident_pages: Ok(18),
            resident_age_ms: 0,
            slab: Ok(SlabSample {
                pages_total: 2547,
                pages_free: 2500,
                slots: (3..12).map(|shift| slot(1 << shift, 64, 10)).collect(),
                free_runs: 3,
                largest_free_run_pages: 2400,
                free_runs_truncated: false,
            }),
        }
    }

    #[test]
    fn kinds_follow_the_owner() {
        assert_eq!(
            zone_kind(Some("ngx_http_lua_module"), "z"),
            "lua_shared_dict"
        );
        assert_eq!(
            zone_kind(Some("ngx_stream_limit_conn_module"), "z"),
            "limit_conn"
        );
        assert_eq!(
            zone_kind(Some("ngx_http_proxy_module"), "z"),
            "proxy_cache keys_zone"
        );
        assert_eq!(zone_kind(Some("some_third_party_module"), "z"), "unknown");
        assert_eq!(zone_kind(None, "z"), "unknown");
        let ours = Some("ngx_http_memory_status_module");
        assert_eq!(zone_kind(ours, HISTORY_ZONE), "memory_status history");
        assert_eq!(
            zone_kind(ours, "ngx_http_memory_status_module"),
            "memory_status registry"
        );
    }

    #[test]
    fn dict_zone_in_plus_shape_with_bytes() {
        let mut errors = Vec::new();
        let zone = dict_sample().to_zone(&mut errors);
        assert!(errors.is_empty());
        let v: Value = serde_json::to_value(&zone).unwrap();
        assert_eq!(v["kind"], "lua_shared_dict");
        assert_eq!(v["size_bytes"], 10_485_760);
        assert_eq!(v["mapped_bytes"], 10_485_760);
        assert_eq!(v["loaded_bytes"], 18 * 4096);
        assert_eq!(v["capacity_bytes"], 10_485_760);
        assert_eq!(v["free_space_bytes"], 2500 * 4096);
        let slab = &v["slab"];
        assert_eq!(slab["pages"], serde_json::json!({"used": 47, "free": 2500}));
        assert_eq!(slab["pages_total"], 2547);
        assert_eq!(slab["used_bytes"], 47 * 4096);
        assert_eq!(slab["largest_free_run_bytes"], 2400 * 4096);
        assert_eq!(
            slab["slots"]["8"],
            serde_json::json!({"used": 10, "free": 54, "reqs": 15, "fails": 0})
        );
        let sizes: Vec<&String> = slab["slots"].as_object().unwrap().keys().collect();
        assert_eq!(sizes.len(), 9);
        assert!(slab["slots"].get("2048").is_some());
    }

    #[test]
    fn slots_keep_size_order_in_json_text() {
        let zone = dict_sample().to_zone(&mut Vec::new());
        let text = serde_json::to_string(&zone.slab.unwrap().slots).unwrap();
        let p8 = text.find("\"8\"").unwrap();
        let p16 = text.find("\"16\"").unwrap();
        let p1024 = text.find("\"1024\"").unwrap();
        assert!(p8 < p16 && p16 < p1024, "{text}");
    }

    #[test]
    fn other_zones_have_no_dict_fields() {
        let mut sample = dict_sample();
        sample.owner = Some("ngx_http_limit_req_module".into());
        let v = serde_json::to_value(sample.to_zone(&mut Vec::new())).unwrap();
        assert_eq!(v["kind"], "limit_req");
        assert!(v.get("capacity_bytes").is_none());
        assert!(v.get("free_space_bytes").is_none());
    }

    #[test]
    fn unreadable_parts_are_null_and_reported() {
        let mut sample = dict_sample();
        sample.resident_pages = Err(ResidencyError::Mincore("Cannot allocate memory".into()));
        sample.slab = Err(SlabError::NoSlabPool);
        let mut errors = Vec::new();
        let v = serde_json::to_value(sample.to_zone(&mut errors)).unwrap();
        assert!(v["loaded_bytes"].is_null());
        assert!(v["slab"].is_null());
        assert!(v["free_space_bytes"].is_null() || v.get("free_space_bytes").is_none());
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].source, "zone sessions");
    }

    #[test]
    fn odd_sizes_round_up_to_whole_pages() {
        let mut sample = dict_sample();
        sample.size_bytes = 10_000;
        assert_eq!(sample.to_zone(&mut Vec::new()).mapped_bytes, 12_288);
    }

    #[test]
    fn inconsistent_counts_saturate_instead_of_wrapping() {
        let mut sample = dict_sample();
        if let Ok(slab) = &mut sample.slab {
            slab.pages_free = slab.pages_total + 1;
            slab.slots[0].used = slab.slots[0].total + 1;
        }
        let zone = sample.to_zone(&mut Vec::new());
        let slab = zone.slab.unwrap();
        assert_eq!(slab.pages.used, 0);
        assert_eq!(slab.slots.0[0].1.free, 0);
    }
}
