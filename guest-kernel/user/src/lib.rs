//! Runtime of the writewatch guest's ring-3 programs: the `syscall`
//! instruction with Linux's convention (docs/GUEST_ABI.md), wrappers for the calls the kernel offers, the
//! `_start` glue and a panic handler.
//!
//! Call numbers and error values are Linux x86-64's, plus the writewatch
//! calls from 1000 up.

#![no_std]

pub mod fmt;
pub mod mm;
pub mod probe;
pub mod script;
pub mod signal;
pub mod trackbench;
pub mod watch;
pub mod writewatch;

use core::arch::asm;

pub use mm::*;

/// `write(fd, buf, len)`.
pub const SYS_WRITE: u64 = 1;
/// `getpid()`.
pub const SYS_GETPID: u64 = 39;
/// `exit(status)`.
pub const SYS_EXIT: u64 = 60;

/// Makes user/kernel call `nr` with three arguments; returns `rax`
/// (a negative errno on failure).
pub fn call3(nr: u64, a: u64, b: u64, c: u64) -> i64 {
    call6(nr, [a, b, c, 0, 0, 0])
}

/// Makes user/kernel call `nr` with six arguments (`rdi, rsi, rdx, r10,
/// r8, r9`); returns `rax` (a negative errno on failure).
pub fn call6(nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` enters the kernel, which reads the arguments and
    // changes only `rax` (and `rcx`, `r11`, as on Linux) and, for calls that
    // return data, the user memory
    // the arguments point at (the asm block is not `nomem`, so the compiler
    // assumes memory may change).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            in("r9") args[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    ret
}

/// Writes `bytes` to file descriptor `fd` (1 and 2 are the console).
pub fn write(fd: u64, bytes: &[u8]) -> i64 {
    call3(SYS_WRITE, fd, bytes.as_ptr() as u64, bytes.len() as u64)
}

/// This process's id.
pub fn getpid() -> i64 {
    call3(SYS_GETPID, 0, 0, 0)
}

/// Ends the process with `status`.
pub fn exit(status: i32) -> ! {
    call3(SYS_EXIT, status as u64, 0, 0);
    // The kernel never returns from exit; trap if it did.
    loop {
        // SAFETY: `ud2` only raises #UD, which kills the process.
        unsafe { asm!("ud2", options(nomem, nostack)) };
    }
}

/// Defines `_start`, which calls `$main(arg)` (`arg` from the kernel, in
/// `rdi`) and exits with its result.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn _start(arg: u64) -> ! {
            $crate::exit($main(arg))
        }
    };
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    write(2, b"user program panicked\n");
    exit(101)
}
