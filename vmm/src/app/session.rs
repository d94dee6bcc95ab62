//! One VM run as the CLI drives it: open the outputs, build and start the
//! VM, forward signals, serve the API if asked, let a controller (the
//! `watch` loop, say) work while the VM runs, then turn how it ended into
//! stderr lines, the report and the exit code.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AppError;
use super::observer::AppObserver;
use super::outputs::Outputs;
use crate::api::ApiServer;
use crate::builder;
use crate::builder::Machine;
use crate::cli::VmArgs;
use crate::config::VmConfig;
use crate::devices::records::Record;
use crate::exit_status;
use crate::migration::receive::{self, Handover};
use crate::migration::snapshot;
use crate::migration::transport::{Address, Listener};
use crate::output::STALL_LIMIT;
use crate::output::Sink;
use crate::report::RunReport;
use crate::runner::{self, RunOutcome, StopReason, VmHandle};
use crate::signals;
use crossbeam_channel::{Receiver, bounded};

/// What kind of run this is.
pub struct Session<'a> {
    /// The subcommand, for the report.
    pub name: &'static str,
    pub args: &'a VmArgs,
    /// Words put first on the guest command line (`mode=...`).
    pub guest_words: String,
    /// Count `plan`/`test` records and give a verdict.
    pub selftest: bool,
    /// How long the guest may run when `--timeout` is not given.
    pub default_timeout: Option<Duration>,
    pub api_sock: Option<PathBuf>,
    /// The guest console goes to stderr (stdout carries the command's own
    /// results).
    pub console_on_stderr: bool,
    /// Record types the controller wants from the start of the run.
    pub subscribe: &'a [&'a str],
    pub arrival: Arrival,
}

/// Where the guest comes from.
pub enum Arrival {
    /// Boot the kernel.
    Boot,
    /// Wait for a live migration at this address.
    Incoming(Address),
    /// Restore a full snapshot and its diffs.
    Restore(Vec<PathBuf>),
}

/// Why a phase without a VM yet should end: a signal, or `--timeout`.
fn interruption(deadline: Option<Instant>) -> impl Fn() -> Option<String> {
    move || {
        if let Some(sig) = crate::signals::take_pending() {
            return Some(format!("signal {sig}"));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Some("--timeout expired".into());
        }
        None
    }
}

/// What a controller gets: the running VM, records it subscribed to, and
/// stdout for its own results (shared with `--records -`/`--report -`, so
/// lines do not interleave mid-line).
pub struct Controls<'a> {
    pub vm: &'a VmHandle,
    pub records: Vec<Receiver<Record>>,
    pub stdout: &'a Sink,
}

impl Session<'_> {
    /// Runs the VM; `controller` runs on this thread meanwhile and may end
    /// the run with `VmHandle::stop(StopReason::Requested(..))`, giving the
    /// exit code it returns.
    pub fn run(
        self,
        process_start: Instant,
        controller: impl FnOnce(Controls) -> Option<u8>,
    ) -> Result<u8, AppError> {
        signals::block_termination_signals();
        let mut config = self.args.to_config();
        config.cmdline = format!("{} {}", self.guest_words, config.cmdline)
            .trim()
            .to_string();
        let outputs = Outputs::open(
            &self.args.records,
            &self.args.report,
            self.console_on_stderr,
        )?;
        let api = self.api_sock.as_deref().map(ApiServer::bind).transpose()?;
        let timeout = config
            .timeout_secs
            .map(Duration::from_secs_f64)
            .or(self.default_timeout);
        let (machine, handover, mut moved) = self.arrive(
            &config,
            outputs.console.clone(),
            timeout.map(|t| process_start + t),
        )?;
        let observer = AppObserver::new(self.selftest, outputs.records.clone());
        let (subscriptions, receivers): (Vec<_>, Vec<_>) = self
            .subscribe
            .iter()
            .map(|kind| {
                let (tx, rx) = bounded(16);
                ((kind.to_string(), tx), rx)
            })
            .unzip();
        let running = runner::start(machine, timeout, observer, subscriptions);
        if let Some(handover) = handover {
            let report = handover.resumed();
            eprintln!(
                "writewatch: the guest arrived ({} pages in {} rounds); downtime {:.1} ms",
                report.pages, report.rounds, report.downtime_ms
            );
            moved.insert("incoming".into(), serde_json::json!(report));
        }
        let handle = running.handle();
        signals::forward_to(handle.clone());
        let api = api.map(|api| api.serve(handle.clone()));
        let controller_code = controller(Controls {
            vm: &handle,
            records: receivers,
            stdout: &outputs.stdout,
        });
        drop(handle);
        let (outcome, observer) = running.wait();
        if let (Some(api), StopReason::Migrated(_)) = (&api, &outcome.reason) {
            api.linger_for_outcome(Duration::from_secs(2));
        }
        if let Some(status) = api.as_ref().and_then(|api| api.migration()) {
            moved.insert("outgoing".into(), serde_json::json!(status));
        }
        drop(api);
        observer.summarise();

        let mut exit_code = stop_code(&outcome, timeout, controller_code);
        if let (Some(tally), StopReason::GuestExit(code)) = (&observer.tally, &outcome.reason) {
            match tally.verdict(Some(*code)) {
                Ok(summary) => eprintln!("writewatch: selftest: {summary}"),
                Err(why) => {
                    eprintln!("writewatch: selftest failed: {why}");
                    exit_code = exit_code.max(exit_status::SELFTEST_FAILED);
                }
            }
        }
        // A run stopped by its timeout or a signal must end promptly even
        // with a slow reader; any other run waits for readers that read.
        let prompt = matches!(outcome.reason, StopReason::Timeout | StopReason::Signal(_));
        let deadline = prompt.then(|| Instant::now() + STALL_LIMIT);
        let mut complete = observer.records_unwritten == 0;
        complete &= outputs.finish_records(deadline);
        let failed_output = |complete: bool, code: u8| {
            if !complete && code < exit_status::OUTPUT_FAILED {
                exit_status::OUTPUT_FAILED
            } else {
                code
            }
        };
        exit_code = failed_output(complete, exit_code);
        let report = RunReport::new(
            self.name,
            &config,
            &outcome,
            exit_code,
            process_start,
            observer.tally.as_ref(),
            outputs.console.dropped(),
        );
        let report = RunReport {
            migration: moved,
            ..report
        };
        let json = serde_json::to_string_pretty(&report).unwrap_or_default();
        complete &= outputs.write_report(&json, deadline);
        complete &= outputs.finish_stdout(deadline);
        drop(outcome);
        Ok(failed_output(complete, exit_code))
    }
}

