//! The request's query string: which arguments the location takes, and a
//! one-line reason for anything else (answered with 400).

use std::fmt;

use crate::analysis::lua_walk::MAX_STALL_LIMIT_US;
use crate::model::breakdown::Depth;
use crate::sources::escape::echo;

/// The answer's format.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    #[default]
    Json,
    Prometheus,
    Html,
    Text,
}

impl Format {
    pub const NAMES: &'static str = "json, prometheus, html, text";

    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "json" => Some(Format::Json),
            "prometheus" => Some(Format::Prometheus),
            "html" => Some(Format::Html),
            "text" => Some(Format::Text),
            _ => None,
        }
    }

    /// What `Accept` asks for. Prometheus asks for its exposition format
    /// (`text/plain` with a `version`, or OpenMetrics). Plain text only when
    /// `text/plain` without a version is preferred to JSON: a higher `q`, or
    /// the same listed first (`application/json, text/plain, */*` is JSON).
    /// A range with `q=0` is refused, never chosen. `None`: JSON, or the
    /// location's own format.
    pub fn from_accept(accept: &str) -> Option<Format> {
        let ranges: Vec<(String, f32)> = accept
            .split(',')
            .map(|part| {
                let bare: String = part.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                bare.to_ascii_lowercase()
            })
            .map(|m| {
                let q = m
                    .split(';')
                    .find_map(|p| p.strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                (m, q)
            })
            .filter(|(_, q)| *q > 0.0)
            .collect();
        let plain = |m: &str| m == "text/plain" || m.starts_with("text/plain;");
        let versioned = |m: &str| plain(m) && m.split(';').any(|p| p.starts_with("version="));
        if ranges
            .iter()
            .any(|(m, _)| m.starts_with("application/openmetrics-text") || versioned(m))
        {
            return Some(Format::Prometheus);
        }
        // The best q of a kind and where it is first listed.
        let best = |kind: &dyn Fn(&str) -> bool| {
            ranges
                .iter()
                .enumerate()
                .filter(|(_, (m, _))| kind(m))
                .fold(None, |acc: Option<(f32, usize)>, (i, (_, q))| match acc {
                    Some((bq, bi)) if bq >= *q => Some((bq, bi)),
                    _ => Some((*q, i)),
                })
        };
        let json = |m: &str| m.starts_with("application/json");
        match (best(&plain), best(&json)) {
            (Some(_), None) => Some(Format::Text),
            (Some((tq, ti)), Some((jq, ji))) if tq > jq || (tq == jq && ti < ji) => {
                Some(Format::Text)
            }
            _ => None,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// `zone=NAME`: answer with this shared memory zone alone (its name's bytes,
    /// or the escaped form the answers show).
    pub zone: Option<Vec<u8>>,
    /// `detail=full`: add what needs `/proc/self/smaps`.
    pub depth: Depth,
    /// `format=...`: overrides the location's `memory_status_format` and `Accept`.
    pub format: Option<Format>,
    /// `refresh=N` (html only): reload the page every N seconds.
    pub refresh_seconds: Option<u32>,
    /// `lua_objects=1`: count the Lua VMs' GC objects, walking at most this many.
    pub lua_objects_limit: Option<u64>,
    /// `lua_largest=1`: walk the Lua heaps from their roots (in a forked
    /// copy): the largest objects with their paths, and what grew.
    pub lua_largest: bool,
    /// `max_stall=TIME` (with `lua_largest=1`): the longest the walk's fork
    /// may hold the event loop, over `memory_status_lua_walk_max_stall`.
    pub max_stall_us: Option<u64>,
    /// `history=1`: add every process's samples (at most `HISTORY_POINTS`
    /// per ring, spread over all kept).
    pub history: bool,
    /// `history_since=MS` (implies `history=1`): the samples from that time
    /// on, the next `HISTORY_POINTS` of each ring in order.
    pub history_since_ms: Option<u64>,
}

/// Objects the census walks at most unless `lua_objects_limit=` says otherwise.
pub const LUA_OBJECTS_DEFAULT_LIMIT: u64 = 1_000_000;
const LUA_OBJECTS_MAX_LIMIT: u64 = 100_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    Unknown(String),
    Repeated(&'static str),
    Empty(&'static str),
    BadEncoding(String),
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    Conflict(&'static str),
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Unknown(name) => {
                write!(
                    f,
                    "unknown argument \"{name}\" (supported: {})",
                    ARGUMENTS.join(", ")
                )
            }
            QueryError::Repeated(name) => write!(f, "argument \"{name}\" given more than once"),
            QueryError::Empty(name) => write!(f, "argument \"{name}\" needs a value"),
            QueryError::BadEncoding(part) => write!(f, "badly encoded argument \"{part}\""),
            QueryError::BadValue {
                name,
                value,
                expected,
            } => {
                write!(
                    f,
                    "bad value \"{value}\" for argument \"{name}\" (expected {expected})"
                )
            }
            QueryError::Conflict(reason) => write!(f, "conflicting arguments: {reason}"),
        }
    }
}

const ARGUMENTS: &[&str] = &[
    "zone",
    "detail",
    "format",
    "refresh",
    "lua_objects",
    "lua_objects_limit",
    "lua_largest",
    "max_stall",
    "history",
    "history_since",
];

/// The arguments as given, each at most once, still unchecked.
#[derive(Default)]
struct Raw {
    zone: Option<Vec<u8>>,
    detail: Option<Vec<u8>>,
    format: Option<Vec<u8>>,
    refresh: Option<Vec<u8>>,
    lua_objects: Option<Vec<u8>>,
    lua_objects_limit: Option<Vec<u8>>,
    lua_largest: Option<Vec<u8>>,
    max_stall: Option<Vec<u8>>,
    history: Option<Vec<u8>>,
    history_since: Option<Vec<u8>>,
}

impl Raw {
    fn split(args: &[u8]) -> Result<Raw, QueryError> {
        let mut raw = Raw::default();
        for part in args.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &part[part.len()..]),
            };
            let bad = || QueryError::BadEncoding(echo(part));
            let name = percent_decode(raw_name).ok_or_else(bad)?;
            let value = percent_decode(raw_value).ok_or_else(bad)?;
            let (slot, name) = match name.as_slice() {
                b"zone" => (&mut raw.zone, "zone"),
                b"detail" => (&mut raw.detail, "detail"),
                b"format" => (&mut raw.format, "format"),
                b"refresh" => (&mut raw.refresh, "refresh"),
                b"lua_objects" => (&mut raw.lua_objects, "lua_objects"),
                b"lua_objects_limit" => (&mut raw.lua_objects_limit, "lua_objects_limit"),
                b"lua_largest" => (&mut raw.lua_largest, "lua_largest"),
                b"max_stall" => (&mut raw.max_stall, "max_stall"),
                b"history" => (&mut raw.history, "history"),
                b"history_since" => (&mut raw.history_since, "history_since"),
                _ => return Err(QueryError::Unknown(echo(&name))),
            };
            set_once(slot, name, value)?;
        }
        Ok(raw)
    }
}

