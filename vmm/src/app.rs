//! What each subcommand does, from parsed arguments to an exit code.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::{self, BuildError};
use crate::cli::{Command, VmArgs};
use crate::exit_status;
use crate::output::{Destination, OpenError, Sink, SinkOutcome};
use crate::report::RunReport;
use crate::runner::{self, RunOutcome, StopReason};
use crate::selftest::SelftestTally;

/// How long `selftest` lets the guest run unless `--timeout` says otherwise.
const SELFTEST_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Bad records warned about one by one; the rest are counted.
const BAD_RECORD_WARNINGS: u64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Output(#[from] OpenError),
}

/// Runs `command`; returns the process exit code.
pub fn execute(command: Command, process_start: Instant) -> Result<u8, AppError> {
    match command {
        Command::Run(args) => run_vm("run", &args, None, process_start),
        Command::Selftest(args) => run_vm("selftest", &args, Some("selftest"), process_start),
    }
}

/// The outputs of one run. `--records -` and `--report -` share the stdout
/// sink with the console, so what reaches stdout keeps its order.
struct Outputs {
    stdout: Arc<Sink>,
    records: Option<Arc<Sink>>,
    report: Option<Arc<Sink>>,
}

impl Outputs {
    /// Opens every output before the guest boots, so a bad path fails first.
    fn open(args: &VmArgs) -> Result<Self, OpenError> {
        let stdout = Arc::new(Sink::stdout());
        let open = |path: &Option<std::path::PathBuf>| -> Result<Option<Arc<Sink>>, OpenError> {
            match path.as_deref().map(Destination::from_arg) {
                None => Ok(None),
                Some(Destination::Stdout) => Ok(Some(stdout.clone())),
                Some(Destination::File(path)) => Ok(Some(Arc::new(Sink::create(&path)?))),
            }
        };
        let records = open(&args.records)?;
        let report = open(&args.report)?;
        Ok(Outputs {
            stdout,
            records,
            report,
        })
    }

    fn separate(&self, sink: &Option<Arc<Sink>>) -> Option<Arc<Sink>> {
        sink.clone().filter(|s| !Arc::ptr_eq(s, &self.stdout))
    }
}

