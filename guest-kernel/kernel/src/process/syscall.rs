//! System calls (docs/GUEST_ABI.md, "System calls"): `syscall` with the
//! number in `rax`, arguments in `rdi, rsi, rdx, r10, r8, r9`, the result
//! (or `-errno`) in `rax`; `rcx` and `r11` are clobbered. Numbers follow
//! Linux x86-64.
//!
//! The MM calls (`write`, `mmap`, `mprotect`, `munmap`, `mremap`,
//! `madvise`, `getpid`, `fork`, `exit`, `wait4`, `mm_stats`) go to the MM
//! core's dispatcher; this file adds what needs the scheduler (the child's
//! registers after `fork`, sleeping in `wait4`, ending the run on `exit`),
//! what a C runtime's start-up and stdio need (`read`, `writev`, `brk`,
//! `arch_prctl`, `set_tid_address`, `clock_gettime`, `exit_group`,
//! `gettid`, `getppid`), and the writewatch calls that are not about
//! memory. Any other number returns `ENOSYS`.

use super::task::{self, TASKS, Task, TaskState};
use super::{Exit, Signal, leave, leave_address_space, sched, signal, stop};
use crate::arch::x86_64::cpu;
use crate::arch::x86_64::paging::USER_END;
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::memory::mm;
use crate::percpu;
use alloc::vec;
use alloc::vec::Vec;
use guest_mm::Errno;
use guest_mm::Outcome;
use guest_mm::PAGE_SIZE;
use guest_mm::mmap::{
    MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_HUGETLB, MAP_POPULATE, MAP_PRIVATE, PROT_READ,
    PROT_WRITE,
};
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

/// `read`.
const SYS_READ: u64 = 0;
/// `brk`.
const SYS_BRK: u64 = 12;
/// `writev`.
const SYS_WRITEV: u64 = 20;
/// `getppid`.
const SYS_GETPPID: u64 = 110;
/// `arch_prctl`.
const SYS_ARCH_PRCTL: u64 = 158;
/// `gettid`.
const SYS_GETTID: u64 = 186;
/// `set_tid_address`.
const SYS_SET_TID_ADDRESS: u64 = 218;
/// `clock_gettime`.
const SYS_CLOCK_GETTIME: u64 = 228;
/// `nanosleep`.
const SYS_NANOSLEEP: u64 = 35;
/// `sched_yield()`.
const SYS_SCHED_YIELD: u64 = 24;
/// `rt_sigaction(sig, act, oldact, sigsetsize)`.
const SYS_RT_SIGACTION: u64 = 13;
/// `rt_sigprocmask(how, set, oldset, sigsetsize)`.
const SYS_RT_SIGPROCMASK: u64 = 14;
/// `rt_sigreturn()`: back from a signal handler.
const SYS_RT_SIGRETURN: u64 = 15;
/// `kill`.
const SYS_KILL: u64 = 62;
/// `tkill`.
const SYS_TKILL: u64 = 200;
/// `clock_nanosleep`.
const SYS_CLOCK_NANOSLEEP: u64 = 230;
/// `tgkill`.
const SYS_TGKILL: u64 = 234;
/// `clock_nanosleep` flag: the time is a deadline.
const TIMER_ABSTIME: u64 = 1;
/// `exit_group` (one thread per process: `exit`).
const SYS_EXIT_GROUP: u64 = 231;
/// `arch_prctl` codes.
const ARCH_SET_FS: u64 = 0x1002;
const ARCH_GET_FS: u64 = 0x1003;
/// Most `iovec`s in one `writev` (Linux's `UIO_MAXIOV`).
const IOV_MAX: u64 = 1024;
/// Largest program break above its start.
const MAX_BRK: u64 = 1 << 30;

