//! The whole server: every process of this nginx (the master, every worker of
//! every generation still alive, the cache manager and loader), from the
//! registry the processes keep in the module's zone and the kernel's counters
//! of each, and the server's totals.

use serde::Serialize;

use crate::procfs::ProcStatus;
use crate::source_error::SourceError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRole {
    Master,
    Worker,
    CacheManager,
    CacheLoader,
    Single,
}

impl ProcessRole {
    /// The order of the processes list: the master, workers, cache processes.
    fn rank(self) -> u8 {
        match self {
            ProcessRole::Master => 0,
            ProcessRole::Worker | ProcessRole::Single => 1,
            ProcessRole::CacheManager => 2,
            ProcessRole::CacheLoader => 3,
        }
    }
}

/// What a process wrote about itself in the registry when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    pub pid: u32,
    /// The kind nginx gave the process: worker, helper (cache manager or
    /// loader: its title tells which) or single.
    pub kind: RegisteredKind,
    pub worker: Option<u32>,
    /// Configuration loads the server had seen when the process started.
    pub generation: u64,
    pub started_at_ms: u64,
    /// What the process last published about its own memory (workers only).
    pub published: Option<Published>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisteredKind {
    Worker,
    Helper,
    Single,
}

/// One process as read for an answer: its registry entry (none for the
/// master), its title and its status, as the kernel gave them.
#[derive(Debug)]
pub struct ProcessSample {
    pub pid: u32,
    pub entry: Option<RegistryEntry>,
    /// `/proc/PID/cmdline`, the title nginx set.
    pub title: std::io::Result<String>,
    pub status: std::io::Result<String>,
    /// `/proc/PID/smaps_rollup`, at `detail=full` only: a page-table walk.
    pub rollup: Option<std::io::Result<String>>,
}

/// What a title says: the role and whether a worker is shutting down. `None`
/// for a title that is not nginx's (a pid reused by another program).
pub fn role_of_title(title: &str) -> Option<(ProcessRole, bool)> {
    let title = title.trim_end_matches(['\0', ' ']);
    let rest = title.strip_prefix("nginx: ")?;
    if rest.starts_with("master process") {
        return Some((ProcessRole::Master, false));
    }
    match rest {
        "worker process" => Some((ProcessRole::Worker, false)),
        "worker process is shutting down" => Some((ProcessRole::Worker, true)),
        "cache manager process" => Some((ProcessRole::CacheManager, false)),
        "cache loader process" => Some((ProcessRole::CacheLoader, false)),
        _ => None,
    }
}

