//! The metric writer: samples collected by family, each family written
//! once after its `# HELP` and `# TYPE`, label values quoted as the text
//! exposition format requires.

use std::collections::HashMap;
use std::fmt::Write;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::report::NginxInfo;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    /// The family's first and last samples (indexes into `samples`), linked
    /// through `Sample::next`.
    first: usize,
    last: usize,
}

/// A sample line, written where it came into `Metrics::lines`.
struct Sample {
    start: usize,
    end: usize,
    /// The family's next sample (`NONE`: none).
    next: usize,
}

const NONE: usize = usize::MAX;

/// Collects samples by family, so each family's samples come out together
/// after its `# HELP` and `# TYPE`. Every line goes into one buffer as it
/// comes (no allocation per family or sample); the answer is put together
/// family by family at the end.
pub struct Metrics {
    /// `pid="..",worker=".."`, the labels every sample starts with.
    base_labels: String,
    families: Vec<Family>,
    /// Family index by short name: one lookup per sample, whatever the count.
    index: HashMap<&'static str, usize, BuildHasherDefault<WordHasher>>,
    lines: String,
    samples: Vec<Sample>,
    /// Memory ran out for a line (the answer then fails, as a JSON one
    /// does): `lines` grows with the server, so it grows fallibly.
    short: bool,
}

/// A word at a time (FxHash's mix): the keys are our own short names, so no
/// flooding to resist. SipHash's setup, or FNV's byte-at-a-time chain of
/// multiplications, cost more than the sample's line.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x517c_c1b7_2722_0a95;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
        }
        let mut tail = [0u8; 8];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        let w = u64::from_le_bytes(tail) ^ rest.len() as u64;
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(SEED);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Families and samples an answer has (78 and 325 in the bench's), and the
/// bytes of its lines: room made once.
const FAMILIES: usize = 128;
const SAMPLES: usize = 512;
const LINES_BYTES: usize = 48 << 10;

impl Metrics {
    pub fn new(nginx: &NginxInfo) -> Metrics {
        Metrics {
            base_labels: format!("pid=\"{}\",worker=\"{}\"", nginx.pid, nginx.worker),
            families: Vec::with_capacity(FAMILIES),
            index: HashMap::with_capacity_and_hasher(FAMILIES, Default::default()),
            lines: String::with_capacity(LINES_BYTES),
            samples: Vec::with_capacity(SAMPLES),
            short: false,
        }
    }

    pub fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl Value,
    ) {
        self.add_labelled(name, kind, help, true, labels, value);
    }

    /// A sample with the answering worker's labels first (`base`), or without
    /// them: the server's series are the same whichever worker answers.
    pub fn add_labelled(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        base: bool,
        labels: &[(&str, &str)],
        value: impl Value,
    ) {
        // The line's longest form (every label value escaped throughout),
        // reserved fallibly: the pushes below then never allocate.
        let longest = 64
            + name.len()
            + self.base_labels.len()
            + labels
                .iter()
                .map(|(k, v)| k.len() + 2 * v.len() + 4)
                .sum::<usize>();
        if self.short
            || self.lines.try_reserve(longest).is_err()
            || self.samples.try_reserve(1).is_err()
        {
            self.short = true;
            return;
        }
        let start = self.lines.len();
        let out = &mut self.lines;
        out.push_str("nginx_memory_");
        out.push_str(name);
        if base || !labels.is_empty() {
            out.push('{');
            if base {
                out.push_str(&self.base_labels);
            }
            for (i, (k, v)) in labels.iter().enumerate() {
                if base || i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                push_escaped(out, v);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write_to(out);
        out.push('\n');
        self.link(name, kind, help, start);
    }

    /// The sample whose line starts at `start` in `lines` joins its family.
    fn link(&mut self, name: &'static str, kind: Kind, help: &'static str, start: usize) {
        let sample = self.samples.len();
        self.samples.push(Sample {
            start,
            end: self.lines.len(),
            next: NONE,
        });
        match self.index.get(name) {
            Some(&f) => {
                let last = self.families[f].last;
                self.samples[last].next = sample;
                self.families[f].last = sample;
            }
            None => {
                self.index.insert(name, self.families.len());
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    first: sample,
                    last: sample,
                });
            }
        }
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl Value,
    ) {
        self.add(name, Kind::Gauge, help, labels, value);
    }

    pub fn gauge_opt(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: Option<impl Value>,
    ) {
        if let Some(v) = value {
            self.gauge(name, help, labels, v);
        }
    }

    /// Gauges of the same labels, each written when it has a value.
    pub fn gauges(
        &mut self,
        labels: &[(&str, &str)],
        figures: &[(&'static str, &'static str, Option<u64>)],
    ) {
        for &(name, help, value) in figures {
            self.gauge_opt(name, help, labels, value);
        }
    }

    /// The answer; `None` when memory ran out for it.
    pub fn render(&self) -> Option<String> {
        // A family's HELP and TYPE lines: 51 bytes, its name twice, its help.
        let headers: usize = self
            .families
            .iter()
            .map(|f| f.help.len() + 2 * f.name.len() + 64)
            .sum();
        let mut out = String::new();
        if self.short || out.try_reserve(self.lines.len() + headers).is_err() {
            return None;
        }
        for f in &self.families {
            let kind = if f.kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            // Pieces pushed, not `writeln!`: its machinery cost more than
            // the bytes, twice per family.
            for piece in ["# HELP nginx_memory_", f.name, " ", f.help, "\n"] {
                out.push_str(piece);
            }
            for piece in ["# TYPE nginx_memory_", f.name, " ", kind, "\n"] {
                out.push_str(piece);
            }
            let mut at = f.first;
            while let Some(s) = self.samples.get(at) {
                out.push_str(&self.lines[s.start..s.end]);
                at = s.next;
            }
        }
        Some(out)
    }
}

