//! The Lua heap's walk from its roots (`?lua_largest=1`): what the walking
//! child sends back, one protocol written and read here, and what grew since
//! the worker's previous walk.
//!
//! The child writes lines of text, each field separated by one space; a path
//! is the rest of its line, already escaped by the one rule (no control
//! byte, so no line break, is left in it):
//!
//! ```text
//! vm 0
//! walk WALKED TRUNCATED(0|1) ELAPSED_US
//! type KIND COUNT BYTES
//! object KIND OWN_BYTES RETAINED_BYTES ENTRIES PATH
//! finalizer COUNT REACHED BYTES NAME
//! end
//! done
//! ```

use std::fmt::Write;

use crate::model::lua::{
    CdataFinalizer, GrownPath, LuaGrowth, LuaLargest, LuaObject, TypeCount, TypeGrowth,
};

pub use crate::model::lua::WALK_KINDS;
pub const TABLE: usize = 0;
pub const STRING: usize = 1;
pub const FUNCTION: usize = 2;
pub const USERDATA: usize = 3;
pub const THREAD: usize = 4;
pub const CDATA: usize = 5;

/// How many objects of each kind the child sends (the answer shows fewer:
/// the rest are kept to compare the next walk against).
pub const SENT_PER_KIND: usize = 100;
/// How many of each kind an answer lists, and how many grown paths.
pub const LISTED_PER_KIND: usize = 20;

/// One object among the largest of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkedObject {
    pub kind: usize,
    pub own_bytes: u64,
    /// Its own bytes and those of every object first reached through it.
    pub retained_bytes: u64,
    /// A table's keys; 0 for other kinds.
    pub entries: u64,
    pub path: String,
}

/// One VM's walk, as the child sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmWalk {
    pub walked: u64,
    pub truncated: bool,
    pub elapsed_us: u64,
    /// Count and bytes per kind, in `WALK_KINDS` order.
    pub types: [(u64, u64); 6],
    /// The largest of each kind, largest first within a kind.
    pub objects: Vec<WalkedObject>,
    /// The cdata waiting on a finalizer (`ffi.gc`), by finalizer, most
    /// bytes first.
    pub finalizers: Vec<FinalizerGroup>,
}

/// The cdata that one finalizer will free (a Lua function by its chunk and
/// line, a C function by its symbol).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalizerGroup {
    pub count: u64,
    /// Those of them the walk reached from the roots (the rest are garbage
    /// the collector has not finalized yet).
    pub reached: u64,
    pub bytes: u64,
    pub name: String,
}

/// How many finalizers an answer lists.
pub const LISTED_FINALIZERS: usize = 20;

/// Groups the same name joins into one (two C functions with no symbol, two
/// chunks whose names and lines read the same), most bytes first: a name is
/// a Prometheus label, one series each.
pub fn merge_finalizers(groups: &mut Vec<FinalizerGroup>) {
    let mut merged: Vec<FinalizerGroup> = Vec::with_capacity(groups.len());
    for g in groups.drain(..) {
        match merged.iter_mut().find(|m| m.name == g.name) {
            Some(m) => {
                m.count += g.count;
                m.reached += g.reached;
                m.bytes += g.bytes;
            }
            None => merged.push(g),
        }
    }
    merged.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.name.cmp(&b.name)));
    *groups = merged;
}

/// Both VMs' walks: index 0 the http VM's, 1 the stream VM's.
pub type Walks = [Option<VmWalk>; 2];

/// Writes `walks` as the child sends them, ending with `done`.
pub fn write_walks(walks: &Walks, out: &mut String) {
    for (vm, walk) in walks.iter().enumerate() {
        let Some(w) = walk else { continue };
        let _ = writeln!(out, "vm {vm}");
        let _ = writeln!(
            out,
            "walk {} {} {}",
            w.walked, w.truncated as u8, w.elapsed_us
        );
        for (kind, (count, bytes)) in WALK_KINDS.iter().zip(w.types) {
            let _ = writeln!(out, "type {kind} {count} {bytes}");
        }
        for o in &w.objects {
            let _ = writeln!(
                out,
                "object {} {} {} {} {}",
                WALK_KINDS[o.kind], o.own_bytes, o.retained_bytes, o.entries, o.path
            );
        }
        for f in &w.finalizers {
            let _ = writeln!(
                out,
                "finalizer {} {} {} {}",
                f.count, f.reached, f.bytes, f.name
            );
        }
        out.push_str("end\n");
    }
    out.push_str("done\n");
}

