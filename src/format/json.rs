//! The JSON form of an answer: serde over the model, into a buffer that
//! grows fallibly.

use serde::Serialize;

use crate::alloc_guard::FallibleBuffer;
use crate::model::report::{Report, ZoneReport};

impl Report {
    pub fn to_json(&self) -> Option<Vec<u8>> {
        to_json(self)
    }
}

impl ZoneReport {
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
mod tests {
    use crate::analysis::assemble::process_memory;
    use crate::analysis::assemble::tests::{nginx, sample_report};
    use crate::analysis::zones::SlabError;
    use crate::model::report::ZoneReport;
    use crate::sources::errors::ResidencyError;
    use serde_json::Value;

    #[test]
    fn json_has_every_field_with_its_type() {
        let mut errors = Vec::new();
        let status = include_str!("../../testdata/proc_status_nginx_worker.txt");
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
        use crate::analysis::zones::ZoneSample;
        let sample = ZoneSample {
            name: "b".into(),
            owner: None,
            size_bytes: 8192,
            page_size_bytes: 4096,
            resident_pages: Err(ResidencyError::NotMeasured),
            resident_age_ms: 0,
            slab: Err(SlabError::LockHeld { wait_us: 200 }),
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
}
