//! What the measuring thread reads for the container section: the memory
//! cgroup (at most once a second), the group's processes that are not
//! nginx's, and the TCP line of `/proc/net/sockstat`.

use ngx::ffi::ngx_pagesize;

use crate::analysis::container::{ContainerSample, OtherProcessSample};
use crate::model::process::ProcessMemory;
use crate::sources::errors::SampleError;
use crate::sources::procfs::{parse_sockstat_tcp, read_proc_file};

/// Measuring thread only. `nginx_pids`: this nginx's processes, which are
/// not listed as others.
pub fn read(nginx_pids: &[u32]) -> Result<Option<ContainerSample>, SampleError> {
    let (reading, age) = crate::sources::cgroup::read_own_recent();
    let Some(cgroup) = reading? else {
        return Ok(None);
    };
    let others = cgroup
        .pids
        .iter()
        .filter(|pid| !nginx_pids.contains(pid))
        .filter_map(|&pid| other_process(pid))
        .collect();
    let (tcp_in_use, tcp_memory_pages) = read_proc_file("/proc/net/sockstat", 1 << 10)
        .map(|text| parse_sockstat_tcp(&text))
        .unwrap_or((None, None));
    Ok(Some(ContainerSample {
        cgroup,
        age_ms: age.as_millis() as u64,
        others,
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
    let comm = read("comm", 64);
    let status = read("status", 4 << 10).map(|text| ProcessMemory::parse(&text).0);
    (comm.is_some() || status.is_some()).then_some(OtherProcessSample { pid, comm, status })
}
