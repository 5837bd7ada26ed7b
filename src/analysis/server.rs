//! The whole server: every process of this nginx (the master, every worker of
//! every generation still alive, the cache manager and loader), from the
//! registry the processes keep in the module's zone and the kernel's counters
//! of each, and the server's totals.

use crate::model::labels::Label;
use crate::model::process::ProcessMemory;
use crate::model::server::GlibcFigures;
use crate::model::server::OwnerFigures;
use crate::model::server::PoolFigures;
use crate::model::server::ProcessRole;
use crate::model::server::Published;
use crate::model::server::PublishedLua;
use crate::model::server::PublishedPss;
use crate::model::server::Server;
use crate::model::server::ServerProcess;
use crate::model::server::VmFigures;
use crate::model::source_error::SourceError;
use crate::shm::summary::PSS_OTHERS;

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

impl Published {
    // Long, not deep: one field of the summary after another, as the slot
    // layout lists them.
    /// The summary of an answer just built.
    pub fn from_report(r: &crate::model::report::Report, sampled_at_ms: u64) -> Published {
        let vm = |v: &Option<crate::model::lua::LuaVm>| {
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
            pss: b.pss_by_owner.as_ref().map(|owners| PublishedPss {
                sampled_at_ms,
                age_ms: 0,
                bytes: owners.values().sum(),
                owners: owners.clone(),
                others: Vec::new(),
            }),
        }
    }
}

impl ServerProcess {
    /// A worker of an older configuration, or one shutting down.
    pub fn is_old_generation(&self, current: u64) -> bool {
        self.role == ProcessRole::Worker && (self.exiting || self.generation < current)
    }
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
    let others = published_others(&samples);
    // An answer that walked every process (`detail=full`) says why a PSS is
    // missing; the default answer's estimate shows in its own figures only,
    // as a root master beside unprivileged workers is the common case.
    let walked = samples.iter().any(|s| s.rollup.is_some());
    let mut processes: Vec<ServerProcess> = Vec::new();
    for s in samples {
        if processes.iter().any(|p| p.pid == s.pid) {
            continue;
        }
        let mut p = match listed(&s, generation, master_started_at_ms, errors) {
            Some(p) => p,
            None => continue,
        };
        let fresh = s.rollup.as_ref().and_then(|r| pss_of(s.pid, r, errors));
        (p.pss_bytes, p.pss_age_ms) = match (fresh, &p.memory) {
            (Some(pss), _) => (Some(pss), Some(0)),
            (None, Some(Published { pss: Some(w), .. })) => (Some(w.bytes), Some(w.age_ms)),
            (None, _) => others.get(&s.pid).copied().unzip(),
        };
        processes.push(p);
    }
    processes.sort_by_key(|p| (p.role.rank(), p.generation, p.worker, p.pid));
    let mut server = totals(&processes, generation, now_ms);
    count_once(&mut server, &processes, walked.then_some(errors));
    (processes, server)
}

/// A process as listed, from its title, registry entry and status (its PSS
/// not yet set); `None` for one that is gone or is not nginx's.
fn listed(
    s: &ProcessSample,
    generation: u64,
    master_started_at_ms: u64,
    errors: &mut Vec<SourceError>,
) -> Option<ServerProcess> {
    let title = s.title.as_ref().ok()?;
    // `master_process off` sets no title: the single process is the one
    // that registered as such, under its own pid.
    let single = s
        .entry
        .as_ref()
        .is_some_and(|e| e.kind == RegisteredKind::Single);
    let (title_role, exiting) =
        role_of_title(title).or(single.then_some((ProcessRole::Single, false)))?;
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
        None => return None,
    };
    let status = match &s.status {
        Ok(text) => ProcessMemory::parse(text).0,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            errors.push(SourceError::new(
                format!("processes.{}", s.pid),
                format!("/proc/{}/status: {e}", s.pid),
            ));
            ProcessMemory::default()
        }
    };
    let memory = s.entry.as_ref().and_then(|e| e.published.clone());
    if memory.is_none() && matches!(role, ProcessRole::Worker | ProcessRole::Single) {
        errors.push(SourceError::new(
            format!("processes.{}.memory", s.pid),
            "not published yet (a worker publishes 200 ms after it starts, then every memory_status_interval)",
        ));
    }
    Some(ServerProcess {
        pid: s.pid,
        role,
        worker,
        generation,
        exiting,
        started_at_ms,
        status,
        pss_bytes: None,
        pss_age_ms: None,
        memory,
    })
}

/// The freshest PSS any worker published for each process that publishes
/// nothing itself (the master, the cache processes): pid => (bytes, age).
fn published_others(samples: &[ProcessSample]) -> std::collections::HashMap<u32, (u64, u64)> {
    let mut others = std::collections::HashMap::new();
    let walks = samples
        .iter()
        .filter_map(|s| s.entry.as_ref()?.published.as_ref()?.pss.as_ref());
    for walk in walks {
        for &(pid, bytes) in &walk.others {
            let e = others.entry(pid).or_insert((bytes, walk.age_ms));
            if walk.age_ms < e.1 {
                *e = (bytes, walk.age_ms);
            }
        }
    }
    others
}

