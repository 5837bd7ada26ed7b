//! The container's series: the memory cgroup nginx runs in, the same
//! whichever worker answers (no worker labels).

use super::writer::{Kind, Metrics};
use crate::model::container::Container;

pub fn container(m: &mut Metrics, c: &Container) {
    let version = c.cgroup_version.to_string();
    let l: &[(&str, &str)] = &[("cgroup_version", &version)];
    let gauges = [
        ("container_usage_bytes", "The memory cgroup's charge (v2 memory.current, v1 memory.usage_in_bytes).", Some(c.usage_bytes)),
        ("container_limit_bytes", "The tightest memory limit of nginx's cgroup and its ancestors.", c.limit_bytes),
        ("container_peak_bytes", "The cgroup's highest charge (v2 memory.peak, v1 memory.max_usage_in_bytes).", c.peak_bytes),
        ("container_working_set_bytes", "The cgroup's working set as the kubelet computes it: usage less inactive file pages.", Some(c.working_set_bytes)),
        ("container_swap_bytes", "The cgroup's swap.", c.swap_bytes),
        ("container_tcp_buffers_outside_usage_bytes", "cgroup v1: TCP buffers counted apart from usage (memory.kmem.tcp.usage_in_bytes), once TCP accounting is on.", c.tcp_buffers_outside_usage_bytes),
        ("container_tcp_sockets_in_use", "TCP sockets in use in nginx's network namespace (/proc/net/sockstat).", c.sockets.tcp_in_use),
        ("container_tcp_memory_bytes", "TCP buffer memory of the whole machine (/proc/net/sockstat mem: one count for every network namespace).", c.sockets.tcp_memory_bytes),
        ("container_limit_group_usage_bytes", "The charge of the ancestor whose limit binds nginx's cgroup, with its other members (absent when the group's own limit binds).", c.limit_group.as_ref().and_then(|g| g.usage_bytes)),
        ("container_limit_group_working_set_bytes", "That ancestor's working set: usage less inactive file pages.", c.limit_group.as_ref().and_then(|g| g.working_set_bytes)),
    ];
    for (name, help, value) in gauges {
        if let Some(v) = value {
            m.add_labelled(name, Kind::Gauge, help, false, l, v);
        }
    }
    for p in &c.parts {
        m.add_labelled(
            "container_part_bytes",
            Kind::Gauge,
            "The cgroup's charge by part; the parts add up to container_usage_bytes (unexplained may be negative).",
            false,
            &[("cgroup_version", &version), ("part", p.part)],
            p.bytes,
        );
    }
    let counters = [
        (
            "container_oom_kills_total",
            "Processes of the cgroup the kernel's OOM killer killed since the group was made.",
            c.oom.kills,
        ),
        (
            "container_oom_kills_since_start_total",
            "Of those, the kills since this nginx started.",
            c.oom.kills_since_start,
        ),
        (
            "container_limit_hits_total",
            "Times the cgroup's charge hit its limit (v2 memory.events max, v1 memory.failcnt).",
            c.oom.max.or(c.oom.failcnt),
        ),
        (
            "container_oom_events_total",
            "cgroup v2: times the cgroup's OOM killer was invoked (memory.events oom), whether or not it killed.",
            c.oom.ooms,
        ),
        (
            "container_high_events_total",
            "cgroup v2: times the cgroup's charge went past memory.high and was throttled (memory.events high).",
            c.oom.high,
        ),
    ];
    for (name, help, value) in counters {
        if let Some(v) = value {
            m.add_labelled(name, Kind::Counter, help, false, &[], v);
        }
    }
}