fn bad_value(name: &'static str, value: &[u8], expected: &'static str) -> QueryError {
    QueryError::BadValue {
        name,
        value: echo(value),
        expected,
    }
}

/// A flag argument: its one value is `1`.
fn flag(name: &'static str, value: &[u8]) -> Result<(), QueryError> {
    match value {
        b"1" => Ok(()),
        _ => Err(bad_value(name, value, "1")),
    }
}

/// `max_stall=`: a time in `ms` or `s`, from 1ms to 10s, for a walk only.
fn max_stall(raw: &Raw, walk: bool) -> Result<Option<u64>, QueryError> {
    let Some(value) = &raw.max_stall else {
        return Ok(None);
    };
    let (digits, scale) = match value.strip_suffix(b"ms") {
        Some(digits) => (digits, 1_000),
        None => (value.strip_suffix(b"s").unwrap_or(b""), 1_000_000),
    };
    let us = parse_number::<u64>(digits)
        .and_then(|n| n.checked_mul(scale))
        .filter(|us| (1_000..=MAX_STALL_LIMIT_US).contains(us))
        .ok_or_else(|| bad_value("max_stall", value, "a time from 1ms to 10s, as 50ms or 2s"))?;
    if !walk {
        return Err(QueryError::Conflict("max_stall= needs lua_largest=1"));
    }
    Ok(Some(us))
}

