//! `writewatch dirty-rate`: boot a write workload and measure its dirty rate
//! the way QEMU's calc-dirty-rate does in its dirty-bitmap and dirty-ring
//! modes: the pages written during a period, over the whole guest, and with
//! the ring per vCPU. One JSON object on stdout (docs/REPORTS.md).

use std::time::{Duration, Instant};

use serde_json::json;

use super::AppError;
use super::session::Controls;
use super::watch::{give_up, stop_workload, with_ring, workload_of, workload_session};
use crate::cli::DirtyRateArgs;
use crate::dirty::{Initial, Source};
use crate::runner::StopReason;

pub fn run(args: &DirtyRateArgs, process_start: Instant) -> Result<u8, AppError> {
    let vm = with_ring(&args.vm, args.source == Source::Ring)?;
    workload_session("dirty-rate", &vm, &args.workload)
        .run(process_start, |controls| measure(controls, args))
}

fn measure(controls: Controls, args: &DirtyRateArgs) -> Option<u8> {
    let vm = controls.vm;
    let workload = match workload_of(&controls, args.workload.workload) {
        Ok(w) => w,
        Err(code) => return code,
    };
    let ww = vm.write_watch();
    if let Err(e) = ww.start(args.source, Initial::Clean) {
        return give_up(vm, e.to_string());
    }
    if let Some(Err(e)) = workload.as_ref().map(|w| w.set_interval(vm.memory(), 1)) {
        return give_up(vm, e.to_string());
    }
    if !vm.sleep(Duration::from_secs_f64(args.warmup)) {
        return None;
    }
    let writes_now = || workload.as_ref().map_or(0, |w| w.writes(vm.memory()));
    let writes = writes_now();
    let rate = match ww.dirty_rate(Duration::from_secs_f64(args.period)) {
        Ok(rate) => rate,
        Err(e) => return give_up(vm, e.to_string()),
    };
    let mut out = json!({
        "dirty_rate_mib_s": rate.mib_per_s,
        "pages": rate.pages,
        "period_ms": rate.period_ms,
        "source": rate.source,
        "vcpus": rate.vcpus,
        "workload": {"kind": args.workload.workload},
    });
    if let Some(w) = &workload {
        out["guest_writes"] = json!(writes_now() - writes);
        out["workload"] = json!({"kind": w.kind, "pages": w.pages, "cpus": w.cpus,
                                 "rate_mib": w.rate_mib, "map": w.map});
    }
    let mut text = serde_json::to_string_pretty(&out).unwrap_or_default();
    text.push('\n');
    let _ = controls.stdout.push(text.as_bytes(), || !vm.is_running());
    match &workload {
        Some(w) => stop_workload(vm, w),
        None => vm.stop(StopReason::Requested("measured".into())),
    }
    Some(0)
}
