//! The `writewatch` command. Errors are one line on stderr and a non-zero
//! exit code (see docs/CLI.md); nothing a user types may end in a panic.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use clap::error::ErrorKind;
use writewatch::app;
use writewatch::cli::Cli;
use writewatch::exit_status::{USAGE, VMM_ERROR};

fn main() -> ExitCode {
    let process_start = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        eprintln!("writewatch: internal error: {message}");
        std::process::exit(VMM_ERROR.into());
    }));
    // `scenario --host` starts this program again as its Linux oracle.
    if std::env::args().nth(1).as_deref() == Some(writewatch::scenario::host::ORACLE_ARG) {
        writewatch::scenario::host::serve_oracle();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(USAGE);
        }
        Err(e) => {
            let text = e.to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("writewatch: {}", first.trim_start_matches("error: "));
            return ExitCode::from(USAGE);
        }
    };
    match app::execute(cli.command, process_start) {
        Ok(code) => ExitCode::from(code),
        Err(app::AppError::Usage(why)) => {
            eprintln!("writewatch: {why}");
            ExitCode::from(USAGE)
        }
        Err(app::AppError::Signal(sig)) => {
            eprintln!("writewatch: stopped by signal {sig} before the guest ran");
            ExitCode::from(writewatch::signals::exit_code(sig))
        }
        Err(e) => {
            eprintln!("writewatch: error: {e}");
            ExitCode::from(VMM_ERROR)
        }
    }
}
