//! nginx's pools: the cycle's, and those of connections and requests.

use std::collections::BTreeMap;

use serde::Serialize;

/// One pool's figures, copied by walking its blocks and large allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolSample {
    pub blocks: u64,
    /// Size of the pool's blocks.
    pub block_bytes: u64,
    /// Used part of the blocks.
    pub used_bytes: u64,
    pub large_allocations: u64,
    /// Large allocations' real sizes (`malloc_usable_size`: the pool keeps none).
    pub large_bytes: u64,
    /// The walk stopped at its bound.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// Accepted on an http listener.
    Http,
    /// Accepted on a stream listener.
    Stream,
    /// Opened by nginx to an upstream (or another peer).
    Upstream,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum RequestKind {
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "http2")]
    Http2,
    #[serde(rename = "stream")]
    Stream,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pools {
    pub cycle: CyclePool,
    pub connections: Connections,
    pub requests: Requests,
}

#[derive(Debug, Clone, Serialize)]
pub struct CyclePool {
    pub bytes: u64,
    pub blocks: u64,
    pub block_bytes: u64,
    pub used_bytes: u64,
    pub large_allocations: u64,
    pub large_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    pub count: u64,
    pub bytes: u64,
    pub largest_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub count: u64,
    pub bytes: u64,
    pub largest_bytes: u64,
    pub by_kind: BTreeMap<ConnectionKind, Group>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    pub count: u64,
    pub bytes: u64,
    pub largest_bytes: u64,
    pub by_kind: BTreeMap<RequestKind, Group>,
    /// The largest few, biggest first: kind, bytes, age. Never URIs or headers.
    pub largest: Vec<LargeRequest>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LargeRequest {
    pub kind: RequestKind,
    pub bytes: u64,
    pub age_ms: u64,
}

/// How many of the largest requests are listed.
pub const LARGEST_REQUESTS: usize = 5;
