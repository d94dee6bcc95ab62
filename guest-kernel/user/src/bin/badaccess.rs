//! `badaccess`: does something a user program may not, chosen by its
//! argument, and must be killed by the kernel:
//! 0 = write to address 0, 1 = read kernel memory, 2 = `ud2`, 3 = the
//! instruction that in the ring-3 kernel context is its "return to ring 0"
//! request (`int3` with `rax` 0, `rdi` a kernel function), which for a user
//! process is a breakpoint (SIGTRAP), 4 = jump into kernel code (SIGSEGV);
//! 5 = run a `syscall` in the last two bytes below TASK_SIZE, so the call
//! returns to the first address past the user space (the top page, which
//! is never mapped: SIGSEGV there, where a `sysret` to a non-canonical
//! address would be the hazard Linux's TASK_SIZE avoids);
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
        5 => top_of_user_space(),
        // SAFETY: as above (every kernel address is supervisor-only for
        // a user process).
        addr => unsafe { asm!("mov qword ptr [{}], 1", in(reg) addr, options(nostack)) },
    }
    // Still alive: the kernel failed to stop us.
    0
}

/// The top user page TASK_SIZE leaves out (Linux x86-64's TASK_SIZE).
const TASK_SIZE: u64 = (1 << 47) - 4096;

fn top_of_user_space() {
    let page = TASK_SIZE - 4096;
    let rwx = guest_user::PROT_READ | guest_user::PROT_WRITE | 4;
    let flags = guest_user::MAP_PRIVATE | guest_user::MAP_ANONYMOUS | 0x10;
    if guest_user::mmap(page, 4096, rwx, flags) != page as i64 {
        return;
    }
    // `syscall` (getpid) in the page's last two bytes.
    guest_user::poke(TASK_SIZE - 8, 0x050f_u64 << 48);
    // SAFETY: jumps to the two bytes just written; the call returns to
    // TASK_SIZE, where the fetch faults and the kernel kills us.
    unsafe {
        asm!("jmp {}", in(reg) TASK_SIZE - 2, in("rax") 39u64, options(nostack));
    }
}