/// Reads what `write_walks` wrote; `None` unless it is whole (a child killed
/// or crashed midway sends a part, without `done`).
pub fn parse_walks(text: &str) -> Option<Walks> {
    let mut walks: Walks = [None, None];
    let mut current: Option<(usize, VmWalk)> = None;
    let mut done = false;
    for line in text.lines() {
        if done {
            return None;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, current.as_mut()) {
            ("vm", None) => {
                current = Some((
                    rest.parse().ok().filter(|&vm: &usize| vm < 2)?,
                    VmWalk::default(),
                ))
            }
            ("walk", Some((_, w))) => {
                let [walked, truncated, elapsed] = numbers(rest)?;
                (w.walked, w.truncated, w.elapsed_us) = (walked, truncated != 0, elapsed);
            }
            ("type", Some((_, w))) => {
                let (kind, counts) = rest.split_once(' ')?;
                let [count, bytes] = numbers(counts)?;
                w.types[kind_index(kind)?] = (count, bytes);
            }
            ("object", Some((_, w))) => w.objects.push(parse_object(rest)?),
            ("finalizer", Some((_, w))) => w.finalizers.push(parse_finalizer(rest)?),
            ("end", Some(_)) => {
                let (vm, w) = current.take()?;
                walks[vm] = Some(w);
            }
            ("done", None) => done = true,
            _ => return None,
        }
    }
    done.then_some(walks)
}

/// The smallest retained bytes a walk listed of a kind when its list was
/// full (an object not listed was no larger); `None` when every object of the
/// kind was listed.
fn listed_floor(walk: &VmWalk, kind: usize) -> Option<u64> {
    let listed = walk.objects.iter().filter(|o| o.kind == kind);
    (listed.clone().count() >= SENT_PER_KIND)
        .then(|| listed.map(|o| o.retained_bytes).min().unwrap_or(0))
}

/// Whether `path` leads through `outer` to something within it: a growth
/// then names the deepest path that holds most of it (`_G.blocks`, not `_G`).
fn is_within(path: &str, outer: &str) -> bool {
    path.len() > outer.len()
        && path.starts_with(outer)
        && matches!(path.as_bytes()[outer.len()], b'.' | b'[' | b' ')
}

fn kind_index(kind: &str) -> Option<usize> {
    WALK_KINDS.iter().position(|k| *k == kind)
}

fn numbers<const N: usize>(text: &str) -> Option<[u64; N]> {
    let mut out = [0; N];
    let mut words = text.split(' ');
    for slot in &mut out {
        *slot = words.next()?.parse().ok()?;
    }
    words.next().is_none().then_some(out)
}

fn parse_object(rest: &str) -> Option<WalkedObject> {
    let mut words = rest.splitn(5, ' ');
    let kind = kind_index(words.next()?)?;
    let mut number = || words.next()?.parse::<u64>().ok();
    let (own_bytes, retained_bytes, entries) = (number()?, number()?, number()?);
    Some(WalkedObject {
        kind,
        own_bytes,
        retained_bytes,
        entries,
        path: words.next()?.to_string(),
    })
}

fn parse_finalizer(text: &str) -> Option<FinalizerGroup> {
    let mut words = text.splitn(4, ' ');
    let mut number = || words.next()?.parse::<u64>().ok();
    let (count, reached, bytes) = (number()?, number()?, number()?);
    Some(FinalizerGroup {
        count,
        reached,
        bytes,
        name: words.next()?.to_string(),
    })
}