/// What a worker publishes about itself into its registry slot, on a timer and
/// whenever it answers: the numbers a dashboard of the whole server needs,
/// as flat words (no pointer, no string), so any process can read them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Published {
    pub sampled_at_ms: u64,
    /// How old the figures were when this answer read them.
    pub age_ms: u64,
    /// Each owner's `bytes` and `resident_bytes`, as in that worker's breakdown.
    pub breakdown: std::collections::BTreeMap<&'static str, OwnerFigures>,
    pub lua: PublishedLua,
    pub glibc: Option<GlibcFigures>,
    pub pools: PoolFigures,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OwnerFigures {
    pub bytes: u64,
    pub resident_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishedLua {
    pub http: Option<VmFigures>,
    pub stream: Option<VmFigures>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VmFigures {
    pub gc_bytes: u64,
    pub allocator_mapped_bytes: Option<u64>,
    pub allocator_resident_bytes: Option<u64>,
    pub allocator_free_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GlibcFigures {
    pub in_use_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoolFigures {
    pub cycle_bytes: u64,
    pub connections: u64,
    pub connection_bytes: u64,
    pub requests: u64,
    pub request_bytes: u64,
}

/// The owners a worker publishes, in slot order.
pub const PUBLISHED_OWNERS: [&str; 8] = [
    "glibc",
    "shm",
    "lua_http",
    "lua_stream",
    "text",
    "stacks",
    "other_allocators",
    "unattributed",
];
/// Words of a published summary in a slot.
pub const PUBLISHED_WORDS: usize = 1 + 2 * PUBLISHED_OWNERS.len() + 2 * 4 + 2 + 5;
/// An absent figure, in a slot.
const NONE: u64 = u64::MAX;
/// An absent owner (or its resident share), in a slot: `resident_bytes` may be
/// negative (unattributed), so its "none" is i64::MIN.
const NONE_SIGNED: u64 = i64::MIN as u64;

fn put(v: Option<u64>) -> u64 {
    v.unwrap_or(NONE)
}
fn get(w: u64) -> Option<u64> {
    (w != NONE).then_some(w)
}

impl Published {
    /// The summary of an answer just built.
    pub fn from_report(r: &crate::report::Report, sampled_at_ms: u64) -> Published {
        let vm = |v: &Option<crate::lua::LuaVm>| {
            v.as_ref().map(|v| VmFigures {
                gc_bytes: v.gc_bytes,
                allocator_mapped_bytes: v.allocator.as_ref().map(|a| a.mapped_bytes),
                allocator_resident_bytes: v.allocator.as_ref().and_then(|a| a.resident_bytes),
                allocator_free_bytes: v.allocator.as_ref().map(|a| a.free_bytes),
            })
        };
        let b = &r.breakdown;
        let mut breakdown = std::collections::BTreeMap::new();
        let owners = b
            .owners()
            .into_iter()
            .filter_map(|(name, o)| Some((name, o.as_ref()?)));
        for (name, o) in owners.chain([("unattributed", &b.unattributed)]) {
            breakdown.insert(
                name,
                OwnerFigures {
                    bytes: o.bytes,
                    resident_bytes: o.resident_bytes,
                },
            );
        }
        let detail = |key: &str| {
            b.glibc
                .as_ref()
                .and_then(|g| g.details.get(key))
                .and_then(|v| v.as_u64())
        };
        let p = &r.pools;
        Published {
            sampled_at_ms,
            age_ms: 0,
            breakdown,
            lua: PublishedLua {
                http: vm(&r.lua.http),
                stream: vm(&r.lua.stream),
            },
            glibc: detail("in_use_bytes").zip(detail("free_bytes")).map(
                |(in_use_bytes, free_bytes)| GlibcFigures {
                    in_use_bytes,
                    free_bytes,
                },
            ),
            pools: PoolFigures {
                cycle_bytes: p.cycle.bytes,
                connections: p.connections.count,
                connection_bytes: p.connections.bytes,
                requests: p.requests.count,
                request_bytes: p.requests.bytes,
            },
        }
    }

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
        Some(Published {
            sampled_at_ms,
            age_ms: now_ms.saturating_sub(sampled_at_ms),
            breakdown,
            lua,
            glibc,
            pools,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub role: ProcessRole,
    pub worker: Option<u32>,
    pub generation: u64,
    pub exiting: bool,
    pub started_at_ms: u64,
    /// Its `/proc/PID/status` counters, as `process` has them for this worker.
    #[serde(flatten)]
    pub status: ProcStatus,
    /// `detail=full` only: the process's proportional share of its resident
    /// pages (a shared page counts 1/N in each of its N processes); `null`
    /// where the kernel does not let this worker read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_bytes: Option<Option<u64>>,
    /// A worker's own figures, as it last published them (the answering
    /// worker's: this answer's). `null` for the master and cache processes,
    /// and for a worker that has not published yet.
    pub memory: Option<Published>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    /// Configuration loads seen: 1 at start, +1 per reload.
    pub generation: u64,
    /// `detail=full` only: the server's resident memory with every page
    /// counted once, the sum of every process's `pss_bytes`; `null` when one
    /// could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<Option<u64>>,
    pub processes: u64,
    pub workers: u64,
    pub old_generation_workers: u64,
    /// Their RSS, each counted whole (pages they share with the current
    /// generation count in both).
    pub old_generation_resident_bytes: u64,
    /// How long the oldest worker still shutting down has lived.
    pub oldest_exiting_age_ms: Option<u64>,
}

/// The processes list and the server's totals, from what was read. A process
/// that is gone (no status) or whose pid now runs another program is left out;
/// one that can't be read otherwise is listed with `null` figures and an error.
pub fn build(
    samples: Vec<ProcessSample>,
    generation: u64,
    master_started_at_ms: u64,
    now_ms: u64,
    errors: &mut Vec<SourceError>,
) -> (Vec<ServerProcess>, Server) {
    let mut processes: Vec<ServerProcess> = Vec::new();
    for s in samples {
        let Ok(title) = &s.title else { continue };
        // `master_process off` sets no title: the single process is the one
        // that registered as such, under its own pid.
        let single = s
            .entry
            .as_ref()
            .is_some_and(|e| e.kind == RegisteredKind::Single);
        let Some((title_role, exiting)) =
            role_of_title(title).or(single.then_some((ProcessRole::Single, false)))
        else {
            continue;
        };
        let status = match &s.status {
            Ok(text) => ProcStatus::parse(text).0,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                errors.push(SourceError::new(
                    format!("processes.{}", s.pid),
                    format!("/proc/{}/status: {e}", s.pid),
                ));
                ProcStatus::default()
            }
        };
        let published = s.entry.as_ref().and_then(|e| e.published.clone());
        let (role, worker, generation, started_at_ms) = match &s.entry {
            Some(e) => {
                let role = match e.kind {
                    RegisteredKind::Worker => ProcessRole::Worker,
                    RegisteredKind::Single => ProcessRole::Single,
                    RegisteredKind::Helper => title_role,
                };
                (role, e.worker, e.generation, e.started_at_ms)
            }
            None if title_role == ProcessRole::Master => {
                (ProcessRole::Master, None, generation, master_started_at_ms)
            }
            None => continue,
        };
        if processes.iter().any(|p| p.pid == s.pid) {
            continue;
        }
        if published.is_none() && matches!(role, ProcessRole::Worker | ProcessRole::Single) {
            errors.push(SourceError::new(
                format!("processes.{}.memory", s.pid),
                "not published yet (a worker publishes 200 ms after it starts, then every memory_status_interval)",
            ));
        }
        processes.push(ServerProcess {
            pid: s.pid,
            role,
            worker,
            generation,
            exiting,
            started_at_ms,
            status,
            pss_bytes: s
                .rollup
                .as_ref()
                .map(|rollup| pss_of(s.pid, rollup, errors)),
            memory: published,
        });
    }
    processes.sort_by_key(|p| (p.role.rank(), p.generation, p.worker, p.pid));
    let mut server = totals(&processes, generation, now_ms);
    server.resident_bytes = counted_once(&processes, errors);
    (processes, server)
}

/// A process's PSS from its `smaps_rollup` (the format of one `smaps` entry).
fn pss_of(
    pid: u32,
    rollup: &std::io::Result<String>,
    errors: &mut Vec<SourceError>,
) -> Option<u64> {
    let pss = match rollup {
        Ok(text) => crate::procfs::SmapsEntry::parse_all(text)
            .0
            .first()
            .map(|e| e.pss_bytes)
            .ok_or_else(|| "no Pss in it".to_string()),
        Err(e) => Err(e.to_string()),
    };
    pss.map_err(|e| {
        errors.push(SourceError::new(
            format!("processes.{pid}"),
            format!("/proc/{pid}/smaps_rollup: {e}"),
        ))
    })
    .ok()
}

/// The server's resident memory with each page once: the sum of PSS, when
/// every process's was read (`detail=full`).
fn counted_once(processes: &[ServerProcess], errors: &mut Vec<SourceError>) -> Option<Option<u64>> {
    if processes.iter().all(|p| p.pss_bytes.is_none()) {
        return None;
    }
    let unread: Vec<String> = processes
        .iter()
        .filter(|p| !matches!(p.pss_bytes, Some(Some(_))))
        .map(|p| p.pid.to_string())
        .collect();
    if !unread.is_empty() {
        errors.push(SourceError::new(
            "server.resident_bytes",
            format!(
                "the PSS of {} could not be read: not summed",
                unread.join(", ")
            ),
        ));
        return Some(None);
    }
    Some(Some(
        processes.iter().filter_map(|p| p.pss_bytes.flatten()).sum(),
    ))
}

fn totals(processes: &[ServerProcess], generation: u64, now_ms: u64) -> Server {
    let old: Vec<&ServerProcess> = processes
        .iter()
        .filter(|p| p.role == ProcessRole::Worker && (p.exiting || p.generation < generation))
        .collect();
    Server {
        generation,
        resident_bytes: None,
        processes: processes.len() as u64,
        workers: processes
            .iter()
            .filter(|p| matches!(p.role, ProcessRole::Worker | ProcessRole::Single))
            .count() as u64
            - old.len() as u64,
        old_generation_workers: old.len() as u64,
        old_generation_resident_bytes: old.iter().filter_map(|p| p.status.resident_bytes).sum(),
        oldest_exiting_age_ms: old
            .iter()
            .filter(|p| p.exiting)
            .map(|p| now_ms.saturating_sub(p.started_at_ms))
            .max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(rss_kib: u64) -> std::io::Result<String> {
        Ok(format!(
            "VmSize:\t{} kB\nVmRSS:\t{rss_kib} kB\nRssAnon:\t1 kB\nRssFile:\t2 kB\nRssShmem:\t3 kB\nVmSwap:\t0 kB\n",
            rss_kib * 10
        ))
    }

    fn worker(pid: u32, n: u32, generation: u64, title: &str, rss_kib: u64) -> ProcessSample {
        ProcessSample {
            pid,
            entry: Some(RegistryEntry {
                pid,
                kind: RegisteredKind::Worker,
                worker: Some(n),
                generation,
                started_at_ms: 1_000 * generation,
                published: None,
            }),
            title: Ok(format!("nginx: {title}\0\0\0")),
            status: status(rss_kib),
            rollup: None,
        }
    }

    #[test]
    fn a_summary_survives_its_slot() {
        let mut breakdown = std::collections::BTreeMap::new();
        breakdown.insert(
            "glibc",
            OwnerFigures {
                bytes: 5,
                resident_bytes: Some(4096),
            },
        );
        breakdown.insert(
            "unattributed",
            OwnerFigures {
                bytes: 0,
                resident_bytes: Some(-8192),
            },
        );
        breakdown.insert(
            "shm",
            OwnerFigures {
                bytes: 7,
                resident_bytes: None,
            },
        );
        let p = Published {
            sampled_at_ms: 1_000,
            age_ms: 0,
            breakdown,
            lua: PublishedLua {
                http: Some(VmFigures {
                    gc_bytes: 300,
                    allocator_mapped_bytes: Some(1 << 20),
                    allocator_resident_bytes: None,
                    allocator_free_bytes: Some(3),
                }),
                stream: None,
            },
            glibc: Some(GlibcFigures {
                in_use_bytes: 10,
                free_bytes: 2,
            }),
            pools: PoolFigures {
                cycle_bytes: 1,
                connections: 2,
                connection_bytes: 3,
                requests: 4,
                request_bytes: 5,
            },
        };
        let back = Published::from_words(&p.to_words(), 1_500).unwrap();
        assert_eq!(back, Published { age_ms: 500, ..p });
        assert_eq!(
            Published::from_words(&[0; PUBLISHED_WORDS], 1),
            None,
            "never published"
        );
    }

    #[test]
    fn titles() {
        assert_eq!(
            role_of_title("nginx: master process /usr/sbin/nginx -c x\0"),
            Some((ProcessRole::Master, false))
        );
        assert_eq!(
            role_of_title("nginx: worker process\0\0"),
            Some((ProcessRole::Worker, false))
        );
        assert_eq!(
            role_of_title("nginx: worker process is shutting down   "),
            Some((ProcessRole::Worker, true))
        );
        assert_eq!(
            role_of_title("nginx: cache loader process"),
            Some((ProcessRole::CacheLoader, false))
        );
        assert_eq!(
            role_of_title("nginx: cache manager process"),
            Some((ProcessRole::CacheManager, false))
        );
        assert_eq!(role_of_title("/usr/bin/bash\0"), None);
        assert_eq!(role_of_title("nginx: something else"), None);
    }

    #[test]
    fn a_reload_with_an_old_worker_left() {
        let master = ProcessSample {
            pid: 10,
            entry: None,
            title: Ok("nginx: master process nginx\0".into()),
            status: status(4000),
            rollup: None,
        };
        let helper = ProcessSample {
            pid: 30,
            entry: Some(RegistryEntry {
                pid: 30,
                kind: RegisteredKind::Helper,
                worker: None,
                generation: 2,
                started_at_ms: 2_000,
                published: None,
            }),
            title: Ok("nginx: cache manager process".into()),
            status: status(1000),
            rollup: None,
        };
        let gone = ProcessSample {
            status: Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            ..worker(40, 0, 1, "worker process", 1)
        };
        let reused = ProcessSample {
            title: Ok("/usr/bin/python3\0".into()),
            ..worker(50, 0, 1, "worker process", 1)
        };
        let samples = vec![
            worker(21, 1, 2, "worker process", 9000),
            worker(11, 0, 1, "worker process is shutting down", 7000),
            helper,
            master,
            worker(20, 0, 2, "worker process", 8000),
            gone,
            reused,
        ];
        let mut errors = Vec::new();
        let (processes, server) = build(samples, 2, 500, 10_000, &mut errors);
        assert_eq!(
            errors.len(),
            3,
            "the workers' summaries are not published: {errors:?}"
        );
        assert!(errors.iter().all(|e| e.source.ends_with(".memory")));
        let order: Vec<(u32, ProcessRole)> = processes.iter().map(|p| (p.pid, p.role)).collect();
        assert_eq!(
            order,
            vec![
                (10, ProcessRole::Master),
                (11, ProcessRole::Worker),
                (20, ProcessRole::Worker),
                (21, ProcessRole::Worker),
                (30, ProcessRole::CacheManager)
            ]
        );
        assert_eq!(processes[0].started_at_ms, 500);
        assert_eq!(processes[0].generation, 2);
        assert_eq!(processes[2].status.resident_bytes, Some(8000 * 1024));
        assert_eq!(server.processes, 5);
        assert_eq!(server.workers, 2);
        assert_eq!(server.old_generation_workers, 1);
        assert_eq!(server.old_generation_resident_bytes, 7000 * 1024);
        assert_eq!(server.oldest_exiting_age_ms, Some(9_000));
    }

    #[test]
    fn the_server_counted_once_is_the_sum_of_pss() {
        let rollup = |pss_kib: u64| {
            Some(Ok(format!(
                "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss: 9000 kB\nPss: {pss_kib} kB\nPss_Anon: 1 kB\nAnonymous: 10 kB\nSwap: 0 kB\n"
            )))
        };
        let a = ProcessSample {
            rollup: rollup(1000),
            ..worker(1, 0, 1, "worker process", 9000)
        };
        let b = ProcessSample {
            rollup: rollup(3000),
            ..worker(2, 1, 1, "worker process", 9000)
        };
        let mut errors = Vec::new();
        let (processes, server) = build(vec![a, b], 1, 0, 0, &mut errors);
        assert_eq!(processes[0].pss_bytes, Some(Some(1000 * 1024)));
        assert_eq!(server.resident_bytes, Some(Some(4000 * 1024)));
        let c = ProcessSample {
            rollup: Some(Err(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))),
            ..worker(3, 0, 1, "worker process", 9000)
        };
        let d = ProcessSample {
            rollup: rollup(5),
            ..worker(4, 1, 1, "worker process", 9000)
        };
        let mut errors = Vec::new();
        let (processes, server) = build(vec![c, d], 1, 0, 0, &mut errors);
        assert_eq!(processes[0].pss_bytes, Some(None));
        assert_eq!(server.resident_bytes, Some(None));
        assert!(errors
            .iter()
            .any(|e| e.source == "server.resident_bytes" && e.error.contains("3")));
        let (_, plain) = build(
            vec![worker(5, 0, 1, "worker process", 1)],
            1,
            0,
            0,
            &mut Vec::new(),
        );
        assert_eq!(plain.resident_bytes, None, "not at the default depth");
    }

    #[test]
    fn master_process_off_sets_no_title() {
        let single = ProcessSample {
            pid: 5,
            entry: Some(RegistryEntry {
                pid: 5,
                kind: RegisteredKind::Single,
                worker: None,
                generation: 1,
                started_at_ms: 1,
                published: None,
            }),
            title: Ok("nginx\0-p\0/tmp/x/\0".into()),
            status: status(100),
            rollup: None,
        };
        let (processes, server) = build(vec![single], 1, 0, 0, &mut Vec::new());
        assert_eq!(processes.len(), 1);
        assert_eq!(processes[0].role, ProcessRole::Single);
        assert_eq!(server.workers, 1);
    }

    #[test]
    fn an_unreadable_status_is_said() {
        let s = ProcessSample {
            status: Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied)),
            ..worker(7, 0, 1, "worker process", 1)
        };
        let mut errors = Vec::new();
        let (processes, _) = build(vec![s], 1, 0, 0, &mut errors);
        assert_eq!(processes.len(), 1);
        assert_eq!(processes[0].status.resident_bytes, None);
        assert_eq!(errors.len(), 2);
        assert!(errors[0].error.starts_with("/proc/7/status: "));
    }
}
