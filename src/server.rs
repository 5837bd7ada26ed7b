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

#[derive(Debug, Clone, Serialize)]
pub struct ServerProcess {
    pub pid: u32,
    pub role: ProcessRole,
    pub worker: Option<u32>,
    pub generation: u64,
    pub exiting: bool,
    pub started_at_ms: u64,
    pub virtual_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub resident_anon_bytes: Option<u64>,
    pub resident_file_bytes: Option<u64>,
    pub resident_shmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    /// Configuration loads seen: 1 at start, +1 per reload.
    pub generation: u64,
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
        processes.push(ServerProcess {
            pid: s.pid,
            role,
            worker,
            generation,
            exiting,
            started_at_ms,
            virtual_bytes: status.virtual_bytes,
            resident_bytes: status.resident_bytes,
            resident_anon_bytes: status.resident_anon_bytes,
            resident_file_bytes: status.resident_file_bytes,
            resident_shmem_bytes: status.resident_shmem_bytes,
            swap_bytes: status.swap_bytes,
        });
    }
    processes.sort_by_key(|p| (p.role.rank(), p.generation, p.worker, p.pid));
    let server = totals(&processes, generation, now_ms);
    (processes, server)
}

fn totals(processes: &[ServerProcess], generation: u64, now_ms: u64) -> Server {
    let old: Vec<&ServerProcess> = processes
        .iter()
        .filter(|p| p.role == ProcessRole::Worker && (p.exiting || p.generation < generation))
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
        old_generation_resident_bytes: old.iter().filter_map(|p| p.resident_bytes).sum(),
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
            }),
            title: Ok(format!("nginx: {title}\0\0\0")),
            status: status(rss_kib),
        }
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
        };
        let helper = ProcessSample {
            pid: 30,
            entry: Some(RegistryEntry {
                pid: 30,
                kind: RegisteredKind::Helper,
                worker: None,
                generation: 2,
                started_at_ms: 2_000,
            }),
            title: Ok("nginx: cache manager process".into()),
            status: status(1000),
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
        assert!(errors.is_empty());
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
        assert_eq!(processes[2].resident_bytes, Some(8000 * 1024));
        assert_eq!(server.processes, 5);
        assert_eq!(server.workers, 2);
        assert_eq!(server.old_generation_workers, 1);
        assert_eq!(server.old_generation_resident_bytes, 7000 * 1024);
        assert_eq!(server.oldest_exiting_age_ms, Some(9_000));
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
            }),
            title: Ok("nginx\0-p\0/tmp/x/\0".into()),
            status: status(100),
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
        assert_eq!(processes[0].resident_bytes, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].error.starts_with("/proc/7/status: "));
    }
}
