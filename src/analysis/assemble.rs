//! Assembly: the loop's copies and the thread's measurements turned into
//! the answer and this worker's summary. No I/O: what was read comes in as
//! text or samples.

use crate::model::process::ProcessMemory;
use crate::model::report::{NginxInfo, ZoneReport, SCHEMA_VERSION};
use crate::model::source_error::SourceError;
use crate::model::zones::Zone;

/// Reads the process section from the text of `/proc/self/status` (or the error
/// met reading it), noting in `errors` whatever could not be had.
pub fn process_memory(
    status_text: std::io::Result<String>,
    errors: &mut Vec<SourceError>,
) -> ProcessMemory {
    const SOURCE: &str = "/proc/self/status";
    match status_text {
        Ok(text) => {
            let (status, unreadable) = ProcessMemory::parse(&text);
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::breakdown::Inputs;
    use crate::model::breakdown::Depth;
    use crate::model::breakdown::{Breakdown, VirtualSplit};
    use crate::model::lua::Lua;
    use crate::model::pools::Pools;
    use crate::model::report::{NginxInfo, Report, Role, SCHEMA_VERSION};
    use serde_json::Value;

    pub(crate) fn nginx() -> NginxInfo {
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
