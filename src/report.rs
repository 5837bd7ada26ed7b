//! The answer's model: plain data copied out of nginx and the kernel, and its
//! JSON form. Nothing here touches nginx, so it is unit-tested on its own.

use serde::Serialize;

use crate::alloc_guard::FallibleBuffer;

use crate::breakdown::{Breakdown, VirtualSplit};
use crate::lua::Lua;
use crate::pools::Pools;
use crate::procfs::ProcStatus;
use crate::server::{Server, ServerProcess};
pub use crate::source_error::SourceError;
use crate::zones::Zone;

/// Version of the JSON shape. Raised only when a field changes meaning or goes away;
/// new fields do not raise it.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub nginx: NginxInfo,
    pub collected_at_ms: u64,
    pub process: ProcessMemory,
    #[serde(rename = "virtual")]
    pub virtual_split: VirtualSplit,
    pub breakdown: Breakdown,
    pub zones: Vec<Zone>,
    pub lua: Lua,
    pub pools: Pools,
    /// Every process of this nginx, whichever worker answers.
    pub processes: Vec<ServerProcess>,
    pub server: Server,
    /// Each process's growth per series, fitted over its history.
    pub trends: Vec<crate::history::ProcessTrends>,
    /// Each zone's used bytes over time (one worker records the zones).
    pub zone_trends: Vec<crate::history::ZoneTrend>,
    /// `?history=1` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<crate::history::History>,
    /// What the figures mean, most severe first (empty: no rule fired).
    pub findings: Vec<crate::findings::Finding>,
    pub errors: Vec<SourceError>,
}

/// The answer to `?zone=NAME`: the same envelope, with that zone alone.
#[derive(Debug, Serialize)]
pub struct ZoneReport {
    pub schema: u32,
    pub nginx: NginxInfo,
    pub collected_at_ms: u64,
    pub zones: Vec<Zone>,
    pub errors: Vec<SourceError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NginxInfo {
    pub version: String,
    pub module_version: &'static str,
    pub pid: u32,
    pub worker: u64,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A worker process under a master.
    Worker,
    /// `master_process off`: one process serves everything.
    Single,
    /// Any other process type (not expected to serve requests).
    Other,
}

/// Whole-process figures: the counters of `/proc/self/status`, as parsed.
pub type ProcessMemory = ProcStatus;

/// Reads the process section from the text of `/proc/self/status` (or the error
/// met reading it), noting in `errors` whatever could not be had.
pub fn process_memory(
    status_text: std::io::Result<String>,
    errors: &mut Vec<SourceError>,
) -> ProcessMemory {
    const SOURCE: &str = "/proc/self/status";
    match status_text {
        Ok(text) => {
            let (status, unreadable) = ProcStatus::parse(&text);
            if !unreadable.is_empty() {
                errors.push(SourceError::new(
                    SOURCE,
                    format!("missing or malformed: {}", unreadable.join(", ")),
                ));
            }
            status
        }
        Err(err) => {
            errors.push(SourceError::new(SOURCE, err.to_string()));
            ProcessMemory::default()
        }
    }
}

impl Report {
    pub fn to_json(&self) -> Option<Vec<u8>> {
        to_json(self)
    }
}

impl ZoneReport {
    /// One zone, with the errors about it.
    pub fn new(
        nginx: NginxInfo,
        collected_at_ms: u64,
        zone: Zone,
        errors: Vec<SourceError>,
    ) -> ZoneReport {
        ZoneReport {
            schema: SCHEMA_VERSION,
            nginx,
            collected_at_ms,
            zones: vec![zone],
            errors,
        }
    }

