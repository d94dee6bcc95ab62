//! The host side of `writewatch selftest`: counting the guest's `plan` and
//! `test` records and deciding the verdict. The guest's exit code alone is
//! not trusted: a kernel that stops early or skips tests must not pass.

use serde::Deserialize;
use serde_json::Value;

use crate::devices::records::Record;

/// The most failed-test names kept; the rest are counted.
pub const MAX_FAILED_NAMES: usize = 20;
/// Names are cut to this many bytes: a guest sets their length, and the
/// verdict line and the report must not grow with it.
pub const MAX_NAME_BYTES: usize = 120;

/// The self-test results seen so far, in space bounded whatever the guest
/// sends: counts, plus the first few failed names, shortened.
#[derive(Debug, Default)]
pub struct SelftestTally {
    pub planned: Option<u64>,
    ran: u64,
    failed: u64,
    failed_names: Vec<String>,
}

/// The fields of `plan` and `test` records the tally reads. Values are kept
/// as JSON so that a field of the wrong type reads as missing instead of
/// making the whole record unreadable.
#[derive(Deserialize)]
struct TallyFields {
    count: Option<Value>,
    name: Option<Value>,
    ok: Option<Value>,
}

impl SelftestTally {
    /// Takes one record; records of other types are ignored.
    pub fn observe(&mut self, record: &Record) {
        if !matches!(record.kind.as_str(), "plan" | "test") {
            return;
        }
        let fields = record.fields::<TallyFields>();
        let field = |pick: fn(&TallyFields) -> &Option<Value>| {
            fields.as_ref().and_then(|f| pick(f).as_ref())
        };
        if record.kind == "plan" {
            self.planned = field(|f| &f.count).and_then(Value::as_u64);
            return;
        }
        self.ran += 1;
        if field(|f| &f.ok).and_then(Value::as_bool) == Some(true) {
            return;
        }
        self.failed += 1;
        if self.failed_names.len() < MAX_FAILED_NAMES {
            let name = field(|f| &f.name)
                .and_then(Value::as_str)
                .unwrap_or("(unnamed)");
            self.failed_names.push(shorten(name));
        }
    }

    pub fn passed(&self) -> u64 {
        self.ran - self.failed
    }

    pub fn failed_count(&self) -> u64 {
        self.failed
    }

    /// The first `MAX_FAILED_NAMES` failed tests, names shortened.
    pub fn failed_names(&self) -> &[String] {
        &self.failed_names
    }

    /// `Ok` with a summary when a plan arrived and every planned test ran and
    /// passed; `Err` with the reason otherwise.
    pub fn verdict(&self, guest_exit: Option<u32>) -> Result<String, String> {
        let Some(planned) = self.planned else {
            return Err("the guest never announced a test plan".into());
        };
        let ran = self.ran;
        if self.failed > 0 {
            let unnamed = self.failed - self.failed_names.len() as u64;
            let more = if unnamed > 0 {
                format!(" and {unnamed} more")
            } else {
                String::new()
            };
            return Err(format!(
                "{} of {ran} tests failed: {}{more}",
                self.failed,
                self.failed_names.join(", ")
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

/// `name` cut to at most `MAX_NAME_BYTES` on a character boundary, with
/// control characters made visible, marked with "..." when cut.
fn shorten(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        crate::devices::records::parse_record(json.as_bytes().to_vec()).unwrap()
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

    #[test]
    fn a_flood_of_long_names_stays_small() {
        let long = "x".repeat(60_000);
        let mut t = tally(&[PLAN2]);
        for n in 0..1000 {
            t.observe(&record(&format!(
                r#"{{"type":"test","n":{n},"name":"{long}","ok":false}}"#
            )));
        }
        assert_eq!(t.failed_count(), 1000);
        assert_eq!(t.failed_names().len(), MAX_FAILED_NAMES);
        assert!(
            t.failed_names()
                .iter()
                .all(|n| n.len() <= MAX_NAME_BYTES + 3)
        );
        let why = t.verdict(Some(0)).unwrap_err();
        assert!(why.len() < 4000, "{} bytes", why.len());
        assert!(why.ends_with("and 980 more"), "{why}");
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_missing() {
        let t = tally(&[
            r#"{"type":"plan","count":"two"}"#,
            r#"{"type":"test","name":5,"ok":"yes"}"#,
        ]);
        assert_eq!(t.planned, None);
        assert_eq!(t.failed_names(), ["(unnamed)"]);
        let t = tally(&[r#"{"type":"test","name":"a\u0007b","ok":0}"#]);
        assert_eq!(t.failed_names(), ["a?b"]);
    }
}
