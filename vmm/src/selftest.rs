//! The host side of `writewatch selftest`: counting the guest's `plan` and
//! `test` records and deciding the verdict. The guest's exit code alone is
//! not trusted: a kernel that stops early or skips tests must not pass.

use crate::devices::records::Record;

/// The self-test results seen so far.
#[derive(Debug, Default)]
pub struct SelftestTally {
    pub planned: Option<u64>,
    results: Vec<(String, bool)>,
}

impl SelftestTally {
    /// Takes one record; records of other types are ignored.
    pub fn observe(&mut self, record: &Record) {
        match record.kind.as_str() {
            "plan" => self.planned = record.get("count").and_then(|c| c.as_u64()),
            "test" => {
                let name = record
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("(unnamed)")
                    .to_string();
                let ok = record.get("ok").and_then(|o| o.as_bool()).unwrap_or(false);
                self.results.push((name, ok));
            }
            _ => {}
        }
    }

    pub fn passed(&self) -> u64 {
        self.results.iter().filter(|(_, ok)| *ok).count() as u64
    }

    pub fn failed_names(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// `Ok` with a summary when a plan arrived and every planned test ran and
    /// passed; `Err` with the reason otherwise.
    pub fn verdict(&self, guest_exit: Option<u32>) -> Result<String, String> {
        let Some(planned) = self.planned else {
            return Err("the guest never announced a test plan".into());
        };
        let ran = self.results.len() as u64;
        let failed = self.failed_names();
        if !failed.is_empty() {
            return Err(format!(
                "{} of {ran} tests failed: {}",
                failed.len(),
                failed.join(", ")
            ));
        }
        if ran != planned {
            return Err(format!("{ran} of {planned} planned tests reported"));
        }
        if guest_exit != Some(0) {
            return Err(format!(
                "all {ran} tests passed but the guest exited with {guest_exit:?}"
            ));
        }
        Ok(format!("{ran} passed, 0 failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).unwrap();
        let kind = body["type"].as_str().unwrap().to_string();
        Record { kind, body }
    }

    fn tally(records: &[&str]) -> SelftestTally {
        let mut t = SelftestTally::default();
        for r in records {
            t.observe(&record(r));
        }
        t
    }

    const PLAN2: &str = r#"{"type":"plan","count":2}"#;
    const OK_A: &str = r#"{"type":"test","n":1,"name":"a","ok":true}"#;
    const OK_B: &str = r#"{"type":"test","n":2,"name":"b","ok":true}"#;
    const BAD_B: &str = r#"{"type":"test","n":2,"name":"b","ok":false}"#;

    #[test]
    fn all_planned_tests_passing_passes() {
        assert_eq!(
            tally(&[PLAN2, OK_A, OK_B]).verdict(Some(0)),
            Ok("2 passed, 0 failed".into())
        );
    }

    #[test]
    fn a_failure_missing_tests_or_a_bad_exit_fails() {
        assert!(
            tally(&[PLAN2, OK_A, BAD_B])
                .verdict(Some(0))
                .unwrap_err()
                .contains("b")
        );
        assert!(tally(&[PLAN2, OK_A]).verdict(Some(0)).is_err());
        assert!(tally(&[OK_A, OK_B]).verdict(Some(0)).is_err());
        assert!(tally(&[PLAN2, OK_A, OK_B]).verdict(Some(1)).is_err());
        assert!(tally(&[PLAN2, OK_A, OK_B]).verdict(None).is_err());
    }
}
