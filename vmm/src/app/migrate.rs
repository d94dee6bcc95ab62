//! `writewatch migrate`: starts a live migration through the source's API
//! and follows it to the end, with a progress line on stderr (redrawn in
//! place on a terminal, a line per round otherwise).

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use crate::api::client;
use crate::api::request::{ApiAction, MigrateRequest};
use crate::cli::MigrateArgs;
use crate::exit_status;
use crate::migration::status::{Phase, Status};

/// How often the status is asked for.
const POLL: Duration = Duration::from_millis(100);
/// Exit code when the migration failed or was cancelled (the guest runs on
/// at the source).
const MIGRATION_FAILED: u8 = 1;

const MIB: f64 = (1u64 << 20) as f64;

pub fn run(args: &MigrateArgs) -> u8 {
    let request = args.options.request(&args.to);
    match follow(&args.api_sock, &request, args.json) {
        Ok(code) => code,
        Err(why) => {
            eprintln!("writewatch: error: {why}");
            exit_status::VMM_ERROR
        }
    }
}

fn call(sock: &Path, action: &ApiAction) -> Result<client::Reply, String> {
    let (method, url, body) = action.to_http();
    client::call(
        sock,
        method,
        &url,
        body.as_ref(),
        Some(Duration::from_secs(30)),
    )
    .map_err(|e| e.to_string())
}

/// Starts the migration and follows it; the exit code.
pub fn follow(sock: &Path, request: &MigrateRequest, json: bool) -> Result<u8, String> {
    // Ctrl-C (or SIGTERM) cancels the migration, as `virsh migrate` does,
    // rather than leaving it running with nobody watching.
    crate::signals::block_termination_signals();
    let mut cancelled_by = None;
    let reply = call(sock, &ApiAction::Migrate(request.clone()))?;
    if !(200..300).contains(&reply.status) {
        let why = reply.body["error"].as_str().unwrap_or("no reason given");
        eprintln!("writewatch: error: {why} (HTTP {})", reply.status);
        return Ok(MIGRATION_FAILED);
    }
    let terminal = std::io::stderr().is_terminal();
    let mut shown_rounds = 0;
    let status = loop {
        std::thread::sleep(POLL);
        if let Some(sig) = crate::signals::take_pending().filter(|_| cancelled_by.is_none()) {
            cancelled_by = Some(sig);
            if terminal {
                eprintln!();
            }
            eprintln!("writewatch: signal {sig}: cancelling the migration");
            call(sock, &ApiAction::CancelMigration)?;
        }
        let reply = call(sock, &ApiAction::MigrationStatus)?;
        let status: Status = serde_json::from_value(reply.body)
            .map_err(|e| format!("the API's migration status: {e}"))?;
        if terminal {
            eprint!("\r\x1b[K{}", progress(&status));
        } else if status.rounds.len() > shown_rounds {
            for r in &status.rounds[shown_rounds..] {
                eprintln!(
                    "writewatch: round {}: {} pages in {:.0} ms, {:.0} MiB/s; {} dirtied meanwhile",
                    r.round, r.pages, r.ms, r.bandwidth_mib_s, r.dirtied_pages
                );
            }
            shown_rounds = status.rounds.len();
        }
        if !status.phase.is_active() {
            break status;
        }
    };
    if terminal {
        eprintln!();
    }
    if json {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&status).unwrap_or_default()
        );
    }
    match status.phase {
        Phase::Completed => {
            eprintln!("writewatch: {}", summary(&status));
            Ok(0)
        }
        _ => {
            let why = status.error.as_deref().unwrap_or("no reason given");
            eprintln!(
                "writewatch: the migration did not complete: {why}; the guest runs on at the source"
            );
            Ok(cancelled_by.map_or(MIGRATION_FAILED, crate::signals::exit_code))
        }
    }
}

/// One progress line.
fn progress(s: &Status) -> String {
    let sent = s.bytes_sent as f64 / MIB;
    let ram = (s.ram_pages * 4096) as f64 / MIB;
    let bar = |fraction: f64| {
        let filled = (fraction.clamp(0.0, 1.0) * 20.0).round() as usize;
        format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
    };
    let round = s.rounds.len();
    let fraction = if round == 0 {
        sent / ram.max(1.0)
    } else {
        1.0 - s.remaining_pages as f64 / s.ram_pages.max(1) as f64
    };
    format!(
        "{} {} round {round}, {sent:.0} MiB sent, {:.1} MiB dirty, {} MiB/s, downtime ~{} ms, throttle {}%",
        bar(fraction),
        phase_name(s.phase),
        (s.remaining_pages * 4096) as f64 / MIB,
        s.bandwidth_mib_s.map_or("?".into(), |b| format!("{b:.0}")),
        s.expected_downtime_ms
            .map_or("?".into(), |d| format!("{d:.0}")),
        s.throttle_percent
    )
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Setup => "setup",
        Phase::PreCopy => "pre-copy",
        Phase::StopAndCopy => "stop-and-copy",
        Phase::Completed => "completed",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
    }
}

/// The line said when it is done.
pub fn summary(s: &Status) -> String {
    format!(
        "migrated to {} in {:.0} ms: {} rounds, {:.1} MiB sent ({:.3}x the lower bound), downtime {} ms{}",
        s.to,
        s.elapsed_ms,
        s.rounds.len(),
        s.bytes_sent as f64 / MIB,
        s.bytes_sent as f64 / s.lower_bound_bytes.max(1) as f64,
        s.downtime_ms.map_or("?".into(), |d| format!("{d:.1}")),
        if s.converged == Some(false) {
            " (did not converge: stop-and-copy was forced)"
        } else {
            ""
        }
    )
}
