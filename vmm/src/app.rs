//! What each subcommand does, from parsed arguments to an exit code.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::builder::{self, BuildError};
use crate::cli::{Command, VmArgs};
use crate::report::RunReport;
use crate::runner::{self, RunOutcome, StopReason};
use crate::selftest::SelftestTally;

/// Exit code when the VMM itself cannot start or run the guest.
pub const EXIT_VMM_ERROR: u8 = 125;
/// Exit code when `--timeout` expired.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit code when the guest triple-faulted.
pub const EXIT_TRIPLE_FAULT: u8 = 123;
/// Exit code when KVM failed to run the guest.
pub const EXIT_KVM_FAILURE: u8 = 122;
/// Exit code of `selftest` when tests failed or did not all run.
pub const EXIT_SELFTEST_FAILED: u8 = 1;
/// How long `selftest` lets the guest run unless `--timeout` says otherwise.
const SELFTEST_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot create {path}: {source}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Runs `command`; returns the process exit code.
pub fn execute(command: Command, process_start: Instant) -> Result<u8, AppError> {
    match command {
        Command::Run(args) => run_vm("run", &args, None, process_start),
        Command::Selftest(args) => run_vm("selftest", &args, Some("selftest"), process_start),
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
    let mut report_out = args.report.as_deref().map(open_output).transpose()?;
    let mut records_out = args.records.as_deref().map(open_output).transpose()?;
    let machine = builder::build(&config)?;
    let timeout = config
        .timeout_secs
        .map(Duration::from_secs_f64)
        .or(is_selftest.then_some(SELFTEST_DEFAULT_TIMEOUT));

    let mut tally = SelftestTally::default();
    let mut warnings_left = 10u32;
    let outcome = runner::run(
        machine,
        timeout,
        |record| {
            tally.observe(record);
            if let Some(out) = records_out.as_mut() {
                let _ = writeln!(out, "{}", record.to_json_line());
            }
        },
        |bad| {
            if warnings_left > 0 {
                warnings_left -= 1;
                eprintln!("writewatch: warning: ignoring a bad record from the guest: {bad}");
            }
        },
    );
    let _ = io::stdout().flush();
    let mut exit_code = report_stop(&outcome, timeout);
    if let (true, StopReason::GuestExit(code)) = (is_selftest, &outcome.reason) {
        match tally.verdict(Some(*code)) {
            Ok(summary) => eprintln!("writewatch: selftest: {summary}"),
            Err(why) => {
                eprintln!("writewatch: selftest failed: {why}");
                exit_code = EXIT_SELFTEST_FAILED;
            }
        }
    }
    if let Some(out) = report_out.as_mut() {
        let report = RunReport::new(
            name,
            &config,
            &outcome,
            exit_code,
            process_start,
            is_selftest.then_some(&tally),
        );
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        if writeln!(out, "{json}").is_err() {
            eprintln!("writewatch: warning: could not write the run report");
        }
    }
    drop(report_out);
    drop(outcome);
    Ok(exit_code)
}

/// Prints why the VM stopped when it was not a plain guest exit, and maps
/// the reason to the process exit code.
fn report_stop(outcome: &RunOutcome, timeout: Option<Duration>) -> u8 {
    let (code, headline) = match &outcome.reason {
        StopReason::GuestExit(code) => return (*code & 0xff) as u8,
        StopReason::Timeout => (
            EXIT_TIMEOUT,
            format!(
                "the guest did not finish within {:.1}s (--timeout); vCPU state:",
                timeout.unwrap_or_default().as_secs_f64()
            ),
        ),
        StopReason::TripleFault { vcpu } => (
            EXIT_TRIPLE_FAULT,
            format!("the guest triple-faulted on vCPU {vcpu} (KVM_EXIT_SHUTDOWN); vCPU state:"),
        ),
        StopReason::KvmFailure { vcpu, detail } => (
            EXIT_KVM_FAILURE,
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

/// Opens an output named on the command line: `-` is stdout.
fn open_output(path: &Path) -> Result<Box<dyn Write>, AppError> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdout()));
    }
    File::create(path)
        .map(|f| Box::new(io::BufWriter::new(f)) as Box<dyn Write>)
        .map_err(|source| AppError::Output {
            path: path.display().to_string(),
            source,
        })
}
