//! The memory cgroup nginx runs in: `/proc/self/cgroup` names the group, and
//! the group's files hold its charge, limit, peak, OOM events and the
//! kernel's split of the charge (`memory.stat`). v2 and v1 name them
//! differently; each is parsed here into one shape. The tightest limit of
//! the group and its ancestors is the one that binds.

use serde::Serialize;

use super::errors::SampleError;

/// What the cgroup says about memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupMemory {
    /// 1 or 2.
    pub version: u8,
    /// The group, as `/proc/self/cgroup` names it.
    pub path: String,
    /// The directory its files were read from.
    pub dir: String,
    /// The tightest limit on the group and its ancestors; `None`: no limit.
    pub limit_bytes: Option<u64>,
    /// The group that limit is on, when it is an ancestor: its usage counts
    /// its other descendants too (`None`: the group's own limit, or none).
    pub limit_group: Option<LimitGroup>,
    /// The group's own charge (it counts page cache too).
    pub usage_bytes: Option<u64>,
    /// v2 `memory.peak`, v1 `memory.max_usage_in_bytes`.
    pub peak_bytes: Option<u64>,
    /// v2 `memory.swap.current`, v1 `memory.stat` `total_swap`.
    pub swap_bytes: Option<u64>,
    /// The kernel's split of the charge.
    pub stat: MemoryStat,
    pub events: MemoryEvents,
    /// v1 only, `memory.kmem.usage_in_bytes`: kernel memory inside usage
    /// (v2 splits it in `memory.stat`).
    pub kmem_bytes: Option<u64>,
    /// v1 only, `memory.kmem.tcp.usage_in_bytes`: TCP buffers, counted apart
    /// from usage once the group's TCP accounting is on (`None` while off).
    pub tcp_outside_usage_bytes: Option<u64>,
    /// The processes in the group and its descendants (each one's
    /// `cgroup.procs`: usage and `memory.stat` count theirs too), at most
    /// `MAX_PIDS` from at most `MAX_GROUPS` groups.
    pub pids: Vec<u32>,
    /// More processes, or groups, were there than `pids` lists.
    pub pids_truncated: bool,
}

/// The figures of `memory.stat` the reconciliation uses, in bytes; v1's
/// hierarchical `total_` names, v2's own. `None`: not in this kernel's file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStat {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub active_file: Option<u64>,
    pub inactive_file: Option<u64>,
    pub shmem: Option<u64>,
    pub file_mapped: Option<u64>,
    pub kernel: Option<u64>,
    pub kernel_stack: Option<u64>,
    pub pagetables: Option<u64>,
    pub slab_reclaimable: Option<u64>,
    pub slab_unreclaimable: Option<u64>,
    pub sock: Option<u64>,
    pub swap: Option<u64>,
    /// v1 `hierarchical_memory_limit`: the tightest limit of the group and
    /// every ancestor, those above a container's mount too; `None`: none.
    pub hierarchical_limit: Option<u64>,
}

/// An ancestor whose limit binds the group, and its own charge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LimitGroup {
    /// As `/proc/self/cgroup` would name it; `None`: above what this mount
    /// namespace shows (v1's `hierarchical_memory_limit` said it), its
    /// figures unknown.
    pub path: Option<String>,
    pub usage_bytes: Option<u64>,
    pub inactive_file_bytes: Option<u64>,
}

/// OOM and limit events: v2 `memory.events`; v1 `memory.oom_control`'s
/// `oom_kill` and `memory.failcnt` (times usage hit the limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MemoryEvents {
    pub oom_kill: Option<u64>,
    pub oom: Option<u64>,
    pub max: Option<u64>,
    pub high: Option<u64>,
    pub failcnt: Option<u64>,
}

/// Pids read at most, and groups (the group and its descendants) walked at
/// most: a group holds nginx and a few helpers; the bounds keep a reading's
/// cost flat whatever runs beside it. nginx's own are among them, so more
/// pids are read than others are listed (`nginx::container`).
pub const MAX_PIDS: usize = 4096;
pub const MAX_GROUPS: usize = 64;

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

/// The `key number` lines of a cgroup file (`memory.stat`, `memory.events`,
/// `memory.oom_control`); others are skipped.
fn key_values(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (key, value) = line.split_once(' ')?;
        Some((key, value.trim().parse().ok()?))
    })
}

