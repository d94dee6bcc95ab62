//! Catching one's own faults: `rt_sigaction` with the restorer x86-64
//! needs, and `sched_yield`.

use super::{call3, call6};
use core::arch::global_asm;

/// `sched_yield`.
pub const SYS_SCHED_YIELD: u64 = 24;
/// `rt_sigaction`.
pub const SYS_RT_SIGACTION: u64 = 13;
/// `SIGBUS`.
pub const SIGBUS: u64 = 7;
/// `SIGSEGV`.
pub const SIGSEGV: u64 = 11;
/// `SA_SIGINFO`: the handler gets `siginfo` and `ucontext`.
pub const SA_SIGINFO: u64 = 0x4;
/// `SA_RESTORER`.
pub const SA_RESTORER: u64 = 0x0400_0000;
/// `SA_NODEFER`: the signal is not blocked while its handler runs.
pub const SA_NODEFER: u64 = 0x4000_0000;

/// A handler that gets the signal, its `siginfo` and the interrupted
/// `ucontext` (which it may change before returning).
pub type Handler = extern "C" fn(i32, *mut u8, *mut u8);

global_asm!(
    ".globl guest_user_restore_rt",
    "guest_user_restore_rt:",
    "mov eax, 15",
    "syscall",
    "ud2",
);

unsafe extern "C" {
    /// Returns from a signal handler (`rt_sigreturn`), as the C library's
    /// `__restore_rt` does.
    fn guest_user_restore_rt();
}

/// Installs `handler` for `sig` with `SA_SIGINFO | SA_NODEFER | flags`;
/// 0 or `-errno`.
pub fn sigaction(sig: u64, handler: Handler, flags: u64) -> i64 {
    let act: [u64; 4] = [
        handler as *const () as u64,
        flags | SA_SIGINFO | SA_NODEFER | SA_RESTORER,
        guest_user_restore_rt as *const () as u64,
        0,
    ];
    call6(SYS_RT_SIGACTION, [sig, act.as_ptr() as u64, 0, 8, 0, 0])
}

/// Gives the CPU to the next runnable task on it.
pub fn sched_yield() {
    call3(SYS_SCHED_YIELD, 0, 0, 0);
}
