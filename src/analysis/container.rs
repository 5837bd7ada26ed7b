//! The container's charge reconciled with nginx's own memory: the group's
//! `memory.stat` split by kind (anonymous, file, shmem, kernel), and within
//! each kind what nginx's processes hold (counted once), what other
//! processes of the group hold, and what the kernel holds for nobody's RSS.
//! Whatever no part explains is `unexplained`, so the parts add up to the
//! charge exactly.

use crate::model::container::{
    Container, ContainerPart, LimitGroup, OomEvents, OtherProcess, Sockets,
};
use crate::model::server::{Server, ServerProcess};
use crate::sources::cgroup::CgroupMemory;
use crate::sources::procfs::StatmPages;

/// What the measuring thread read for the container section.
#[derive(Debug, Clone, Default)]
pub struct ContainerSample {
    pub cgroup: CgroupMemory,
    pub age_ms: u64,
    /// The group's processes that are not nginx's, as read.
    pub others: Vec<OtherProcessSample>,
    /// Some were not read (more than the bound).
    pub others_truncated: bool,
    /// `/proc/net/sockstat`: TCP sockets in use and TCP memory in pages.
    pub tcp_in_use: Option<u64>,
    pub tcp_memory_pages: Option<u64>,
    pub page_bytes: u64,
    /// The group's OOM kills when this nginx started (registry zone).
    pub oom_kills_at_start: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct OtherProcessSample {
    pub pid: u32,
    /// `/proc/PID/comm`'s bytes (any bytes: a name need not be UTF-8).
    pub comm: Option<Vec<u8>>,
    pub statm: Option<StatmPages>,
}

/// nginx's resident memory counted once, by the kind the cgroup charges it as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NginxKinds {
    pub anon_bytes: u64,
    pub shmem_bytes: u64,
    pub file_bytes: u64,
}

/// Owners of the server's breakdown that are shared memory and program files;
/// every other worker owner is anonymous memory.
const SHMEM_OWNERS: &[&str] = &["shm"];
const FILE_OWNERS: &[&str] = &["text"];
/// Whole processes' PSS (the master's, cache processes', estimates): split by
/// the kinds of their resident pages (`RssAnon`, `RssShmem`, `RssFile`).
const WHOLE_PROCESS_OWNERS: &[&str] = &["master", "cache_processes", "estimated"];

/// The server's counted-once breakdown by the cgroup's kinds.
pub fn nginx_kinds(server: &Server, processes: &[ServerProcess]) -> NginxKinds {
    let mut kinds = NginxKinds::default();
    let mut whole = 0u64;
    for (&owner, &bytes) in &server.breakdown {
        if SHMEM_OWNERS.contains(&owner) {
            kinds.shmem_bytes += bytes;
        } else if FILE_OWNERS.contains(&owner) {
            kinds.file_bytes += bytes;
        } else if WHOLE_PROCESS_OWNERS.contains(&owner) {
            whole += bytes;
        } else {
            kinds.anon_bytes += bytes;
        }
    }
    let whole_ones = processes.iter().filter(|p| p.memory.is_none());
    let (mut anon, mut shmem, mut file) = (0u64, 0u64, 0u64);
    for p in whole_ones {
        anon += p.status.resident_anon_bytes.unwrap_or(0);
        shmem += p.status.resident_shmem_bytes.unwrap_or(0);
        file += p.status.resident_file_bytes.unwrap_or(0);
    }
    let total = anon + shmem + file;
    if total == 0 {
        kinds.anon_bytes += whole;
        return kinds;
    }
    let share = |part: u64| (whole as u128 * part as u128 / total as u128) as u64;
    kinds.shmem_bytes += share(shmem);
    kinds.file_bytes += share(file);
    kinds.anon_bytes += whole - share(shmem) - share(file);
    kinds
}