/// The answer's view of one walk: totals by kind and the largest of each.
pub fn largest(walk: &VmWalk, fork: ForkCost) -> LuaLargest {
    let listed = |kind: usize| -> Vec<LuaObject> {
        walk.objects
            .iter()
            .filter(|o| o.kind == kind)
            .take(LISTED_PER_KIND)
            .map(|o| LuaObject {
                path: o.path.clone(),
                own_bytes: o.own_bytes,
                retained_bytes: o.retained_bytes,
                entries: (kind == TABLE).then_some(o.entries),
            })
            .collect()
    };
    LuaLargest {
        walked: walk.walked,
        truncated: walk.truncated,
        elapsed_us: walk.elapsed_us,
        fork_us: fork.stall_us,
        fork_estimate_us: fork.estimate_us,
        cdata_finalizers: walk
            .finalizers
            .iter()
            .take(LISTED_FINALIZERS)
            .map(|f| CdataFinalizer {
                finalizer: f.name.clone(),
                count: f.count,
                reached: f.reached,
                bytes: f.bytes,
            })
            .collect(),
        bytes: walk.types.iter().map(|t| t.1).sum(),
        types: WALK_KINDS
            .iter()
            .zip(walk.types)
            .map(|(kind, (count, bytes))| (*kind, TypeCount { count, bytes }))
            .collect(),
        tables: listed(TABLE),
        strings: listed(STRING),
        functions: listed(FUNCTION),
        userdata: listed(USERDATA),
        threads: listed(THREAD),
        cdata: listed(CDATA),
    }
}

/// What grew between `previous` (walked `age_ms` ago) and `now`: per kind,
/// and per path among the largest objects. A path not among the previous
/// walk's largest is `new`: it counts from zero when that list held every
/// object of its kind, else from the list's smallest (it was no larger),
/// and then its entries are not known.
pub fn growth(previous: &VmWalk, now: &VmWalk, age_ms: u64) -> LuaGrowth {
    let delta = |a: u64, b: u64| a as i64 - b as i64;
    // A path two objects share (`[a table key]`) names neither: left out.
    let count = |walk: &VmWalk, o: &WalkedObject| {
        walk.objects
            .iter()
            .filter(|p| p.kind == o.kind && p.path == o.path)
            .count()
    };
    let mut paths: Vec<GrownPath> = now
        .objects
        .iter()
        .filter(|o| o.kind != STRING && count(now, o) == 1 && count(previous, o) <= 1)
        .filter_map(|o| {
            let before = previous
                .objects
                .iter()
                .find(|p| p.kind == o.kind && p.path == o.path);
            let floor = listed_floor(previous, o.kind);
            let grown = GrownPath {
                path: o.path.clone(),
                kind: WALK_KINDS[o.kind],
                retained_bytes: delta(
                    o.retained_bytes,
                    before.map_or(floor.unwrap_or(0), |p| p.retained_bytes),
                ),
                entries: match before {
                    Some(p) => (o.kind == TABLE).then(|| delta(o.entries, p.entries)),
                    None => (o.kind == TABLE && floor.is_none()).then_some(o.entries as i64),
                },
                new: before.is_none(),
            };
            (grown.retained_bytes > 0 || grown.entries.is_some_and(|e| e > 0)).then_some(grown)
        })
        .collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.retained_bytes));
    let explained = |p: &GrownPath| {
        paths.iter().any(|deeper| {
            is_within(&deeper.path, &p.path)
                && deeper.retained_bytes as f64 >= 0.9 * p.retained_bytes as f64
        })
    };
    let mut paths: Vec<GrownPath> = paths.iter().filter(|p| !explained(p)).cloned().collect();
    paths.truncate(LISTED_PER_KIND);
    LuaGrowth {
        age_ms,
        types: WALK_KINDS
            .iter()
            .zip(now.types.iter().zip(previous.types))
            .map(|(kind, (n, p))| {
                let grown = TypeGrowth {
                    count: delta(n.0, p.0),
                    bytes: delta(n.1, p.1),
                };
                (*kind, grown)
            })
            .collect(),
        paths,
    }
}

/// A path's step by a string key: `.name`, or `["any key"]` shown as a
/// request's input is (at most 64 bytes), a quote as `\x22` so that the
/// brackets read one way.
pub fn push_string_key(out: &mut String, key: &[u8]) {
    if is_identifier(key) {
        out.push('.');
        out.push_str(std::str::from_utf8(key).unwrap_or_default());
    } else {
        let shown = crate::sources::escape::echo(key).replace('"', "\\x22");
        out.push_str(&format!("[\"{shown}\"]"));
    }
}

