//! A worker's published summary as the words of its registry slot: the
//! codec, with the word meaning "none" for an absent figure.

use crate::model::server::{
    GlibcFigures, OwnerFigures, PoolFigures, Published, PublishedLua, PublishedPss, VmFigures,
    PUBLISHED_OWNERS,
};

/// Processes that publish nothing, whose PSS a worker publishes for them: the
/// master, the cache manager and the cache loader.
pub const PSS_OTHERS: usize = 3;
/// Where the PSS words start in a slot: a summary without a page-table walk
/// leaves them as the last walk wrote them.
pub const PSS_AT: usize = 1 + 2 * PUBLISHED_OWNERS.len() + 2 * 4 + 2 + 5;
/// Words of a published summary in a slot.
/// (The PSS is split by the same owners; a mapping of another allocator's is
/// in `unattributed`, so `other_allocators` has none.)
pub const PUBLISHED_WORDS: usize = PSS_AT + 2 + PUBLISHED_OWNERS.len() + 2 * PSS_OTHERS;
/// An absent figure, in a slot or a history sample.
pub const NONE: u64 = u64::MAX;
/// An absent owner's resident share: `resident_bytes` may be negative
/// (unattributed), so its "none" is i64::MIN.
pub const NONE_SIGNED: u64 = i64::MIN as u64;

pub fn put(v: Option<u64>) -> u64 {
    v.unwrap_or(NONE)
}

pub fn get(w: u64) -> Option<u64> {
    (w != NONE).then_some(w)
}

impl Published {
    /// As the words of a registry slot.
    pub fn to_words(&self) -> [u64; PUBLISHED_WORDS] {
        let mut w = Vec::with_capacity(PUBLISHED_WORDS);
        w.push(self.sampled_at_ms);
        for name in PUBLISHED_OWNERS {
            match self.breakdown.get(name) {
                Some(o) => {
                    w.push(o.bytes);
                    w.push(o.resident_bytes.map_or(NONE_SIGNED, |r| r as u64));
                }
                None => w.extend([NONE, NONE_SIGNED]),
            }
        }
        for vm in [&self.lua.http, &self.lua.stream] {
            match vm {
                Some(v) => w.extend([
                    v.gc_bytes,
                    put(v.allocator_mapped_bytes),
                    put(v.allocator_resident_bytes),
                    put(v.allocator_free_bytes),
                ]),
                None => w.extend([NONE; 4]),
            }
        }
        match self.glibc {
            Some(g) => w.extend([g.in_use_bytes, g.free_bytes]),
            None => w.extend([NONE; 2]),
        }
        let p = &self.pools;
        w.extend([
            p.cycle_bytes,
            p.connections,
            p.connection_bytes,
            p.requests,
            p.request_bytes,
        ]);
        match &self.pss {
            Some(pss) => {
                w.extend([pss.sampled_at_ms, pss.bytes]);
                w.extend(PUBLISHED_OWNERS.map(|name| put(pss.owners.get(name).copied())));
                for i in 0..PSS_OTHERS {
                    let (pid, bytes) = pss.others.get(i).copied().unwrap_or((0, 0));
                    w.extend([pid as u64, bytes]);
                }
            }
            None => w.resize(PUBLISHED_WORDS, NONE),
        }
        w.try_into().unwrap_or([NONE; PUBLISHED_WORDS])
    }

    /// From the words of a slot; `None` when nothing was published yet.
    pub fn from_words(w: &[u64; PUBLISHED_WORDS], now_ms: u64) -> Option<Published> {
        let sampled_at_ms = get(w[0]).filter(|&t| t != 0)?;
        let mut at = 1;
        let mut next = || {
            at += 1;
            w[at - 1]
        };
        let mut breakdown = std::collections::BTreeMap::new();
        for name in PUBLISHED_OWNERS {
            let (bytes, resident) = (next(), next());
            if let Some(bytes) = get(bytes) {
                let resident_bytes = (resident != NONE_SIGNED).then_some(resident as i64);
                breakdown.insert(
                    name,
                    OwnerFigures {
                        bytes,
                        resident_bytes,
                    },
                );
            }
        }
        let mut vm = || {
            let (gc, mapped, resident, free) = (next(), next(), next(), next());
            get(gc).map(|gc_bytes| VmFigures {
                gc_bytes,
                allocator_mapped_bytes: get(mapped),
                allocator_resident_bytes: get(resident),
                allocator_free_bytes: get(free),
            })
        };
        let lua = PublishedLua {
            http: vm(),
            stream: vm(),
        };
        let (in_use, free) = (next(), next());
        let glibc = get(in_use)
            .zip(get(free))
            .map(|(in_use_bytes, free_bytes)| GlibcFigures {
                in_use_bytes,
                free_bytes,
            });
        let pools = PoolFigures {
            cycle_bytes: next(),
            connections: next(),
            connection_bytes: next(),
            requests: next(),
            request_bytes: next(),
        };
        let pss = pss_from_words(&w[PSS_AT..], now_ms);
        Some(Published {
            sampled_at_ms,
            age_ms: now_ms.saturating_sub(sampled_at_ms),
            breakdown,
            lua,
            glibc,
            pools,
            pss,
        })
    }
}

/// The PSS words of a slot; `None` before the worker's first walk (a slot's
/// words start as zero; a summary without a walk writes none).
fn pss_from_words(w: &[u64], now_ms: u64) -> Option<PublishedPss> {
    let sampled_at_ms = get(w[0]).filter(|&t| t != 0)?;
    let owners = PUBLISHED_OWNERS
        .iter()
        .zip(&w[2..])
        .filter_map(|(&name, &v)| Some((name, get(v)?)))
        .collect();
    let others = w[2 + PUBLISHED_OWNERS.len()..]
        .chunks_exact(2)
        .filter(|pair| pair[0] != 0)
        .map(|pair| (pair[0] as u32, pair[1]))
        .collect();
    Some(PublishedPss {
        sampled_at_ms,
        age_ms: now_ms.saturating_sub(sampled_at_ms),
        bytes: w[1],
        owners,
        others,
    })
}
