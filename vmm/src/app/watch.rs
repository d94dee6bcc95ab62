//! `writewatch watch`: boot a write workload and print, per interval, one
//! JSON line with what the host write watch reported (docs/REPORTS.md,
//! "watch lines"). With `--verify` the guest is paused at each interval's
//! end, as Linux's `dirty_log_test` stops its vCPU, and the result is
//! checked against the pages the workload wrote: any missed page fails the
//! command.

use std::time::{Duration, Instant};

use serde_json::json;

use super::AppError;
use super::session::{Controls, Session};
use crate::cli::{VmArgs, WatchArgs, WatchSource, WorkloadArgs};
use crate::dirty::{Initial, Source, WriteWatch};
use crate::exit_status;
use crate::runner::{StopReason, VmHandle};
use crate::workload::{Announced, Kind, Spec};

/// Dirty-ring entries per vCPU when `--source ring` gives no size.
pub const DEFAULT_RING_ENTRIES: u32 = 16384;
/// How long to wait for the guest to announce its workload.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the guest may take to stop once told to.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The workload spec of `args`, waiting for the VMM to start it.
pub fn spec(args: &WorkloadArgs) -> Spec {
    Spec {
        kind: args.workload,
        rate_mib: args.rate,
        wss: args.wss,
        mapping: args.map,
        wait: true,
        first: args.arena_from,
    }
}

pub fn run(args: &WatchArgs, process_start: Instant) -> Result<u8, AppError> {
    if args.verify && args.workload.workload == Kind::Fork {
        return Err(AppError::Usage(
            "--verify needs a workload that writes interval numbers; fork writes process memory (tests/write_watch_va.rs checks that)".into(),
        ));
    }
    let vm = with_ring(&args.vm, args.source == WatchSource::Ring)?;
    workload_session("watch", &vm, &args.workload)
        .run(process_start, |controls| watch(controls, args))
}

/// `vm` with a dirty ring when the source is the ring (the default size
/// unless one is given); a ring size without the ring source is refused.
pub fn with_ring(vm: &VmArgs, ring: bool) -> Result<VmArgs, AppError> {
    let mut vm = vm.clone();
    match (ring, vm.dirty_ring_size) {
        (true, None) => vm.dirty_ring_size = Some(DEFAULT_RING_ENTRIES),
        (false, Some(_)) => {
            return Err(AppError::Usage(
                "--dirty-ring-size goes with --source ring (a VM with a ring has no bitmap)".into(),
            ));
        }
        _ => {}
    }
    Ok(vm)
}

/// A session running `workload`, its console on stderr (stdout carries the
/// command's results), waiting for the `workload` record.
pub fn workload_session<'a>(
    name: &'static str,
    vm: &'a VmArgs,
    workload: &WorkloadArgs,
) -> Session<'a> {
    Session {
        name,
        args: vm,
        guest_words: spec(workload).guest_words(),
        selftest: false,
        default_timeout: None,
        api_sock: None,
        console_on_stderr: true,
        subscribe: &["workload"],
        arrival: super::session::Arrival::Boot,
    }
}

/// Ends the run because of `why` (said on stderr); the exit code.
pub fn give_up(vm: &VmHandle, why: String) -> Option<u8> {
    eprintln!("writewatch: error: {why}");
    vm.stop(StopReason::Requested(why));
    Some(exit_status::VMM_ERROR)
}

/// The workload the guest announced, if `kind` announces one (the fork
/// workload is a process and does not); `Err` with the exit code when the
/// run must end.
pub fn workload_of(controls: &Controls, kind: Kind) -> Result<Option<Announced>, Option<u8>> {
    if kind == Kind::Fork {
        return Ok(None);
    }
    match announced(controls) {
        Ok(w) => Ok(Some(w)),
        Err(why) if controls.vm.is_running() => Err(give_up(controls.vm, why)),
        Err(_) => Err(None),
    }
}

/// Waits for the guest's `workload` record.
fn announced(controls: &Controls) -> Result<Announced, String> {
    let started = Instant::now();
    while controls.vm.is_running() && started.elapsed() < ANNOUNCE_TIMEOUT {
        if let Ok(record) = controls.records[0].recv_timeout(Duration::from_millis(50)) {
            return Announced::from_record(&record).map_err(|e| e.to_string());
        }
    }
    Err(if controls.vm.is_running() {
        format!("the guest did not announce its workload within {ANNOUNCE_TIMEOUT:?}")
    } else {
        "the guest ended before announcing its workload".into()
    })
}

