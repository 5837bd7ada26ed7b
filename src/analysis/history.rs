//! History: each worker's summary, one sample per `memory_status_interval`, in
//! a ring of the module's history zone; and the trends fitted over it (bytes
//! per hour by least squares, PromQL's `deriv()`), restarted at each reload.

use crate::model::history::Fit;
use crate::model::history::Sample;
use crate::model::history::Trend;
use crate::model::history::ZoneHistory;
use crate::model::history::ZonePoint;
use crate::model::history::ZoneTrend;
use crate::model::server::{Published, PUBLISHED_OWNERS};
use crate::shm::samples::ZonesSample;
use crate::shm::samples::ZONES_MAX;

impl Sample {
    /// A worker's summary, as a sample of its history, with its answer's
    /// container figures.
    pub fn of(
        p: &Published,
        resident_bytes: u64,
        container: Option<&crate::model::container::Container>,
        lua_http_walk: Option<&crate::model::lua::LuaLargest>,
    ) -> Sample {
        let vm = |v: &Option<crate::model::server::VmFigures>| {
            (
                v.map(|v| v.gc_bytes),
                v.and_then(|v| v.allocator_mapped_bytes),
            )
        };
        let (http_gc, http_alloc) = vm(&p.lua.http);
        let (stream_gc, stream_alloc) = vm(&p.lua.stream);
        Sample {
            at_ms: p.sampled_at_ms,
            resident_bytes,
            pss_bytes: p.pss.as_ref().map(|w| w.bytes),
            owners: p
                .breakdown
                .iter()
                .filter_map(|(&name, o)| Some((name, o.resident_bytes?)))
                .collect(),
            lua_http_gc_bytes: http_gc,
            lua_stream_gc_bytes: stream_gc,
            lua_http_allocator_bytes: http_alloc,
            lua_stream_allocator_bytes: stream_alloc,
            glibc_in_use_bytes: p.glibc.map(|g| g.in_use_bytes),
            glibc_free_bytes: p.glibc.map(|g| g.free_bytes),
            container_usage_bytes: container.map(|c| c.usage_bytes),
            container_working_set_bytes: container.map(|c| c.working_set_bytes),
            lua_http_kind_bytes: std::array::from_fn(|k| {
                let kind = super::lua_walk::WALK_KINDS[k];
                // A walk cut short says nothing of a kind's whole.
                let whole = lua_http_walk.filter(|w| !w.truncated);
                whole.and_then(|w| Some(w.types.get(kind)?.bytes))
            }),
        }
    }
}

/// A zone's name as 64 bits (FNV-1a), never 0 (0 marks an empty place).
pub fn name_hash(name: &str) -> u64 {
    crate::fnv::extend(crate::fnv::EMPTY, name.as_bytes()).max(1)
}

impl ZonesSample {
    /// The zones of an answer that have a slab pool.
    pub fn of(at_ms: u64, zones: &[crate::model::zones::Zone]) -> ZonesSample {
        ZonesSample {
            at_ms,
            zones: zones
                .iter()
                .filter_map(|z| {
                    let slab = z.slab.as_ref()?;
                    let fails = slab.slots.0.iter().map(|(_, c)| c.fails).sum();
                    Some((name_hash(&z.name), slab.used_bytes, fails))
                })
                .take(ZONES_MAX)
                .collect(),
        }
    }
}

/// Each zone's trend of its used bytes since `since_ms`: (name hash, fit, last).
pub fn zone_trends(samples: &[ZonesSample], since_ms: u64) -> Vec<(u64, Fit, u64)> {
    let window: Vec<&ZonesSample> = samples.iter().filter(|s| s.at_ms >= since_ms).collect();
    let Some(last) = window.last() else {
        return Vec::new();
    };
    last.zones
        .iter()
        .filter_map(|&(hash, used, _)| {
            let points: Vec<(u64, f64)> = window
                .iter()
                .filter_map(|s| {
                    let &(_, u, _) = s.zones.iter().find(|z| z.0 == hash)?;
                    Some((s.at_ms, u as f64))
                })
                .collect();
            Some((hash, fit(&points)?, used))
        })
        .collect()
}

