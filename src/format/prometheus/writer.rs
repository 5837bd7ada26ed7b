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
    /// The family's sample lines, written as they come: no allocation per sample.
    lines: String,
}

/// Collects samples by family, so each family's samples come out together
/// after its `# HELP` and `# TYPE`.
pub struct Metrics {
    /// `pid="..",worker=".."`, the labels every sample starts with.
    base_labels: String,
    families: Vec<Family>,
    /// Family index by short name: one lookup per sample, whatever the count.
    index: HashMap<&'static str, usize, BuildHasherDefault<Fnv1a>>,
}

/// FNV-1a: the keys are our own short names, so no flooding to resist, and
/// SipHash's setup cost more than the sample's line.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(crate::fnv::EMPTY)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = crate::fnv::extend(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Families an answer has about (78 in the bench's): room made once.
const FAMILIES: usize = 128;

/// Bytes a family's lines start with: most families have a line or two, so
/// they never grow.
const FAMILY_START_BYTES: usize = 192;

impl Metrics {
    pub fn new(nginx: &NginxInfo) -> Metrics {
        Metrics {
            base_labels: format!("pid=\"{}\",worker=\"{}\"", nginx.pid, nginx.worker),
            families: Vec::with_capacity(FAMILIES),
            index: HashMap::with_capacity_and_hasher(FAMILIES, Default::default()),
        }
    }

    pub fn add(
        &mut self,
        name: &'static str,
        kind: Kind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
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
        value: impl std::fmt::Display,
    ) {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.index.insert(name, self.families.len());
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    lines: String::with_capacity(FAMILY_START_BYTES),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[i].lines;
        out.push_str("nginx_memory_");
        out.push_str(name);
        if !base && labels.is_empty() {
            let _ = writeln!(out, " {value}");
            return;
        }
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
        out.push_str("} ");
        let _ = write!(out, "{value}");
        out.push('\n');
    }

    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: impl std::fmt::Display,
    ) {
        self.add(name, Kind::Gauge, help, labels, value);
    }

    pub fn gauge_opt(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: Option<impl std::fmt::Display>,
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

    pub fn render(&self) -> String {
        let bytes: usize = self
            .families
            .iter()
            .map(|f| f.lines.len() + f.help.len() + 64)
            .sum();
        let mut out = String::with_capacity(bytes);
        for f in &self.families {
            let kind = if f.kind == Kind::Counter {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP nginx_memory_{} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE nginx_memory_{} {kind}", f.name);
            out.push_str(&f.lines);
        }
        out
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