/// Length of the `syscall` instruction (`0f 05`).
const SYSCALL_BYTES: u64 = 2;
/// Longest single `write` (a longer one writes this much).
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
    let nr = match frame.rax {
        SYS_EXIT_GROUP => SYS_EXIT,
        nr => nr,
    };
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
        // Files are the MM core's (below).
        SYS_WRITE if matches!(args[0], 1 | 2) => console_write(pid, args[0], args[1], args[2]),
        SYS_WRITEV => writev(pid, args[0], args[1], args[2]),
        SYS_READ if args[0] == 0 => super::stdin::read(pid, args[1], args[2]),
        SYS_BRK => brk(pid, args[0]) as i64,
        SYS_ARCH_PRCTL => arch_prctl(pid, args[0], args[1]),
        SYS_SET_TID_ADDRESS | SYS_GETTID => i64::from(pid),
        SYS_GETPPID => TASKS.lock().get(&pid).map_or(0, |t| i64::from(t.parent)),
        SYS_CLOCK_GETTIME => clock_gettime(pid, args[0], args[1]),
        SYS_NANOSLEEP => sleep(pid, args[0], false),
        SYS_CLOCK_NANOSLEEP if !matches!(args[0], 0 | 1 | 7) => Errno::EINVAL.to_ret(),
        SYS_CLOCK_NANOSLEEP => sleep(pid, args[2], args[1] & TIMER_ABSTIME != 0),
        SYS_KILL | SYS_TKILL => kill_self(frame, pid, args[0], args[1]),
        SYS_TGKILL => kill_self(frame, pid, args[1], args[2]),
        SYS_SCHED_YIELD => sched_yield(frame, pid),
        SYS_RT_SIGACTION => signal::sigaction(pid, args[0], args[1], args[2], args[3]),
        SYS_RT_SIGPROCMASK => signal::sigprocmask(pid, args[0], args[1], args[2], args[3]),
        SYS_RT_SIGRETURN => match signal::sigreturn(frame) {
            Ok(rax) => rax as i64,
            Err(()) => super::trap::kill(frame, Signal::Sigsegv, 0, true),
        },
        SYS_RECORD => record(args[0], args[1]),
        SYS_PIN_READ => result(mm::with(|s| s.unshare_user(pid, args[0])).map(|()| 0)),
        SYS_GETCPU => percpu::index() as i64,
        _ => {
            let hugetlb = u64::from(MAP_HUGETLB);
            if nr == SYS_MMAP && args[3] & (u64::from(MAP_POPULATE) | hugetlb) != 0 {
                // Faults in every page in one call, or may take surplus huge
                // pages for its reservation: make the RAM available first
                // (see `memory::mm`).
                mm::reserve(args[1] / PAGE_SIZE + POPULATE_SLACK_FRAMES);
            }
            use guest_mm::syscall::{SYS_FALLOCATE, SYS_PWRITE64};
            let file_bytes = match nr {
                SYS_WRITE | SYS_PWRITE64 => args[2],
                SYS_FALLOCATE => args[3],
                _ => 0,
            };
            if file_bytes > 0 {
                // Page-cache pages: RAM for them first, as for populate.
                mm::reserve(file_bytes.div_ceil(PAGE_SIZE).min(1 << 20) + POPULATE_SLACK_FRAMES);
            }
            let pool = (nr == guest_mm::syscall::SYS_HUGETLB_POOL)
                .then(|| guest_mm::hugetlb::hstate_of_log(args[0] as u32))
                .flatten();
            match (pool, args[1]) {
                // nr_hugepages: grow RAM as long as the pool is short (the
                // call below then finds it sized).
                (Some(h), 0) => mm::set_nr_hugepages(h, args[2]),
                // Overcommit takes whole huge pages from RAM later.
                (Some(h), _) => mm::reserve_huge(h, args[2]),
                (None, _) => {}
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
                Outcome::Return(v) => v,
                Outcome::Forked { child } => {
                    fork_task(pid, child, frame);
                    i64::from(child)
                }
                Outcome::Exited => {
                    super::report::exited(pid);
                    stop(frame, None)
                }
                Outcome::Block => block(frame, child_exits),
                Outcome::WaitUffd => wait_uffd(frame),
            }
        }
    } as u64;
}