fn is_identifier(key: &[u8]) -> bool {
    key.len() <= crate::sources::escape::ECHO_MAX_BYTES
        && matches!(key.first(), Some(b) if b.is_ascii_alphabetic() || *b == b'_')
        && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

/// `path` with each `[MARK<hex address>]` key named by `name(address)`.
pub fn replace_light_keys(path: &str, mark: &str, name: impl Fn(usize) -> String) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find(mark) {
        out.push_str(&rest[..at]);
        let after = &rest[at + mark.len()..];
        let end = after.find(']').unwrap_or(after.len());
        match usize::from_str_radix(&after[..end], 16) {
            Ok(p) => out.push_str(&name(p)),
            Err(_) => out.push_str("a light userdata key"),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// What the fork costs the loop per private resident page before this
/// worker has forked once: about 25 µs per MiB, the worst `scripts/bench`
/// measured (18–25 ms for a 1 GiB heap beside a load).
pub const DEFAULT_FORK_NS_PER_PAGE: u64 = 100;
/// The longest a walk's fork may hold the loop unless the configuration or
/// the request says otherwise.
pub const DEFAULT_MAX_STALL_US: u64 = 5_000;
/// The most either may allow.
pub const MAX_STALL_LIMIT_US: u64 = 10_000_000;

/// This worker's recent forks, by their cost per private resident page (the
/// kernel copies one page-table entry per such page), in nanoseconds of the
/// loop thread's CPU time (CPU time: being preempted meanwhile does not
/// count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRates {
    /// Each fork's cost per page and when it was made (ms).
    recent: [(u64, u64); 4],
    len: usize,
    next: usize,
}

/// A fork's cost counts this long: a bound that refused every walk since
/// (so that none taught a newer cost) is tried again with the default.
pub const FORK_RATE_MAX_AGE_MS: u64 = 600_000;

/// Forks of fewer private pages than this teach no rate: their fixed cost
/// (the process's mappings, its page-table pages) would weigh as if it grew
/// with the heap (64 MiB of 4 KiB pages).
pub const FORK_RATE_MIN_PAGES: u64 = 16_384;

impl ForkRates {
    pub const fn new() -> ForkRates {
        ForkRates {
            recent: [(0, 0); 4],
            len: 0,
            next: 0,
        }
    }

    /// Keeps a fork's cost (one of at least `FORK_RATE_MIN_PAGES`).
    pub fn record(&mut self, private_pages: u64, cpu_us: u64, now_ms: u64) {
        if private_pages < FORK_RATE_MIN_PAGES {
            return;
        }
        let rate = cpu_us.saturating_mul(1000) / private_pages;
        self.recent[self.next] = (rate, now_ms);
        self.next = (self.next + 1) % self.recent.len();
        self.len = (self.len + 1).min(self.recent.len());
    }

    /// How long a fork would hold the loop now: the lower median of the
    /// recent rates and the default one, so that one slow fork (or one fast)
    /// does not decide alone, and two that agree do.
    pub fn estimate_us(&self, private_pages: u64, now_ms: u64) -> u64 {
        let mut rates = [DEFAULT_FORK_NS_PER_PAGE; 5];
        let mut n = 1;
        for &(rate, at_ms) in &self.recent[..self.len] {
            if now_ms.saturating_sub(at_ms) <= FORK_RATE_MAX_AGE_MS {
                rates[n] = rate;
                n += 1;
            }
        }
        let rates = &mut rates[..n];
        rates.sort_unstable();
        let rate = rates[(rates.len() - 1) / 2];
        private_pages.saturating_mul(rate) / 1000
    }
}

/// Microseconds as milliseconds with one decimal, as the errors say them.
fn ms(us: u64) -> String {
    format!("{}.{}", us / 1000, us % 1000 / 100)
}

/// Why a walk gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkError {
    /// The fork would hold the loop longer than allowed.
    StallBound {
        estimate_us: u64,
        private_mib: u64,
        max_stall_us: u64,
    },
    /// LuaJIT's API lacks a function the walk calls.
    MissingSymbol(&'static str),
    /// The pipe or the child could not be made (the system's error).
    Start(String),
    /// Without the measuring thread the walk would hold the event loop.
    NeedsThread,
    /// This worker's child of another walk still runs.
    Busy,
    /// A single-process reload loaded LuaJIT elsewhere.
    LoadedElsewhere,
    /// The child ran past its time and was killed.
    TimedOut { seconds: u64 },
    /// The child ended without sending a whole walk.
    Ended(String),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkError::MissingSymbol(name) => write!(f, "LuaJIT has no {name}: the heap is not walked"),
            WalkError::Start(e) => write!(f, "the walk could not start: {e}"),
            WalkError::StallBound {
                estimate_us,
                private_mib,
                max_stall_us,
            } => write!(
                f,
                "the walk's fork would hold the event loop about {} ms (it copies the page tables of {private_mib} MiB of private memory), over the {} ms allowed: ask with max_stall={}ms, or raise memory_status_lua_walk_max_stall",
                ms(*estimate_us),
                ms(*max_stall_us),
                (estimate_us * 3 / 2).div_ceil(1000).clamp(1, MAX_STALL_LIMIT_US / 1000),
            ),
            WalkError::LoadedElsewhere => f.write_str(
                "LuaJIT was loaded elsewhere by a reload (single-process mode): the heap is not walked until nginx restarts",
            ),
            WalkError::Busy => f.write_str(
                "another walk of this worker still runs (the history's): asked again after it, it answers",
            ),
            WalkError::NeedsThread => f.write_str(
                "the heap is walked only with the measuring thread (it would wait on the event loop)",
            ),
            WalkError::TimedOut { seconds } => {
                write!(f, "the walk ran past {seconds} s and was stopped")
            }
            WalkError::Ended(how) => write!(f, "the walk ended before it was whole: {how}"),
        }
    }
}

