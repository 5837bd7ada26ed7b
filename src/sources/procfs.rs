//! Parsers for the kernel's `/proc` files. Pure functions over text, so they are
//! unit-tested on captured samples without nginx. One parser per source.

use crate::alloc_guard::{self, TryPush};
use crate::model::process::ProcessMemory;
use std::sync::Arc;

/// How a `/proc/PID/status` value is written.
#[derive(Clone, Copy)]
enum StatusUnit {
    Kib,
    Count,
}

/// Where a status key's value goes.
type StatusSlot = fn(&mut ProcessMemory) -> &mut Option<u64>;

/// The status keys we read, their unit, and where each goes.
const STATUS_FIELDS: &[(&str, StatusUnit, StatusSlot)] = &[
    ("VmSize", StatusUnit::Kib, |s| &mut s.virtual_bytes),
    ("VmRSS", StatusUnit::Kib, |s| &mut s.resident_bytes),
    ("RssAnon", StatusUnit::Kib, |s| &mut s.resident_anon_bytes),
    ("RssFile", StatusUnit::Kib, |s| &mut s.resident_file_bytes),
    ("RssShmem", StatusUnit::Kib, |s| &mut s.resident_shmem_bytes),
    ("VmSwap", StatusUnit::Kib, |s| &mut s.swap_bytes),
    ("VmPeak", StatusUnit::Kib, |s| &mut s.peak_virtual_bytes),
    ("VmHWM", StatusUnit::Kib, |s| &mut s.peak_resident_bytes),
    ("Threads", StatusUnit::Count, |s| &mut s.threads),
];

impl ProcessMemory {
    /// Parses the text of `/proc/PID/status`. Returns the counters found and the
    /// names of the keys that were missing or malformed (those stay `None`).
    pub fn parse(text: &str) -> (ProcessMemory, Vec<&'static str>) {
        let mut status = ProcessMemory::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let Some((_, unit, field)) = STATUS_FIELDS.iter().find(|(k, _, _)| *k == key) else {
                continue;
            };
            *field(&mut status) = parse_status_value(value, *unit);
        }
        let mut unreadable = Vec::new();
        for (key, _, field) in STATUS_FIELDS {
            if field(&mut status).is_none() {
                unreadable.push(*key);
            }
        }
        (status, unreadable)
    }
}

fn parse_status_value(value: &str, unit: StatusUnit) -> Option<u64> {
    let mut words = value.split_whitespace();
    let number: u64 = words.next()?.parse().ok()?;
    match (unit, words.next(), words.next()) {
        (StatusUnit::Kib, Some("kB"), None) => number.checked_mul(1024),
        (StatusUnit::Count, None, None) => Some(number),
        _ => None,
    }
}

/// Reads a `/proc` file whole, in few large reads: the kernel builds these
/// files as they are read, and `read_to_string`'s small first reads cost a
/// trip each.
/// Its buffer grows fallibly: a file as big as the process is large (smaps of
/// a grown heap) gives an error when memory is short, never an abort.
pub fn read_proc_file(path: &str, size_hint: usize) -> std::io::Result<String> {
    String::from_utf8(read_proc_bytes(path, size_hint)?)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))
}

