//! `writewatch scenario`: scenario files (docs/SCENARIOS.md) run as a
//! process of the guest kernel or, with `--host`, as Linux processes on
//! this machine's kernel, with the same canonical transcript either way,
//! and checked against the results they expect.
//!
//! `file` reads and checks the files; `guest` and `host` produce the
//! transcripts; this module compares them with the expectations and
//! reports.

mod file;
mod guest;
pub mod host;

use std::io::Write;

use crate::app::AppError;
use crate::cli::{ScenarioArgs, ScenarioMode};
pub use file::{Requirement, Scenario, load};
pub use guest::{host_mmap_min_addr, transcripts};

/// One scenario's transcript: its lines, or why it did not run here.
pub enum Outcome {
    Ran(Vec<String>),
    NotRun(String),
}

/// How one side ran a set of scenarios.
pub struct Run {
    /// What ran them (`guest (ring3)`, `Linux 6.18.2`).
    pub side: String,
    /// By scenario, in the order given.
    pub outcomes: Vec<Outcome>,
}

/// The step results a transcript gives (`k: STEP = RESULT` lines), by step.
pub fn results(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(" = ").map(|(_, r)| r))
        .collect()
}

/// The expectations of `scenario` that `lines` does not meet, as one line
/// each.
pub fn unmet(scenario: &Scenario, lines: &[String]) -> Vec<String> {
    let got = results(lines);
    let mut out = Vec::new();
    if let Some(aborted) = lines.iter().find(|l| l.trim_start().starts_with("aborted")) {
        out.push(format!("the run {}", aborted.trim()));
    }
    for (k, want) in &scenario.expected {
        match got.get(*k) {
            Some(r) if r == want => {}
            Some(r) => out.push(format!(
                "step {k} ({}) gave `{r}`, expected `{want}`",
                scenario.steps[*k]
            )),
            None => out.push(format!("step {k} did not run; expected `{want}`")),
        }
    }
    out
}

/// `writewatch scenario [--host] FILE...`.
pub fn run(args: &ScenarioArgs) -> Result<u8, AppError> {
    let scenarios = load(&args.files).map_err(AppError::Usage)?;
    let run = if args.host {
        host::run(&scenarios)
    } else {
        let mode = args.mode.map(|m| match m {
            ScenarioMode::Ring3 => "ring3",
            ScenarioMode::Ring0 => "ring0",
        });
        match guest::run(&scenarios, mode, args.timeout) {
            Ok(run) => run,
            Err(guest::Stopped::Failed(why)) => return Err(AppError::Arrival(why)),
            Err(guest::Stopped::Signal(sig)) => {
                eprintln!(
                    "writewatch: scenario: stopped by signal {sig}; the guest was stopped cleanly"
                );
                return Ok(crate::signals::exit_code(sig));
            }
        }
    };
    Ok(report(&scenarios, &run, args.transcript))
}

/// Prints the verdicts (on stderr when the transcripts go to stdout);
/// returns the exit code: 0 when every scenario that ran met its
/// expectations, 1 otherwise.
fn report(scenarios: &[Scenario], run: &Run, transcript: bool) -> u8 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut verdicts: Box<dyn Write> = if transcript {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let (mut ok, mut failed, mut not_run) = (0, 0, 0);
    for (s, outcome) in scenarios.iter().zip(&run.outcomes) {
        match outcome {
            Outcome::NotRun(why) => {
                not_run += 1;
                let _ = writeln!(verdicts, "not run {}: {why}", s.name);
            }
            Outcome::Ran(lines) => {
                if transcript {
                    let _ = writeln!(out, "scenario {}", s.name);
                    for l in lines {
                        let _ = writeln!(out, "{l}");
                    }
                    let _ = writeln!(out, "end {}", s.name);
                }
                let misses = unmet(s, lines);
                if misses.is_empty() {
                    ok += 1;
                    let _ = writeln!(
                        verdicts,
                        "ok {} ({} steps, {} expected results)",
                        s.name,
                        s.steps.len(),
                        s.expected.len()
                    );
                } else {
                    failed += 1;
                    for m in misses {
                        let _ = writeln!(verdicts, "FAIL {} ({}): {m}", s.name, s.origin);
                    }
                }
            }
        }
    }
    let _ = out.flush();
    let _ = writeln!(
        verdicts,
        "{} scenario{} on {}: {ok} ok, {failed} failed, {not_run} not run here",
        scenarios.len(),
        if scenarios.len() == 1 { "" } else { "s" },
        run.side
    );
    u8::from(failed > 0)
}