/// The container section; `None` without the group's usage.
pub fn reconcile(
    sample: &ContainerSample,
    nginx: NginxKinds,
    connections: u64,
) -> Option<Container> {
    let cg = &sample.cgroup;
    let usage = cg.usage_bytes?;
    let others = other_processes(&sample.others, sample.page_bytes);
    let parts = parts(cg, nginx, &others, usage);
    let kills = cg.events.oom_kill;
    Some(Container {
        cgroup_version: cg.version,
        path: crate::sources::escape::escape(cg.path.as_bytes()),
        age_ms: sample.age_ms,
        usage_bytes: usage,
        limit_bytes: cg.limit_bytes,
        limit_group: cg.limit_group.as_ref().map(|g| LimitGroup {
            path: g
                .path
                .as_deref()
                .map(|p| crate::sources::escape::escape(p.as_bytes())),
            usage_bytes: g.usage_bytes,
            working_set_bytes: g
                .usage_bytes
                .map(|u| u.saturating_sub(g.inactive_file_bytes.unwrap_or(0))),
        }),
        peak_bytes: cg.peak_bytes,
        working_set_bytes: usage.saturating_sub(cg.stat.inactive_file.unwrap_or(0)),
        swap_bytes: cg.swap_bytes,
        oom: OomEvents {
            kills,
            kills_since_start: kills
                .zip(sample.oom_kills_at_start)
                .map(|(now, start)| now.saturating_sub(start)),
            ooms: cg.events.oom,
            max: cg.events.max,
            high: cg.events.high,
            failcnt: cg.events.failcnt,
        },
        parts,
        other_processes: others,
        other_processes_truncated: sample.others_truncated,
        tcp_buffers_outside_usage_bytes: cg.tcp_outside_usage_bytes,
        sockets: Sockets {
            nginx_connections: connections,
            tcp_in_use: sample.tcp_in_use,
            tcp_memory_bytes: sample.tcp_memory_pages.map(|p| p * sample.page_bytes),
        },
    })
}

fn other_processes(samples: &[OtherProcessSample], page_bytes: u64) -> Vec<OtherProcess> {
    samples
        .iter()
        .map(|s| OtherProcess {
            pid: s.pid,
            comm: s
                .comm
                .as_deref()
                .map(|c| crate::sources::escape::escape(c.strip_suffix(b"\n").unwrap_or(c))),
            resident_anon_bytes: s.statm.map(|m| (m.resident - m.shared) * page_bytes),
            resident_bytes: s.statm.map(|m| m.resident * page_bytes),
        })
        .collect()
}

/// The charge by part. Each kind of the group's pages is split between its
/// holders, each share at most what the group holds of that kind (nginx's
/// pages charged to another group, as shared libraries first read elsewhere
/// are, are not this group's).
fn parts(
    cg: &CgroupMemory,
    nginx: NginxKinds,
    others: &[OtherProcess],
    usage: u64,
) -> Vec<ContainerPart> {
    let s = &cg.stat;
    let anon = s.anon.unwrap_or(0);
    let shmem = s.shmem.unwrap_or(0);
    let file = s.file.unwrap_or(0).saturating_sub(shmem);
    let nginx_anon = nginx.anon_bytes.min(anon);
    let nginx_shmem = nginx.shmem_bytes.min(shmem);
    // nginx's file pages are mapped: at most the group's mapped file pages
    // (less nginx's zones, mapped shmem), never the cache nobody maps.
    let mapped = s
        .file_mapped
        .map_or(file, |m| m.saturating_sub(nginx_shmem));
    let nginx_file = nginx.file_bytes.min(file).min(mapped);
    let others_anon: u64 = others.iter().filter_map(|o| o.resident_anon_bytes).sum();
    let others_anon = others_anon.min(anon - nginx_anon);
    // nginx's file pages are mapped, so on the active list first.
    let active = s.active_file.unwrap_or(0);
    let inactive = s.inactive_file.unwrap_or(0);
    let cache_active = active.saturating_sub(nginx_file);
    let cache_inactive = inactive.saturating_sub(nginx_file.saturating_sub(active));
    let mut list = vec![
        part(
            "nginx_anonymous",
            nginx_anon,
            "the server's breakdown counted once (PSS), at most memory.stat's anonymous pages",
        ),
        part(
            "nginx_shared_memory",
            nginx_shmem,
            "the server's shm owner counted once (PSS), at most memory.stat's shmem",
        ),
        part(
            "nginx_files",
            nginx_file,
            "the server's text owner counted once (PSS), at most memory.stat's mapped file pages",
        ),
        part(
            "other_processes",
            others_anon,
            "RssAnon of the group's other processes (/proc/PID/statm: resident less shared)",
        ),
        part(
            "page_cache_active",
            cache_active,
            "memory.stat active file pages, less nginx_files",
        ),
        part(
            "page_cache_inactive",
            cache_inactive,
            "memory.stat inactive file pages, less nginx_files beyond the active ones",
        ),
        part(
            "shmem_other",
            shmem - nginx_shmem,
            "memory.stat shmem (tmpfs, shared mappings), less nginx_shared_memory",
        ),
    ];
    list.extend(kernel_parts(cg));
    let explained = list.iter().fold(0i64, |sum, p| sum.saturating_add(p.bytes));
    list.push(ContainerPart {
        part: "unexplained",
        bytes: i64::try_from(usage)
            .unwrap_or(i64::MAX)
            .saturating_sub(explained),
        source: "usage less every other part",
    });
    list
}

