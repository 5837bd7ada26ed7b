//! The page's pictures as inline SVG: pies with their legends, and the
//! history's sparklines. No script, no external asset.

use std::f64::consts::PI;
use std::fmt::Write;

use super::{esc, size};
use crate::format::human_bytes;

/// Sixteen colours, so the container's pie (up to fifteen parts with the
/// headroom) never paints two slices alike.
const COLORS: [&str; 16] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f",
    "#ff9da7", "#bab0ac", "#a0cbe8", "#ffbe7d", "#8cd17d", "#86bcb6", "#d4a6c8", "#d7b5a6",
];

/// An SVG pie of `(name, bytes)`; slices with nothing in them are left out.
pub fn pie(id: &str, slices: &[(&str, u64)]) -> String {
    let total: u64 = slices.iter().map(|(_, b)| b).sum();
    let mut svg = format!("<svg id=\"{id}\" class=\"pie\" viewBox=\"-1.05 -1.05 2.1 2.1\" width=\"220\" height=\"220\" role=\"img\">");
    let mut angle = -PI / 2.0;
    for (i, (name, bytes)) in slices.iter().enumerate().filter(|(_, (_, b))| *b > 0) {
        let color = COLORS[i % COLORS.len()];
        let title = format!(
            "<title>{}: {} ({bytes} bytes)</title>",
            esc(name),
            human_bytes(*bytes)
        );
        let attrs = format!(
            "class=\"slice\" data-name=\"{}\" data-bytes=\"{bytes}\" fill=\"{color}\"",
            esc(name)
        );
        if *bytes == total {
            let _ = write!(svg, "<circle {attrs} r=\"1\">{title}</circle>");
            continue;
        }
        let sweep = 2.0 * PI * (*bytes as f64) / (total as f64);
        let (x0, y0) = (angle.cos(), angle.sin());
        angle += sweep;
        let (x1, y1) = (angle.cos(), angle.sin());
        let large = u8::from(sweep > PI);
        let _ = write!(
            svg,
            "<path {attrs} d=\"M0,0 L{x0:.5},{y0:.5} A1,1 0 {large} 1 {x1:.5},{y1:.5} Z\">{title}</path>"
        );
    }
    svg.push_str("</svg>");
    svg
}

pub(super) fn legend(slices: &[(&str, u64)]) -> String {
    let total: u64 = slices.iter().map(|(_, b)| b).sum::<u64>().max(1);
    let mut out = String::from("<table class=\"legend\">");
    for (i, (name, bytes)) in slices.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1}%</td></tr>",
            COLORS[i % COLORS.len()],
            esc(name),
            size(*bytes),
            100.0 * (*bytes as f64) / (total as f64)
        );
    }
    out.push_str("</table>");
    out
}

/// Points a history line draws at most (the page reads no more per ring).
pub const SPARK_POINTS: usize = 160;

/// A small line of (time, bytes) points, no script: the last value beside it.
pub(super) fn sparkline(points: &[(u64, f64)]) -> String {
    let (w, h) = (160.0, 28.0);
    if points.len() < 2 {
        return "<span class=\"na\">not enough samples</span>".into();
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let lo = points.iter().map(|p| p.1).fold(f64::MAX, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    let coords: Vec<String> = points
        .iter()
        .map(|&(t, v)| {
            let x = (t - t0) as f64 / span_t * w;
            let y = h - (v - lo) / span_v * (h - 2.0) - 1.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    format!(
        "<svg class=\"spark\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><polyline fill=\"none\" stroke=\"#4e79a7\" stroke-width=\"1.5\" points=\"{}\"/></svg> {}",
        coords.join(" "),
        size(points[points.len() - 1].1.max(0.0) as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pie_has_a_slice_per_nonzero_value() {
        let svg = pie("p", &[("a", 3), ("b", 0), ("c", 1)]);
        assert_eq!(svg.matches("class=\"slice\"").count(), 2);
        assert!(svg.contains("data-name=\"a\" data-bytes=\"3\""));
        assert!(!svg.contains("data-name=\"b\""));
        // A slice of three quarters takes the large arc.
        assert!(svg.contains(" 0 1 1 "));
    }

    #[test]
    fn a_whole_pie_is_a_circle() {
        let svg = pie("p", &[("only", 5), ("none", 0)]);
        assert!(svg.contains("<circle class=\"slice\" data-name=\"only\""));
    }

    #[test]
    fn names_are_escaped() {
        let svg = pie("p", &[("<zone>\"", 1), ("x", 1)]);
        assert!(svg.contains("&lt;zone&gt;&quot;"));
        assert!(!svg.contains("<zone>"));
    }
}