impl Query {
    // Long, not deep: one block per argument, in the README's order; the
    // checks that tie arguments together (zone=, lua_objects=) stay side by side.
    /// Parses `r->args` (the part after `?`, still percent-encoded).
    pub fn parse(args: &[u8]) -> Result<Query, QueryError> {
        let raw = Raw::split(args)?;
        let zone_too = |what: &'static str| -> Result<(), QueryError> {
            match raw.zone {
                Some(_) => Err(QueryError::Conflict(what)),
                None => Ok(()),
            }
        };
        let mut query = Query {
            zone: raw.zone.clone(),
            ..Query::default()
        };
        if let Some(value) = &raw.detail {
            if value != b"full" {
                return Err(bad_value("detail", value, "\"full\""));
            }
            zone_too("detail=full applies to the whole answer, not to zone=")?;
            query.depth = Depth::Full;
        }
        if let Some(value) = &raw.format {
            let f = std::str::from_utf8(value).ok().and_then(Format::from_name);
            query.format = Some(f.ok_or_else(|| bad_value("format", value, Format::NAMES))?);
        }
        if let Some(value) = &raw.lua_objects {
            flag("lua_objects", value)?;
            zone_too("lua_objects=1 applies to the whole answer, not to zone=")?;
            query.lua_objects_limit = Some(LUA_OBJECTS_DEFAULT_LIMIT);
        }
        if let Some(value) = &raw.lua_largest {
            flag("lua_largest", value)?;
            zone_too("lua_largest=1 applies to the whole answer, not to zone=")?;
            query.lua_largest = true;
        }
        query.max_stall_us = max_stall(&raw, query.lua_largest)?;
        if let Some(value) = &raw.history {
            flag("history", value)?;
            zone_too("history=1 applies to the whole answer, not to zone=")?;
            query.history = true;
        }
        if let Some(value) = &raw.history_since {
            let since = parse_number::<u64>(value).ok_or_else(|| {
                bad_value("history_since", value, "a time in milliseconds since 1970")
            })?;
            zone_too("history_since= applies to the whole answer, not to zone=")?;
            query.history = true;
            query.history_since_ms = Some(since);
        }
        if let Some(value) = &raw.lua_objects_limit {
            let limit = parse_number::<u64>(value)
                .filter(|n| (1..=LUA_OBJECTS_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    bad_value(
                        "lua_objects_limit",
                        value,
                        "a number of objects from 1 to 100000000",
                    )
                })?;
            if query.lua_objects_limit.is_none() {
                return Err(QueryError::Conflict(
                    "lua_objects_limit= needs lua_objects=1",
                ));
            }
            query.lua_objects_limit = Some(limit);
        }
        if let Some(value) = &raw.refresh {
            let n = parse_number::<u32>(value).filter(|n| (1..=86_400).contains(n));
            query.refresh_seconds =
                Some(n.ok_or_else(|| bad_value("refresh", value, "seconds from 1 to 86400"))?);
        }
        Ok(query)
    }

    /// The format to answer in: `format=` first, then what `Accept` asks for,
    /// then the location's `memory_status_format`, else JSON. Arguments that
    /// do not fit the format are a conflict.
    pub fn resolve_format(
        &self,
        accept: Option<Format>,
        configured: Option<Format>,
    ) -> Result<Format, QueryError> {
        let format = self.format.or(accept).or(configured).unwrap_or_default();
        if self.refresh_seconds.is_some() && format != Format::Html {
            return Err(QueryError::Conflict(
                "refresh= applies to the html format only",
            ));
        }
        if self.zone.is_some() && format == Format::Html {
            return Err(QueryError::Conflict(
                "the html format shows every zone, not zone=",
            ));
        }
        if self.zone.is_some() && format == Format::Text {
            // Not asked for by format=: the zone's JSON, as before text was.
            if self.format.is_none() {
                return Ok(Format::Json);
            }
            return Err(QueryError::Conflict(
                "the text format shows every zone, not zone=",
            ));
        }
        Ok(format)
    }
}