fn run_vm(
    name: &'static str,
    args: &VmArgs,
    mode: Option<&str>,
    process_start: Instant,
) -> Result<u8, AppError> {
    let config = args.to_config(mode);
    let is_selftest = mode == Some("selftest");
    let outputs = Outputs::open(args)?;
    let machine = builder::build(&config, outputs.stdout.clone())?;
    let timeout = config
        .timeout_secs
        .map(Duration::from_secs_f64)
        .or(is_selftest.then_some(SELFTEST_DEFAULT_TIMEOUT));

    let mut tally = SelftestTally::default();
    let mut records_unwritten = 0u64;
    let mut bad_records = 0u64;
    let outcome = runner::run(
        machine,
        timeout,
        |record, check| {
            if is_selftest {
                tally.observe(record);
            }
            if let Some(sink) = &outputs.records {
                let mut line = Vec::with_capacity(record.line.len() + 1);
                line.extend_from_slice(&record.line);
                line.push(b'\n');
                if sink.push(&line, || check.due()).is_err() {
                    records_unwritten += 1;
                }
            }
        },
        |bad| {
            bad_records += 1;
            if bad_records <= BAD_RECORD_WARNINGS {
                eprintln!("writewatch: warning: ignoring a bad record from the guest: {bad}");
            }
        },
    );
    if bad_records > BAD_RECORD_WARNINGS {
        eprintln!(
            "writewatch: warning: {} more bad records were ignored without a warning each",
            bad_records - BAD_RECORD_WARNINGS
        );
    }
    let mut exit_code = report_stop(&outcome, timeout);
    if let (true, StopReason::GuestExit(code)) = (is_selftest, &outcome.reason) {
        match tally.verdict(Some(*code)) {
            Ok(summary) => eprintln!("writewatch: selftest: {summary}"),
            Err(why) => {
                eprintln!("writewatch: selftest failed: {why}");
                exit_code = exit_code.max(exit_status::SELFTEST_FAILED);
            }
        }
    }

    // A run that timed out must end promptly even with a slow reader; any
    // other run waits for readers that keep reading.
    let flush_deadline = (outcome.reason == StopReason::Timeout)
        .then(|| Instant::now() + crate::output::STALL_LIMIT);
    let mut complete = true;
    if records_unwritten > 0 {
        complete = false;
        eprintln!(
            "writewatch: error: {records_unwritten} records were not written to {}: it was not being read",
            outputs.records.as_ref().map_or("", |s| s.name())
        );
    }
    if let Some(records) = outputs.separate(&outputs.records) {
        complete &= check_output("--records", &records.finish(flush_deadline));
    }
    let failed_output = |complete: bool, code: u8| {
        if !complete && code < exit_status::OUTPUT_FAILED {
            exit_status::OUTPUT_FAILED
        } else {
            code
        }
    };
    exit_code = failed_output(complete, exit_code);
    if let Some(report_sink) = &outputs.report {
        let report = RunReport::new(
            name,
            &config,
            &outcome,
            exit_code,
            process_start,
            is_selftest.then_some(&tally),
            outputs.stdout.dropped(),
        );
        let mut json = serde_json::to_string_pretty(&report).unwrap_or_default();
        json.push('\n');
        if report_sink.push(json.as_bytes(), || true).is_err() {
            complete = false;
            eprintln!(
                "writewatch: error: the run report was not written to {}: it was not being read",
                report_sink.name()
            );
        } else if let Some(report_sink) = outputs.separate(&outputs.report) {
            complete &= check_output("--report", &report_sink.finish(flush_deadline));
        }
    }
    let stdout = outputs.stdout.finish(flush_deadline);
    if stdout.dropped + stdout.unwritten > 0 && stdout.error.is_none() {
        eprintln!(
            "writewatch: warning: {} bytes of guest console output were lost: stdout was not being read ({} dropped while the guest ran, {} not written at exit)",
            stdout.dropped + stdout.unwritten,
            stdout.dropped,
            stdout.unwritten
        );
    }
    // Console output alone is best-effort, like a serial line; records or a
    // report on stdout are not.
    let carries_data = |sink: &Option<Arc<Sink>>| {
        sink.as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &outputs.stdout))
    };
    if carries_data(&outputs.records) || carries_data(&outputs.report) {
        complete &= check_output("stdout", &stdout);
    }
    drop(outcome);
    Ok(failed_output(complete, exit_code))
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

/// Prints why the VM stopped when it was not a plain guest exit, and maps
/// the reason to the process exit code.
fn report_stop(outcome: &RunOutcome, timeout: Option<Duration>) -> u8 {
    let (code, headline) = match &outcome.reason {
        StopReason::GuestExit(value) => {
            let code = exit_status::for_guest_value(*value);
            if code == exit_status::GUEST_OUT_OF_RANGE {
                eprintln!(
                    "writewatch: the guest wrote exit value {value} ({value:#x}), outside 0..={}; exiting {code}",
                    exit_status::GUEST_CODE_LIMIT - 1
                );
            }
            return code;
        }
        StopReason::Timeout => (
            exit_status::TIMEOUT,
            format!(
                "the guest did not finish within {:.1}s (--timeout); vCPU state:",
                timeout.unwrap_or_default().as_secs_f64()
            ),
        ),
        StopReason::TripleFault { vcpu } => (
            exit_status::TRIPLE_FAULT,
            format!("the guest triple-faulted on vCPU {vcpu} (KVM_EXIT_SHUTDOWN); vCPU state:"),
        ),
        StopReason::KvmFailure { vcpu, detail } => (
            exit_status::KVM_FAILURE,
            format!("KVM could not run vCPU {vcpu}: {detail}; vCPU state:"),
        ),
    };
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "writewatch: {headline}");
    for dump in &outcome.dumps {
        let _ = write!(err, "{dump}");
    }
    code
}