/// Of the samples `first..before`, at most `points`, evenly spread, the newest
/// always among them, oldest first.
/// History rings for a server of `workers` worker processes: room for four
/// generations of them (the current one and three a reload keeps alive while
/// they finish their requests) plus the single process and slack, at least 32,
/// rounded up to a power of two so that a small change of `worker_processes`
/// keeps the same zone (and its history) across the reload.
pub fn rings_for(workers: usize) -> usize {
    (4 * workers.max(1) + 8).max(32).next_power_of_two()
}

/// The processes an answer lists that write samples (workers, the single
/// process) but have no ring: their history is not kept, and the answer says so.
pub fn without_ring(writers: &[u32], with_ring: &[u32]) -> Vec<u32> {
    writers
        .iter()
        .copied()
        .filter(|pid| !with_ring.contains(pid))
        .collect()
}

/// The most samples `?history=1` answers per ring (each process's, the
/// zones'): an answer's size and its time on the loop stay bounded whatever
/// `memory_status_history` keeps.
pub const HISTORY_POINTS: usize = 360;

/// Which of a ring's samples an answer reads: at most `points`, spread evenly
/// over all it keeps, or, from `since_ms` on, the next `points` in order (a
/// page of the raw samples).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleWindow {
    pub points: usize,
    pub since_ms: Option<u64>,
}

impl SampleWindow {
    pub fn spread(points: usize) -> Self {
        SampleWindow {
            points,
            since_ms: None,
        }
    }
}

/// The numbers of the samples a window picks among those kept
/// (`first..before`), oldest first. `at_ms_of(n)` is sample `n`'s time: the
/// kept samples are in time order, so the page's start is searched.
pub fn pick(
    first: u64,
    before: u64,
    window: SampleWindow,
    at_ms_of: impl Fn(u64) -> u64,
) -> Vec<u64> {
    let Some(since) = window.since_ms else {
        return spread(first, before, window.points);
    };
    let (mut lo, mut hi) = (first, before);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at_ms_of(mid) < since {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo..before.min(lo.saturating_add(window.points as u64))).collect()
}

pub fn spread(first: u64, before: u64, points: usize) -> Vec<u64> {
    let count = before.saturating_sub(first) as usize;
    let step = count.div_ceil(points.max(1)).max(1);
    let mut picked: Vec<u64> = (first..before).rev().step_by(step).collect();
    picked.reverse();
    picked
}

/// The zones' trends, by the names of this answer's zones.
pub fn zone_trends_of(
    zones: &[crate::model::zones::Zone],
    trends: Vec<(u64, Fit, u64)>,
) -> Vec<ZoneTrend> {
    trends
        .into_iter()
        .filter_map(|(hash, fit, last_bytes)| {
            let z = zones.iter().find(|z| name_hash(&z.name) == hash)?;
            Some(ZoneTrend {
                zone: z.name.clone(),
                fit,
                cap_bytes: z.slab.as_ref().map_or(z.size_bytes, |s| s.total_bytes),
                last_bytes,
            })
        })
        .collect()
}

/// Each zone's samples, by the names of this answer's zones.
pub fn zones_history(
    zones: &[crate::model::zones::Zone],
    samples: &[ZonesSample],
) -> Vec<ZoneHistory> {
    zones
        .iter()
        .filter_map(|z| {
            let hash = name_hash(&z.name);
            let points: Vec<ZonePoint> = samples
                .iter()
                .filter_map(|s| {
                    let &(_, used_bytes, fails) = s.zones.iter().find(|x| x.0 == hash)?;
                    Some(ZonePoint {
                        at_ms: s.at_ms,
                        used_bytes,
                        fails,
                    })
                })
                .collect();
            (!points.is_empty()).then(|| ZoneHistory {
                name: z.name.clone(),
                size_bytes: z.size_bytes,
                samples: points,
            })
        })
        .collect()
}