/// A sample's value as the exposition format writes it: integers by hand
/// (most of an answer's values; `fmt`'s machinery cost more than the rest of
/// the line), anything else as `Display` writes it.
pub trait Value {
    fn write_to(&self, out: &mut String);
}

/// The decimal digits of `v`.
fn push_u64(out: &mut String, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or("0"));
}

macro_rules! unsigned_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                push_u64(out, *self as u64);
            }
        }
    )*};
}
unsigned_value!(u64, u32, u16, u8, usize);

macro_rules! signed_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                if *self < 0 {
                    out.push('-');
                }
                push_u64(out, (*self as i64).unsigned_abs());
            }
        }
    )*};
}
signed_value!(i64, i32);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

/// A label value as the exposition format quotes it.
fn push_escaped(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Kind, Metrics, Value};

    /// More lines than the room made at first (48 KiB), two families
    /// interleaved, label values to escape: every line once, each family's
    /// together after its header, in the order written.
    #[test]
    fn a_big_answer_grows_and_keeps_each_family_together() {
        let mut m = Metrics::new(&crate::analysis::assemble::tests::nginx());
        let zone = "z\"o\\n\ne".repeat(40);
        for i in 0..2_000u64 {
            let slot = i.to_string();
            let labels: &[(&str, &str)] = &[("zone", &zone), ("slot", &slot)];
            m.add("a_bytes", Kind::Gauge, "A.", labels, i);
            m.add_labelled("b_total", Kind::Counter, "B.", false, labels, -(i as i64));
        }
        let text = m.render().unwrap();
        assert!(text.len() > 2 * (48 << 10));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4 + 4_000);
        assert_eq!(lines[0], "# HELP nginx_memory_a_bytes A.");
        assert_eq!(lines[1], "# TYPE nginx_memory_a_bytes gauge");
        assert_eq!(lines[2_002], "# HELP nginx_memory_b_total B.");
        assert_eq!(lines[2_003], "# TYPE nginx_memory_b_total counter");
        let escaped = "z\\\"o\\\\n\\ne".repeat(40);
        for i in 0..2_000usize {
            assert!(lines[2 + i].starts_with("nginx_memory_a_bytes{pid=\""));
            assert!(lines[2 + i].ends_with(&format!("zone=\"{escaped}\",slot=\"{i}\"}} {i}")));
            assert_eq!(
                lines[2_004 + i],
                format!("nginx_memory_b_total{{zone=\"{escaped}\",slot=\"{i}\"}} -{i}")
                    .replace(" -0", " 0")
            );
        }
    }

    fn written(v: impl Value) -> String {
        let mut out = String::new();
        v.write_to(&mut out);
        out
    }

    #[test]
    fn values_as_display_writes_them() {
        for v in [0u64, 9, 10, 4096, 1 << 40, u64::MAX] {
            assert_eq!(written(v), v.to_string());
        }
        for v in [0i64, -1, -3, 42, i64::MIN, i64::MAX] {
            assert_eq!(written(v), v.to_string());
        }
        assert_eq!(written(i32::MIN), i32::MIN.to_string());
        assert_eq!(written(usize::MAX), usize::MAX.to_string());
        assert_eq!(written(0.25f64), "0.25");
        assert_eq!(written(7u32), "7");
    }
}
