//! `sysabi`: checks the error returns of the user/kernel calls; exits with
//! a bit mask of the checks that failed (0 = all passed).

#![no_std]
#![no_main]

use core::arch::asm;
use guest_user::{call3, getpid, write};

guest_user::entry!(main);

const EBADF: i64 = -9;
const EFAULT: i64 = -14;
const ENOSYS: i64 = -38;

fn main(_arg: u64) -> i32 {
    let checks = [
        write(7, b"x") == EBADF,
        call3(guest_user::SYS_WRITE, 1, 0xdead_0000, 8) == EFAULT,
        call3(9999, 0, 0, 0) == ENOSYS,
        call3(guest_user::SYS_WRITE, 1, 0xffff_ffff_8010_0000, 8) == EFAULT,
        call3(guest_user::SYS_WRITE, 1, u64::MAX - 2, 8) == EFAULT,
        getpid() > 0,
        registers_survive(),
        write(1, b"sysabi: checks done\n") == 20,
    ];
    checks
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

/// A call keeps every register but `rax`, `rcx` and `r11`, as on Linux.
fn registers_survive() -> bool {
    let values: [u64; 10] = core::array::from_fn(|i| 0x1111_0000_0000_0000 * (i as u64 + 1) + 7);
    let mut out = values;
    // SAFETY: `getpid` changes no memory and only the registers listed as
    // clobbered.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") guest_user::SYS_GETPID => _,
            inout("rdi") out[0],
            inout("rsi") out[1],
            inout("rdx") out[2],
            inout("r8") out[3],
            inout("r9") out[4],
            inout("r10") out[5],
            inout("r12") out[6],
            inout("r13") out[7],
            inout("r14") out[8],
            inout("r15") out[9],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        )
    };
    out == values
}