/// `write(fd, buf, len)`: the MM core copies the bytes of fds 1 and 2,
/// which go to the console and the task's output. At most [`MAX_WRITE`]
/// bytes per call: a longer write is a short one, as Linux caps a write at
/// `MAX_RW_COUNT` (callers such as stdio loop).
fn console_write(pid: guest_mm::Pid, fd: u64, buf: u64, len: u64) -> i64 {
    let len = len.min(MAX_WRITE);
    let mut out = Vec::new();
    let outcome = mm::with(|s| {
        s.syscall(pid, SYS_WRITE, [fd, buf, len, 0, 0, 0], &mut |b| {
            out.extend_from_slice(b)
        })
    });
    let Outcome::Return(v) = outcome else {
        return Errno::EINVAL.to_ret();
    };
    if v >= 0 {
        crate::console::print_bytes(&out);
        if let Some(t) = TASKS.lock().get_mut(&pid) {
            t.output.extend_from_slice(&out);
        }
    }
    v
}

/// `writev(fd, iov, count)`: the `write`s of each `iovec` in turn; stops at
/// the first error (returned if nothing was written yet) or short write.
fn writev(pid: guest_mm::Pid, fd: u64, iov: u64, count: u64) -> i64 {
    if count > IOV_MAX {
        return Errno::EINVAL.to_ret();
    }
    let mut raw = vec![0u8; 16 * count as usize];
    if let Err(e) = mm::with(|s| s.copy_from_user(pid, iov, &mut raw)) {
        return e.to_ret();
    }
    let mut total = 0i64;
    for entry in raw.chunks_exact(16) {
        let word = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap_or_default());
        let (base, len) = (word(0), word(8));
        if len == 0 {
            continue;
        }
        let v = console_write(pid, fd, base, len);
        if v < 0 {
            return if total > 0 { total } else { v };
        }
        total += v;
        if (v as u64) < len {
            break;
        }
    }
    total
}

/// `brk(addr)`: moves the program break to `addr` (mapping or unmapping
/// whole pages) and returns the new break, or the old one when `addr` is
/// out of range or the pages cannot be mapped, as Linux does.
fn brk(pid: guest_mm::Pid, addr: u64) -> u64 {
    let Some((start, current)) = TASKS.lock().get(&pid).map(|t| t.brk) else {
        return 0;
    };
    if addr < start || addr - start > MAX_BRK {
        return current;
    }
    let (old_end, new_end) = (
        current.next_multiple_of(PAGE_SIZE),
        addr.next_multiple_of(PAGE_SIZE),
    );
    let moved = mm::with(|s| {
        if new_end > old_end {
            let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE;
            s.mmap(
                pid,
                old_end,
                new_end - old_end,
                PROT_READ | PROT_WRITE,
                flags,
                0,
            )
            .map(|_| ())
        } else if new_end < old_end {
            s.munmap(pid, new_end, old_end - new_end)
        } else {
            Ok(())
        }
    });
    if moved.is_err() {
        return current;
    }
    if let Some(t) = TASKS.lock().get_mut(&pid) {
        t.brk.1 = addr;
    }
    addr
}

/// `arch_prctl(code, addr)`: the FS base (user TLS), set for good (`sched`
/// loads it whenever the task runs) and at once on this CPU.
fn arch_prctl(pid: guest_mm::Pid, code: u64, addr: u64) -> i64 {
    match code {
        ARCH_SET_FS if addr >= USER_END => Errno::EPERM.to_ret(),
        ARCH_SET_FS => {
            if let Some(t) = TASKS.lock().get_mut(&pid) {
                t.fs_base = addr;
            }
            cpu::set_fs_base(addr);
            0
        }
        ARCH_GET_FS => {
            let base = TASKS.lock().get(&pid).map_or(0, |t| t.fs_base);
            result(mm::with(|s| s.copy_to_user(pid, addr, &base.to_le_bytes())).map(|()| 0))
        }
        _ => Errno::EINVAL.to_ret(),
    }
}

/// `clock_gettime(clock, tp)`: every supported clock (REALTIME, MONOTONIC
/// and their COARSE/RAW variants, BOOTTIME) reads the TSC since boot; there
/// is no wall-clock source, so REALTIME starts at the epoch.
fn clock_gettime(pid: guest_mm::Pid, clock: u64, tp: u64) -> i64 {
    if !matches!(clock, 0 | 1 | 4 | 5 | 6 | 7) {
        return Errno::EINVAL.to_ret();
    }
    let ns = crate::timer::nanos_since_boot();
    let mut ts = [0u8; 16];
    ts[..8].copy_from_slice(&(ns / 1_000_000_000).to_le_bytes());
    ts[8..].copy_from_slice(&(ns % 1_000_000_000).to_le_bytes());
    result(mm::with(|s| s.copy_to_user(pid, tp, &ts)).map(|()| 0))
}