/// A `memory.stat`'s figures. v1 counts pages of this group only in its
/// plain names and of the group with its children in `total_` ones; usage
/// counts the children too, so the `total_` ones are read.
pub fn parse_stat(text: &str, version: u8) -> MemoryStat {
    let mut stat = MemoryStat::default();
    for (key, value) in key_values(text) {
        let slot = match (version, key) {
            (1, "total_rss") | (2, "anon") => &mut stat.anon,
            (1, "total_cache") | (2, "file") => &mut stat.file,
            (1, "total_active_file") | (2, "active_file") => &mut stat.active_file,
            (1, "total_inactive_file") | (2, "inactive_file") => &mut stat.inactive_file,
            (1, "total_shmem") | (2, "shmem") => &mut stat.shmem,
            (1, "total_mapped_file") | (2, "file_mapped") => &mut stat.file_mapped,
            (1, "total_swap") => &mut stat.swap,
            (1, "hierarchical_memory_limit") => {
                stat.hierarchical_limit = (value < V1_UNLIMITED_FROM).then_some(value);
                continue;
            }
            (2, "kernel") => &mut stat.kernel,
            (2, "kernel_stack") => &mut stat.kernel_stack,
            (2, "pagetables") => &mut stat.pagetables,
            (2, "slab_reclaimable") => &mut stat.slab_reclaimable,
            (2, "slab_unreclaimable") => &mut stat.slab_unreclaimable,
            (2, "sock") => &mut stat.sock,
            _ => continue,
        };
        *slot = Some(value);
    }
    stat
}

/// v2 `memory.events` (`oom_kill 3`, one per line) or v1 `memory.oom_control`
/// (the same shape; only `oom_kill` is an event there).
pub fn parse_events(text: &str, version: u8) -> MemoryEvents {
    let mut events = MemoryEvents::default();
    for (key, value) in key_values(text) {
        let slot = match (version, key) {
            (_, "oom_kill") => &mut events.oom_kill,
            (2, "oom") => &mut events.oom,
            (2, "max") => &mut events.max,
            (2, "high") => &mut events.high,
            _ => continue,
        };
        *slot = Some(value);
    }
    events
}

/// `cgroup.procs`: one pid a line, added to `pids` up to `MAX_PIDS`; whether
/// some were left out.
pub fn parse_pids(text: &str, pids: &mut Vec<u32>) -> bool {
    for pid in text.lines().filter_map(|l| l.trim().parse().ok()) {
        if pids.len() == MAX_PIDS || pids.try_reserve(1).is_err() {
            return true;
        }
        pids.push(pid);
    }
    false
}

/// The pids of the group in `dir` and of its descendants, breadth first, at
/// most `MAX_GROUPS` groups and `MAX_PIDS` pids; whether some were left out.
fn group_pids(dir: &str) -> (Vec<u32>, bool) {
    let mut pids = Vec::new();
    let mut groups = std::collections::VecDeque::from([dir.to_string()]);
    let mut walked = 0;
    let mut truncated = false;
    while let Some(group) = groups.pop_front() {
        if walked == MAX_GROUPS || crate::alloc_guard::short() {
            return (pids, true);
        }
        walked += 1;
        let procs =
            crate::sources::procfs::read_proc_file(&format!("{group}/cgroup.procs"), 4 << 10);
        truncated |= parse_pids(&procs.unwrap_or_default(), &mut pids);
        let children = std::fs::read_dir(&group).into_iter().flatten().flatten();
        groups.extend(
            children
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path().to_string_lossy().into_owned())
                .take(MAX_GROUPS),
        );
    }
    (pids, truncated)
}

type Reading = Result<Option<CgroupMemory>, SampleError>;

/// Where a memory hierarchy is mounted: its mount point, and the group of
/// the hierarchy that mount shows at its top (`/` on a host; a container's
/// own group where the runtime mounted only that, as Docker and Kubernetes
/// do on cgroup v1, or v2 without a cgroup namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HierarchyMount {
    pub version: u8,
    pub mount_point: String,
    pub root: String,
}