/// `read_proc_file`'s bytes, for files whose text need not be UTF-8 (a
/// process's name).
pub fn read_proc_bytes(path: &str, size_hint: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let out_of_memory = |_| std::io::Error::from(std::io::ErrorKind::OutOfMemory);
    let mut file = std::fs::File::open(path)?;
    let mut bytes: Vec<u8> = Vec::new();
    bytes
        .try_reserve(size_hint.max(4096))
        .map_err(out_of_memory)?;
    // The kernel fills a page or so per read. The buffer is zeroed (safe
    // Rust reads only into initialised bytes) a step ahead of what is read,
    // each byte once: its unused capacity never becomes resident, and a read
    // costs no clearing of the whole rest of the buffer.
    const STEP_BYTES: usize = 16 << 10;
    // The buffer grows only when every byte of it is filled (the read that
    // finds the end needs room, not a page of it).
    const PAGE_BYTES: usize = 4096;
    let mut filled = 0;
    loop {
        if filled == bytes.capacity() {
            bytes.try_reserve(bytes.capacity()).map_err(out_of_memory)?;
        }
        if bytes.len() - filled < PAGE_BYTES && bytes.len() < bytes.capacity() {
            let more = STEP_BYTES.min(bytes.capacity() - bytes.len());
            bytes.resize(bytes.len() + more, 0);
        }
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// One line of `/proc/PID/maps`: a mapping of the address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s`: shared; `p`: private (copy on write).
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// The file, or a pseudo-name like `[heap]`, `[stack]`, `/dev/zero (deleted)`;
    /// empty for anonymous memory. Shared by the file's consecutive
    /// mappings (a library has four or five): one allocation per file, not
    /// per line, at every answer.
    pub path: Arc<str>,
}

impl Mapping {
    pub fn size_bytes(&self) -> u64 {
        self.end - self.start
    }

    /// Parses `/proc/PID/maps`. Malformed lines are skipped and counted. Short
    /// of memory, it stops early (the measuring is then given up).
    pub fn parse_all(text: &str) -> (Vec<Mapping>, usize) {
        let mut maps: Vec<Mapping> = Vec::new();
        let mut malformed = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let previous = maps.last().map(|m| &m.path);
            match Mapping::parse_line_after(line, previous) {
                Some(m) => {
                    if maps.try_push(m).is_err() || alloc_guard::short() {
                        break;
                    }
                }
                None => malformed += 1,
            }
        }
        (maps, malformed)
    }

    /// One line: `start-end perms offset dev inode [path]`; the path may hold
    /// spaces. Fields found by a byte scan and hex read by hand: every answer
    /// parses the whole file (12% less time than `trim_start`/`find` and
    /// `from_str_radix` on a real maps file).
    pub fn parse_line(line: &str) -> Option<Mapping> {
        Mapping::parse_line_after(line, None)
    }

    /// `parse_line`, its path shared with the line before's when the same.
    fn parse_line_after(line: &str, previous: Option<&Arc<str>>) -> Option<Mapping> {
        let (range, rest) = next_field(line)?;
        let (perms, rest) = next_field(rest)?;
        let (offset, rest) = next_field(rest)?;
        let (_dev, rest) = next_field(rest)?;
        let (inode, rest) = next_field(rest)?;
        let path = skip_blanks(rest);
        let path = match previous {
            Some(p) if **p == *path => p.clone(),
            // Anonymous memory: the empty path, which allocates nothing.
            _ if path.is_empty() => Arc::default(),
            _ => Arc::from(path),
        };

        let (start, end) = range.split_once('-')?;
        let (start, end) = (parse_hex(start)?, parse_hex(end)?);
        let perms = perms.as_bytes();
        if end < start || perms.len() != 4 {
            return None;
        }
        Some(Mapping {
            start,
            end,
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
            offset: parse_hex(offset)?,
            inode: inode.parse().ok()?,
            path,
        })
    }
}

/// The last `/proc/self/maps` text parsed and its mappings: a worker's
/// mappings seldom change between two answers (in the bench's steady state,
/// 150 reads 20 ms apart gave one text), and the same text parses to the same
/// mappings, so an unchanged text is not parsed again.
#[derive(Default)]
pub struct MapsCache {
    text: String,
    maps: Vec<Mapping>,
}

impl MapsCache {
    /// Texts longer than this are parsed and not kept: the cache then holds
    /// at most this much text and about as much of mappings.
    pub const MAX_TEXT_BYTES: usize = 256 << 10;

    /// The mappings of `text`: a copy of the kept ones when it is the text
    /// parsed last. Short of memory it gives what it could make (the
    /// failure is counted and the measuring given up, as `parse_all`'s).
    pub fn parse(&mut self, text: String) -> Vec<Mapping> {
        if !self.text.is_empty() && self.text == text {
            let mut copy = Vec::new();
            if copy.try_reserve_exact(self.maps.len()).is_ok() {
                copy.extend(self.maps.iter().cloned());
            }
            return copy;
        }
        let maps = Mapping::parse_all(&text).0;
        *self = MapsCache::default();
        if text.len() <= Self::MAX_TEXT_BYTES {
            let mut kept = Vec::new();
            if kept.try_reserve_exact(maps.len()).is_ok() {
                kept.extend(maps.iter().cloned());
                *self = MapsCache { text, maps: kept };
            }
        }
        maps
    }
}

fn skip_blanks(s: &str) -> &str {
    let start = s
        .bytes()
        .position(|b| b != b' ' && b != b'\t')
        .unwrap_or(s.len());
    &s[start..]
}

/// The next space-separated field after any blanks, and what follows it.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = skip_blanks(s);
    let end = s.bytes().position(|b| b == b' ').unwrap_or(s.len());
    (end > 0).then(|| s.split_at(end))
}