/// v2 splits the kernel's share in `memory.stat`; v1 has one figure for it.
fn kernel_parts(cg: &CgroupMemory) -> Vec<ContainerPart> {
    let s = &cg.stat;
    if cg.version == 1 {
        return vec![part(
            "kernel",
            cg.kmem_bytes.unwrap_or(0),
            "memory.kmem.usage_in_bytes (v1 does not split it)",
        )];
    }
    let named = [
        ("socket_buffers", s.sock, "memory.stat sock"),
        ("kernel_stacks", s.kernel_stack, "memory.stat kernel_stack"),
        ("page_tables", s.pagetables, "memory.stat pagetables"),
        (
            "slab_reclaimable",
            s.slab_reclaimable,
            "memory.stat slab_reclaimable",
        ),
        (
            "slab_unreclaimable",
            s.slab_unreclaimable,
            "memory.stat slab_unreclaimable",
        ),
    ];
    let split: u64 = named[1..].iter().filter_map(|(_, v, _)| *v).sum();
    let mut list: Vec<ContainerPart> = named
        .iter()
        .map(|&(name, v, source)| part(name, v.unwrap_or(0), source))
        .collect();
    list.push(part(
        "kernel_other",
        s.kernel.unwrap_or(0).saturating_sub(split),
        "memory.stat kernel, less its parts above",
    ));
    list
}

