//! The memory limit of the cgroup nginx runs in: `/proc/self/cgroup` names the
//! group, and the group's files (v2 `memory.max`/`memory.current`, v1
//! `memory.limit_in_bytes`/`memory.usage_in_bytes`) hold the limit. The
//! tightest limit of the group and its ancestors is the one that binds.

use serde::Serialize;

use super::errors::SampleError;

/// What the cgroup says about memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CgroupMemory {
    /// The tightest limit on the group and its ancestors; `None`: no limit.
    pub limit_bytes: Option<u64>,
    /// The group's own charge (it counts page cache too).
    pub usage_bytes: Option<u64>,
    /// 1 or 2.
    pub version: u8,
}

/// v1 writes "no limit" as the largest page-aligned counter, about 2^63.
const V1_UNLIMITED_FROM: u64 = 1 << 62;

/// Where a process's memory cgroup is: the v2 path (`0::/path`) and the v1
/// memory controller's path (`N:...memory...:/path`), as `/proc/PID/cgroup`
/// lists them.
pub fn groups_of(text: &str) -> (Option<&str>, Option<&str>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

/// A limit file's content: a number of bytes, or none (`max`, v1's huge value).
pub fn parse_limit(text: &str) -> Option<u64> {
    let n: u64 = text.trim().parse().ok()?;
    (n < V1_UNLIMITED_FROM).then_some(n)
}

/// The group's directory and each ancestor's, the group first.
pub fn ancestry(path: &str) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut p = path.trim_end_matches('/');
    loop {
        dirs.push(p.to_string());
        match p.rfind('/') {
            Some(i) if !p.is_empty() => p = &p[..i],
            _ => break,
        }
    }
    dirs
}

/// How long a reading is reused: a limit changes rarely, and a reading is
/// several files (the group's and each ancestor's).
const REUSE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

type Reading = Result<Option<CgroupMemory>, SampleError>;

/// `read_own`, at most once per `REUSE_FOR` (measuring threads only).
pub fn read_own_recent() -> Reading {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, Reading)>> =
        std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, reading)) = &*last {
        if at.elapsed() < REUSE_FOR {
            return reading.clone();
        }
    }
    let reading = read_own();
    *last = Some((std::time::Instant::now(), reading.clone()));
    reading
}

/// The limit and charge of this process's memory cgroup; `None` where no
/// memory controller is mounted.
pub fn read_own() -> Reading {
    let text = crate::sources::procfs::read_proc_file("/proc/self/cgroup", 4 << 10)
        .map_err(|e| SampleError::file("/proc/self/cgroup", &e))?;
    let (v2, v1) = groups_of(&text);
    let has_memory = |root: &str| {
        std::fs::read_to_string(format!("{root}/cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
    };
    let v2_root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|root| has_memory(root));
    let (root, path, limit_file, usage_file, version) = match (v2_root, v2, v1) {
        (Some(root), Some(path), _) => (root, path, "memory.max", "memory.current", 2),
        (_, _, Some(path)) => (
            "/sys/fs/cgroup/memory",
            path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            1,
        ),
        _ => return Ok(None),
    };
    let read = |dir: &str, file: &str| std::fs::read_to_string(format!("{root}{dir}/{file}")).ok();
    let limit_bytes = ancestry(path)
        .iter()
        .filter_map(|dir| parse_limit(&read(dir, limit_file)?))
        .min();
    let usage_bytes =
        read(path.trim_end_matches('/'), usage_file).and_then(|t| t.trim().parse().ok());
    Ok(Some(CgroupMemory {
        limit_bytes,
        usage_bytes,
        version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_groups() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        assert_eq!(groups_of(hybrid), (Some("/"), Some("/process_api/abc")));
        let v2 = "0::/system.slice/nginx.service\n";
        assert_eq!(groups_of(v2), (Some("/system.slice/nginx.service"), None));
        assert_eq!(groups_of("5:cpu,memory:/x\n"), (None, Some("/x")));
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("9223372036854771712\n"), None);
    }

    #[test]
    fn ancestors_up_to_the_root() {
        assert_eq!(ancestry("/a/b"), ["/a/b", "/a", ""]);
        assert_eq!(ancestry("/"), [""]);
    }
}