/// A hexadecimal number of at most 16 digits, no sign or prefix.
fn parse_hex(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.bytes().try_fold(0u64, |value, b| {
        let digit = (b as char).to_digit(16)?;
        Some(value << 4 | u64::from(digit))
    })
}

/// One mapping of `/proc/PID/smaps`: the maps line and the page-table walk's
/// counts for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmapsEntry {
    pub mapping: Mapping,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// Private anonymous pages, including copied-on-write pages of file mappings.
    pub anonymous_bytes: u64,
    pub swap_bytes: u64,
}

impl SmapsEntry {
    /// Parses `/proc/PID/smaps`. A mapping whose header or counts are malformed
    /// is skipped and counted. Short of memory, it stops early (the measuring
    /// is then given up).
    pub fn parse_all(text: &str) -> (Vec<SmapsEntry>, usize) {
        let mut entries: Vec<SmapsEntry> = Vec::new();
        let mut malformed = 0;
        let mut current: Option<(Mapping, [Option<u64>; 4])> = None;
        // Whether to go on: false once memory is short.
        let mut finish = |current: Option<(Mapping, [Option<u64>; 4])>, malformed: &mut usize| {
            if let Some((mapping, [Some(rss), Some(pss), Some(anon), Some(swap)])) = current {
                let entry = SmapsEntry {
                    mapping,
                    rss_bytes: rss,
                    pss_bytes: pss,
                    anonymous_bytes: anon,
                    swap_bytes: swap,
                };
                return entries.try_push(entry).is_ok() && !alloc_guard::short();
            }
            if current.is_some() {
                *malformed += 1;
            }
            true
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            let key = line.split_once(':').map(|(k, _)| k);
            let slot = match key {
                Some("Rss") => Some(0),
                Some("Pss") => Some(1),
                Some("Anonymous") => Some(2),
                Some("Swap") => Some(3),
                _ => None,
            };
            match (slot, &mut current) {
                (Some(i), Some((_, counts))) => {
                    let value = line.split_once(':').map(|(_, v)| v).unwrap_or("");
                    counts[i] = parse_status_value(value, StatusUnit::Kib);
                }
                (Some(_), None) => malformed += 1,
                (None, _)
                    if key.is_some_and(|k| {
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    }) => {}
                (None, _) => {
                    if !finish(current.take(), &mut malformed) {
                        break;
                    }
                    match Mapping::parse_line(line) {
                        Some(m) => current = Some((m, [None; 4])),
                        None => malformed += 1,
                    }
                }
            }
        }
        finish(current.take(), &mut malformed);
        (entries, malformed)
    }
}

/// `/proc/net/sockstat`'s TCP line (`TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3`):
/// sockets in use and TCP buffer memory in pages.
pub fn parse_sockstat_tcp(text: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("TCP:")) else {
        return (None, None);
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |key: &str| {
        let i = words.iter().position(|w| *w == key)?;
        words.get(i + 1)?.parse().ok()
    };
    (value("inuse"), value("mem"))
}

/// `/proc/PID/statm`'s resident and shared pages (`size resident shared text
/// lib data dt`). Shared is the process's file and shmem pages, so resident
/// less shared is its `RssAnon`, from the same counters `status` reads, at a
/// fraction of `status`'s cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatmPages {
    pub resident: u64,
    pub shared: u64,
}

pub fn parse_statm(text: &str) -> Option<StatmPages> {
    let mut words = text
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse::<u64>().ok());
    let resident = words.next()??;
    let shared = words.next()??;
    (shared <= resident).then_some(StatmPages { resident, shared })
}

/// The stack pointer of a thread blocked in a system call, from
/// `/proc/PID/task/TID/syscall` (`NR args... SP PC`); `None` while it runs.
pub fn parse_syscall_stack_pointer(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 3 || fields[0] == "running" {
        return None;
    }
    let sp = fields[fields.len() - 2].strip_prefix("0x")?;
    u64::from_str_radix(sp, 16).ok()
}

/// Whether `/proc/swaps` lists a swap device (beyond its header line).
pub fn swaps_active(text: &str) -> bool {
    text.lines().filter(|l| !l.trim().is_empty()).count() > 1
}

#[cfg(test)]
mod tests {

    #[test]
    fn statm_resident_and_shared() {
        let pages = parse_statm("12005 2931 1022 280 0 1391 0\n");
        assert_eq!(
            pages,
            Some(StatmPages {
                resident: 2931,
                shared: 1022
            })
        );
        assert_eq!(parse_statm("12005 2931"), None);
        assert_eq!(parse_statm("12005 10 11 0 0 0 0"), None);
        assert_eq!(parse_statm(""), None);
    }
    use super::*;