/// `nanosleep(req, rem)` and `clock_nanosleep(clock, flags, req, rem)`:
/// halts this CPU until the time has passed (timer ticks wake it, every
/// 10 ms; nothing else runs on the CPU meanwhile, as there is no
/// preemption). `rem` is never written: no signal can interrupt the sleep.
fn sleep(pid: guest_mm::Pid, req: u64, absolute: bool) -> i64 {
    let mut ts = [0u8; 16];
    if let Err(e) = mm::with(|s| s.copy_from_user(pid, req, &mut ts)) {
        return e.to_ret();
    }
    let sec = i64::from_le_bytes(ts[..8].try_into().unwrap_or_default());
    let nsec = i64::from_le_bytes(ts[8..].try_into().unwrap_or_default());
    if sec < 0 || !(0..1_000_000_000).contains(&nsec) {
        return Errno::EINVAL.to_ret();
    }
    let span = (sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(nsec as u64);
    let deadline = if absolute {
        span
    } else {
        crate::timer::nanos_since_boot().saturating_add(span)
    };
    while crate::timer::nanos_since_boot() < deadline {
        cpu::enable_and_halt();
    }
    0
}

/// `kill(pid, sig)`, `tkill(tid, sig)`, `tgkill(tgid, tid, sig)` aimed at
/// the caller itself (how `abort` and `raise` end a program): a signal the
/// kernel knows goes to the handler the task installed (the call returns
/// 0 to the interrupted code when the handler returns), or ends the task,
/// as its default action does on Linux; 0 only checks. Other targets
/// `-EPERM`, other signals `-EINVAL`.
fn kill_self(frame: &mut TrapFrame, pid: guest_mm::Pid, target: u64, sig: u64) -> i64 {
    if target != u64::from(pid) {
        return Errno::EPERM.to_ret();
    }
    if sig == 0 {
        return 0;
    }
    let signal = Signal::from_number(sig as i32);
    if signal as u64 != sig {
        return Errno::EINVAL.to_ret();
    }
    // SI_USER for kill, SI_TKILL (-6) for tkill and tgkill.
    let code = if frame.rax == SYS_KILL { 0 } else { -6 };
    frame.rax = 0;
    if signal != Signal::Sigkill && signal::deliver(frame, sig as usize, code, 0) {
        return 0;
    }
    super::trap::kill(frame, signal, 0, true)
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
    let (name, brk, fs_base, signals) = TASKS.lock().get(&parent).map_or(
        ("?", (0, 0), 0, super::signal::SignalState::default()),
        |t| (t.name, t.brk, t.fs_base, t.signals),
    );
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
        brk,
        fs_base,
        signals,
        uffd_woken: false,
    });
    sched::make_runnable(task);
}

/// `sched_yield`: the task goes to the back of its CPU's queue (there is
/// no preemption, so a task that waits for another on its CPU must yield).
fn sched_yield(frame: &TrapFrame, pid: guest_mm::Pid) -> i64 {
    let resume = TrapFrame { rax: 0, ..*frame };
    if let Some(t) = TASKS.lock().get_mut(&pid) {
        t.frame = resume;
        sched::make_runnable(t);
    }
    leave()
}

/// `wait4` found no exited child: sleeps until one exits, then makes the
/// call again (`rip` back on the `syscall`). `seen` is the parent's child-exit
/// count from before the call; if it moved, a child exited meanwhile and
/// the call is retried at once.
fn block(frame: &mut TrapFrame, seen: u64) -> i64 {
    let pid = task::current_pid();
    let mut restart = *frame;
    restart.rip -= SYSCALL_BYTES;
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

/// A `read` of a userfaultfd found no message: sleeps until the MM core
/// wakes the task (a fault queued one, or the context went away), then
/// makes the call again.
fn wait_uffd(frame: &mut TrapFrame) -> i64 {
    let mut restart = *frame;
    restart.rip -= SYSCALL_BYTES;
    if task::uffd_sleep(&restart) {
        leave();
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
