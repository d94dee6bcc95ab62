//! User/kernel calls (docs/GUEST_ABI.md, "User/kernel calls"): `int3` with
//! the call number in `rax`, arguments in `rdi, rsi, rdx, r10, r8, r9`, the
//! result (or `-errno`) in `rax`. Numbers follow Linux x86-64.
//!
//! The MM calls (`write`, `mmap`, `mprotect`, `munmap`, `mremap`,
//! `madvise`, `getpid`, `fork`, `exit`, `wait4`, `mm_stats`) go to the MM
//! core's dispatcher; this file adds what needs the scheduler (the child's
//! registers after `fork`, sleeping in `wait4`, ending the run on `exit`)
//! and the writewatch calls that are not about memory.

use super::task::{self, TASKS, Task, TaskState};
use super::{Exit, leave, leave_address_space, sched, stop};
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::memory::mm;
use crate::percpu;
use alloc::vec;
use alloc::vec::Vec;
use guest_mm::Errno;
use guest_mm::Outcome;
use guest_mm::PAGE_SIZE;
use guest_mm::mmap::MAP_POPULATE;
use guest_mm::syscall::{SYS_EXIT, SYS_MMAP, SYS_WRITE};

/// writewatch: `record(buf, len)` sends the JSON object at `buf` as one
/// result record (docs/GUEST_ABI.md, "Records"); how ring-3 benchmarks
/// report.
pub const SYS_RECORD: u64 = 1001;
/// writewatch: `pin_read(addr)` pins the page at `addr` for reading the way
/// a long-term read-only `get_user_pages` does: it takes the MM core's
/// unshare path, so the page becomes exclusive to the caller (copied if it
/// was COW-shared) and stays read-only.
pub const SYS_PIN_READ: u64 = 1002;
/// writewatch: `getcpu()` returns the CPU the caller runs on.
pub const SYS_GETCPU: u64 = 1003;

/// Longest single `write`.
const MAX_WRITE: u64 = 1 << 20;
/// Frames reserved beyond the pages of a `MAP_POPULATE` mapping (its page
/// tables and the low-water mark).
const POPULATE_SLACK_FRAMES: u64 = 512;
/// Longest record a program may send.
const MAX_RECORD: u64 = 4096;

/// Performs the call in `frame`; the result goes to `frame.rax`, unless
/// the task exits or blocks (then this does not return).
pub fn dispatch(frame: &mut TrapFrame) {
    let pid = task::current_pid();
    let nr = frame.rax;
    let args = [
        frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8, frame.r9,
    ];
    let (owned, child_exits) = TASKS
        .lock()
        .get(&pid)
        .map_or((false, 0), |t| (t.owned, t.child_exits));
    frame.rax = match nr {
        SYS_EXIT if owned => {
            // The kernel's handle keeps the address space for the next run.
            let exit = Exit::Exited(args[0] as i32);
            stop(frame, Some(TaskState::Stopped(Some(exit))))
        }
        SYS_WRITE if args[2] > MAX_WRITE => Errno::EINVAL.to_ret(),
        SYS_RECORD => record(args[0], args[1]),
        SYS_PIN_READ => result(mm::with(|s| s.unshare_user(pid, args[0])).map(|()| 0)),
        SYS_GETCPU => percpu::index() as i64,
        _ => {
            if nr == SYS_MMAP && args[3] & u64::from(MAP_POPULATE) != 0 {
                // Faults in every page in one call: make the RAM available
                // first (see `memory::mm`).
                mm::reserve(args[1] / PAGE_SIZE + POPULATE_SLACK_FRAMES);
            }
            let mut out = Vec::new();
            let outcome = mm::with(|s| {
                if nr == SYS_EXIT {
                    // The core frees the page tables this CPU runs on.
                    leave_address_space();
                }
                s.syscall(pid, nr, args, &mut |b| out.extend_from_slice(b))
            });
            match outcome {
                Outcome::Return(v) => {
                    if nr == SYS_WRITE && v >= 0 {
                        crate::console::print_bytes(&out);
                        if let Some(t) = TASKS.lock().get_mut(&pid) {
                            t.output.extend_from_slice(&out);
                        }
                    }
                    v
                }
                Outcome::Forked { child } => {
                    fork_task(pid, child, frame);
                    i64::from(child)
                }
                Outcome::Exited => {
                    super::report::exited(pid);
                    stop(frame, None)
                }
                Outcome::Block => block(frame, child_exits),
            }
        }
    } as u64;
}

/// `-errno` or the value.
fn result(r: Result<u64, Errno>) -> i64 {
    match r {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    }
}

/// Creates the task of a forked `child`: the parent's registers, `rax` 0,
/// on the next CPU in round robin.
fn fork_task(parent: guest_mm::Pid, child: guest_mm::Pid, frame: &TrapFrame) {
    let cpu = sched::pick_cpu();
    let name = TASKS.lock().get(&parent).map_or("?", |t| t.name);
    // Announced before it can run: a watcher may want its page tables.
    super::report::created(child, name);
    let mut tasks = TASKS.lock();
    let task = tasks.entry(child).or_insert(Task {
        name,
        frame: TrapFrame { rax: 0, ..*frame },
        state: TaskState::Stopped(None),
        cpu,
        owned: false,
        parent,
        child_exits: 0,
        output: Vec::new(),
    });
    sched::make_runnable(task);
}

/// `wait4` found no exited child: sleeps until one exits, then makes the
/// call again (`rip` back on the `int3`). `seen` is the parent's child-exit
/// count from before the call; if it moved, a child exited meanwhile and
/// the call is retried at once.
fn block(frame: &mut TrapFrame, seen: u64) -> i64 {
    let pid = task::current_pid();
    let mut restart = *frame;
    restart.rip -= 1;
    {
        let mut tasks = TASKS.lock();
        let Some(t) = tasks.get_mut(&pid) else {
            return Errno::ECHILD.to_ret();
        };
        if t.child_exits == seen {
            t.frame = restart;
            t.state = TaskState::Waiting;
            drop(tasks);
            leave();
        }
    }
    *frame = restart;
    frame.rax as i64
}

/// `record(buf, len)`: one JSON object from user memory to the result
/// channel.
fn record(buf: u64, len: u64) -> i64 {
    if len == 0 || len > MAX_RECORD {
        return Errno::EINVAL.to_ret();
    }
    let pid = task::current_pid();
    let mut text = vec![0u8; len as usize];
    if let Err(e) = mm::with(|s| s.copy_from_user(pid, buf, &mut text)) {
        return e.to_ret();
    }
    match core::str::from_utf8(&text) {
        Ok(t) if t.starts_with('{') && t.ends_with('}') => {
            crate::record!("{t}");
            0
        }
        _ => Errno::EINVAL.to_ret(),
    }
}
