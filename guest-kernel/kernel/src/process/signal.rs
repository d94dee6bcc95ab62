//! Signal handlers for the faults a task takes: `rt_sigaction`,
//! `rt_sigprocmask` and `rt_sigreturn` with Linux x86-64's ABI, and the
//! delivery of a synchronous signal (SIGSEGV, SIGBUS, SIGILL, SIGTRAP,
//! SIGFPE) to the handler a task installed, so that a program that
//! catches its own faults (as libsigsegv, JITs and the differential
//! tests' probes do) runs unchanged.
//!
//! Mirrors `arch/x86/kernel/signal.c` and `signal_64.c` (`setup_rt_frame`,
//! `x64_setup_rt_frame`, `restore_sigcontext`) and `kernel/signal.c`
//! (`force_sig_info_to_task`: a fault signal that is blocked or ignored
//! kills, with the default action). The frame on the user stack is Linux's
//! `struct rt_sigframe`: the restorer's address, a `ucontext` whose
//! `sigcontext` holds the interrupted registers, then a `siginfo`.
//! Only synchronous signals exist here (nothing sends signals between
//! tasks), so there is no pending set. The kernel does not touch the FPU,
//! so the frame carries no FPU state (`fpstate` is 0).

use super::task::{self, TASKS};

use crate::arch::x86_64::gdt::{USER_CS, USER_DS};
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::memory::mm;
use guest_mm::Errno;

/// Signals 1..=64.
const NSIG: usize = 64;
/// `SIG_DFL`.
const SIG_DFL: u64 = 0;
/// `SIG_IGN`.
const SIG_IGN: u64 = 1;
/// `SA_SIGINFO`.
const SA_SIGINFO: u64 = 0x4;
/// `SA_RESTORER`: x86-64 needs one (the C library's `__restore_rt`).
const SA_RESTORER: u64 = 0x0400_0000;
/// `SA_NODEFER`.
const SA_NODEFER: u64 = 0x4000_0000;
/// `SA_RESETHAND`.
const SA_RESETHAND: u64 = 0x8000_0000;
/// `SIGKILL` and `SIGSTOP` cannot be caught.
const UNCATCHABLE: [usize; 2] = [9, 19];
/// `rt_sigprocmask` `how` values.
const SIG_BLOCK: u64 = 0;
const SIG_UNBLOCK: u64 = 1;
const SIG_SETMASK: u64 = 2;
/// Bytes of `struct ucontext` up to and including `uc_sigmask`.
const UCONTEXT_BYTES: u64 = 8 + 8 + 24 + SIGCONTEXT_BYTES + 8;
/// `struct sigcontext`: 32 words.
const SIGCONTEXT_BYTES: u64 = 32 * 8;
/// `struct siginfo`.
const SIGINFO_BYTES: u64 = 128;
/// The x86-64 ABI's red zone below RSP, which a signal frame skips.
const RED_ZONE: u64 = 128;
/// RFLAGS bits `rt_sigreturn` takes from the frame (`FIX_EFLAGS`: AC, OF,
/// DF, TF, SF, ZF, AF, PF, CF, RF).
const FIX_EFLAGS: u64 = 0x5_0dd5;
/// RFLAGS.TF and RFLAGS.DF, cleared for the handler.
const TF_DF: u64 = 0x100 | 0x400;

/// One `struct kernel_sigaction`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigAction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

/// A task's signal dispositions and blocked mask (inherited by fork).
#[derive(Debug, Clone, Copy)]
pub struct SignalState {
    actions: [SigAction; NSIG],
    blocked: u64,
}

impl Default for SignalState {
    fn default() -> Self {
        SignalState {
            actions: [SigAction::default(); NSIG],
            blocked: 0,
        }
    }
}

fn bit(sig: usize) -> u64 {
    1 << (sig - 1)
}

fn copy_in(pid: guest_mm::Pid, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
    mm::with(|s| s.copy_from_user(pid, va, buf))
}

fn copy_out(pid: guest_mm::Pid, va: u64, data: &[u8]) -> Result<(), Errno> {
    mm::with(|s| s.copy_to_user(pid, va, data))
}

