//! The task table: the kernel's view of each user process (saved user
//! registers, run state, home CPU, console output), keyed by the pid the
//! MM core gave it. The MM core owns the address space and the
//! parent/child/zombie bookkeeping; this table owns what the CPU needs.
//!
//! Lock rule: [`TASKS`] is never held while calling into the MM core or
//! waiting for another CPU, so it may be taken with interrupts disabled.

use super::Exit;
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::percpu;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use guest_mm::Pid;
use spin::Mutex;

/// What a task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for its CPU.
    Runnable,
    /// In user mode (or in a trap from it) on its CPU.
    Running,
    /// Blocked in `wait4` until a child exits.
    Waiting,
    /// Blocked on a userfaultfd (a fault waiting for its handler, or a
    /// `read` waiting for a message) until the MM core wakes it.
    Userfault,
    /// Not running: never started, or its last run ended (how, if known).
    Stopped(Option<Exit>),
}

/// One user task.
pub struct Task {
    /// Program name (for reports).
    pub name: &'static str,
    /// User registers while not running.
    pub frame: TrapFrame,
    /// Run state.
    pub state: TaskState,
    /// The CPU that runs it (tasks never migrate).
    pub cpu: usize,
    /// Owned by a kernel [`super::Process`] handle: `exit` only ends the
    /// run and the address space lives until the handle is dropped.
    /// Forked tasks are not owned: `exit` tears their address space down.
    pub owned: bool,
    /// Parent pid (0: the kernel).
    pub parent: Pid,
    /// Children that exited so far; `wait4` re-checks instead of sleeping
    /// when this moved during the call (no lost wake-ups).
    pub child_exits: u64,
    /// Bytes written to fds 1 and 2.
    pub output: Vec<u8>,
    /// The program break: `(start, current)` (`brk`).
    pub brk: (u64, u64),
    /// The FS base (`arch_prctl(ARCH_SET_FS)`), loaded whenever it runs.
    pub fs_base: u64,
    /// Signal handlers and the blocked mask.
    pub signals: super::signal::SignalState,
    /// A userfaultfd woke it before it went to sleep: it must not.
    pub uffd_woken: bool,
}

/// Every task.
pub static TASKS: Mutex<BTreeMap<Pid, Task>> = Mutex::new(BTreeMap::new());

/// Records that a child of `parent` exited: wakes the parent if it waits.
pub fn child_exited(tasks: &mut BTreeMap<Pid, Task>, parent: Pid) {
    if let Some(p) = tasks.get_mut(&parent) {
        p.child_exits += 1;
        if p.state == TaskState::Waiting {
            super::sched::make_runnable(p);
        }
    }
}

/// Wakes the tasks the MM core named (a userfaultfd resolved or released
/// their wait); one that has not gone to sleep yet will not.
pub fn uffd_wake(pids: &[Pid]) {
    let mut tasks = TASKS.lock();
    for pid in pids {
        if let Some(t) = tasks.get_mut(pid) {
            if t.state == TaskState::Userfault {
                super::sched::make_runnable(t);
            } else {
                t.uffd_woken = true;
            }
        }
    }
}

/// Puts the current task to sleep on a userfaultfd, to resume at
/// `resume` (the faulting instruction, or the `syscall` again): unless a
/// wake-up came first, in which case it resumes at once.
pub fn uffd_sleep(resume: &TrapFrame) -> bool {
    let pid = current_pid();
    let mut tasks = TASKS.lock();
    let Some(t) = tasks.get_mut(&pid) else {
        return false;
    };
    if core::mem::take(&mut t.uffd_woken) {
        return false;
    }
    t.frame = *resume;
    t.state = TaskState::Userfault;
    true
}

/// The pid of the task running on this CPU (0 when none).
pub fn current_pid() -> Pid {
    percpu::current()
        .current
        .load(core::sync::atomic::Ordering::Relaxed)
}
