//! `badaccess`: does something a user program may not, chosen by its
//! argument, and must be killed by the kernel:
//! 0 = write to address 0, 1 = read kernel memory, 2 = `ud2`.

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
        _ => unsafe { asm!("ud2", options(nostack)) },
    }
    // Still alive: the kernel failed to stop us.
    0
}
