//! Driving a running VM from other threads: `VmHandle` sends requests to
//! the main loop (pause, resume, stop, status, record subscriptions) and
//! gives direct access to the thread-safe parts (the write-watch layer and
//! guest memory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::Serialize;

use super::StopReason;
use crate::devices::records::Record;
use crate::dirty::WriteWatch;
use crate::memory::GuestMemoryMmap;
use crate::migration::state::MachineState;
use crate::workload::Announced;

/// A request to the main loop; `Reply` is where the answer goes.
pub enum Control {
    Pause(Sender<Result<PauseInfo, ControlError>>),
    Resume(Sender<Result<(), ControlError>>),
    Status(Sender<VmStatus>),
    Stop(StopReason),
    /// Sends every later record whose type is `kind` to the sender (records
    /// that do not fit its bound are dropped for that subscriber only).
    Subscribe(String, Sender<Record>),
    /// The machine's complete state; the VM must be paused.
    SaveState(Sender<Result<MachineState, ControlError>>),
    /// The share of time every vCPU sleeps, in percent (auto-converge).
    Throttle(u8),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("the VM has stopped")]
    Stopped,
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("saving the machine state failed: {0}")]
    Save(String),
}

/// How long pausing took: from the request until no vCPU was in the guest.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PauseInfo {
    pub micros: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Running,
    Paused,
}

/// A VM's shape and counters at one moment.
#[derive(Clone, Debug, Serialize)]
pub struct VmStatus {
    pub state: VmState,
    pub uptime_ms: f64,
    pub vcpus: usize,
    pub mem_bytes: u64,
    /// `(start, len)` of each RAM slot.
    pub ram: Vec<(u64, u64)>,
    pub vm_exits: std::collections::BTreeMap<&'static str, u64>,
    pub records: u64,
    pub bad_records: u64,
}

/// A cloneable handle on a running VM.
#[derive(Clone)]
pub struct VmHandle {
    pub(super) control: Sender<Control>,
    pub(super) watch: Arc<WriteWatch>,
    pub(super) memory: GuestMemoryMmap,
    pub(super) started: Instant,
    /// Set once the run has ended.
    pub(super) ended: Arc<AtomicBool>,
    /// The guest's workload, once its `workload` record came (or it came
    /// with a migrated machine).
    pub(super) workload: Arc<Mutex<Option<Announced>>>,
}

impl VmHandle {
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Control) -> Result<T, ControlError> {
        let (tx, rx) = bounded(1);
        self.control
            .send(make(tx))
            .map_err(|_| ControlError::Stopped)?;
        rx.recv().map_err(|_| ControlError::Stopped)
    }

    /// Pauses every vCPU; returns once none is in the guest.
    pub fn pause(&self) -> Result<PauseInfo, ControlError> {
        self.ask(Control::Pause)?
    }

    pub fn resume(&self) -> Result<(), ControlError> {
        self.ask(Control::Resume)?
    }

    pub fn status(&self) -> Result<VmStatus, ControlError> {
        self.ask(Control::Status)
    }

    /// The complete machine state (vCPUs, VM, devices); pause first.
    pub fn save_state(&self) -> Result<MachineState, ControlError> {
        self.ask(Control::SaveState)?
    }

    /// Makes every vCPU sleep `percent` of its time (0 lifts it).
    pub fn set_throttle(&self, percent: u8) -> Result<(), ControlError> {
        self.control
            .send(Control::Throttle(percent))
            .map_err(|_| ControlError::Stopped)
    }

    /// What the guest announced about its workload, if anything.
    pub fn workload(&self) -> Option<Announced> {
        self.workload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Ends the run with `reason` (a signal, a controller's decision).
    pub fn stop(&self, reason: StopReason) {
        let _ = self.control.send(Control::Stop(reason));
    }

    /// Records of type `kind` from now on, at most `bound` waiting.
    pub fn subscribe(&self, kind: &str, bound: usize) -> Result<Receiver<Record>, ControlError> {
        let (tx, rx) = bounded(bound);
        self.control
            .send(Control::Subscribe(kind.to_string(), tx))
            .map_err(|_| ControlError::Stopped)?;
        Ok(rx)
    }

    pub fn write_watch(&self) -> &WriteWatch {
        &self.watch
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// False once the run has ended (the guest exited, crashed, timed out).
    pub fn is_running(&self) -> bool {
        !self.ended.load(Ordering::SeqCst)
    }

    /// Sleeps `duration`, or less if the run ends; true if it still runs.
    pub fn sleep(&self, duration: std::time::Duration) -> bool {
        let until = Instant::now() + duration;
        while self.is_running() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
        }
        false
    }
}