/// The memory hierarchies of `/proc/self/mountinfo`: `cgroup2` mounts, and
/// `cgroup` mounts with the memory controller (`ID PARENT DEV ROOT POINT
/// OPTIONS [TAGS] - TYPE SOURCE SUPER_OPTIONS`). Octal escapes (`\040` for a
/// space) in the paths are decoded.
pub fn memory_mounts(mountinfo: &str) -> Vec<HierarchyMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut tail = right.split(' ');
            let (fs_type, _source, options) = (tail.next()?, tail.next()?, tail.next()?);
            let version = match fs_type {
                "cgroup2" => 2,
                "cgroup" if options.split(',').any(|o| o == "memory") => 1,
                _ => return None,
            };
            Some(HierarchyMount {
                version,
                root: unescape_octal(fields.get(3)?),
                mount_point: unescape_octal(fields.get(4)?),
            })
        })
        .collect()
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The group's directory: the mount of its hierarchy whose top holds it (the
/// deepest such top), and the group's path below that top. `None`: no
/// mount shows the group (it lies above what this mount namespace sees).
pub fn group_dir(mounts: &[HierarchyMount], version: u8, path: &str) -> Option<(String, String)> {
    mounts
        .iter()
        .filter(|m| m.version == version)
        .filter_map(|m| {
            let root = m.root.trim_end_matches('/');
            let below = path.strip_prefix(root)?;
            (below.is_empty() || below.starts_with('/')).then_some((m, below))
        })
        .max_by_key(|(m, _)| m.root.len())
        .map(|(m, below)| {
            (
                m.mount_point.trim_end_matches('/').to_string(),
                below.to_string(),
            )
        })
}

