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
//!
//! A parked vCPU thread also takes work that needs its vCPU (saving its
//! state), and a throttled one sleeps a share of each time slice.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::vcpu_loop::ParkedTask;

/// The slice of vCPU time throttling works in, as QEMU's auto-converge
/// does: a vCPU throttled by `p` % sleeps `p / (100 - p)` slices for each
/// slice it runs.
pub const THROTTLE_SLICE: Duration = Duration::from_millis(10);

const RUNNING: u8 = 0;
const PAUSED: u8 = 1;
const STOPPING: u8 = 2;

/// What a vCPU thread does next.
pub enum Next {
    /// Enter the guest (`in_guest` is now set; clear it after `KVM_RUN`).
    Run,
    /// The VM is stopping: leave the loop.
    Stop,
    /// While paused: do this, then ask again.
    Task(ParkedTask),
}

pub struct RunState {
    mode: AtomicU8,
    in_guest: Vec<AtomicBool>,
    /// Work posted for each parked vCPU thread.
    parked: Mutex<Vec<Option<ParkedTask>>>,
    wake: Condvar,
    /// Percent of each time slice the vCPUs sleep (auto-converge).
    throttle: AtomicU8,
}

impl RunState {
    pub fn new(vcpus: usize) -> Self {
        RunState {
            mode: AtomicU8::new(RUNNING),
            in_guest: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            parked: Mutex::new((0..vcpus).map(|_| None).collect()),
            wake: Condvar::new(),
            throttle: AtomicU8::new(0),
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
                        if let Some(task) = guard[index].take() {
                            return Next::Task(task);
                        }
                        guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Gives parked vCPU `index` work to do; false if the VM is not paused.
    pub fn post(&self, index: usize, task: ParkedTask) -> bool {
        let mut guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        if self.mode.load(Ordering::SeqCst) != PAUSED {
            return false;
        }
        guard[index] = Some(task);
        self.wake.notify_all();
        true
    }

    /// Work posted for vCPU `index` that its thread never took (it ended).
    pub fn unclaimed(&self, index: usize) -> Option<ParkedTask> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())[index].take()
    }

    /// Sets the share of time the vCPUs sleep, 0..=99 percent.
    pub fn set_throttle(&self, percent: u8) {
        self.throttle.store(percent.min(99), Ordering::SeqCst);
        self.wake.notify_all();
    }

    pub fn throttle(&self) -> u8 {
        self.throttle.load(Ordering::SeqCst)
    }

    /// Called by a vCPU thread between runs: once it has run a slice since
    /// `slice_began`, sleeps its throttled share (less if the throttle is
    /// lifted, or the VM pauses or stops), and starts a new slice.
    pub fn throttle_point(&self, slice_began: &mut Instant) {
        let percent = u32::from(self.throttle());
        if percent == 0 {
            *slice_began = Instant::now();
            return;
        }
        if slice_began.elapsed() < THROTTLE_SLICE {
            return;
        }
        let sleep = THROTTLE_SLICE * percent / (100 - percent);
        let guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .wake
            .wait_timeout_while(guard, sleep, |_| {
                self.mode.load(Ordering::SeqCst) == RUNNING && self.throttle() != 0
            })
            .unwrap_or_else(|e| e.into_inner());
        *slice_began = Instant::now();
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
        assert!(matches!(vcpu.join().unwrap(), Next::Run));
        state.after_run(0);
        state.request_pause();
        let s = state.clone();
        let vcpu = thread::spawn(move || s.before_run(0));
        thread::sleep(Duration::from_millis(20));
        state.stop();
        assert!(matches!(vcpu.join().unwrap(), Next::Stop));
    }

    fn save_task() -> ParkedTask {
        ParkedTask::SaveState {
            msr_list: Arc::new(Vec::new()),
            xsave_size: 4096,
            reply: crossbeam_channel::bounded(1).0,
        }
    }

    #[test]
    fn a_parked_vcpu_takes_posted_work_and_parks_again() {
        let state = Arc::new(RunState::new(2));
        assert!(
            !state.post(1, save_task()),
            "nothing is posted while running"
        );
        state.request_pause();
        let s = state.clone();
        let vcpu = thread::spawn(move || s.before_run(1));
        assert!(state.post(1, save_task()));
        assert!(matches!(
            vcpu.join().unwrap(),
            Next::Task(ParkedTask::SaveState { .. })
        ));
        assert!(state.unclaimed(1).is_none());
        assert!(state.post(0, save_task()));
        assert!(matches!(
            state.unclaimed(0),
            Some(ParkedTask::SaveState { .. })
        ));
    }

    #[test]
    fn a_throttled_vcpu_sleeps_its_share_of_each_slice() {
        let state = RunState::new(1);
        let mut slice = Instant::now() - THROTTLE_SLICE;
        let began = Instant::now();
        state.throttle_point(&mut slice);
        assert!(began.elapsed() < THROTTLE_SLICE, "unthrottled: no sleep");
        state.set_throttle(50);
        let mut slice = Instant::now() - THROTTLE_SLICE;
        let began = Instant::now();
        state.throttle_point(&mut slice);
        assert!(
            began.elapsed() >= THROTTLE_SLICE,
            "50 %: one slice asleep per slice run"
        );
        let began = Instant::now();
        state.throttle_point(&mut slice);
        assert!(
            began.elapsed() < THROTTLE_SLICE,
            "the next slice has not run yet"
        );
        state.set_throttle(200);
        assert_eq!(state.throttle(), 99);
    }
}