    #[test]
    fn a_files_consecutive_mappings_share_its_path() {
        let text = "\
55d0-55d1 r--p 00000000 08:01 11 /usr/sbin/nginx
55d1-55d2 r-xp 00001000 08:01 11 /usr/sbin/nginx
55d2-55d3 rw-p 00000000 00:00 0
55d3-55d4 rw-p 00002000 08:01 11 /usr/sbin/nginx
55d4-55d5 r--p 00000000 08:01 12 /usr/lib/libz.so
";
        let (maps, malformed) = Mapping::parse_all(text);
        assert_eq!(malformed, 0);
        let paths: Vec<&str> = maps.iter().map(|m| m.path.as_ref()).collect();
        assert_eq!(
            paths,
            [
                "/usr/sbin/nginx",
                "/usr/sbin/nginx",
                "",
                "/usr/sbin/nginx",
                "/usr/lib/libz.so"
            ]
        );
        assert!(Arc::ptr_eq(&maps[0].path, &maps[1].path));
        assert!(!Arc::ptr_eq(&maps[1].path, &maps[3].path));
        assert_eq!(
            maps[3],
            Mapping::parse_line(text.lines().nth(3).unwrap()).unwrap()
        );
    }

    #[test]
    fn a_file_read_whole_whatever_its_size_against_the_hint() {
        let dir = std::env::temp_dir().join(format!("ms-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0usize, 1, 4095, 4096, 16 << 10, (16 << 10) + 1, 200_000] {
            let path = dir.join(format!("f{len}"));
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            for hint in [0, 100, 4096, 1 << 20] {
                let got = read_proc_bytes(path.to_str().unwrap(), hint).unwrap();
                assert_eq!(got, data, "len {len} hint {hint}");
                // A file shorter than the room made first never grows it.
                if len < hint.max(4096) {
                    assert_eq!(got.capacity(), hint.max(4096), "len {len} hint {hint}");
                }
            }
        }
        let maps = read_proc_bytes("/proc/self/maps", 0).unwrap();
        assert!(maps.ends_with(b"\n") && maps.len() > 1000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn swaps_listed() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swaps_active(header));
        assert!(!swaps_active(""));
        assert!(swaps_active(&format!(
            "{header}/swapfile                               file\t\t262140\t\t0\t\t-2\n"
        )));
    }

    const WORKER_SAMPLE: &str = include_str!("../../testdata/proc_status_nginx_worker.txt");

    #[test]
    fn parses_a_real_worker_status() {
        let (status, unreadable) = ProcessMemory::parse(WORKER_SAMPLE);
        assert!(unreadable.is_empty(), "{unreadable:?}");
        assert_eq!(status.virtual_bytes, Some(11_984 * 1024));
        assert_eq!(status.resident_bytes, Some(4_384 * 1024));
        assert_eq!(status.resident_anon_bytes, Some(1_044 * 1024));
        assert_eq!(status.resident_file_bytes, Some(3_336 * 1024));
        assert_eq!(status.resident_shmem_bytes, Some(4 * 1024));
        assert_eq!(status.swap_bytes, Some(0));
        assert_eq!(status.peak_virtual_bytes, Some(12_020 * 1024));
        assert_eq!(status.peak_resident_bytes, Some(4_384 * 1024));
        assert_eq!(status.threads, Some(1));
    }

    #[test]
    fn anon_file_and_shmem_add_up_to_rss_in_the_sample() {
        let (s, _) = ProcessMemory::parse(WORKER_SAMPLE);
        let parts = s.resident_anon_bytes.unwrap()
            + s.resident_file_bytes.unwrap()
            + s.resident_shmem_bytes.unwrap();
        assert_eq!(parts, s.resident_bytes.unwrap());
    }

    #[test]
    fn empty_input_reads_nothing_and_names_every_key() {
        let (status, unreadable) = ProcessMemory::parse("");
        assert_eq!(status, ProcessMemory::default());
        assert_eq!(unreadable.len(), STATUS_FIELDS.len());
    }

    #[test]
    fn truncated_input_keeps_what_was_whole() {
        // Cut in the middle of the VmRSS line: VmSize survives, VmRSS and later do not.
        let cut = WORKER_SAMPLE.find("VmRSS:").unwrap() + "VmRSS:\t  ".len();
        let (status, unreadable) = ProcessMemory::parse(&WORKER_SAMPLE[..cut]);
        assert_eq!(status.virtual_bytes, Some(11_984 * 1024));
        assert_eq!(status.resident_bytes, None);
        assert!(unreadable.contains(&"VmRSS"));
        assert!(unreadable.contains(&"Threads"));
        assert!(!unreadable.contains(&"VmSize"));
    }

    #[test]
    fn garbage_values_are_rejected_not_misread() {
        let text =
            "VmSize:\tlots kB\nVmRSS:\t12 MB\nVmSwap:\t-1 kB\nThreads:\t2 kB\nVmHWM: 5 kB extra\n\
                    RssAnon:\t99999999999999999999999 kB\n";
        let (status, unreadable) = ProcessMemory::parse(text);
        assert_eq!(status, ProcessMemory::default());
        for key in ["VmSize", "VmRSS", "VmSwap", "Threads", "VmHWM", "RssAnon"] {
            assert!(unreadable.contains(&key), "{key}");
        }
    }

    #[test]
    fn binary_garbage_does_not_panic() {
        let junk: String = (0u8..=255).map(|b| b as char).cycle().take(4096).collect();
        let (_, unreadable) = ProcessMemory::parse(&junk);
        assert_eq!(unreadable.len(), STATUS_FIELDS.len());
    }

    #[test]
    fn overflowing_kib_is_rejected() {
        let (status, _) = ProcessMemory::parse("VmSize:\t18446744073709551615 kB\n");
        assert_eq!(status.virtual_bytes, None);
    }

    const MAPS_SAMPLE: &str = include_str!("../../testdata/proc_maps_nginx_worker.txt");

    #[test]
    fn parses_a_real_worker_maps() {
        let (maps, malformed) = Mapping::parse_all(MAPS_SAMPLE);
        assert_eq!(malformed, 0);
        assert!(maps.len() > 50);
        let nginx_text = maps
            .iter()
            .find(|m| m.path.as_ref() == "/usr/sbin/nginx" && m.exec)
            .expect("nginx text mapping");
        assert!(nginx_text.read && !nginx_text.write && !nginx_text.shared);
        assert!(nginx_text.size_bytes() > 0);
        assert!(maps.iter().any(|m| m.path.as_ref() == "[stack]"));
        assert!(maps
            .iter()
            .any(|m| m.path.as_ref() == "/dev/zero (deleted)" && m.shared));
        assert!(maps.iter().any(|m| m.path.is_empty() && m.write));
    }

    #[test]
    fn maps_line_fields() {
        let (maps, _) = Mapping::parse_all(
            "7f0000001000-7f0000003000 r-xp 00002000 fe:00 247030                     /usr/lib/a b.so\n",
        );
        assert_eq!(
            maps[0],
            Mapping {
                start: 0x7f00_0000_1000,
                end: 0x7f00_0000_3000,
                read: true,
                write: false,
                exec: true,
                shared: false,
                offset: 0x2000,
                inode: 247_030,
                path: "/usr/lib/a b.so".into(),
            }
        );
    }

    #[test]
    fn maps_garbage_is_counted_not_misread() {
        let text = "zz-10 r-xp 0 0:0 0\n10-5 r-xp 0 0:0 0 x\n10-20 rw 0 0:0 0\n10-20\n\n";
        let (maps, malformed) = Mapping::parse_all(text);
        assert!(maps.is_empty());
        assert_eq!(malformed, 4);
        let cut = &MAPS_SAMPLE[..MAPS_SAMPLE.len() / 2];
        let (maps, malformed) = Mapping::parse_all(cut);
        assert!(!maps.is_empty());
        assert!(malformed <= 1);
    }

    #[test]
    fn maps_cache_gives_what_a_parse_gives() {
        let mut cache = MapsCache::default();
        let full = Mapping::parse_all(MAPS_SAMPLE).0;
        let half_text = &MAPS_SAMPLE[..MAPS_SAMPLE.rfind("\n7f").unwrap() + 1];
        let half = Mapping::parse_all(half_text).0;
        assert_ne!(full, half);
        // Parsed, then copied while the text stays; a changed text is parsed
        // anew, and the text before it is no longer taken for the kept one.
        for (text, expected) in [
            (MAPS_SAMPLE, &full),
            (MAPS_SAMPLE, &full),
            (half_text, &half),
            (half_text, &half),
            (MAPS_SAMPLE, &full),
            ("", &Vec::new()),
            ("", &Vec::new()),
            (MAPS_SAMPLE, &full),
        ] {
            assert_eq!(&cache.parse(text.to_string()), expected);
        }
        // Too long a text is parsed, not kept.
        let long = MAPS_SAMPLE.repeat(MapsCache::MAX_TEXT_BYTES / MAPS_SAMPLE.len() + 1);
        let parsed = cache.parse(long.clone());
        assert_eq!(parsed.len(), full.len() * (long.len() / MAPS_SAMPLE.len()));
        assert!(cache.text.is_empty() && cache.maps.is_empty());
        assert_eq!(cache.parse(long), parsed);
    }

    const SMAPS_SAMPLE: &str = include_str!("../../testdata/proc_smaps_nginx_worker.txt");

    #[test]
    fn maps_byte_scan_edges() {
        // No final newline, a huge number, a path that is only a pseudo-name.
        let text = "10-20 rw-p 0 00:00 0    [heap]\n\n30-40 r--s 10 00:01 7";
        let (maps, malformed) = Mapping::parse_all(text);
        assert_eq!(malformed, 0);
        assert_eq!(maps.len(), 2);
        assert_eq!(
            (maps[0].path.as_ref(), maps[1].path.as_ref()),
            ("[heap]", "")
        );
        assert!(maps[1].shared && maps[1].read && !maps[1].write);
        assert_eq!((maps[1].offset, maps[1].inode), (0x10, 7));
        // 17 hexadecimal digits overflow; a sign or a non-digit is not a number.
        for bad in [
            "10000000000000000-20000000000000000 r--p 0 0:0 0",
            "+10-20 r--p 0 0:0 0",
            "10-2g r--p 0 0:0 0",
            "10-20 r--p -1 0:0 0",
        ] {
            assert_eq!(Mapping::parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn parses_a_real_worker_smaps() {
        let (entries, malformed) = SmapsEntry::parse_all(SMAPS_SAMPLE);
        assert_eq!(malformed, 0);
        let (maps, _) = Mapping::parse_all(
            &SMAPS_SAMPLE
                .lines()
                .filter(|l| Mapping::parse_line(l).is_some())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert_eq!(entries.len(), maps.len());
        // The capture's Rss adds up to its VmRSS (4872 kB).
        let rss: u64 = entries.iter().map(|e| e.rss_bytes).sum();
        assert_eq!(rss, 4872 * 1024);
        let text = entries
            .iter()
            .find(|e| e.mapping.path.as_ref() == "/usr/sbin/nginx" && e.mapping.exec)
            .unwrap();
        assert_eq!(text.mapping.size_bytes(), 768 * 1024);
        assert_eq!(text.rss_bytes, 276 * 1024);
        assert!(entries.iter().all(|e| e.pss_bytes <= e.rss_bytes));
    }

    #[test]
    fn smaps_truncated_or_garbage() {
        let cut = &SMAPS_SAMPLE[..SMAPS_SAMPLE.find("Pss:").unwrap() + 3];
        let (entries, malformed) = SmapsEntry::parse_all(cut);
        assert!(entries.is_empty());
        assert!(malformed >= 1);
        let (entries, malformed) = SmapsEntry::parse_all("Rss: 4 kB\ngarbage line here\n");
        assert!(entries.is_empty());
        assert_eq!(malformed, 2);
        assert_eq!(SmapsEntry::parse_all(""), (vec![], 0));
    }

    #[test]
    fn syscall_stack_pointer() {
        let blocked =
            "232 0xd 0x565071343410 0x200 0xffffffff 0xc507a 0x0 0x7ffea80996f8 0x7f3980b26ef3\n";
        assert_eq!(parse_syscall_stack_pointer(blocked), Some(0x7ffe_a809_96f8));
        assert_eq!(parse_syscall_stack_pointer("running\n"), None);
        assert_eq!(
            parse_syscall_stack_pointer("-1 0x7ffea80996f8 0x7f3980b26ef3\n"),
            Some(0x7ffe_a809_96f8)
        );
        assert_eq!(parse_syscall_stack_pointer(""), None);
        assert_eq!(parse_syscall_stack_pointer("232 zz 0xq 0x1"), None);
    }

    #[test]
    fn sockstat_tcp_line() {
        let text =
            "sockets: used 10\nTCP: inuse 1 orphan 0 tw 839 alloc 1 mem 7\nUDP: inuse 0 mem 0\n";
        assert_eq!(parse_sockstat_tcp(text), (Some(1), Some(7)));
        assert_eq!(parse_sockstat_tcp("sockets: used 1\n"), (None, None));
    }
}
