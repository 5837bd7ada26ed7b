//! The history's samples as the words of a ring's slot: a worker's sample
//! and the zones' sample. Absent figures use the summary's "none" words.

use crate::model::history::Sample;
use crate::model::server::PUBLISHED_OWNERS;
use crate::shm::summary::{get, put, NONE, NONE_SIGNED};

pub const SAMPLE_WORDS: usize = 3 + PUBLISHED_OWNERS.len() + 8 + 6;

impl Sample {
    pub fn to_words(&self) -> [u64; SAMPLE_WORDS] {
        let mut w = [NONE; SAMPLE_WORDS];
        w[0] = self.at_ms;
        w[1] = self.resident_bytes;
        w[2] = put(self.pss_bytes);
        for (i, name) in PUBLISHED_OWNERS.iter().enumerate() {
            w[3 + i] = self.owners.get(name).map_or(NONE_SIGNED, |&r| r as u64);
        }
        let rest = [
            self.lua_http_gc_bytes,
            self.lua_stream_gc_bytes,
            self.lua_http_allocator_bytes,
            self.lua_stream_allocator_bytes,
            self.glibc_in_use_bytes,
            self.glibc_free_bytes,
            self.container_usage_bytes,
            self.container_working_set_bytes,
        ];
        let rest = rest.into_iter().chain(self.lua_http_kind_bytes);
        for (i, v) in rest.enumerate() {
            w[3 + PUBLISHED_OWNERS.len() + i] = put(v);
        }
        w
    }

    pub fn from_words(w: &[u64; SAMPLE_WORDS]) -> Sample {
        let at = 3 + PUBLISHED_OWNERS.len();
        Sample {
            at_ms: w[0],
            resident_bytes: w[1],
            pss_bytes: get(w[2]),
            owners: PUBLISHED_OWNERS
                .iter()
                .zip(&w[3..at])
                .filter(|(_, &v)| v != NONE_SIGNED)
                .map(|(&name, &v)| (name, v as i64))
                .collect(),
            lua_http_gc_bytes: get(w[at]),
            lua_stream_gc_bytes: get(w[at + 1]),
            lua_http_allocator_bytes: get(w[at + 2]),
            lua_stream_allocator_bytes: get(w[at + 3]),
            glibc_in_use_bytes: get(w[at + 4]),
            glibc_free_bytes: get(w[at + 5]),
            container_usage_bytes: get(w[at + 6]),
            container_working_set_bytes: get(w[at + 7]),
            lua_http_kind_bytes: std::array::from_fn(|k| get(w[at + 8 + k])),
        }
    }
}

/// Zones a zones sample holds at most (the first ones of the configuration).
pub const ZONES_MAX: usize = 32;
/// A zones sample: its time, then each zone's name hash, used and failed.
pub const ZONES_SAMPLE_WORDS: usize = 1 + 3 * ZONES_MAX;

/// The server's zones at one time: each one's slab pages in use (as bytes) and
/// its allocation failures so far. Zones are shared: one worker records them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZonesSample {
    pub at_ms: u64,
    /// (name hash, used bytes, fails).
    pub zones: Vec<(u64, u64, u64)>,
}

impl ZonesSample {
    pub fn to_words(&self) -> [u64; ZONES_SAMPLE_WORDS] {
        let mut w = [0; ZONES_SAMPLE_WORDS];
        w[0] = self.at_ms;
        for (i, &(hash, used, fails)) in self.zones.iter().take(ZONES_MAX).enumerate() {
            w[1 + 3 * i..4 + 3 * i].copy_from_slice(&[hash, used, fails]);
        }
        w
    }

    pub fn from_words(w: &[u64; ZONES_SAMPLE_WORDS]) -> ZonesSample {
        ZonesSample {
            at_ms: w[0],
            zones: w[1..]
                .chunks_exact(3)
                .filter(|z| z[0] != 0)
                .map(|z| (z[0], z[1], z[2]))
                .collect(),
        }
    }
}
