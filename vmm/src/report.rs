//! The JSON run report (`--report`), documented in docs/REPORTS.md.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use crate::config::{Backing, VmConfig};
use crate::runner::{RunOutcome, StopReason};
use crate::selftest::SelftestTally;

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub command: &'static str,
    pub exit_code: u8,
    pub stop_reason: &'static str,
    /// The full value the guest wrote to the exit port (the exit code is
    /// derived from it, see `exit_status`).
    pub guest_exit_code: Option<u32>,
    /// From process start to the guest's first console byte.
    pub first_output_ms: Option<f64>,
    /// From process start to the guest's first `ready` record.
    pub ready_ms: Option<f64>,
    /// What the guest kernel's `ready` record says: the platform it found
    /// (`kvm_pvm`, `other`) and where it runs its kernel work (`ring0`).
    pub guest_platform: Option<String>,
    pub guest_kernel_mode: Option<String>,
    /// From process start to the end of the run.
    pub wall_ms: f64,
    pub vm_exits: BTreeMap<&'static str, u64>,
    pub vm_exits_total: u64,
    pub vcpus: u32,
    pub mem_bytes: u64,
    pub backing: &'static str,
    pub records: u64,
    pub bad_records: u64,
    /// Guest TSC frequency (KVM_GET_TSC_KHZ), for guest cycle counts.
    pub tsc_khz: Option<u32>,
    /// Console bytes dropped because stdout was not being read.
    pub console_dropped_bytes: u64,
    /// The VMM process's peak resident memory (VmHWM), guest RAM it touched
    /// included.
    pub vmm_peak_rss_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selftest: Option<SelftestSummary>,
    /// How the guest came (`incoming`, `restored`) or went (`outgoing`),
    /// when it moved (docs/REPORTS.md, "Migration").
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub migration: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct SelftestSummary {
    pub planned: Option<u64>,
    pub passed: u64,
    pub failed_count: u64,
    /// The first failed tests' names, shortened (see `selftest.rs`).
    pub failed: Vec<String>,
}

impl RunReport {
    pub fn new(
        command: &'static str,
        config: &VmConfig,
        outcome: &RunOutcome,
        exit_code: u8,
        process_start: Instant,
        tally: Option<&SelftestTally>,
        console_dropped_bytes: u64,
    ) -> Self {
        let since_start = |t: Instant| t.duration_since(process_start).as_secs_f64() * 1000.0;
        let (stop_reason, guest_exit_code) = match outcome.reason {
            StopReason::GuestExit(code) => ("guest-exit", Some(code)),
            StopReason::Timeout => ("timeout", None),
            StopReason::TripleFault { .. } => ("triple-fault", None),
            StopReason::KvmFailure { .. } => ("kvm-failure", None),
            StopReason::Signal(_) => ("signal", None),
            StopReason::Requested(_) => ("requested", None),
            StopReason::Migrated(_) => ("migrated", None),
        };
        RunReport {
            command,
            exit_code,
            stop_reason,
            guest_exit_code,
            first_output_ms: outcome.first_output.map(since_start),
            ready_ms: outcome.ready.map(since_start),
            guest_platform: outcome.guest_kernel.platform.clone(),
            guest_kernel_mode: outcome.guest_kernel.kernel_mode.clone(),
            wall_ms: since_start(Instant::now()),
            vm_exits: outcome.exits.clone(),
            vm_exits_total: outcome.exits.values().sum(),
            vcpus: config.vcpus,
            mem_bytes: config.mem_bytes,
            backing: match config.backing {
                Backing::Anon => "anon",
                Backing::Hugetlb => "hugetlb",
            },
            records: outcome.records,
            bad_records: outcome.bad_records,
            tsc_khz: outcome.tsc_khz,
            console_dropped_bytes,
            vmm_peak_rss_kib: peak_rss_kib(),
            selftest: tally.map(|t| SelftestSummary {
                planned: t.planned,
                passed: t.passed(),
                failed_count: t.failed_count(),
                failed: t.failed_names().to_vec(),
            }),
            migration: serde_json::Map::new(),
        }
    }
}

/// VmHWM from /proc/self/status, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}