/// Where the group's files are: the mount point, the group's path below it,
/// the version (v2 where the memory controller is on a v2 hierarchy) and
/// the group's path as `/proc/self/cgroup` names it.
fn locate(cgroup_text: &str, mountinfo: &str) -> Option<(String, String, u8, String)> {
    let (v2, v1) = groups_of(cgroup_text);
    let mounts = memory_mounts(mountinfo);
    let has_memory = |point: &str| {
        std::fs::read_to_string(format!("{point}/cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
    };
    if let Some(path) = v2 {
        if let Some((point, below)) = group_dir(&mounts, 2, path) {
            if has_memory(&point) {
                return Some((point, below, 2, path.to_string()));
            }
        }
    }
    let (point, below) = group_dir(&mounts, 1, v1?)?;
    Some((point, below, 1, v1?.to_string()))
}

/// The tightest limit of the group (`below` its mount `root`) and its
/// ancestors, and the ancestor it is on when it is not the group's own.
/// v1's `hierarchical_memory_limit` also sees ancestors above the mount.
fn binding_limit(
    root: &str,
    below: &str,
    named: &str,
    version: u8,
    hierarchical: Option<u64>,
) -> (Option<u64>, Option<LimitGroup>) {
    let (limit_file, usage_file) = match version {
        2 => ("memory.max", "memory.current"),
        _ => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    };
    let read = |dir: &str, file: &str| {
        crate::sources::procfs::read_proc_file(&format!("{root}{dir}/{file}"), 4 << 10).ok()
    };
    let own = below.trim_end_matches('/');
    let visible = ancestry(own)
        .into_iter()
        .filter_map(|dir| Some((parse_limit(&read(&dir, limit_file)?)?, dir)))
        .min_by_key(|(limit, _)| *limit);
    match (visible, hierarchical) {
        (None, None) => (None, None),
        (Some((limit, dir)), h) if h.map_or(true, |h| h >= limit) => {
            if dir == own {
                return (Some(limit), None);
            }
            let prefix = named.trim_end_matches('/').strip_suffix(own).unwrap_or("");
            let stat = parse_stat(&read(&dir, "memory.stat").unwrap_or_default(), version);
            let group = LimitGroup {
                path: Some(format!("{prefix}{dir}")),
                usage_bytes: read(&dir, usage_file).and_then(|t| t.trim().parse().ok()),
                inactive_file_bytes: stat.inactive_file,
            };
            (Some(limit), Some(group))
        }
        (_, h) => (h, Some(LimitGroup::default())),
    }
}

/// This process's memory cgroup; `None` where no memory controller is
/// mounted. A file the kernel does not have leaves its figure `None`.
pub fn read_own() -> Reading {
    let read_proc = |file: &'static str| {
        crate::sources::procfs::read_proc_file(file, 4 << 10)
            .map_err(|e| SampleError::file(file, &e))
    };
    let text = read_proc("/proc/self/cgroup")?;
    let mountinfo = read_proc("/proc/self/mountinfo")?;
    let Some((root, path, version, named)) = locate(&text, &mountinfo) else {
        return Ok(None);
    };
    let dir = format!("{root}{}", path.trim_end_matches('/'));
    let read_in = |dir: &str, file: &str| {
        crate::sources::procfs::read_proc_file(&format!("{dir}/{file}"), 4 << 10).ok()
    };
    let read = |file: &str| read_in(&dir, file);
    let number = |file: &str| read(file).and_then(|t| t.trim().parse::<u64>().ok());

    // Usage is read last of the charge's files, so the parts read before it
    // are at most as old as it.
    let stat = parse_stat(&read("memory.stat").unwrap_or_default(), version);
    let (limit_bytes, limit_group) =
        binding_limit(&root, &path, &named, version, stat.hierarchical_limit);
    let (pids, pids_truncated) = group_pids(&dir);
    let mut cg = CgroupMemory {
        version,
        limit_bytes,
        limit_group,
        stat,
        pids,
        pids_truncated,
        ..CgroupMemory::default()
    };
    if version == 2 {
        cg.events = parse_events(&read("memory.events").unwrap_or_default(), 2);
        cg.peak_bytes = number("memory.peak");
        cg.swap_bytes = number("memory.swap.current");
        cg.usage_bytes = number("memory.current");
    } else {
        cg.events = parse_events(&read("memory.oom_control").unwrap_or_default(), 1);
        cg.events.failcnt = number("memory.failcnt");
        cg.peak_bytes = number("memory.max_usage_in_bytes");
        cg.swap_bytes = stat.swap;
        cg.kmem_bytes = number("memory.kmem.usage_in_bytes");
        // Accounting is on once a limit was written: before, the kernel
        // counts nothing there and the figure would read as a true zero.
        let tcp_on = read("memory.kmem.tcp.limit_in_bytes")
            .and_then(|t| parse_limit(&t))
            .is_some()
            || number("memory.kmem.tcp.max_usage_in_bytes").is_some_and(|n| n > 0);
        cg.tcp_outside_usage_bytes = tcp_on
            .then(|| number("memory.kmem.tcp.usage_in_bytes"))
            .flatten();
        cg.usage_bytes = number("memory.usage_in_bytes");
    }
    cg.path = named;
    cg.dir = dir;
    Ok(Some(cg))
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

    /// Recorded from a v1 group of this machine (kernel 6.18), shortened.
    const V1_STAT: &str = "cache 1149857792\nrss 1990656\nshmem 0\nmapped_file 413696\n\
        inactive_file 756543488\nactive_file 393310208\nhierarchical_memory_limit 9223372036854771712\n\
        total_cache 1149857793\ntotal_rss 1990657\ntotal_shmem 4096\ntotal_mapped_file 413697\n\
        total_swap 0\ntotal_inactive_anon 1806336\ntotal_inactive_file 756543489\n\
        total_active_file 393310209\ntotal_unevictable 0\n";

    /// In the format of the kernel's cgroup-v2 documentation (6.x field set).
    const V2_STAT: &str = "anon 110592000\nfile 209715200\nkernel 12582912\n\
        kernel_stack 1048576\npagetables 2097152\nsec_pagetables 0\npercpu 262144\n\
        sock 4194304\nvmalloc 0\nshmem 8388608\nzswap 0\nfile_mapped 16777216\n\
        file_dirty 0\nfile_writeback 0\nanon_thp 0\ninactive_anon 110592000\n\
        active_anon 0\ninactive_file 104857600\nactive_file 104857600\nunevictable 0\n\
        slab_reclaimable 6291456\nslab_unreclaimable 2097152\nslab 8388608\n";

    #[test]
    fn v1_stat_reads_the_hierarchical_totals() {
        let s = parse_stat(V1_STAT, 1);
        assert_eq!(s.anon, Some(1990657));
        assert_eq!(s.file, Some(1149857793));
        assert_eq!(s.shmem, Some(4096));
        assert_eq!(s.file_mapped, Some(413697));
        assert_eq!(s.inactive_file, Some(756543489));
        assert_eq!(s.active_file, Some(393310209));
        assert_eq!(s.swap, Some(0));
        assert_eq!(s.hierarchical_limit, None, "v1's no limit");
        assert_eq!((s.kernel, s.sock, s.slab_reclaimable), (None, None, None));
        let limited = parse_stat("hierarchical_memory_limit 536870912\n", 1);
        assert_eq!(limited.hierarchical_limit, Some(512 << 20));
    }

    #[test]
    fn v2_stat_reads_its_own_names() {
        let s = parse_stat(V2_STAT, 2);
        assert_eq!(s.anon, Some(110592000));
        assert_eq!(s.file, Some(209715200));
        assert_eq!(s.kernel, Some(12582912));
        assert_eq!(s.kernel_stack, Some(1 << 20));
        assert_eq!(s.pagetables, Some(2 << 20));
        assert_eq!(s.sock, Some(4 << 20));
        assert_eq!(s.shmem, Some(8 << 20));
        assert_eq!(s.file_mapped, Some(16 << 20));
        assert_eq!(
            (s.slab_reclaimable, s.slab_unreclaimable),
            (Some(6 << 20), Some(2 << 20))
        );
        assert_eq!(
            (s.active_file, s.inactive_file),
            (Some(100 << 20), Some(100 << 20))
        );
        // A v1 name in a v2 file is not read, nor the other way round.
        assert_eq!(parse_stat("total_rss 5\n", 2).anon, None);
        assert_eq!(parse_stat("anon 5\n", 1).anon, None);
    }

    #[test]
    fn events_of_both_versions() {
        let v2 = parse_events(
            "low 0\nhigh 7\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n",
            2,
        );
        assert_eq!(
            (v2.high, v2.max, v2.oom, v2.oom_kill),
            (Some(7), Some(12), Some(2), Some(1))
        );
        let v1 = parse_events("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", 1);
        assert_eq!((v1.oom_kill, v1.oom, v1.max), (Some(3), None, None));
    }

    /// A host's v1 hierarchies, and a container's where the runtime mounted
    /// only its own group at the top (Docker, Kubernetes on v1).
    const HOST_MOUNTS: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
        35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n";
    const DOCKER_MOUNTS: &str = "612 603 0:32 /docker/4f1e /sys/fs/cgroup/memory ro,nosuid master:15 - cgroup cgroup rw,memory\n\
        613 603 0:33 /docker/4f1e /sys/fs/cgroup/cpu,cpuacct ro,nosuid master:16 - cgroup cgroup rw,cpu,cpuacct\n";
    const V2_MOUNTS: &str =
        "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n\
        40 29 0:40 /kubepods.slice /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";

    #[test]
    fn mounts_of_the_memory_hierarchies() {
        let host = memory_mounts(HOST_MOUNTS);
        assert_eq!(host.len(), 1);
        assert_eq!((host[0].version, host[0].root.as_str()), (1, "/"));
        assert_eq!(host[0].mount_point, "/sys/fs/cgroup/memory");
        let v2 = memory_mounts(V2_MOUNTS);
        assert_eq!(v2.len(), 2);
        assert_eq!(v2[1].mount_point, "/mnt/with space");
        assert_eq!(v2[1].root, "/kubepods.slice");
    }

    #[test]
    fn the_group_below_its_mount() {
        let host = memory_mounts(HOST_MOUNTS);
        assert_eq!(
            group_dir(&host, 1, "/docker/4f1e"),
            Some(("/sys/fs/cgroup/memory".into(), "/docker/4f1e".into()))
        );
        // In the container, /proc/self/cgroup names the host's path, and the
        // mount's top is that very group.
        let docker = memory_mounts(DOCKER_MOUNTS);
        assert_eq!(
            group_dir(&docker, 1, "/docker/4f1e"),
            Some(("/sys/fs/cgroup/memory".into(), "".into()))
        );
        assert_eq!(
            group_dir(&docker, 1, "/docker/4f1e/sub"),
            Some(("/sys/fs/cgroup/memory".into(), "/sub".into()))
        );
        // Not below the top: neither a sibling nor a name that only begins alike.
        assert_eq!(group_dir(&docker, 1, "/docker/other"), None);
        assert_eq!(group_dir(&docker, 1, "/docker/4f1e2"), None);
        assert_eq!(group_dir(&docker, 2, "/docker/4f1e"), None);
        // The deepest top that holds the group wins.
        let v2 = memory_mounts(V2_MOUNTS);
        assert_eq!(
            group_dir(&v2, 2, "/kubepods.slice/pod1"),
            Some(("/mnt/with space".into(), "/pod1".into()))
        );
        assert_eq!(
            group_dir(&v2, 2, "/system.slice"),
            Some(("/sys/fs/cgroup".into(), "/system.slice".into()))
        );
    }

    #[test]
    fn pids_are_bounded() {
        let mut pids = vec![1];
        assert!(!parse_pids("12\n34\n", &mut pids));
        assert_eq!(pids, [1, 12, 34]);
        let many: String = (1..=MAX_PIDS as u32 + 5)
            .map(|p| format!("{p}\n"))
            .collect();
        assert!(parse_pids(&many, &mut pids));
        assert_eq!(pids.len(), MAX_PIDS);
    }
}
