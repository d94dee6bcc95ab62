//! What each subcommand does, from parsed arguments to an exit code.

mod ctl;
mod dirty_rate;
mod experiment;
mod migrate;
mod observer;
mod outputs;
mod session;
mod watch;

use std::time::{Duration, Instant};

use crate::api::ApiError;
use crate::builder::BuildError;
use crate::cli::{Command, ExperimentCommand};
use crate::output::OpenError;
use session::{Arrival, Session};

/// How long `selftest` lets the guest run unless `--timeout` says otherwise.
const SELFTEST_DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Output(#[from] OpenError),
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Options that make no sense together (exit 2, like clap's own).
    #[error("{0}")]
    Usage(String),
    /// The guest did not arrive (migration) or could not be restored.
    #[error("{0}")]
    Arrival(String),
    /// SIGINT/SIGTERM before there was a guest to stop.
    #[error("stopped by signal {0} before the guest ran")]
    Signal(i32),
}

/// Runs `command`; returns the process exit code.
pub fn execute(command: Command, process_start: Instant) -> Result<u8, AppError> {
    match command {
        Command::Run(run) => Session {
            name: "run",
            args: &run.vm,
            guest_words: String::new(),
            selftest: false,
            default_timeout: None,
            api_sock: run.api_sock.clone(),
            console_on_stderr: false,
            subscribe: &[],
            arrival: match (&run.incoming, run.restore.is_empty()) {
                (Some(at), _) => Arrival::Incoming(at.clone()),
                (None, false) => Arrival::Restore(run.restore.clone()),
                (None, true) => Arrival::Boot,
            },
        }
        .run(process_start, |_| None),
        Command::Selftest(args) => Session {
            name: "selftest",
            args: &args,
            guest_words: "mode=selftest".into(),
            selftest: true,
            default_timeout: Some(SELFTEST_DEFAULT_TIMEOUT),
            api_sock: None,
            console_on_stderr: false,
            subscribe: &[],
            arrival: Arrival::Boot,
        }
        .run(process_start, |_| None),
        Command::Watch(args) => watch::run(&args, process_start),
        Command::DirtyRate(args) => dirty_rate::run(&args, process_start),
        Command::Ctl(args) => Ok(ctl::run(&args)),
        Command::Migrate(args) => Ok(migrate::run(&args)),
        Command::Snapshot(args) => Ok(ctl::snapshot(&args)),
        Command::Experiment(ExperimentCommand::Migrate(args)) => experiment::migrate(&args),
        Command::Scenario(args) => crate::scenario::run(&args),
    }
}
