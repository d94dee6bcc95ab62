//! A minimal scheduler for user tasks.
//!
//! Design: every task has a home CPU (the creator's for spawned programs,
//! round robin over the APs for forked children, so a parent and its
//! children run on different CPUs when there are several) and runs
//! there until it blocks (`wait4`), exits or is killed; there is no
//! preemption (`sched_yield` gives the CPU to its next runnable task,
//! round robin). All user state is in the trap frame, so switching needs no
//! kernel stacks per task: a CPU runs one task through `enter_user`, and
//! when that task stops, the trap handler saves its frame in the task table
//! and `leave_user`s back to [`run_one`]'s caller, which picks the next.
//!
//! Who runs the loop: the boot CPU inside `Process::run` (until the process
//! it was asked to run stops), and every AP in its idle loop
//! (`smp::idle_loop` calls [`run_queued`] while tasks wait for it). A CPU
//! with nothing runnable halts; making a task runnable on another CPU sends
//! that CPU a wake-up IPI ([`make_runnable`]).
//!
//! A blocked `wait4` is restarted: its saved `rip` points back at the
//! `syscall`, so when the task runs again it makes the call again.

use super::task::{TASKS, Task, TaskState};
use crate::arch::x86_64::paging;
use crate::arch::x86_64::trap_entry;
use crate::arch::x86_64::{cpu, kctx, smp};
use crate::memory::{kmap, mm};
use crate::percpu::{self, MAX_CPUS};
use alloc::collections::BTreeMap;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use guest_mm::Pid;

/// Round-robin cursor for the home CPU of forked children.
static NEXT_CPU: AtomicUsize = AtomicUsize::new(0);

/// Home CPU for a new child: the APs in turn (their idle loops always run
/// queued tasks, while the boot CPU runs tasks only inside
/// `Process::run`), or the boot CPU when it is alone.
pub fn pick_cpu() -> usize {
    let n = percpu::online_count();
    if n <= 1 {
        return 0;
    }
    1 + NEXT_CPU.fetch_add(1, Ordering::Relaxed) % (n - 1)
}

/// Per CPU: a task may be runnable there. Set (under the task-table lock)
/// whenever a task becomes runnable, cleared (under it) by the CPU when it
/// finds none, so idle CPUs can poll it without taking the lock: with many
/// vCPUs, every AP taking the lock on each timer tick starves the CPUs that
/// do work (ring 0 is emulated on kvm_pvm).
static PENDING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Makes `task` runnable on its CPU and wakes that CPU. The caller holds
/// the task-table lock.
pub fn make_runnable(task: &mut Task) {
    task.state = TaskState::Runnable;
    PENDING[task.cpu].store(true, Ordering::Release);
    smp::wake(task.cpu);
}

/// Whether a task may be runnable on CPU `index` (no lock taken).
pub fn has_work(index: usize) -> bool {
    PENDING[index].load(Ordering::Acquire)
}

/// Per CPU: the task it ran last, where the search for the next starts
/// (round robin, so a task that yields lets the others run).
static LAST: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn runnable_on(tasks: &BTreeMap<Pid, Task>, index: usize) -> Option<Pid> {
    let last = LAST[index].load(Ordering::Relaxed);
    tasks
        .range(last.saturating_add(1)..)
        .chain(tasks.range(..=last))
        .find(|(_, t)| t.cpu == index && t.state == TaskState::Runnable)
        .map(|(&pid, _)| pid)
}

/// Runs the tasks queued for this CPU until none is runnable (APs' idle
/// loop).
pub fn run_queued() {
    while run_one() {}
}

/// Runs tasks of this CPU until `done(tasks)` holds, halting while none is
/// runnable.
pub fn run_until(done: &dyn Fn(&BTreeMap<Pid, Task>) -> bool) {
    let me = percpu::index();
    loop {
        cpu::disable_interrupts();
        let (finished, work) = {
            let tasks = TASKS.lock();
            (done(&tasks), runnable_on(&tasks, me).is_some())
        };
        if finished {
            cpu::enable_interrupts();
            return;
        }
        if work {
            cpu::enable_interrupts();
            run_one();
        } else {
            // A wake-up IPI sent after the check above is taken here.
            cpu::enable_and_halt();
        }
    }
}

/// Runs one runnable task of this CPU until it stops; false if there was
/// none.
fn run_one() -> bool {
    let me = percpu::index();
    let (pid, frame, fs_base) = {
        let mut tasks = TASKS.lock();
        let Some(pid) = runnable_on(&tasks, me) else {
            PENDING[me].store(false, Ordering::Release);
            return false;
        };
        let t = tasks.get_mut(&pid).expect("runnable task exists");
        t.state = TaskState::Running;
        LAST[me].store(pid, Ordering::Relaxed);
        (pid, t.frame, t.fs_base)
    };
    let root = match mm::with(|s| s.activate(pid, me as u32)) {
        Ok(root) => root,
        Err(_) => {
            // Its address space is gone (killed while it was queued).
            if let Some(t) = TASKS.lock().get_mut(&pid) {
                t.state = TaskState::Stopped(None);
            }
            return true;
        }
    };
    let cpu = percpu::current();
    cpu::set_fs_base(fs_base);
    let interrupts = cpu::interrupts_enabled();
    cpu.current.store(pid, Ordering::Relaxed);
    // SAFETY: the address space copies the kernel half of the kernel page
    // table, so the kernel keeps running after the switch. The saved-rsp
    // slot and TSS.rsp0 belong to this CPU; `enter_user` returns only
    // through `leave_user` from `super::stop` once the task stopped (its
    // frame and state are saved in the task table by then).
    unsafe {
        paging::write_cr3(root.addr());
        // Ring-3 mode: where ring 0 returns after the kernel context
        // handled one of the task's traps.
        kctx::set_return_cr3(root.addr());
        let rsp0 = cpu.tss_rsp0();
        trap_entry::enter_user(&frame, cpu.user_return_rsp.get(), rsp0);
        paging::write_cr3(kmap::kernel_pml4());
    }
    cpu.current.store(0, Ordering::Relaxed);
    if interrupts {
        cpu::enable_interrupts();
    }
    true
}