/// The machine to run, the hand-over to finish once it runs (migration),
/// and what the report says about how it came.
type Arrived = (
    Machine,
    Option<Handover>,
    serde_json::Map<String, serde_json::Value>,
);

impl Session<'_> {
    /// The machine to run: booted, arrived by migration (with the
    /// hand-over still to finish once it runs), or restored.
    fn arrive(
        &self,
        config: &VmConfig,
        console: Arc<crate::output::Sink>,
        deadline: Option<Instant>,
    ) -> Result<Arrived, AppError> {
        let mut moved = serde_json::Map::new();
        match &self.arrival {
            Arrival::Boot => Ok((builder::build(config, console)?, None, moved)),
            Arrival::Incoming(at) => {
                let listener = Listener::bind(at)
                    .map_err(|e| AppError::Arrival(format!("--incoming {at}: {e}")))?;
                eprintln!(
                    "writewatch: waiting for a migration at {}",
                    listener.local()
                );
                let interrupted = interruption(deadline);
                let arrived = receive::incoming(&listener, config, console, &interrupted).map_err(
                    |e| match e {
                        receive::ReceiveError::Interrupted(why) if why.starts_with("signal ") => {
                            AppError::Signal(why[7..].parse().unwrap_or(libc::SIGTERM))
                        }
                        e => AppError::Arrival(format!("the incoming migration failed: {e}")),
                    },
                )?;
                let (machine, handover) = arrived.split();
                Ok((machine, Some(handover), moved))
            }
            Arrival::Restore(files) => {
                let (machine, restored) = snapshot::restore(files, config, console)
                    .map_err(|e| AppError::Arrival(format!("--restore: {e}")))?;
                eprintln!(
                    "writewatch: restored {} pages from {} file(s) in {:.1} ms",
                    restored.pages,
                    restored.files.len(),
                    restored.ms
                );
                moved.insert("restored".into(), serde_json::json!(restored));
                Ok((machine, None, moved))
            }
        }
    }
}

/// Prints why the VM stopped when it was not a plain guest exit, and maps
/// the reason to the process exit code.
fn stop_code(outcome: &RunOutcome, timeout: Option<Duration>, controller: Option<u8>) -> u8 {
    let (code, headline) = match &outcome.reason {
        StopReason::GuestExit(value) => {
            let code = exit_status::for_guest_value(*value);
            if code == exit_status::GUEST_OUT_OF_RANGE {
                eprintln!(
                    "writewatch: the guest wrote exit value {value} ({value:#x}), outside 0..={}; exiting {code}",
                    exit_status::GUEST_CODE_LIMIT - 1
                );
            }
            // A controller's failure is not hidden by the guest's success.
            return match controller {
                Some(c) if code == 0 => c,
                _ => code,
            };
        }
        StopReason::Requested(_) => return controller.unwrap_or(0),
        StopReason::Migrated(to) => {
            eprintln!("writewatch: the guest migrated to {to}; it runs there now");
            return controller.unwrap_or(0);
        }
        StopReason::Signal(sig) => {
            eprintln!("writewatch: stopped by signal {sig}; the guest was stopped cleanly");
            return signals::exit_code(*sig);
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
