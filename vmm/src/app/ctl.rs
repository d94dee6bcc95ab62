//! `writewatch ctl`: a client of the control API (like Cloud Hypervisor's
//! `ch-remote`), so nobody needs curl. Each subcommand is one `ApiAction`,
//! sent as the HTTP request the server parses back into it.

use std::io::{self, Write};
use std::time::Duration;

use serde_json::Value;

use crate::api::client;
use crate::api::request::{ApiAction, Query, Range, Target};
use crate::cli::{CtlArgs, CtlCommand, GetArgs, RangeArgs, SnapshotArgs, TargetArgs};
use crate::dirty::Initial;
use crate::exit_status;
use crate::runner::VmState;

/// Exit code when the API answered with an error.
const API_ERROR: u8 = 1;

fn range(r: &RangeArgs) -> Range {
    Range {
        start: r.start,
        len: r.len,
    }
}

fn query(g: &GetArgs) -> Query {
    Query {
        range: range(&g.range),
        reset: g.reset,
        max_count: g.max_count,
        format: g.format,
    }
}

fn target(t: &TargetArgs) -> Target {
    match (t.pid, t.cr3) {
        (Some(pid), _) => Target::Pid(pid),
        (None, Some(cr3)) => Target::Cr3(cr3),
        // clap's group makes one of the two required.
        (None, None) => Target::Pid(0),
    }
}

/// The action a subcommand stands for.
pub fn action(command: &CtlCommand) -> ApiAction {
    match command {
        CtlCommand::Info => ApiAction::Info,
        CtlCommand::Stats => ApiAction::Stats,
        CtlCommand::Processes => ApiAction::Processes,
        CtlCommand::Pause => ApiAction::SetState(VmState::Paused),
        CtlCommand::Resume => ApiAction::SetState(VmState::Running),
        CtlCommand::Start { source, dirty } => ApiAction::StartTracking {
            source: *source,
            initial: if *dirty {
                Initial::Dirty
            } else {
                Initial::Clean
            },
        },
        CtlCommand::Stop => ApiAction::StopTracking,
        CtlCommand::Get(g) => ApiAction::Get(query(g)),
        CtlCommand::Reset(r) => ApiAction::Reset(range(r)),
        CtlCommand::VaWatch {
            target: t,
            range: r,
        } => ApiAction::WatchVa {
            target: target(t),
            range: range(r),
        },
        CtlCommand::VaGet { target: t, get } => ApiAction::GetVa {
            target: target(t),
            query: query(get),
        },
        CtlCommand::VaReset {
            target: t,
            range: r,
        } => ApiAction::ResetVa {
            target: target(t),
            range: range(r),
        },
        CtlCommand::DirtyRate { period } => ApiAction::DirtyRate {
            period: Duration::from_secs_f64(*period),
        },
        CtlCommand::Migrate { to, options } => ApiAction::Migrate(options.request(to)),
        CtlCommand::Migration => ApiAction::MigrationStatus,
        CtlCommand::CancelMigration => ApiAction::CancelMigration,
        CtlCommand::Snapshot { to, diff } => snapshot_action(to, *diff),
        CtlCommand::Workload { stop: true } => ApiAction::StopWorkload,
        CtlCommand::Workload { stop: false } => ApiAction::Workload,
    }
}

/// The VMM writes the file, perhaps from another directory: name it whole.
fn snapshot_action(to: &std::path::Path, diff: bool) -> ApiAction {
    let to = std::path::absolute(to).unwrap_or_else(|_| to.to_path_buf());
    ApiAction::Snapshot {
        to: to.display().to_string(),
        diff,
    }
}

pub fn run(args: &CtlArgs) -> u8 {
    send(&args.api_sock, &action(&args.command), args.json)
}

/// `writewatch snapshot`: `ctl snapshot` under its own name.
pub fn snapshot(args: &SnapshotArgs) -> u8 {
    send(&args.api_sock, &snapshot_action(&args.to, args.diff), false)
}

fn send(api_sock: &std::path::Path, action: &ApiAction, json: bool) -> u8 {
    let (method, url, body) = action.to_http();
    let reply = match client::call(api_sock, method, &url, body.as_ref(), None) {
        Ok(reply) => reply,
        Err(e) => {
            eprintln!("writewatch: error: {e}");
            return exit_status::VMM_ERROR;
        }
    };
    if !(200..300).contains(&reply.status) {
        let why = reply.body["error"].as_str().unwrap_or("no reason given");
        eprintln!("writewatch: error: {why} (HTTP {})", reply.status);
        return API_ERROR;
    }
    // A reader that stops early (`| head`) is no error of ours.
    let mut out = io::stdout().lock();
    let _ = if json {
        writeln!(out, "{}", reply.body)
    } else {
        print_summary(&mut out, action, &reply.body)
    };
    0
}

/// A write-watch result as one address per line (hex), or runs, or the
/// count; anything else as indented JSON.
fn print_summary(out: &mut impl Write, action: &ApiAction, body: &Value) -> io::Result<()> {
    let is_get = matches!(action, ApiAction::Get(_) | ApiAction::GetVa { .. });
    if !is_get {
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(body).unwrap_or_default()
        );
    }
    eprintln!(
        "{} pages written (granularity {})",
        body["count"], body["granularity"]
    );
    if let Some(addresses) = body["addresses"].as_array() {
        for a in addresses.iter().filter_map(Value::as_u64) {
            writeln!(out, "{a:#x}")?;
        }
    }
    if let Some(runs) = body["ranges"].as_array() {
        for run in runs {
            if let (Some(start), Some(len)) = (run[0].as_u64(), run[1].as_u64()) {
                writeln!(out, "{start:#x} +{len:#x}")?;
            }
        }
    }
    Ok(())
}
