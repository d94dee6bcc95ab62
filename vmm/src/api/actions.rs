//! Carrying out an `ApiAction` on a running VM: the VMM side of the API,
//! which never sees HTTP. Each action gives a JSON value or a failure with
//! the HTTP status it maps to.

use serde_json::{Value, json};

use std::path::Path;
use std::sync::Arc;

use super::request::{ApiAction, Format, Query, RequestError, Target};
use crate::dirty::{WatchError, WatchResult};
use crate::migration::snapshot::{self, SnapshotError};
use crate::migration::{Migrations, send};
use crate::runner::{ControlError, VmHandle, VmState};

fn watch_failure(e: WatchError) -> RequestError {
    let status = match &e {
        WatchError::AlreadyTracking(_) | WatchError::AlreadyWatched { .. } => 409,
        e if e.is_invalid_parameter() => 400,
        _ => 500,
    };
    RequestError::new(status, e.to_string())
}

fn control_failure(e: ControlError) -> RequestError {
    let status = match e {
        ControlError::Stopped => 503,
        ControlError::AlreadyPaused | ControlError::NotPaused => 409,
        ControlError::Save(_) => 500,
    };
    RequestError::new(status, e.to_string())
}

/// The page table a target names.
fn cr3(vm: &VmHandle, target: Target) -> Result<u64, RequestError> {
    match target {
        Target::Cr3(cr3) => Ok(cr3),
        Target::Pid(pid) => vm.write_watch().cr3_of(pid).map_err(watch_failure),
    }
}

/// A write-watch result in the form the query asked for.
pub fn render(result: &WatchResult, format: Format) -> Value {
    let mut out = json!({
        "count": result.count,
        "granularity": result.granularity,
        "harvest": result.harvest,
    });
    match format {
        Format::Addresses => out["addresses"] = json!(result.addresses),
        Format::Ranges => out["ranges"] = json!(coalesce(&result.addresses, result.granularity)),
        Format::Count => {}
    }
    out
}

/// Consecutive page addresses as `[start, len]` runs.
pub fn coalesce(addresses: &[u64], page: u64) -> Vec<[u64; 2]> {
    let mut runs: Vec<[u64; 2]> = Vec::new();
    for &a in addresses {
        match runs.last_mut() {
            Some([start, len]) if *start + *len == a => *len += page,
            _ => runs.push([a, page]),
        }
    }
    runs
}

fn snapshot_failure(e: SnapshotError) -> RequestError {
    let status = match &e {
        SnapshotError::File { .. } | SnapshotError::NoBase => 400,
        SnapshotError::Control(ControlError::Stopped) => 503,
        _ => 500,
    };
    RequestError::new(status, e.to_string())
}

/// Starts a migration on a thread of its own; its progress is at
/// `GET /migration`.
fn migrate(
    vm: &VmHandle,
    migrations: &Arc<Migrations>,
    request: &super::request::MigrateRequest,
) -> Result<Value, RequestError> {
    let options = request.options()?;
    if !vm.is_running() {
        return Err(control_failure(ControlError::Stopped));
    }
    let status = send::initial_status(vm, &options.to);
    if !migrations.tracker.begin(status.clone()) {
        return Err(RequestError::new(409, "a migration is already running"));
    }
    let (vm, tracker) = (vm.clone(), migrations.tracker.clone());
    let spawned = std::thread::Builder::new()
        .name("migration".into())
        .spawn(move || {
            // The outcome is in the tracker's status.
            let _ = send::migrate(&vm, &options, &tracker);
        });
    if let Err(e) = spawned {
        migrations.tracker.update(|s| {
            s.phase = crate::migration::status::Phase::Failed;
            s.error = Some(format!("cannot start the migration thread: {e}"));
        });
        return Err(RequestError::new(500, "cannot start the migration thread"));
    }
    Ok(json!(status))
}

