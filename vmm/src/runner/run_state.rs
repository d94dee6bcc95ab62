//! Whether the vCPUs may run, shared by the main loop and the vCPU threads:
//! the pause and stop handshake.
//!
//! A vCPU thread announces it is about to enter the guest (`in_guest`)
//! before it reads the mode, and the pauser sets the mode before it reads
//! `in_guest`, so one of the two always sees the other: either the vCPU
//! sees the pause and parks, or the pauser sees it in the guest and kicks
//! it out (repeatedly, since a kick that lands before `KVM_RUN` is entered
//! is lost). A paused VM has no vCPU in `KVM_RUN`, so KVM's dirty log holds
//! every guest write made so far.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};

const RUNNING: u8 = 0;
const PAUSED: u8 = 1;
const STOPPING: u8 = 2;

/// What a vCPU thread does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Enter the guest (`in_guest` is now set; clear it after `KVM_RUN`).
    Run,
    /// The VM is stopping: leave the loop.
    Stop,
}

pub struct RunState {
    mode: AtomicU8,
    in_guest: Vec<AtomicBool>,
    parked: Mutex<()>,
    wake: Condvar,
}

impl RunState {
    pub fn new(vcpus: usize) -> Self {
        RunState {
            mode: AtomicU8::new(RUNNING),
            in_guest: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            parked: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Called by vCPU `index` before each `KVM_RUN`; parks while paused.
    pub fn before_run(&self, index: usize) -> Next {
        loop {
            self.in_guest[index].store(true, Ordering::SeqCst);
            match self.mode.load(Ordering::SeqCst) {
                RUNNING => return Next::Run,
                STOPPING => {
                    self.in_guest[index].store(false, Ordering::SeqCst);
                    return Next::Stop;
                }
                _ => {
                    self.in_guest[index].store(false, Ordering::SeqCst);
                    let mut guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
                    while self.mode.load(Ordering::SeqCst) == PAUSED {
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Called by vCPU `index` when `KVM_RUN` returned.
    pub fn after_run(&self, index: usize) {
        self.in_guest[index].store(false, Ordering::SeqCst);
    }

    /// Asks every vCPU to park. The caller kicks the ones `in_guest`
    /// reports until none is.
    pub fn request_pause(&self) {
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .mode
            .compare_exchange(RUNNING, PAUSED, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .mode
            .compare_exchange(PAUSED, RUNNING, Ordering::SeqCst, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Stops every vCPU, parked or not.
    pub fn stop(&self) {
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.mode.store(STOPPING, Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == STOPPING
    }

    pub fn is_paused(&self) -> bool {
        self.mode.load(Ordering::SeqCst) == PAUSED
    }

    /// True while vCPU `index` may be inside `KVM_RUN`.
    pub fn in_guest(&self, index: usize) -> bool {
        self.in_guest[index].load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn a_paused_vcpu_parks_until_resumed_and_a_stop_wakes_it() {
        let state = Arc::new(RunState::new(1));
        state.request_pause();
        let s = state.clone();
        let vcpu = thread::spawn(move || s.before_run(0));
        thread::sleep(Duration::from_millis(50));
        assert!(!vcpu.is_finished(), "a paused vCPU must not run");
        assert!(!state.in_guest(0));
        state.resume();
        assert_eq!(vcpu.join().unwrap(), Next::Run);
        state.after_run(0);
        state.request_pause();
        let s = state.clone();
        let vcpu = thread::spawn(move || s.before_run(0));
        thread::sleep(Duration::from_millis(20));
        state.stop();
        assert_eq!(vcpu.join().unwrap(), Next::Stop);
    }
}
