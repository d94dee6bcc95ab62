//! What the CLI does with the guest's records while a VM runs: the
//! self-test tally, the `--records` output, and bounded warnings about bad
//! records.

use std::sync::Arc;

use crate::devices::records::{Record, RecordError};
use crate::output::Sink;
use crate::runner::Observer;
use crate::selftest::SelftestTally;

/// Bad records warned about one by one; the rest are counted.
const BAD_RECORD_WARNINGS: u64 = 10;

pub struct AppObserver {
    pub tally: Option<SelftestTally>,
    records: Option<Arc<Sink>>,
    /// Records that could not be written (the output stayed full).
    pub records_unwritten: u64,
    pub bad_records: u64,
    line: Vec<u8>,
}

impl AppObserver {
    pub fn new(selftest: bool, records: Option<Arc<Sink>>) -> Self {
        AppObserver {
            tally: selftest.then(SelftestTally::default),
            records,
            records_unwritten: 0,
            bad_records: 0,
            line: Vec::new(),
        }
    }

    /// Says how many bad records went unmentioned.
    pub fn summarise(&self) {
        if self.bad_records > BAD_RECORD_WARNINGS {
            eprintln!(
                "writewatch: warning: {} more bad records were ignored without a warning each",
                self.bad_records - BAD_RECORD_WARNINGS
            );
        }
        if self.records_unwritten > 0 {
            eprintln!(
                "writewatch: error: {} records were not written to {}: it was not being read",
                self.records_unwritten,
                self.records.as_ref().map_or("", |s| s.name())
            );
        }
    }
}

impl Observer for AppObserver {
    fn record(&mut self, record: &Record, last_chance: bool) -> bool {
        if let Some(sink) = &self.records {
            self.line.clear();
            self.line.extend_from_slice(&record.line);
            self.line.push(b'\n');
            if sink.push(&self.line, || true).is_err() {
                if !last_chance {
                    return false;
                }
                self.records_unwritten += 1;
            }
        }
        if let Some(tally) = &mut self.tally {
            tally.observe(record);
        }
        true
    }

    fn bad_record(&mut self, error: &RecordError) {
        self.bad_records += 1;
        if self.bad_records <= BAD_RECORD_WARNINGS {
            eprintln!("writewatch: warning: ignoring a bad record from the guest: {error}");
        }
    }
}