/// A process that publishes no summary: the master (no registry entry) and
/// the cache processes.
pub fn publishes_nothing(entry: Option<&RegistryEntry>) -> bool {
    entry.map_or(true, |e| e.kind == RegisteredKind::Helper)
}

/// The PSS a worker publishes for the processes that publish nothing, from
/// the `smaps_rollup` read with its summary.
pub fn others_pss(samples: &[ProcessSample]) -> Vec<(u32, u64)> {
    samples
        .iter()
        .filter(|s| publishes_nothing(s.entry.as_ref()))
        .filter_map(|s| Some((s.pid, pss_of(s.pid, s.rollup.as_ref()?, &mut Vec::new())?)))
        .take(PSS_OTHERS)
        .collect()
}

/// A process's PSS from its `smaps_rollup` (the format of one `smaps` entry).
fn pss_of(
    pid: u32,
    rollup: &std::io::Result<String>,
    errors: &mut Vec<SourceError>,
) -> Option<u64> {
    let pss = match rollup {
        Ok(text) => crate::sources::procfs::SmapsEntry::parse_all(text)
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

/// Where a process's PSS is unknown: its anonymous pages whole (what it
/// alone holds, and at most what it shares with the processes it forked), its
/// file and shared pages divided among the server's processes.
fn estimated_pss(p: &ServerProcess, processes: u64) -> u64 {
    let st = &p.status;
    let shared = st.resident_file_bytes.unwrap_or(0) + st.resident_shmem_bytes.unwrap_or(0);
    st.resident_anon_bytes.unwrap_or(0) + shared / processes.max(1)
}

/// The server's resident memory with each page once (`resident_bytes`), by
/// owner: the sum of every process's PSS as published, estimated where none is.
fn count_once(
    server: &mut Server,
    processes: &[ServerProcess],
    errors: Option<&mut Vec<SourceError>>,
) {
    let mut estimated = Vec::new();
    for p in processes {
        let walk = p.memory.as_ref().and_then(|m| m.pss.as_ref());
        let (pss, age_ms) = match (walk, p.role) {
            (Some(walk), _) => {
                for (&owner, &bytes) in &walk.owners {
                    *server.breakdown.entry(owner).or_insert(0) += bytes;
                }
                (walk.bytes, walk.age_ms)
            }
            (None, ProcessRole::Master | ProcessRole::CacheManager | ProcessRole::CacheLoader)
                if p.pss_bytes.is_some() =>
            {
                let owner = match p.role {
                    ProcessRole::Master => "master",
                    _ => "cache_processes",
                };
                let (pss, age) = (p.pss_bytes.unwrap_or(0), p.pss_age_ms.unwrap_or(0));
                *server.breakdown.entry(owner).or_insert(0) += pss;
                (pss, age)
            }
            _ => {
                let guess = estimated_pss(p, processes.len() as u64);
                *server.breakdown.entry("estimated").or_insert(0) += guess;
                server.resident_estimated_bytes += guess;
                estimated.push(format!("{} ({})", p.pid, p.role.label()));
                (guess, 0)
            }
        };
        server.resident_bytes += pss;
        server.resident_age_ms = server.resident_age_ms.max(Some(age_ms));
    }
    if let (false, Some(errors)) = (estimated.is_empty(), errors) {
        errors.push(SourceError::new(
            "server.resident_bytes",
            format!(
                "no PSS known for {}: estimated as RssAnon plus (RssFile + RssShmem) / processes",
                estimated.join(", ")
            ),
        ));
    }
}

fn totals(processes: &[ServerProcess], generation: u64, now_ms: u64) -> Server {
    let old: Vec<&ServerProcess> = processes
        .iter()
        .filter(|p| p.is_old_generation(generation))
        .collect();
    Server {
        generation,
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
        ..Server::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::summary::PUBLISHED_WORDS;

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
            pss: None,
        };
        let back = Published::from_words(&p.to_words(), 1_500).unwrap();
        assert_eq!(
            back,
            Published {
                age_ms: 500,
                ..p.clone()
            }
        );
        let walked = Published {
            pss: Some(PublishedPss {
                sampled_at_ms: 900,
                age_ms: 0,
                bytes: 30,
                owners: [("glibc", 10), ("unattributed", 20)].into_iter().collect(),
                others: vec![(7, 1), (8, 2)],
            }),
            ..p.clone()
        };
        let back = Published::from_words(&walked.to_words(), 1_500).unwrap();
        assert_eq!(back.pss.as_ref().map(|w| w.age_ms), Some(600));
        assert_eq!(
            back.pss.as_ref().map(|w| &w.others),
            Some(&vec![(7, 1), (8, 2)])
        );
        assert_eq!(back.pss.map(|w| w.owners), walked.pss.map(|w| w.owners));
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

    fn walked(
        sample: &mut ProcessSample,
        owners: &[(&'static str, u64)],
        others: Vec<(u32, u64)>,
        age_ms: u64,
    ) {
        let e = sample.entry.as_mut().unwrap();
        e.published = Some(Published {
            sampled_at_ms: 1,
            pss: Some(PublishedPss {
                sampled_at_ms: 1,
                age_ms,
                bytes: owners.iter().map(|(_, b)| b).sum(),
                owners: owners.iter().copied().collect(),
                others,
            }),
            ..Published::default()
        });
    }

    fn master(pid: u32) -> ProcessSample {
        ProcessSample {
            pid,
            entry: None,
            title: Ok("nginx: master process /usr/sbin/nginx".into()),
            status: status(5000),
            rollup: None,
        }
    }

    #[test]
    fn the_server_counted_once_is_the_sum_of_pss() {
        let mut a = worker(1, 0, 1, "worker process", 9000);
        walked(
            &mut a,
            &[("glibc", 600), ("shm", 400)],
            vec![(99, 300)],
            2_000,
        );
        let mut b = worker(2, 1, 1, "worker process", 9000);
        walked(
            &mut b,
            &[("shm", 400), ("lua_http", 1600)],
            vec![(99, 250)],
            500,
        );
        let mut errors = Vec::new();
        let (processes, server) = build(vec![master(99), a, b], 1, 0, 0, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            server.resident_bytes,
            600 + 800 + 1600 + 250,
            "the master's freshest"
        );
        assert_eq!(server.resident_estimated_bytes, 0);
        assert_eq!(server.resident_age_ms, Some(2_000));
        let split: Vec<(&str, u64)> = server.breakdown.iter().map(|(&k, &v)| (k, v)).collect();
        assert_eq!(
            split,
            [
                ("glibc", 600),
                ("lua_http", 1600),
                ("master", 250),
                ("shm", 800)
            ]
        );
        assert_eq!(
            (processes[0].pss_bytes, processes[0].pss_age_ms),
            (Some(250), Some(500))
        );
        assert_eq!(
            (processes[1].pss_bytes, processes[1].pss_age_ms),
            (Some(1000), Some(2_000))
        );
    }

    #[test]
    fn an_unknown_pss_is_estimated_and_said() {
        // A worker that has not walked yet, a master no worker could read:
        // the default answer's estimate shows in its figures, not in errors.
        let mut errors = Vec::new();
        let (_, server) = build(
            vec![master(99), worker(1, 0, 1, "worker process", 9000)],
            1,
            0,
            0,
            &mut errors,
        );
        assert!(!errors.iter().any(|e| e.source == "server.resident_bytes"));
        // RssAnon 1 kB + (RssFile 2 kB + RssShmem 3 kB) / 2 processes, twice.
        assert_eq!(server.resident_bytes, 2 * (1024 + 5 * 1024 / 2));
        assert_eq!(server.resident_estimated_bytes, server.resident_bytes);
        assert_eq!(
            server.breakdown.get("estimated"),
            Some(&server.resident_bytes)
        );
        let mut errors = Vec::new();
        let denied = ProcessSample {
            rollup: Some(Err(std::io::Error::from(
                std::io::ErrorKind::PermissionDenied,
            ))),
            ..master(99)
        };
        let mut w = worker(1, 0, 1, "worker process", 9000);
        walked(&mut w, &[("glibc", 10)], vec![], 0);
        let (processes, server) = build(vec![denied, w], 1, 0, 0, &mut errors);
        assert_eq!(processes[0].pss_bytes, None);
        assert_eq!(server.resident_bytes, 10 + 1024 + 5 * 1024 / 2);
        assert!(errors.iter().any(|e| e.source == "processes.99"));
        assert!(errors
            .iter()
            .any(|e| e.source == "server.resident_bytes" && e.error.contains("99 (master)")));
    }

    #[test]
    fn a_fresh_rollup_is_the_process_pss() {
        let mut a = worker(1, 0, 1, "worker process", 9000);
        a.rollup = Some(Ok(
            "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss: 9000 kB\nPss: 1000 kB\nPss_Anon: 1 kB\nAnonymous: 10 kB\nSwap: 0 kB\n".into(),
        ));
        let (processes, _) = build(vec![a], 1, 0, 0, &mut Vec::new());
        assert_eq!(
            (processes[0].pss_bytes, processes[0].pss_age_ms),
            (Some(1000 * 1024), Some(0))
        );
        let others = others_pss(&[ProcessSample {
            rollup: Some(Ok(
                "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss: 1 kB\nPss: 2 kB\nAnonymous: 1 kB\nSwap: 0 kB\n".into(),
            )),
            ..master(99)
        }]);
        assert_eq!(others, [(99, 2048)]);
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
        assert_eq!(errors.len(), 2, "status, not published: {errors:?}");
        assert!(errors[0].error.starts_with("/proc/7/status: "));
    }
}