/// What a walk brought back, with each VM's previous walk in this worker and
/// how long ago it was.
#[derive(Debug, Clone, Default)]
pub struct WalkOutcome {
    pub walks: Walks,
    pub previous: [Option<(VmWalk, u64)>; 2],
    pub fork: ForkCost,
}

/// What the fork held the loop (wall time) against what was estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForkCost {
    pub stall_us: u64,
    pub estimate_us: u64,
}

/// Puts the walks into the VMs' sections (`errors` says why one is missing).
pub fn attach(
    lua: &mut crate::model::lua::Lua,
    outcome: Result<WalkOutcome, WalkError>,
    errors: &mut Vec<crate::model::report::SourceError>,
) {
    use crate::model::report::SourceError;
    let vms = [
        ("lua.http.largest", &mut lua.http),
        ("lua.stream.largest", &mut lua.stream),
    ];
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            for (source, vm) in vms {
                if vm.is_some() {
                    errors.push(SourceError::new(source, e.to_string()));
                }
            }
            return;
        }
    };
    for (i, (source, vm)) in vms.into_iter().enumerate() {
        let Some(vm) = vm else { continue };
        let Some(walk) = &outcome.walks[i] else {
            errors.push(SourceError::new(
                source,
                "the walk sent nothing for this VM",
            ));
            continue;
        };
        vm.largest = Some(largest(walk, outcome.fork));
        if walk.truncated {
            let reason = "the walk stopped at its bound: what grew is not said";
            errors.push(SourceError::new(
                source.replace("largest", "growth"),
                reason,
            ));
            continue;
        }
        vm.growth = Some(
            outcome.previous[i]
                .as_ref()
                .map(|(before, age_ms)| growth(before, walk, *age_ms)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VmWalk {
        VmWalk {
            walked: 1000,
            truncated: false,
            elapsed_us: 1234,
            types: [
                (10, 5000),
                (900, 90000),
                (50, 2000),
                (1, 48),
                (2, 300),
                (0, 0),
            ],
            objects: vec![
                WalkedObject {
                    kind: TABLE,
                    own_bytes: 4000,
                    retained_bytes: 80000,
                    entries: 700,
                    path: "_G.blocks".into(),
                },
                WalkedObject {
                    kind: TABLE,
                    own_bytes: 100,
                    retained_bytes: 900,
                    entries: 3,
                    path: "package.loaded[\"a b\"] > upvalue \"cache\" of function at app.lua:3"
                        .into(),
                },
                WalkedObject {
                    kind: STRING,
                    own_bytes: 1048,
                    retained_bytes: 1048,
                    entries: 0,
                    path: "_G.big".into(),
                },
            ],
            finalizers: vec![
                FinalizerGroup {
                    count: 3,
                    reached: 2,
                    bytes: 3000,
                    name: "function at app/buf.lua:7".into(),
                },
                FinalizerGroup {
                    count: 1,
                    reached: 1,
                    bytes: 8,
                    name: "free".into(),
                },
            ],
        }
    }

    #[test]
    fn string_keys_read_one_way() {
        let mut out = String::new();
        push_string_key(&mut out, b"blocks");
        push_string_key(&mut out, b"resty.lrucache");
        push_string_key(&mut out, b"a\"b\n");
        assert_eq!(out, r#".blocks["resty.lrucache"]["a\x22b\x0a"]"#);
        let mut out = String::new();
        push_string_key(&mut out, "é".repeat(100).as_bytes());
        assert!(out.ends_with("...\"]") && out.len() < 80, "{out}");
        assert!(!is_identifier(&[b'a'; 65]));
        assert!(!is_identifier(b"1a"));
    }

    #[test]
    fn light_keys_are_named() {
        let name = |p: usize| {
            if p == 0x10 {
                "key_of_16".into()
            } else {
                "a light userdata key".into()
            }
        };
        assert_eq!(
            replace_light_keys("r[@L:10][1] > slot", "@L:", name),
            "r[key_of_16][1] > slot"
        );
        assert_eq!(
            replace_light_keys("r[@L:zz]", "@L:", name),
            "r[a light userdata key]"
        );
        assert_eq!(replace_light_keys("_G.x", "@L:", name), "_G.x");
    }

    #[test]
    fn protocol_round_trip() {
        let walks = [Some(sample()), None];
        let mut text = String::new();
        write_walks(&walks, &mut text);
        assert_eq!(parse_walks(&text), Some(walks));
    }

    #[test]
    fn a_walk_cut_short_is_refused() {
        let mut text = String::new();
        write_walks(&[Some(sample()), Some(sample())], &mut text);
        let cut = &text[..text.len() - "done\n".len()];
        assert_eq!(parse_walks(cut), None);
        assert_eq!(parse_walks(&text[..text.len() / 2]), None);
        assert_eq!(parse_walks("vm 2\nend\ndone\n"), None);
        assert_eq!(parse_walks("object table 1 2 3 x\ndone\n"), None);
        assert_eq!(parse_walks("vm 0\nfinalizer 1 x 3 f\nend\ndone\n"), None);
        assert_eq!(parse_walks(&format!("{text}vm 0\n")), None);
    }

    #[test]
    fn growth_per_kind_and_path() {
        let before = sample();
        let mut now = sample();
        now.types[TABLE] = (12, 9000);
        now.objects[0].retained_bytes = 180000;
        now.objects[0].entries = 1700;
        now.objects.push(WalkedObject {
            kind: TABLE,
            own_bytes: 64,
            retained_bytes: 5000,
            entries: 9,
            path: "_G.fresh".into(),
        });
        let g = growth(&before, &now, 60_000);
        assert_eq!(g.age_ms, 60_000);
        assert_eq!(g.types["table"].count, 2);
        assert_eq!(g.types["table"].bytes, 4000);
        assert_eq!(g.types["string"].bytes, 0);
        assert!(is_within("_G.blocks", "_G"));
        assert!(!is_within("_Gx", "_G"));
        assert!(!is_within("_G", "_G"));
        assert_eq!(g.paths.len(), 2);
        assert_eq!(g.paths[0].path, "_G.blocks");
        assert_eq!(g.paths[0].retained_bytes, 100000);
        assert_eq!(g.paths[0].entries, Some(1000));
        assert!(!g.paths[0].new);
        assert_eq!(g.paths[1].path, "_G.fresh");
        assert!(g.paths[1].new);
        // A path new to a full list grows from that list's smallest.
        let mut full = before.clone();
        full.objects = (0..SENT_PER_KIND as u64)
            .map(|i| WalkedObject {
                kind: TABLE,
                own_bytes: 1,
                retained_bytes: 1000 + i,
                entries: 1,
                path: format!("_G.t{i}"),
            })
            .collect();
        let g = growth(&full, &now, 1);
        let fresh = g.paths.iter().find(|p| p.path == "_G.fresh").unwrap();
        assert_eq!(
            (fresh.retained_bytes, fresh.entries, fresh.new),
            (4000, None, true)
        );
        // Two objects under one path: neither is said to grow.
        let mut twice = now.clone();
        twice.objects[0].path = "_G.fresh".into();
        let g = growth(&before, &twice, 1);
        assert!(
            g.paths.iter().all(|p| p.path != "_G.fresh"),
            "{:?}",
            g.paths
        );
    }

    #[test]
    fn largest_lists_by_kind() {
        let fork = ForkCost {
            stall_us: 321,
            estimate_us: 400,
        };
        let l = largest(&sample(), fork);
        assert_eq!((l.fork_us, l.fork_estimate_us), (321, 400));
        assert_eq!(l.tables.len(), 2);
        assert_eq!(l.tables[0].entries, Some(700));
        assert_eq!(l.strings[0].entries, None);
        assert_eq!(l.bytes, 5000 + 90000 + 2000 + 48 + 300);
        assert_eq!(l.types["string"].count, 900);
        assert_eq!(l.cdata_finalizers.len(), 2);
        assert_eq!(l.cdata_finalizers[0].finalizer, "function at app/buf.lua:7");
        assert_eq!(
            (l.cdata_finalizers[0].count, l.cdata_finalizers[0].reached),
            (3, 2)
        );
    }

    #[test]
    fn fork_estimate_from_recent_forks() {
        let mut rates = ForkRates::new();
        let t = 1_000_000;
        // 1 GiB of 4 KiB pages before any fork: 100 ns each.
        assert_eq!(rates.estimate_us(262_144, t), 26_214);
        // One slow fork does not decide alone (the lower of it and the default)...
        rates.record(25_600, 10_000, t);
        assert_eq!(rates.estimate_us(262_144, t), 26_214);
        // ...two that agree do.
        rates.record(51_200, 20_000, t);
        assert_eq!(rates.estimate_us(262_144, t), 102_236);
        // Until they are old: the default is tried again.
        assert_eq!(
            rates.estimate_us(262_144, t + FORK_RATE_MAX_AGE_MS + 1),
            26_214
        );
        // Faster forks bring it down again.
        for _ in 0..3 {
            rates.record(100_000, 2_000, t);
        }
        assert_eq!(rates.estimate_us(262_144, t), 5_242);
        assert_eq!(rates.estimate_us(u64::MAX, t), u64::MAX / 1000);
        // A small worker's fork (its fixed cost over few pages) teaches nothing.
        let before = rates.clone();
        rates.record(700, 300, t);
        rates.record(0, u64::MAX, t);
        assert_eq!(rates, before);
    }

    #[test]
    fn stall_bound_says_how_to_allow_it() {
        let e = WalkError::StallBound {
            estimate_us: 21_340,
            private_mib: 1_049,
            max_stall_us: 5_000,
        };
        assert_eq!(
            e.to_string(),
            "the walk's fork would hold the event loop about 21.3 ms (it copies the page tables of 1049 MiB of private memory), over the 5.0 ms allowed: ask with max_stall=33ms, or raise memory_status_lua_walk_max_stall"
        );
    }

    #[test]
    fn finalizers_of_one_name_are_one_group() {
        let g = |name: &str, count, bytes| FinalizerGroup {
            count,
            reached: count,
            bytes,
            name: name.into(),
        };
        let mut groups = vec![
            g("a C function", 1, 10),
            g("function at x.lua:1", 2, 50),
            g("a C function", 3, 60),
        ];
        merge_finalizers(&mut groups);
        assert_eq!(
            groups,
            vec![g("a C function", 4, 70), g("function at x.lua:1", 2, 50)]
        );
    }
}