/// Carries out `action`.
pub fn execute(
    action: ApiAction,
    vm: &VmHandle,
    migrations: &Arc<Migrations>,
) -> Result<Value, RequestError> {
    let ww = vm.write_watch();
    let query = |q: &Query, result: Result<WatchResult, WatchError>| {
        result.map(|r| render(&r, q.format)).map_err(watch_failure)
    };
    match action {
        ApiAction::Info => {
            let status = vm.status().map_err(control_failure)?;
            Ok(json!({
                "state": status.state,
                "uptime_ms": status.uptime_ms,
                "vcpus": status.vcpus,
                "mem_bytes": status.mem_bytes,
                "ram": status.ram,
                "write_watch": {
                    "tracking": ww.tracking_source(),
                    "available_source": ww.available_source(),
                },
            }))
        }
        ApiAction::Stats => {
            let status = vm.status().map_err(control_failure)?;
            Ok(json!({
                "vm_exits": status.vm_exits,
                "vm_exits_total": status.vm_exits.values().sum::<u64>(),
                "records": status.records,
                "bad_records": status.bad_records,
                "write_watch": ww.stats(),
            }))
        }
        ApiAction::Processes => Ok(json!(ww.processes())),
        ApiAction::SetState(VmState::Paused) => vm
            .pause()
            .map(|p| json!({"state": "paused", "pause_micros": p.micros}))
            .map_err(control_failure),
        ApiAction::SetState(VmState::Running) => vm
            .resume()
            .map(|()| json!({"state": "running"}))
            .map_err(control_failure),
        ApiAction::StartTracking { source, initial } => {
            let source = source.unwrap_or(ww.available_source());
            ww.start(source, initial)
                .map(|s| json!(s))
                .map_err(watch_failure)
        }
        ApiAction::StopTracking => ww
            .stop()
            .map(|()| json!({"tracking": null}))
            .map_err(watch_failure),
        ApiAction::Get(q) => query(&q, ww.get(q.range.start, q.range.len, q.reset, q.max_count)),
        ApiAction::Reset(r) => ww
            .reset(r.start, r.len)
            .map(|h| json!({"harvest": h}))
            .map_err(watch_failure),
        ApiAction::WatchVa { target, range } => {
            let cr3 = cr3(vm, target)?;
            ww.watch_va(cr3, range.start, range.len)
                .map(|()| json!({"cr3": cr3, "start": range.start, "len": range.len}))
                .map_err(watch_failure)
        }
        ApiAction::GetVa { target, query: q } => {
            let cr3 = cr3(vm, target)?;
            query(
                &q,
                ww.get_va(cr3, q.range.start, q.range.len, q.reset, q.max_count),
            )
        }
        ApiAction::ResetVa { target, range } => {
            let cr3 = cr3(vm, target)?;
            ww.reset_va(cr3, range.start, range.len)
                .map(|h| json!({"harvest": h}))
                .map_err(watch_failure)
        }
        ApiAction::DirtyRate { period } => ww
            .dirty_rate(period)
            .map(|r| json!(r))
            .map_err(watch_failure),
        ApiAction::Migrate(request) => migrate(vm, migrations, &request),
        ApiAction::MigrationStatus => migrations
            .tracker
            .read()
            .map(|s| json!(s))
            .ok_or_else(|| RequestError::new(404, "no migration has run")),
        ApiAction::CancelMigration => {
            if migrations.tracker.cancel() {
                Ok(json!({"cancelling": true}))
            } else {
                Err(RequestError::new(409, "no migration is running"))
            }
        }
        ApiAction::Snapshot { to, diff } => {
            if migrations
                .tracker
                .get()
                .is_some_and(|s| s.phase.is_active())
            {
                return Err(RequestError::new(409, "a migration is running"));
            }
            snapshot::take(vm, Path::new(&to), diff, &migrations.snapshots)
                .map(|t| json!(t))
                .map_err(snapshot_failure)
        }
        ApiAction::Workload => {
            let announced = vm
                .workload()
                .ok_or_else(|| RequestError::new(404, "the guest announced no workload"))?;
            let writes = announced.writes(vm.memory());
            Ok(json!({"workload": announced, "writes": writes}))
        }
        ApiAction::StopWorkload => {
            let announced = vm
                .workload()
                .ok_or_else(|| RequestError::new(404, "the guest announced no workload"))?;
            announced
                .stop(vm.memory())
                .map(|()| json!({"stopping": true}))
                .map_err(|e| RequestError::new(500, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_pages_coalesce() {
        let page = 4096;
        assert_eq!(
            coalesce(&[0, 4096, 8192, 20480, 24576, 40960], page),
            vec![[0, 12288], [20480, 8192], [40960, 4096]]
        );
        assert!(coalesce(&[], page).is_empty());
    }
}