fn parse_number<T: std::str::FromStr>(value: &[u8]) -> Option<T> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn set_once(
    slot: &mut Option<Vec<u8>>,
    name: &'static str,
    value: Vec<u8>,
) -> Result<(), QueryError> {
    if slot.is_some() {
        return Err(QueryError::Repeated(name));
    }
    if value.is_empty() {
        return Err(QueryError::Empty(name));
    }
    *slot = Some(value);
    Ok(())
}

/// `%XX` and `+` decoding into bytes (any bytes: a zone name need not be
/// UTF-8); `None` for a broken escape.
fn percent_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments() {
        assert_eq!(Query::parse(b""), Ok(Query::default()));
        assert_eq!(Query::parse(b"&&"), Ok(Query::default()));
    }

    #[test]
    fn zone_is_decoded() {
        assert_eq!(
            Query::parse(b"zone=sessions").unwrap().zone.as_deref(),
            Some(&b"sessions"[..])
        );
        assert_eq!(
            Query::parse(b"zone=a%20b+c").unwrap().zone.as_deref(),
            Some(&b"a b c"[..])
        );
        // Any bytes: zone names need not be UTF-8.
        assert_eq!(
            Query::parse(b"zone=bin%ff%fe").unwrap().zone.as_deref(),
            Some(&b"bin\xff\xfe"[..])
        );
    }

    #[test]
    fn max_stall_with_a_walk() {
        let stall = |args: &[u8]| Query::parse(args).map(|q| q.max_stall_us);
        assert_eq!(stall(b"lua_largest=1&max_stall=50ms"), Ok(Some(50_000)));
        assert_eq!(stall(b"max_stall=2s&lua_largest=1"), Ok(Some(2_000_000)));
        assert_eq!(stall(b"lua_largest=1&max_stall=10s"), Ok(Some(10_000_000)));
        assert_eq!(stall(b"lua_largest=1"), Ok(None));
        for bad in [
            "0ms",
            "11s",
            "50",
            "ms",
            "5m",
            "1.5s",
            "-3ms",
            "99999999999999999999s",
        ] {
            let args = format!("lua_largest=1&max_stall={bad}");
            assert!(
                matches!(
                    stall(args.as_bytes()),
                    Err(QueryError::BadValue {
                        name: "max_stall",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            stall(b"max_stall=50ms"),
            Err(QueryError::Conflict("max_stall= needs lua_largest=1"))
        );
    }

    fn resolve(
        args: &[u8],
        accept: Option<Format>,
        configured: Option<Format>,
    ) -> Result<Format, QueryError> {
        Query::parse(args)?.resolve_format(accept, configured)
    }

    #[test]
    fn formats() {
        assert_eq!(
            resolve(b"format=prometheus", None, None),
            Ok(Format::Prometheus)
        );
        assert_eq!(
            Query::parse(b"format=html&refresh=5")
                .unwrap()
                .refresh_seconds,
            Some(5)
        );
        let err = Query::parse(b"format=xml").unwrap_err().to_string();
        assert!(
            err.contains("\"xml\"") && err.contains("json, prometheus, html"),
            "{err}"
        );
        assert!(matches!(
            resolve(b"refresh=5", None, None),
            Err(QueryError::Conflict(_))
        ));
        assert!(matches!(
            resolve(b"format=json&refresh=5", None, None),
            Err(QueryError::Conflict(_))
        ));
        assert!(matches!(
            Query::parse(b"format=html&refresh=0"),
            Err(QueryError::BadValue { .. })
        ));
        assert!(matches!(
            resolve(b"format=html&zone=a", None, None),
            Err(QueryError::Conflict(_))
        ));
        assert_eq!(
            resolve(b"format=prometheus&zone=a", None, None),
            Ok(Format::Prometheus)
        );
    }

    #[test]
    fn format_precedence() {
        let (p, h) = (Some(Format::Prometheus), Some(Format::Html));
        assert_eq!(resolve(b"", None, None), Ok(Format::Json));
        assert_eq!(resolve(b"", None, h), Ok(Format::Html));
        assert_eq!(resolve(b"", p, h), Ok(Format::Prometheus));
        assert_eq!(resolve(b"format=json", p, h), Ok(Format::Json));
        // refresh fits a location whose configured format is html.
        assert_eq!(resolve(b"refresh=10", None, h), Ok(Format::Html));
        assert!(matches!(
            resolve(b"zone=a", None, h),
            Err(QueryError::Conflict(_))
        ));
    }

    #[test]
    fn history() {
        assert!(!Query::parse(b"").unwrap().history);
        assert!(Query::parse(b"history=1").unwrap().history);
        assert!(Query::parse(b"history=2").is_err());
        assert!(Query::parse(b"history=1&zone=x").is_err());
        let q = Query::parse(b"history_since=1796322388931").unwrap();
        assert!(q.history);
        assert_eq!(q.history_since_ms, Some(1_796_322_388_931));
        assert!(Query::parse(b"history=1&history_since=5").unwrap().history);
        assert!(Query::parse(b"history_since=-1").is_err());
        assert!(Query::parse(b"history_since=x").is_err());
        assert!(Query::parse(b"history_since=5&zone=x").is_err());
    }

    #[test]
    fn lua_objects() {
        assert_eq!(Query::parse(b"").unwrap().lua_objects_limit, None);
        assert_eq!(
            Query::parse(b"lua_objects=1").unwrap().lua_objects_limit,
            Some(LUA_OBJECTS_DEFAULT_LIMIT)
        );
        assert_eq!(
            Query::parse(b"lua_objects=1&lua_objects_limit=10")
                .unwrap()
                .lua_objects_limit,
            Some(10)
        );
        assert!(matches!(
            Query::parse(b"lua_objects=yes"),
            Err(QueryError::BadValue { .. })
        ));
        assert!(matches!(
            Query::parse(b"lua_objects_limit=10"),
            Err(QueryError::Conflict(_))
        ));
        assert!(matches!(
            Query::parse(b"lua_objects=1&lua_objects_limit=0"),
            Err(QueryError::BadValue { .. })
        ));
        assert!(matches!(
            Query::parse(b"lua_objects=1&zone=a"),
            Err(QueryError::Conflict(_))
        ));
    }

    #[test]
    fn a_zone_asked_for_in_text_by_accept_gets_json() {
        let text = Some(Format::Text);
        assert_eq!(resolve(b"zone=a", text, None), Ok(Format::Json));
        assert_eq!(resolve(b"zone=a", None, text), Ok(Format::Json));
        assert!(matches!(
            resolve(b"zone=a&format=text", None, None),
            Err(QueryError::Conflict(_))
        ));
    }

    #[test]
    fn accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(prometheus), Some(Format::Prometheus));
        assert_eq!(
            Format::from_accept("text/plain; version=0.0.4"),
            Some(Format::Prometheus)
        );
        assert_eq!(Format::from_accept("*/*"), None);
        assert_eq!(Format::from_accept("text/html,application/xhtml+xml"), None);
        assert_eq!(Format::from_accept("text/plain"), Some(Format::Text));
        assert_eq!(
            Format::from_accept("text/plain; q=0.9, */*"),
            Some(Format::Text)
        );
        assert_eq!(
            Format::from_accept("text/plain;charset=utf-8"),
            Some(Format::Text)
        );
        assert_eq!(Format::from_accept("text/plainx"), None);
        // Clients that take JSON first (axios's default) keep JSON.
        assert_eq!(
            Format::from_accept("application/json, text/plain, */*"),
            None
        );
        assert_eq!(
            Format::from_accept("application/json;q=0.5, text/plain"),
            Some(Format::Text)
        );
        assert_eq!(
            Format::from_accept("text/plain, application/json"),
            Some(Format::Text)
        );
        // Refused ranges are never chosen.
        assert_eq!(Format::from_accept("text/plain;q=0"), None);
        assert_eq!(Format::from_accept("text/plain;version=0.0.4;q=0"), None);
        assert_eq!(Format::from_accept("text/*"), None);
        // Blanks of any kind around parameters, as the fuzzer sends them.
        assert_eq!(
            Format::from_accept("text/plain;\tversion=0.0.4"),
            Some(Format::Prometheus)
        );
        // Prometheus 3's text format names its version too.
        assert_eq!(
            Format::from_accept("text/plain;version=1.0.0;escaping=allow-utf-8"),
            Some(Format::Prometheus)
        );
    }

    #[test]
    fn detail_full() {
        assert_eq!(Query::parse(b"detail=full").unwrap().depth, Depth::Full);
        assert_eq!(Query::parse(b"").unwrap().depth, Depth::Default);
        let err = Query::parse(b"detail=yes").unwrap_err();
        assert!(err.to_string().contains("\"yes\"") && err.to_string().contains("\"detail\""));
        assert!(matches!(
            Query::parse(b"detail=full&zone=a"),
            Err(QueryError::Conflict(_))
        ));
        assert_eq!(
            Query::parse(b"detail=full&detail=full"),
            Err(QueryError::Repeated("detail"))
        );
    }

    #[test]
    fn bad_input_gets_a_reason() {
        let err = Query::parse(b"zone=x&foo=1").unwrap_err();
        assert_eq!(err, QueryError::Unknown("foo".into()));
        assert!(err.to_string().contains("\"foo\""));
        assert_eq!(
            Query::parse(b"zone=a&zone=b"),
            Err(QueryError::Repeated("zone"))
        );
        assert_eq!(Query::parse(b"zone="), Err(QueryError::Empty("zone")));
        assert_eq!(Query::parse(b"zone"), Err(QueryError::Empty("zone")));
        assert!(matches!(
            Query::parse(b"zone=%zz"),
            Err(QueryError::BadEncoding(_))
        ));
        assert!(matches!(
            Query::parse(b"zone=%f"),
            Err(QueryError::BadEncoding(_))
        ));
    }

    #[test]
    fn echoed_input_is_escaped_and_bounded() {
        let err = Query::parse(b"detail=a%0d%0aX%00%1b%e2%80%ae").unwrap_err();
        let reason = err.to_string();
        assert!(!reason.chars().any(|c| c.is_control()), "{reason}");
        assert!(
            reason.contains("a\\x0d\\x0aX\\x00\\x1b\\xe2\\x80\\xae"),
            "{reason}"
        );
        let long = format!("format={}", "x".repeat(10_000));
        let reason = Query::parse(long.as_bytes()).unwrap_err().to_string();
        assert!(reason.len() < 200, "{}", reason.len());
        let reason = Query::parse(b"%0a%ff=1").unwrap_err().to_string();
        assert!(reason.contains("\\x0a\\xff"), "{reason}");
        let reason = Query::parse(b"x=%zz%0a\n").unwrap_err().to_string();
        assert!(!reason.contains('\n'), "{reason}");
    }
}