pub fn fit(points: &[(u64, f64)]) -> Option<Fit> {
    if points.len() < 3 {
        return None;
    }
    let t0 = points[0].0;
    let n = points.len() as f64;
    let xs: Vec<f64> = points.iter().map(|&(t, _)| (t - t0) as f64).collect();
    let mean_x = xs.iter().sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, &(_, y)) in xs.iter().zip(points) {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
        syy += (y - mean_y) * (y - mean_y);
    }
    if sxx == 0.0 {
        return None;
    }
    let slope_per_ms = sxy / sxx;
    let r_squared = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some(Fit {
        bytes_per_hour: slope_per_ms * 3_600_000.0,
        r_squared,
        samples: points.len(),
        span_ms: points[points.len() - 1].0 - t0,
    })
}

/// A collector's sawtooth: its troughs (the heap right after a cycle), where
/// the series has at least three; else the whole series (a heap that only
/// grows has no trough, and its growth is real).
pub fn troughs(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let inner: Vec<(u64, f64)> = points
        .windows(3)
        .filter(|w| w[1].1 <= w[0].1 && w[1].1 <= w[2].1 && (w[1].1 < w[0].1 || w[1].1 < w[2].1))
        .map(|w| w[1])
        .collect();
    if inner.len() >= 3 {
        inner
    } else {
        points.to_vec()
    }
}

/// The series fitted besides the owners' `resident_bytes`, which follow them
/// in the order a ring keeps its trends.
const HEAP_SERIES: [&str; 12] = [
    "resident",
    "lua_http_gc",
    "lua_stream_gc",
    "glibc_in_use",
    "container_usage",
    "container_working_set",
    // The http VM's bytes by kind (`memory_status_lua_walk_history on`).
    "lua_http_table",
    "lua_http_string",
    "lua_http_function",
    "lua_http_userdata",
    "lua_http_thread",
    "lua_http_cdata",
];
pub const SERIES_COUNT: usize = HEAP_SERIES.len() + PUBLISHED_OWNERS.len();

pub fn series_name(i: usize) -> Option<&'static str> {
    match i.checked_sub(HEAP_SERIES.len()) {
        None => Some(HEAP_SERIES[i]),
        Some(owner) => PUBLISHED_OWNERS.get(owner).copied(),
    }
}

pub fn series_index(name: &str) -> Option<usize> {
    (0..SERIES_COUNT).find(|&i| series_name(i) == Some(name))
}

/// Series `i`'s value in a sample.
fn value(s: &Sample, i: usize) -> Option<f64> {
    match i {
        0 => Some(s.resident_bytes as f64),
        1 => s.lua_http_gc_bytes.map(|v| v as f64),
        2 => s.lua_stream_gc_bytes.map(|v| v as f64),
        3 => s.glibc_in_use_bytes.map(|v| v as f64),
        4 => s.container_usage_bytes.map(|v| v as f64),
        5 => s.container_working_set_bytes.map(|v| v as f64),
        6..=11 => s.lua_http_kind_bytes[i - 6].map(|v| v as f64),
        _ => s.owners.get(series_name(i)?).map(|&v| v as f64),
    }
}