/// Tells the workload to stop and waits for the guest to exit.
pub fn stop_workload(vm: &VmHandle, workload: &Announced) {
    if workload.stop(vm.memory()).is_err() || vm.sleep(STOP_TIMEOUT) {
        vm.stop(StopReason::Requested("the workload did not stop".into()));
    }
}

fn watch(controls: Controls, args: &WatchArgs) -> Option<u8> {
    let vm = controls.vm;
    let workload = match workload_of(&controls, args.workload.workload) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let ww = vm.write_watch();
    let source = match args.source {
        WatchSource::Bitmap => Some(Source::Bitmap),
        WatchSource::Ring => Some(Source::Ring),
        WatchSource::Off => None,
    };
    let consumer = match source.map(|s| start(ww, s)).transpose() {
        Ok(c) => c,
        Err(why) => return give_up(vm, why),
    };
    let slot_starts: Vec<u64> = ww.ram_ranges().iter().map(|&(start, _)| start).collect();
    let mem = vm.memory();
    if let Some(Err(e)) = workload.as_ref().map(|w| w.set_interval(mem, 1)) {
        return give_up(vm, e.to_string());
    }
    let writes_now = || workload.as_ref().map_or(0, |w| w.writes(mem));
    let interval = Duration::from_secs_f64(args.interval);
    let began = Instant::now();
    let (mut writes, mut at) = (writes_now(), Instant::now());
    let mut missed_total = 0;
    for k in 1..=args.intervals {
        if !vm.sleep(interval) {
            break;
        }
        let pause = if args.verify {
            match vm.pause() {
                Ok(p) => Some(p.micros),
                Err(_) => break,
            }
        } else {
            None
        };
        let taken = consumer.map(|c| ww.take_consumer(c));
        let now_writes = writes_now();
        let elapsed = at.elapsed().as_secs_f64();
        let mut line = json!({
            "interval": k,
            "t_ms": began.elapsed().as_secs_f64() * 1e3,
            "source": source.map_or("off", Source::name),
        });
        if workload.is_some() {
            line["guest_writes"] = json!(now_writes - writes);
            line["guest_write_mib_s"] =
                json!((now_writes - writes) as f64 * 4096.0 / (1 << 20) as f64 / elapsed);
        }
        (writes, at) = (now_writes, Instant::now());
        match taken {
            Some(Ok((bitmaps, harvest))) => {
                let by_slot: Vec<u64> = bitmaps.iter().map(|b| b.count()).collect();
                let pages: u64 = by_slot.iter().sum();
                line["pages"] = json!(pages);
                line["pages_by_slot"] = json!(by_slot);
                line["mib"] = json!(pages as f64 * 4096.0 / (1 << 20) as f64);
                line["harvest_us"] = json!(harvest.micros);
                line["ring_overruns"] = json!(ww.stats().ring_overruns);
                if let (true, Some(workload)) = (args.verify, &workload) {
                    let check = workload.check(k, &bitmaps, &slot_starts, mem);
                    missed_total += check.missed;
                    line["missed"] = json!(check.missed);
                    line["extra"] = json!(check.extra.total());
                    line["truth"] = json!(check.truth);
                    line["extra_by"] = json!(check.extra);
                    if check.missed > 0 {
                        line["missed_pages"] = json!(check.missed_pages);
                    }
                }
            }
            Some(Err(e)) => return give_up(vm, format!("harvesting interval {k}: {e}")),
            None => {}
        }
        if let Some(micros) = pause {
            line["pause_us"] = json!(micros);
        }
        if let Some(w) = &workload {
            let _ = w.set_interval(mem, k + 1);
        }
        if args.verify && vm.resume().is_err() {
            break;
        }
        let mut text = line.to_string();
        text.push('\n');
        let _ = controls.stdout.push(text.as_bytes(), || !vm.is_running());
    }
    match &workload {
        Some(w) => stop_workload(vm, w),
        None => vm.stop(StopReason::Requested("the intervals are done".into())),
    }
    if missed_total > 0 {
        eprintln!("writewatch: watch: {missed_total} written pages were missed");
        Some(exit_status::SELFTEST_FAILED)
    } else {
        Some(0)
    }
}

/// Starts tracking and opens the watch this command reads.
fn start(ww: &WriteWatch, source: Source) -> Result<crate::dirty::ConsumerId, String> {
    ww.start(source, Initial::Clean)
        .map_err(|e| e.to_string())?;
    ww.open_consumer(false).map_err(|e| e.to_string())
}
