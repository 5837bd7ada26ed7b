//! The container's memory beside nginx's: the memory cgroup's charge, its
//! limit and OOM events, and the charge split into parts that add up to it.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Container {
    /// 1 or 2.
    pub cgroup_version: u8,
    /// The group, as `/proc/self/cgroup` names it.
    pub path: String,
    /// How old the group's figures are (they are read at most once a second).
    pub age_ms: u64,
    pub usage_bytes: u64,
    /// The tightest limit of the group and its ancestors; `null`: none.
    pub limit_bytes: Option<u64>,
    /// The ancestor that limit is on, when it is not the group's own; `null`
    /// otherwise.
    pub limit_group: Option<LimitGroup>,
    pub peak_bytes: Option<u64>,
    /// As the kubelet computes it: usage less inactive file pages.
    pub working_set_bytes: u64,
    pub swap_bytes: Option<u64>,
    pub oom: OomEvents,
    /// The charge split by what holds it; the parts add up to `usage_bytes`.
    pub parts: Vec<ContainerPart>,
    /// Processes in the group that are not this nginx's.
    pub other_processes: Vec<OtherProcess>,
    /// More processes were in the group than were read.
    pub other_processes_truncated: bool,
    /// cgroup v1: TCP buffers the kernel counts apart from usage (`null`
    /// while the group's TCP accounting is off, and on v2, where they are
    /// the `socket_buffers` part).
    pub tcp_buffers_outside_usage_bytes: Option<u64>,
    pub sockets: Sockets,
}

/// An ancestor whose limit binds: its charge counts its other descendants
/// (a pod's other containers, a slice's other services), and it is what the
/// limit is measured against.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LimitGroup {
    /// `null`: above what nginx's mount namespace shows (cgroup v1 said its
    /// limit, not its charge).
    pub path: Option<String>,
    pub usage_bytes: Option<u64>,
    /// Its usage less its inactive file pages.
    pub working_set_bytes: Option<u64>,
}

impl Container {
    /// The working set the limit is measured against: the limiting
    /// ancestor's where it is known, else the group's own.
    pub fn limited_working_set_bytes(&self) -> u64 {
        self.limit_group
            .as_ref()
            .and_then(|g| g.working_set_bytes)
            .unwrap_or(self.working_set_bytes)
    }

    /// The charge the limit is measured against, likewise.
    pub fn limited_usage_bytes(&self) -> u64 {
        self.limit_group
            .as_ref()
            .and_then(|g| g.usage_bytes)
            .unwrap_or(self.usage_bytes)
    }
}

/// OOM and limit events of the group since it was made; `kills_since_start`:
/// those since this nginx started.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct OomEvents {
    pub kills: Option<u64>,
    pub kills_since_start: Option<u64>,
    /// v2: times the OOM killer was invoked, `memory.max` and `memory.high`
    /// were hit.
    pub ooms: Option<u64>,
    pub max: Option<u64>,
    pub high: Option<u64>,
    /// v1: times usage hit the limit.
    pub failcnt: Option<u64>,
}

/// A part of the group's charge. `bytes` is signed for `unexplained` only
/// (the charge less every part: negative where parts overlap).
#[derive(Debug, Clone, Serialize)]
pub struct ContainerPart {
    pub part: &'static str,
    pub bytes: i64,
    /// Where the figure comes from.
    pub source: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct OtherProcess {
    pub pid: u32,
    /// Its `comm`, escaped; `null` when it could not be read.
    pub comm: Option<String>,
    pub resident_anon_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
}

/// Beside the socket buffers: the connections nginx holds and the TCP
/// figures of `/proc/net/sockstat`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sockets {
    /// The answering worker's open connections (its pools).
    pub nginx_connections: u64,
    /// TCP sockets in use in nginx's network namespace (`inuse`).
    pub tcp_in_use: Option<u64>,
    /// TCP buffer memory of the whole machine (`mem`: the kernel keeps one
    /// count for every namespace).
    pub tcp_memory_bytes: Option<u64>,
}