/// Runs `f` on the signal state of task `pid`, if it exists.
fn with_signals<R>(pid: guest_mm::Pid, f: impl FnOnce(&mut SignalState) -> R) -> Option<R> {
    TASKS.lock().get_mut(&pid).map(|t| f(&mut t.signals))
}

fn put(raw: &mut [u8], off: u64, v: u64) {
    raw[off as usize..off as usize + 8].copy_from_slice(&v.to_le_bytes());
}

fn words<const N: usize>(raw: &[u8]) -> [u64; N] {
    let mut w = [0u64; N];
    for (i, c) in raw.chunks_exact(8).take(N).enumerate() {
        w[i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    w
}

/// `rt_sigaction(sig, act, oldact, sigsetsize)`.
pub fn sigaction(pid: guest_mm::Pid, sig: u64, act: u64, old: u64, setsize: u64) -> i64 {
    let sig = sig as usize;
    if setsize != 8 || sig == 0 || sig > NSIG || (act != 0 && UNCATCHABLE.contains(&sig)) {
        return Errno::EINVAL.to_ret();
    }
    let new = if act != 0 {
        let mut raw = [0u8; 32];
        if let Err(e) = copy_in(pid, act, &mut raw) {
            return e.to_ret();
        }
        let [handler, flags, restorer, mask] = words::<4>(&raw);
        Some(SigAction {
            handler,
            flags,
            restorer,
            // SIGKILL and SIGSTOP can never be blocked.
            mask: mask & !(bit(9) | bit(19)),
        })
    } else {
        None
    };
    let Some(prev) = with_signals(pid, |s| {
        let prev = s.actions[sig - 1];
        if let Some(n) = new {
            s.actions[sig - 1] = n;
        }
        prev
    }) else {
        return Errno::ESRCH.to_ret();
    };
    if old != 0 {
        let mut raw = [0u8; 32];
        for (i, w) in [prev.handler, prev.flags, prev.restorer, prev.mask]
            .iter()
            .enumerate()
        {
            raw[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        if let Err(e) = copy_out(pid, old, &raw) {
            return e.to_ret();
        }
    }
    0
}

/// `rt_sigprocmask(how, set, oldset, sigsetsize)`.
pub fn sigprocmask(pid: guest_mm::Pid, how: u64, set: u64, old: u64, setsize: u64) -> i64 {
    if setsize != 8 {
        return Errno::EINVAL.to_ret();
    }
    let new = if set != 0 {
        let mut raw = [0u8; 8];
        if let Err(e) = copy_in(pid, set, &mut raw) {
            return e.to_ret();
        }
        Some(u64::from_le_bytes(raw) & !(bit(9) | bit(19)))
    } else {
        None
    };
    if new.is_some() && !matches!(how, SIG_BLOCK | SIG_UNBLOCK | SIG_SETMASK) {
        return Errno::EINVAL.to_ret();
    }
    let Some(prev) = with_signals(pid, |s| {
        let prev = s.blocked;
        if let Some(n) = new {
            s.blocked = match how {
                SIG_BLOCK => prev | n,
                SIG_UNBLOCK => prev & !n,
                _ => n,
            };
        }
        prev
    }) else {
        return Errno::ESRCH.to_ret();
    };
    if old != 0
        && let Err(e) = copy_out(pid, old, &prev.to_le_bytes())
    {
        return e.to_ret();
    }
    0
}

/// Delivers fault signal `sig` (with `si_code`, fault address) to the
/// current task's handler: builds the frame on its stack and points
/// `frame` at the handler. False when the task has no usable handler
/// (default, ignored or blocked: the caller kills it) or the frame cannot
/// be written (Linux's `force_sigsegv`: the caller kills it too).
pub fn deliver(frame: &mut TrapFrame, sig: usize, code: i32, addr: u64) -> bool {
    let pid = task::current_pid();
    let Some((action, blocked)) = with_signals(pid, |s| (s.actions[sig - 1], s.blocked)) else {
        return false;
    };
    let caught = !matches!(action.handler, SIG_DFL | SIG_IGN);
    if !caught || blocked & bit(sig) != 0 || action.flags & SA_RESTORER == 0 {
        return false;
    }
    // struct rt_sigframe below the red zone; RSP + 8 is 16-aligned at the
    // handler's first instruction, as after a call.
    let size = 8 + UCONTEXT_BYTES + SIGINFO_BYTES;
    let Some(base) = frame.rsp.checked_sub(RED_ZONE + size) else {
        return false;
    };
    let sp = (base & !15) - 8;
    let uc = sp + 8;
    let info = uc + UCONTEXT_BYTES;
    let mut raw = [0u8; (8 + UCONTEXT_BYTES + SIGINFO_BYTES) as usize];
    put(&mut raw, 0, action.restorer);
    // uc_flags, uc_link and uc_stack (no alternate stack) stay zero.
    let sc = 8 + 8 + 8 + 24;
    let f = &*frame;
    let regs = [
        f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15, f.rdi, f.rsi, f.rbp, f.rbx, f.rdx,
        f.rax, f.rcx, f.rsp, f.rip, f.rflags,
    ];
    for (i, r) in regs.iter().enumerate() {
        put(&mut raw, sc + i as u64 * 8, *r);
    }
    // cs, gs, fs and ss as four u16s.
    put(
        &mut raw,
        sc + 18 * 8,
        u64::from(USER_CS) | (u64::from(USER_DS) << 48),
    );
    put(&mut raw, sc + 19 * 8, f.error_code);
    put(&mut raw, sc + 20 * 8, f.vector);
    put(&mut raw, sc + 21 * 8, blocked);
    put(&mut raw, sc + 22 * 8, addr);
    put(&mut raw, 8 + UCONTEXT_BYTES - 8, blocked);
    // siginfo: si_signo, si_errno, si_code (three ints), then si_addr.
    let si = 8 + UCONTEXT_BYTES;
    put(&mut raw, si, sig as u64);
    put(&mut raw, si + 8, u64::from(code as u32));
    put(&mut raw, si + 16, addr);
    if copy_out(pid, sp, &raw).is_err() {
        return false;
    }
    with_signals(pid, |s| {
        s.blocked |= action.mask;
        if action.flags & SA_NODEFER == 0 {
            s.blocked |= bit(sig);
        }
        if action.flags & SA_RESETHAND != 0 {
            s.actions[sig - 1] = SigAction::default();
        }
    });
    frame.rdi = sig as u64;
    frame.rsi = if action.flags & SA_SIGINFO != 0 {
        info
    } else {
        0
    };
    frame.rdx = if action.flags & SA_SIGINFO != 0 {
        uc
    } else {
        0
    };
    frame.rax = 0;
    frame.rsp = sp;
    frame.rip = action.handler;
    frame.rflags &= !TF_DF;
    true
}

/// `rt_sigreturn`: restores the registers and mask from the frame the
/// handler returned through (RSP points at its `ucontext`). Returns the
/// restored `rax`; `Err` when the frame cannot be read (the caller kills
/// the task with SIGSEGV, as Linux does).
pub fn sigreturn(frame: &mut TrapFrame) -> Result<u64, ()> {
    let pid = task::current_pid();
    let mut raw = [0u8; UCONTEXT_BYTES as usize];
    copy_in(pid, frame.rsp, &mut raw).map_err(|_| ())?;
    let sc = (8 + 8 + 24) as usize;
    let r = words::<32>(&raw[sc..sc + SIGCONTEXT_BYTES as usize]);
    let mask = words::<1>(&raw[UCONTEXT_BYTES as usize - 8..])[0];
    frame.r8 = r[0];
    frame.r9 = r[1];
    frame.r10 = r[2];
    frame.r11 = r[3];
    frame.r12 = r[4];
    frame.r13 = r[5];
    frame.r14 = r[6];
    frame.r15 = r[7];
    frame.rdi = r[8];
    frame.rsi = r[9];
    frame.rbp = r[10];
    frame.rbx = r[11];
    frame.rdx = r[12];
    frame.rax = r[13];
    frame.rcx = r[14];
    frame.rsp = r[15];
    frame.rip = r[16];
    frame.rflags = (frame.rflags & !FIX_EFLAGS) | (r[17] & FIX_EFLAGS);
    frame.cs = u64::from(USER_CS);
    frame.ss = u64::from(USER_DS);
    with_signals(pid, |s| s.blocked = mask & !(bit(9) | bit(19)));
    Ok(frame.rax)
}