fn part(name: &'static str, bytes: u64, source: &'static str) -> ContainerPart {
    ContainerPart {
        part: name,
        bytes: bytes.min(i64::MAX as u64) as i64,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::process::ProcessMemory;
    use crate::sources::cgroup::{MemoryEvents, MemoryStat};

    const MIB: u64 = 1 << 20;

    fn v2_group() -> CgroupMemory {
        CgroupMemory {
            version: 2,
            path: "/kubepods/pod1/nginx".into(),
            limit_bytes: Some(1024 * MIB),
            usage_bytes: Some(600 * MIB),
            stat: MemoryStat {
                anon: Some(200 * MIB),
                file: Some(330 * MIB),
                active_file: Some(120 * MIB),
                inactive_file: Some(180 * MIB),
                shmem: Some(30 * MIB),
                kernel: Some(40 * MIB),
                kernel_stack: Some(2 * MIB),
                pagetables: Some(3 * MIB),
                slab_reclaimable: Some(20 * MIB),
                slab_unreclaimable: Some(5 * MIB),
                sock: Some(25 * MIB),
                ..MemoryStat::default()
            },
            events: MemoryEvents {
                oom_kill: Some(3),
                ..MemoryEvents::default()
            },
            ..CgroupMemory::default()
        }
    }

    fn sample(cg: CgroupMemory) -> ContainerSample {
        ContainerSample {
            cgroup: cg,
            others: vec![OtherProcessSample {
                pid: 77,
                comm: Some(b"side\xffcar\n".to_vec()),
                statm: Some(StatmPages {
                    resident: 60 * MIB / 4096,
                    shared: 10 * MIB / 4096,
                }),
            }],
            oom_kills_at_start: Some(1),
            page_bytes: 4096,
            tcp_memory_pages: Some(256),
            ..ContainerSample::default()
        }
    }

    fn bytes(c: &Container, name: &str) -> i64 {
        c.parts
            .iter()
            .find(|p| p.part == name)
            .map(|p| p.bytes)
            .unwrap()
    }

    #[test]
    fn the_parts_add_up_to_the_charge() {
        let nginx = NginxKinds {
            anon_bytes: 140 * MIB,
            shmem_bytes: 10 * MIB,
            file_bytes: 30 * MIB,
        };
        let c = reconcile(&sample(v2_group()), nginx, 12).unwrap();
        let sum: i64 = c.parts.iter().map(|p| p.bytes).sum();
        assert_eq!(sum, 600 * MIB as i64);
        assert_eq!(bytes(&c, "nginx_anonymous"), 140 * MIB as i64);
        assert_eq!(bytes(&c, "other_processes"), 50 * MIB as i64);
        // File pages (330 less 30 of shmem): nginx's 30 off the active list.
        assert_eq!(bytes(&c, "page_cache_active"), 90 * MIB as i64);
        assert_eq!(bytes(&c, "page_cache_inactive"), 180 * MIB as i64);
        assert_eq!(bytes(&c, "shmem_other"), 20 * MIB as i64);
        assert_eq!(bytes(&c, "socket_buffers"), 25 * MIB as i64);
        assert_eq!(bytes(&c, "kernel_other"), 10 * MIB as i64);
        // 600 - (140+10+30+50+90+180+20+25+2+3+20+5+10) = 15.
        assert_eq!(bytes(&c, "unexplained"), 15 * MIB as i64);
        assert_eq!(c.working_set_bytes, 420 * MIB);
        assert_eq!((c.oom.kills, c.oom.kills_since_start), (Some(3), Some(2)));
        assert_eq!(c.other_processes[0].comm.as_deref(), Some("side\\xffcar"));
        assert_eq!(c.sockets.tcp_memory_bytes, Some(MIB));
        assert_eq!(c.sockets.nginx_connections, 12);
    }

    #[test]
    fn nginx_pages_charged_elsewhere_are_not_the_groups() {
        // nginx's PSS holds more file pages than the group was charged for
        // (libraries first read by another group): only the group's count.
        let nginx = NginxKinds {
            anon_bytes: 500 * MIB,
            shmem_bytes: 40 * MIB,
            file_bytes: 400 * MIB,
        };
        let c = reconcile(&sample(v2_group()), nginx, 0).unwrap();
        assert_eq!(bytes(&c, "nginx_anonymous"), 200 * MIB as i64);
        assert_eq!(bytes(&c, "nginx_files"), 300 * MIB as i64);
        assert_eq!(bytes(&c, "nginx_shared_memory"), 30 * MIB as i64);
        assert_eq!(bytes(&c, "other_processes"), 0);
        assert_eq!(bytes(&c, "page_cache_active"), 0);
        assert_eq!(bytes(&c, "page_cache_inactive"), 0);
        let sum: i64 = c.parts.iter().map(|p| p.bytes).sum();
        assert_eq!(sum, 600 * MIB as i64);
    }

    #[test]
    fn nginx_files_at_most_the_groups_mapped_pages() {
        // 12 MiB of the group's file pages are mapped, 10 of them nginx's
        // zones (mapped shmem): nginx's libraries are at most the other 2,
        // whatever cache another process left.
        let mut cg = v2_group();
        cg.stat.file_mapped = Some(12 * MIB);
        let nginx = NginxKinds {
            anon_bytes: 140 * MIB,
            shmem_bytes: 10 * MIB,
            file_bytes: 30 * MIB,
        };
        let c = reconcile(&sample(cg), nginx, 0).unwrap();
        assert_eq!(bytes(&c, "nginx_files"), 2 * MIB as i64);
        assert_eq!(bytes(&c, "page_cache_active"), 118 * MIB as i64);
        let sum: i64 = c.parts.iter().map(|p| p.bytes).sum();
        assert_eq!(sum, 600 * MIB as i64);
    }

    #[test]
    fn nonsense_figures_do_not_overflow() {
        let mut cg = v2_group();
        cg.usage_bytes = Some(u64::MAX);
        cg.stat.anon = Some(u64::MAX);
        cg.stat.file = Some(u64::MAX);
        cg.stat.active_file = Some(u64::MAX);
        cg.stat.kernel = Some(u64::MAX);
        let nginx = NginxKinds {
            anon_bytes: u64::MAX,
            shmem_bytes: u64::MAX,
            file_bytes: u64::MAX,
        };
        let c = reconcile(&sample(cg), nginx, 0).unwrap();
        assert!(c
            .parts
            .iter()
            .all(|p| p.bytes >= 0 || p.part == "unexplained"));
    }

    #[test]
    fn v1_has_one_kernel_part_and_tcp_beside_usage() {
        let mut cg = v2_group();
        cg.version = 1;
        cg.kmem_bytes = Some(35 * MIB);
        cg.tcp_outside_usage_bytes = Some(7 * MIB);
        let c = reconcile(&sample(cg), NginxKinds::default(), 0).unwrap();
        assert_eq!(bytes(&c, "kernel"), 35 * MIB as i64);
        assert!(c.parts.iter().all(|p| p.part != "socket_buffers"));
        assert_eq!(c.tcp_buffers_outside_usage_bytes, Some(7 * MIB));
        let sum: i64 = c.parts.iter().map(|p| p.bytes).sum();
        assert_eq!(sum, 600 * MIB as i64);
    }

    #[test]
    fn no_usage_no_section_and_unknown_start_no_count() {
        let mut cg = v2_group();
        cg.usage_bytes = None;
        assert!(reconcile(&sample(cg), NginxKinds::default(), 0).is_none());
        let mut s = sample(v2_group());
        s.oom_kills_at_start = None;
        let c = reconcile(&s, NginxKinds::default(), 0).unwrap();
        assert_eq!((c.oom.kills, c.oom.kills_since_start), (Some(3), None));
    }

    #[test]
    fn nginx_by_kind_counted_once() {
        use crate::model::server::{ProcessRole, Published};
        let mut server = Server::default();
        for (owner, bytes) in [
            ("glibc", 30),
            ("lua_http", 20),
            ("shm", 8),
            ("text", 6),
            ("master", 12),
        ] {
            server.breakdown.insert(owner, bytes * MIB);
        }
        let process = |role, memory: Option<Published>, anon, shmem, file| ServerProcess {
            pid: 1,
            role,
            worker: None,
            generation: 1,
            exiting: false,
            started_at_ms: 0,
            status: ProcessMemory {
                resident_anon_bytes: Some(anon * MIB),
                resident_shmem_bytes: Some(shmem * MIB),
                resident_file_bytes: Some(file * MIB),
                ..ProcessMemory::default()
            },
            pss_bytes: None,
            pss_age_ms: None,
            memory,
        };
        // The master's 12 MiB of PSS split as its RSS is: half anonymous, a
        // quarter each shmem and file.
        let processes = [
            process(ProcessRole::Master, None, 2, 1, 1),
            process(ProcessRole::Worker, Some(Published::default()), 50, 0, 50),
        ];
        let kinds = nginx_kinds(&server, &processes);
        assert_eq!(
            kinds,
            NginxKinds {
                anon_bytes: 56 * MIB,
                shmem_bytes: 11 * MIB,
                file_bytes: 9 * MIB,
            }
        );
    }
}