    pub fn to_json(&self) -> Option<Vec<u8>> {
        to_json(self)
    }
}

/// Compact, into a buffer that grows fallibly (`?history=1` answers grow with
/// the history kept). Plain structs of numbers and strings: the only error is
/// memory.
fn to_json(value: &impl Serialize) -> Option<Vec<u8>> {
    use std::io::Write;
    let mut body = FallibleBuffer::default();
    body.0.try_reserve(16 << 10).ok()?;
    serde_json::to_writer(&mut body, value).ok()?;
    body.write_all(b"\n").ok()?;
    Some(body.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::breakdown::{Depth, Inputs};
    use serde_json::Value;

    fn nginx() -> NginxInfo {
        NginxInfo {
            version: "1.22.1".into(),
            module_version: "0.1.0",
            pid: 4242,
            worker: 1,
            role: Role::Worker,
        }
    }

    pub(crate) fn sample_report(process: ProcessMemory, errors: Vec<SourceError>) -> Report {
        let lua = Lua::default();
        let inputs = Inputs {
            depth: Depth::Default,
            process: &process,
            maps: &Ok(Vec::new()),
            smaps: None,
            glibc: Err("not glibc".into()),
            zones: &[],
            lua: &lua,
            stacks: Ok(Vec::new()),
            other_allocators: Ok(None),
            mapped_chunks: &[],
            program_data: Ok(Default::default()),
            program_ranges: &Default::default(),
        };
        let breakdown = Breakdown::build(inputs, &mut Vec::new());
        Report {
            schema: SCHEMA_VERSION,
            nginx: nginx(),
            collected_at_ms: 1_700_000_000_000,
            virtual_split: VirtualSplit::from_process(&process),
            breakdown,
            process,
            zones: Vec::new(),
            lua,
            pools: Pools::from_sample(&Default::default()),
            processes: Vec::new(),
            server: Default::default(),
            trends: Vec::new(),
            zone_trends: Vec::new(),
            history: None,
            findings: Vec::new(),
            errors,
        }
    }

    #[test]
    fn json_has_every_field_with_its_type() {
        let mut errors = Vec::new();
        let status = include_str!("../testdata/proc_status_nginx_worker.txt");
        let process = process_memory(Ok(status.to_string()), &mut errors);
        assert!(errors.is_empty());
        let v: Value =
            serde_json::from_slice(&sample_report(process, errors).to_json().unwrap()).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["nginx"]["version"], "1.22.1");
        assert_eq!(v["nginx"]["pid"], 4242);
        assert_eq!(v["nginx"]["worker"], 1);
        assert_eq!(v["nginx"]["role"], "worker");
        assert!(v["collected_at_ms"].is_u64());
        for key in [
            "virtual_bytes",
            "resident_bytes",
            "resident_anon_bytes",
            "resident_file_bytes",
            "resident_shmem_bytes",
            "swap_bytes",
            "peak_virtual_bytes",
            "peak_resident_bytes",
            "threads",
        ] {
            assert!(v["process"][key].is_u64(), "{key}");
        }
        assert_eq!(v["zones"], Value::Array(vec![]));
        assert_eq!(v["errors"], Value::Array(vec![]));
    }

    #[test]
    fn zone_only_answer_has_that_zone_and_its_errors() {
        use crate::zones::ZoneSample;
        let sample = ZoneSample {
            name: "b".into(),
            owner: None,
            size_bytes: 8192,
            page_size_bytes: 4096,
            resident_pages: Err("no".into()),
            resident_age_ms: 0,
            slab: Err("lock held by another process".into()),
        };
        let mut errors = Vec::new();
        let zone = sample.to_zone(&mut errors);
        let v: Value =
            serde_json::from_slice(&ZoneReport::new(nginx(), 1, zone, errors).to_json().unwrap())
                .unwrap();
        assert_eq!(v["zones"].as_array().unwrap().len(), 1);
        assert_eq!(v["zones"][0]["name"], "b");
        assert_eq!(v["zones"][0]["size_bytes"], 8192);
        assert!(v["zones"][0]["slab"].is_null());
        assert!(v.get("process").is_none());
        let errs = v["errors"].as_array().unwrap();
        assert_eq!(errs.len(), 2);
        assert!(errs.iter().all(|e| e["source"] == "zone b"));
    }

    #[test]
    fn unreadable_status_gives_nulls_and_one_error() {
        let mut errors = Vec::new();
        let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let process = process_memory(Err(err), &mut errors);
        let v: Value =
            serde_json::from_slice(&sample_report(process, errors).to_json().unwrap()).unwrap();
        assert!(v["process"]["resident_bytes"].is_null());
        assert!(v["process"]["threads"].is_null());
        assert_eq!(v["errors"][0]["source"], "/proc/self/status");
        assert!(v["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("ermission"));
    }

    #[test]
    fn a_missing_key_is_null_and_named() {
        let mut errors = Vec::new();
        let process = process_memory(Ok("VmRSS:\t100 kB\n".into()), &mut errors);
        assert_eq!(process.resident_bytes, Some(102_400));
        assert_eq!(process.swap_bytes, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].error.contains("VmSwap"));
        assert!(!errors[0].error.contains("VmRSS"));
    }
}
