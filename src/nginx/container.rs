//! What the measuring thread reads for the container section: the memory
//! cgroup, the group's processes that are not nginx's, and the TCP line of
//! `/proc/net/sockstat`; at most once a second.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ngx::ffi::ngx_pagesize;

use crate::analysis::container::{ContainerSample, OtherProcessSample};
use crate::sources::errors::SampleError;
use crate::sources::procfs::{parse_sockstat_tcp, parse_statm, read_proc_bytes, read_proc_file};

/// How long a reading is reused: the group's files, its other processes'
/// status and the sockstat line are read once for a burst of answers and the
/// history's samples, whatever the group's size.
const REUSE_FOR: Duration = Duration::from_secs(1);

type Reading = Result<Option<ContainerSample>, SampleError>;

/// Other processes read at most: their cost is two small `/proc` files each
/// (about 20 µs), once a second.
const MAX_OTHERS: usize = 256;

/// The last reading, with when and for which nginx processes it was made.
struct Recent {
    at: Instant,
    nginx_pids: Vec<u32>,
    reading: Reading,
}

/// Measuring thread only. `nginx_pids`: this nginx's processes, which are
/// not listed as others. A reading younger than `REUSE_FOR`, made for the
/// same processes, is reused with its age.
pub fn read(nginx_pids: &[u32]) -> Reading {
    static LAST: Mutex<Option<Recent>> = Mutex::new(None);
    let mut pids = nginx_pids.to_vec();
    pids.sort_unstable();
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(recent) = &*last {
        if recent.at.elapsed() < REUSE_FOR && recent.nginx_pids == pids {
            let age_ms = recent.at.elapsed().as_millis() as u64;
            return recent
                .reading
                .clone()
                .map(|sample| sample.map(|s| ContainerSample { age_ms, ..s }));
        }
    }
    let reading = read_now(nginx_pids);
    *last = Some(Recent {
        at: Instant::now(),
        nginx_pids: pids,
        reading: reading.clone(),
    });
    reading
}

fn read_now(nginx_pids: &[u32]) -> Reading {
    let Some(cgroup) = crate::sources::cgroup::read_own()? else {
        return Ok(None);
    };
    let mut others = Vec::new();
    let mut others_truncated = cgroup.pids_truncated;
    for &pid in cgroup.pids.iter().filter(|pid| !nginx_pids.contains(pid)) {
        if others.len() == MAX_OTHERS
            || crate::alloc_guard::short()
            || others.try_reserve(1).is_err()
        {
            others_truncated = true;
            break;
        }
        others.extend(other_process(pid));
    }
    let (tcp_in_use, tcp_memory_pages) = read_proc_file("/proc/net/sockstat", 1 << 10)
        .map(|text| parse_sockstat_tcp(&text))
        .unwrap_or((None, None));
    Ok(Some(ContainerSample {
        cgroup,
        age_ms: 0,
        others,
        others_truncated,
        tcp_in_use,
        tcp_memory_pages,
        // SAFETY: a plain integer nginx sets at start.
        page_bytes: unsafe { ngx_pagesize } as u64,
        oom_kills_at_start: None,
    }))
}

/// A process of the group that is not nginx's: its name and resident
/// counters, each `None` where it cannot be read; `None` once it has left.
fn other_process(pid: u32) -> Option<OtherProcessSample> {
    let read = |file: &str, size: usize| read_proc_file(&format!("/proc/{pid}/{file}"), size).ok();
    // A name is any bytes: escaped by the one rule where the answer is made.
    let comm = read_proc_bytes(&format!("/proc/{pid}/comm"), 64).ok();
    let statm = read("statm", 256).and_then(|text| parse_statm(&text));
    (comm.is_some() || statm.is_some()).then_some(OtherProcessSample { pid, comm, statm })
}