/// Every series' trend over the samples taken since `since_ms` (the last
/// reload), oldest first. `shm_cap_bytes`: the zones' total size.
pub fn trends(samples: &[Sample], since_ms: u64, shm_cap_bytes: u64) -> Vec<Trend> {
    let window: Vec<&Sample> = samples.iter().filter(|s| s.at_ms >= since_ms).collect();
    let mut out = Vec::new();
    for (i, name) in (0..SERIES_COUNT).filter_map(|i| Some((i, series_name(i)?))) {
        let mut points: Vec<(u64, f64)> = window
            .iter()
            .filter_map(|s| Some((s.at_ms, value(s, i)?)))
            .collect();
        let Some(&(_, last)) = points.last() else {
            continue;
        };
        if name.ends_with("_gc") {
            points = troughs(&points);
        }
        if let Some(fit) = fit(&points) {
            out.push(Trend {
                series: name,
                fit,
                cap_bytes: (name == "shm").then_some(shm_cap_bytes),
                last_bytes: last as i64,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_window_spreads_or_pages() {
        use super::{pick, SampleWindow};
        // Samples 100..1100 kept, sample n taken at n * 10 ms.
        let at = |n: u64| n * 10;
        assert_eq!(pick(100, 1100, SampleWindow::spread(2000), at).len(), 1000);
        let spread = pick(100, 1100, SampleWindow::spread(10), at);
        assert_eq!(spread.len(), 10);
        assert_eq!(*spread.last().unwrap(), 1099, "the newest is always in");
        let page = |since, points| {
            pick(
                100,
                1100,
                SampleWindow {
                    points,
                    since_ms: Some(since),
                },
                at,
            )
        };
        assert_eq!(page(5000, 3), vec![500, 501, 502]);
        assert_eq!(
            page(5001, 3),
            vec![501, 502, 503],
            "from the first at or after"
        );
        assert_eq!(
            page(0, 2),
            vec![100, 101],
            "before the oldest: from the oldest"
        );
        assert_eq!(page(10_985, 5), vec![1099], "the last page is short");
        assert!(page(20_000, 5).is_empty(), "after the newest: nothing");
    }

    #[test]
    fn rings_hold_four_generations_at_least_32() {
        assert_eq!(super::rings_for(0), 32);
        assert_eq!(super::rings_for(2), 32);
        assert_eq!(super::rings_for(6), 32);
        assert_eq!(super::rings_for(7), 64);
        assert_eq!(super::rings_for(34), 256);
        for w in 1..200 {
            assert!(super::rings_for(w) >= 4 * w + 8);
        }
    }

    #[test]
    fn writers_without_ring_are_named() {
        assert_eq!(super::without_ring(&[1, 2, 3], &[2, 9]), vec![1, 3]);
        assert!(super::without_ring(&[], &[2]).is_empty());
    }

    use super::*;

    #[test]
    fn the_series_are_the_owners_and_the_heaps() {
        assert_eq!(series_name(0), Some("resident"));
        assert_eq!(series_name(4), Some("container_usage"));
        assert_eq!(series_name(5), Some("container_working_set"));
        assert_eq!(series_name(6), Some("lua_http_table"));
        assert_eq!(series_name(11), Some("lua_http_cdata"));
        assert_eq!(series_name(12), Some("glibc"));
        assert_eq!(series_name(SERIES_COUNT - 1), Some("unattributed"));
        assert_eq!(series_name(SERIES_COUNT), None);
        assert_eq!(series_index("shm"), Some(13));
    }

    #[test]
    fn a_zones_sample_survives_its_words_and_fits() {
        let h = name_hash("sessions");
        assert_ne!(h, 0);
        let samples: Vec<ZonesSample> = (0..5u64)
            .map(|i| ZonesSample {
                at_ms: i * 1000,
                zones: vec![(h, 4096 * i, 0), (name_hash("other"), 1, 2)],
            })
            .collect();
        assert_eq!(ZonesSample::from_words(&samples[3].to_words()), samples[3]);
        let t = zone_trends(&samples, 0);
        let (hash, fit, last) = t[0];
        assert_eq!((hash, last), (h, 4 * 4096));
        assert!((fit.bytes_per_hour - 4096.0 * 3600.0).abs() < 1e-6);
    }

    #[test]
    fn zones_are_named_back_from_their_hashes() {
        let zone = crate::analysis::zones::ZoneSample {
            name: "d".into(),
            owner: Some("ngx_http_lua_module".into()),
            size_bytes: 1 << 20,
            page_size_bytes: 4096,
            resident_pages: Ok(10),
            resident_age_ms: 0,
            slab: Ok(crate::analysis::zones::SlabSample {
                pages_total: 200,
                pages_free: 100,
                slots: Vec::new(),
                free_runs: 1,
                largest_free_run_pages: 100,
                free_runs_truncated: false,
            }),
        }
        .to_zone(&mut Vec::new());
        let fit = Fit {
            bytes_per_hour: 1.0,
            r_squared: 1.0,
            samples: 3,
            span_ms: 2,
        };
        let t = zone_trends_of(
            std::slice::from_ref(&zone),
            vec![(name_hash("d"), fit, 5), (name_hash("gone"), fit, 6)],
        );
        assert_eq!(t.len(), 1, "a zone no longer configured is left out");
        assert_eq!((t[0].zone.as_str(), t[0].cap_bytes), ("d", 200 * 4096));
        let samples = [ZonesSample {
            at_ms: 7,
            zones: vec![(name_hash("d"), 4096, 1)],
        }];
        let h = zones_history(std::slice::from_ref(&zone), &samples);
        assert_eq!(
            (
                h[0].name.as_str(),
                h[0].samples[0].used_bytes,
                h[0].samples[0].fails
            ),
            ("d", 4096, 1)
        );
    }

    #[test]
    fn a_sample_survives_its_words() {
        let mut s = Sample {
            at_ms: 5,
            resident_bytes: 10,
            pss_bytes: Some(7),
            lua_http_gc_bytes: Some(3),
            glibc_free_bytes: Some(1),
            lua_http_kind_bytes: [Some(9), None, Some(0), None, None, Some(2)],
            ..Sample::default()
        };
        s.owners.insert("glibc", 4);
        s.owners.insert("unattributed", -8);
        assert_eq!(Sample::from_words(&s.to_words()), s);
    }

    #[test]
    fn spread_keeps_the_newest_and_bounds_the_count() {
        assert_eq!(spread(0, 5, 10), [0, 1, 2, 3, 4]);
        assert_eq!(spread(0, 10, 5), [1, 3, 5, 7, 9]);
        assert_eq!(spread(100, 3700, 720).len(), 720);
        assert_eq!(spread(100, 3700, 720).last(), Some(&3699));
        assert!(spread(7, 7, 3).is_empty());
    }

    #[test]
    fn a_straight_line_is_its_slope() {
        // 1 MiB per second: 3600 MiB per hour, a perfect fit.
        let pts: Vec<(u64, f64)> = (0..10)
            .map(|i| (1_000 + i * 1000, (i << 20) as f64))
            .collect();
        let f = fit(&pts).unwrap();
        assert!((f.bytes_per_hour - 3600.0 * (1 << 20) as f64).abs() < 1.0);
        assert!((f.r_squared - 1.0).abs() < 1e-9);
        assert_eq!((f.samples, f.span_ms), (10, 9000));
        assert!(fit(&pts[..2]).is_none(), "two points are no trend");
        let flat = fit(&[(0, 5.0), (1, 5.0), (2, 5.0)]).unwrap();
        assert_eq!(flat.bytes_per_hour, 0.0);
    }

    #[test]
    fn a_sawtooth_is_fitted_by_its_troughs() {
        // The heap climbs 10 between cycles and each cycle leaves 1 more.
        let mut pts = Vec::new();
        for cycle in 0..6u64 {
            for step in 0..5u64 {
                let t = (cycle * 5 + step) * 1000;
                pts.push((t, (cycle + step * 10) as f64));
            }
        }
        let low = troughs(&pts);
        assert_eq!(low.len(), 5, "{low:?}");
        let f = fit(&low).unwrap();
        // 1 byte per cycle of 5 s: 720 per hour, not the sawtooth's climb.
        assert!((f.bytes_per_hour - 720.0).abs() < 1.0, "{f:?}");
        let rising: Vec<(u64, f64)> = (0..5).map(|i| (i, i as f64)).collect();
        assert_eq!(troughs(&rising), rising, "no trough: the whole series");
    }

    #[test]
    fn trends_restart_at_the_reload() {
        let samples: Vec<Sample> = (0..10u64)
            .map(|i| {
                let mut s = Sample {
                    at_ms: i * 1000,
                    resident_bytes: if i < 5 { 100 } else { 100 + (i - 5) * 1000 },
                    ..Sample::default()
                };
                s.owners.insert("shm", 7);
                s
            })
            .collect();
        let t = trends(&samples, 5_000, 1 << 20);
        let resident = t.iter().find(|t| t.series == "resident").unwrap();
        assert_eq!(resident.fit.samples, 5);
        assert!((resident.fit.bytes_per_hour - 3_600_000.0).abs() < 1.0);
        let shm = t.iter().find(|t| t.series == "shm").unwrap();
        assert_eq!(shm.cap_bytes, Some(1 << 20));
    }
}
