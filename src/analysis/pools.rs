//! nginx's own memory pools: the cycle's, every connection's and every request's
//! in flight. The nginx layer copies each pool's figures into plain samples;
//! the totals, kinds and "largest few" are built here.

use std::collections::BTreeMap;

use crate::model::pools::ConnectionKind;
use crate::model::pools::Connections;
use crate::model::pools::CyclePool;
use crate::model::pools::Group;
use crate::model::pools::LargeRequest;
use crate::model::pools::PoolSample;
use crate::model::pools::Pools;
use crate::model::pools::RequestKind;
use crate::model::pools::Requests;
use crate::model::pools::LARGEST_REQUESTS;

impl PoolSample {
    /// Memory the pool holds: its blocks and its large allocations.
    pub fn bytes(&self) -> u64 {
        self.block_bytes + self.large_bytes
    }

    pub fn add(&mut self, other: &PoolSample) {
        self.blocks += other.blocks;
        self.block_bytes += other.block_bytes;
        self.used_bytes += other.used_bytes;
        self.large_allocations += other.large_allocations;
        self.large_bytes += other.large_bytes;
        self.truncated |= other.truncated;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSample {
    pub kind: ConnectionKind,
    pub pool: PoolSample,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSample {
    pub kind: RequestKind,
    pub pool: PoolSample,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolsSample {
    pub cycle: PoolSample,
    pub connections: Vec<ConnectionSample>,
    pub requests: Vec<RequestSample>,
    /// Why HTTP/2 streams could not be walked, if they could not.
    pub http2_unavailable: Option<Http2Unavailable>,
}

/// Why the requests of HTTP/2 connections are not walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http2Unavailable {
    /// The nginx the module was built against has no HTTP/2.
    NotBuilt,
    /// The running nginx has no `ngx_http_v2_module`.
    ModuleMissing,
}

impl std::fmt::Display for Http2Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Http2Unavailable::NotBuilt => "this nginx is built without HTTP/2",
            Http2Unavailable::ModuleMissing => "ngx_http_v2_module is not in this nginx",
        })
    }
}

impl Group {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
        self.largest_bytes = self.largest_bytes.max(bytes);
    }
}

impl Pools {
    pub fn from_sample(s: &PoolsSample) -> Pools {
        let mut by_kind: BTreeMap<ConnectionKind, Group> = BTreeMap::new();
        let mut all = Group::default();
        for c in &s.connections {
            by_kind.entry(c.kind).or_default().add(c.pool.bytes());
            all.add(c.pool.bytes());
        }
        let mut requests_by_kind: BTreeMap<RequestKind, Group> = BTreeMap::new();
        let mut all_requests = Group::default();
        for r in &s.requests {
            requests_by_kind
                .entry(r.kind)
                .or_default()
                .add(r.pool.bytes());
            all_requests.add(r.pool.bytes());
        }
        let mut largest: Vec<LargeRequest> = s
            .requests
            .iter()
            .map(|r| LargeRequest {
                kind: r.kind,
                bytes: r.pool.bytes(),
                age_ms: r.age_ms,
            })
            .collect();
        largest.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.age_ms.cmp(&a.age_ms)));
        largest.truncate(LARGEST_REQUESTS);
        Pools {
            cycle: CyclePool {
                bytes: s.cycle.bytes(),
                blocks: s.cycle.blocks,
                block_bytes: s.cycle.block_bytes,
                used_bytes: s.cycle.used_bytes,
                large_allocations: s.cycle.large_allocations,
                large_bytes: s.cycle.large_bytes,
            },
            connections: Connections {
                count: all.count,
                bytes: all.bytes,
                largest_bytes: all.largest_bytes,
                by_kind,
            },
            requests: Requests {
                count: all_requests.count,
                bytes: all_requests.bytes,
                largest_bytes: all_requests.largest_bytes,
                by_kind: requests_by_kind,
                largest,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn pool(block_bytes: u64, large_bytes: u64) -> PoolSample {
        PoolSample {
            blocks: 1,
            block_bytes,
            used_bytes: block_bytes / 2,
            large_allocations: (large_bytes > 0) as u64,
            large_bytes,
            truncated: false,
        }
    }

    #[test]
    fn totals_kinds_and_the_largest_few() {
        let sample = PoolsSample {
            cycle: pool(16384, 4096),
            connections: vec![
                ConnectionSample {
                    kind: ConnectionKind::Http,
                    pool: pool(512, 0),
                },
                ConnectionSample {
                    kind: ConnectionKind::Http,
                    pool: pool(512, 1024),
                },
                ConnectionSample {
                    kind: ConnectionKind::Upstream,
                    pool: pool(128, 0),
                },
            ],
            requests: (0..7)
                .map(|i| RequestSample {
                    kind: if i == 6 {
                        RequestKind::Http2
                    } else {
                        RequestKind::Http1
                    },
                    pool: pool(1024 * (i + 1), 0),
                    age_ms: 10 * i,
                })
                .collect(),
            http2_unavailable: None,
        };
        let v: Value = serde_json::to_value(Pools::from_sample(&sample)).unwrap();
        assert_eq!(v["cycle"]["bytes"], 16384 + 4096);
        assert_eq!(v["connections"]["count"], 3);
        assert_eq!(v["connections"]["bytes"], 512 + 1536 + 128);
        assert_eq!(v["connections"]["largest_bytes"], 1536);
        assert_eq!(
            v["connections"]["by_kind"]["http"],
            json!({"count": 2, "bytes": 2048, "largest_bytes": 1536})
        );
        assert_eq!(v["connections"]["by_kind"]["upstream"]["count"], 1);
        assert!(v["connections"]["by_kind"].get("stream").is_none());
        assert_eq!(v["requests"]["count"], 7);
        assert_eq!(v["requests"]["by_kind"]["http2"]["count"], 1);
        let largest = v["requests"]["largest"].as_array().unwrap();
        assert_eq!(largest.len(), LARGEST_REQUESTS);
        assert_eq!(
            largest[0],
            json!({"kind": "http2", "bytes": 7168, "age_ms": 60})
        );
        assert_eq!(largest[4]["bytes"], 3072);
    }

    #[test]
    fn empty() {
        let v = serde_json::to_value(Pools::from_sample(&PoolsSample::default())).unwrap();
        assert_eq!(v["requests"]["count"], 0);
        assert_eq!(v["requests"]["largest"], json!([]));
        assert_eq!(v["connections"]["by_kind"], json!({}));
    }
}
