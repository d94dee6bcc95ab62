//! A migration's progress and statistics, as the API serves them
//! (`GET /migration`) and the CLI's progress bar and the experiments read
//! them. One `Tracker` per VM: at most one migration runs at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Connecting, starting dirty tracking.
    Setup,
    /// Copying while the guest runs.
    PreCopy,
    /// The guest is paused; the rest and the machine state are sent.
    StopAndCopy,
    /// The guest runs on the destination; this VMM is done with it.
    Completed,
    /// The migration failed; the guest runs here as before.
    Failed,
    /// Cancelled (by a request, or for not converging); the guest runs here.
    Cancelled,
}

impl Phase {
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Setup | Phase::PreCopy | Phase::StopAndCopy)
    }
}

/// One pre-copy round (round 0 is the full pass; the last one is sent
/// with the guest paused).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u32,
    /// When it began, from the migration's start.
    pub start_ms: f64,
    pub ms: f64,
    /// Pages sent with their contents.
    pub pages: u64,
    /// Pages found all zero: skipped in round 0, sent as zero runs later.
    pub zero_pages: u64,
    /// Pages of the round's dirty set written again before their turn:
    /// not sent in this round, since the next one holds them.
    pub skipped_pages: u64,
    pub bytes: u64,
    /// Pages the guest dirtied while this round was sent.
    pub dirtied_pages: u64,
    /// `dirtied_pages` over the round's time.
    pub dirty_rate_mib_s: f64,
    pub bandwidth_mib_s: f64,
    pub throttle_percent: u8,
    /// Sent with the guest paused.
    pub paused: bool,
}

/// Everything known about the current (or last) migration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    pub to: String,
    pub source: String,
    pub ram_pages: u64,
    pub rounds: Vec<RoundReport>,
    pub pages_sent: u64,
    pub bytes_sent: u64,
    /// Pages still dirty, as the last harvest found.
    pub remaining_pages: u64,
    pub throttle_percent: u8,
    pub bandwidth_mib_s: Option<f64>,
    pub expected_downtime_ms: Option<f64>,
    pub elapsed_ms: f64,
    /// False when stop-and-copy was forced (max rounds or timeout).
    pub converged: Option<bool>,
    /// Source pause to destination resume, as the destination measured it.
    pub downtime_ms: Option<f64>,
    /// Of the downtime: hashing RAM at both ends (the integrity check).
    pub hash_ms: Option<f64>,
    /// Bytes of machine state (vCPUs, VM, devices).
    pub state_bytes: u64,
    /// Distinct pages sent before the pause + the final dirty set + the
    /// state: what any pre-copy must send. `bytes_sent` over it is the
    /// overhead of resending (the goal is at most 1.05).
    pub lower_bound_bytes: u64,
    pub ram_hash: Option<String>,
    pub error: Option<String>,
}

impl Status {
    pub fn new(to: String, source: String, ram_pages: u64) -> Self {
        Status {
            phase: Phase::Setup,
            to,
            source,
            ram_pages,
            rounds: Vec::new(),
            pages_sent: 0,
            bytes_sent: 0,
            remaining_pages: ram_pages,
            throttle_percent: 0,
            bandwidth_mib_s: None,
            expected_downtime_ms: None,
            elapsed_ms: 0.0,
            converged: None,
            downtime_ms: None,
            hash_ms: None,
            state_bytes: 0,
            lower_bound_bytes: 0,
            ram_hash: None,
            error: None,
        }
    }
}

/// The current migration of a VM, shared by the thread running it and
/// whoever asks.
#[derive(Default)]
pub struct Tracker {
    status: Mutex<Option<Status>>,
    cancel: AtomicBool,
    /// Someone has read the status of the finished migration.
    outcome_read: AtomicBool,
}

impl Tracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Tracker::default())
    }

    /// Claims the VM for a new migration; false if one is running.
    pub fn begin(&self, status: Status) -> bool {
        let mut current = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|s| s.phase.is_active()) {
            return false;
        }
        self.cancel.store(false, Ordering::SeqCst);
        self.outcome_read.store(false, Ordering::SeqCst);
        *current = Some(status);
        true
    }

    /// The status, as a client reads it: once it shows the end, the VMM
    /// knows the outcome was seen (and may exit).
    pub fn read(&self) -> Option<Status> {
        let status = self.get();
        if status.as_ref().is_some_and(|s| !s.phase.is_active()) {
            self.outcome_read.store(true, Ordering::SeqCst);
        }
        status
    }

    pub fn outcome_read(&self) -> bool {
        self.outcome_read.load(Ordering::SeqCst)
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        if let Some(s) = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            change(s);
        }
    }

    pub fn get(&self) -> Option<Status> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks a running migration to stop; false if none runs.
    pub fn cancel(&self) -> bool {
        let active = self.get().is_some_and(|s| s.phase.is_active());
        if active {
            self.cancel.store(true, Ordering::SeqCst);
        }
        active
    }

    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}
