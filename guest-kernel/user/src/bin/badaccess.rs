//! `badaccess`: does something a user program may not, chosen by its
//! argument, and must be killed by the kernel:
//! 0 = write to address 0, 1 = read kernel memory, 2 = `ud2`, 3 = the
//! instruction that in the ring-3 kernel context is its "return to ring 0"
//! request (`int3` with `rax` 0, `rdi` a kernel function), which for a user
//! process is a breakpoint (SIGTRAP), 4 = jump into kernel code (SIGSEGV);
//! any argument of 0x1000 or more: write to that address.

#![no_std]
#![no_main]

use core::arch::asm;

guest_user::entry!(main);

/// A kernel-image address (mapped, but not user-accessible).
const KERNEL_ADDR: u64 = 0xffff_ffff_8010_0000;

fn main(how: u64) -> i32 {
    match how {
        // SAFETY: faults on purpose; the kernel kills the process first.
        0 => unsafe { asm!("mov qword ptr [{}], 1", in(reg) 0u64, options(nostack)) },
        // SAFETY: as above (the kernel half is not user-accessible).
        1 => unsafe {
            asm!("mov {0}, qword ptr [{0}]", inout(reg) KERNEL_ADDR => _, options(nostack))
        },
        // SAFETY: as above (#UD).
        2 => unsafe { asm!("ud2", options(nostack)) },
        // SAFETY: as above (#BP); rdi holds a kernel-image address, as
        // an escape function would be.
        3 => unsafe { asm!("int3", in("rax") 0u64, in("rdi") KERNEL_ADDR, options(nostack)) },
        // SAFETY: as above (the fetch faults: kernel text is
        // supervisor-only for a user process).
        4 => unsafe { asm!("jmp {}", in(reg) KERNEL_ADDR, options(nostack)) },
        // SAFETY: as above (every kernel address is supervisor-only for
        // a user process).
        addr => unsafe { asm!("mov qword ptr [{}], 1", in(reg) addr, options(nostack)) },
    }
    // Still alive: the kernel failed to stop us.
    0
}
