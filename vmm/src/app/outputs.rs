//! The outputs of one run and what became of them at the end: stdout (the
//! console), `--records` and `--report`. `--records -` and `--report -` share
//! the stdout sink with the console, so what reaches stdout keeps its order.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::output::{Destination, OpenError, Sink, SinkOutcome};

pub struct Outputs {
    pub stdout: Arc<Sink>,
    /// Where the guest console goes: stdout, or stderr when stdout carries
    /// a command's own results (`watch`, `dirty-rate`).
    pub console: Arc<Sink>,
    pub records: Option<Arc<Sink>>,
    pub report: Option<Arc<Sink>>,
}

impl Outputs {
    /// Opens every output before the guest boots, so a bad path fails first.
    pub fn open(
        records: &Option<PathBuf>,
        report: &Option<PathBuf>,
        console_on_stderr: bool,
    ) -> Result<Self, OpenError> {
        let stdout = Arc::new(Sink::stdout());
        let console = if console_on_stderr {
            Arc::new(Sink::stderr())
        } else {
            stdout.clone()
        };
        let open = |path: &Option<PathBuf>| -> Result<Option<Arc<Sink>>, OpenError> {
            match path.as_deref().map(Destination::from_arg) {
                None => Ok(None),
                Some(Destination::Stdout) => Ok(Some(stdout.clone())),
                Some(Destination::File(path)) => Ok(Some(Arc::new(Sink::create(&path)?))),
            }
        };
        let records = open(records)?;
        let report = open(report)?;
        Ok(Outputs {
            stdout,
            console,
            records,
            report,
        })
    }

    /// `sink` unless it is stdout.
    fn separate(&self, sink: &Option<Arc<Sink>>) -> Option<Arc<Sink>> {
        sink.clone().filter(|s| !Arc::ptr_eq(s, &self.stdout))
    }

    fn carries_data(&self, sink: &Option<Arc<Sink>>) -> bool {
        sink.as_ref().is_some_and(|s| Arc::ptr_eq(s, &self.stdout))
    }

    /// Finishes `--records` (when it is a file of its own); true when
    /// nothing was lost.
    pub fn finish_records(&self, deadline: Option<Instant>) -> bool {
        match self.separate(&self.records) {
            Some(records) => check_output("--records", &records.finish(deadline)),
            None => true,
        }
    }

    /// Queues the report and finishes it (when it is a file of its own);
    /// true when nothing was lost.
    pub fn write_report(&self, json: &str, deadline: Option<Instant>) -> bool {
        let Some(report) = &self.report else {
            return true;
        };
        let mut text = json.to_string();
        text.push('\n');
        if report.push(text.as_bytes(), || true).is_err() {
            eprintln!(
                "writewatch: error: the run report was not written to {}: it was not being read",
                report.name()
            );
            return false;
        }
        match self.separate(&self.report) {
            Some(report) => check_output("--report", &report.finish(deadline)),
            None => true,
        }
    }

    /// Finishes stdout (and the console, when it is elsewhere). Console
    /// output alone is best-effort, like a serial line (losses are a
    /// warning); records or a report on stdout are not.
    pub fn finish_stdout(&self, deadline: Option<Instant>) -> bool {
        if !Arc::ptr_eq(&self.console, &self.stdout) {
            warn_console_lost(&self.console.finish(deadline));
        }
        let stdout = self.stdout.finish(deadline);
        if Arc::ptr_eq(&self.console, &self.stdout) {
            warn_console_lost(&stdout);
        }
        // With the console elsewhere, stdout carries the command's results.
        let results = !Arc::ptr_eq(&self.console, &self.stdout);
        if results || self.carries_data(&self.records) || self.carries_data(&self.report) {
            check_output("stdout", &stdout)
        } else {
            true
        }
    }
}

fn warn_console_lost(console: &SinkOutcome) {
    if console.dropped + console.unwritten > 0 && console.error.is_none() {
        eprintln!(
            "writewatch: warning: {} bytes of guest console output were lost: its reader was not reading ({} dropped while the guest ran, {} not written at exit)",
            console.dropped + console.unwritten,
            console.dropped,
            console.unwritten
        );
    }
}

/// Says on stderr what an output lost; true when it lost nothing.
fn check_output(what: &str, outcome: &SinkOutcome) -> bool {
    if outcome.complete() {
        return true;
    }
    let why = match &outcome.error {
        Some(e) => format!("writing failed: {e}"),
        None => "nobody read it".to_string(),
    };
    eprintln!(
        "writewatch: error: {what}: {} bytes were not written ({why})",
        outcome.unwritten
    );
    false
}
