//! `sysabi`: checks the error returns of the user/kernel calls; exits with
//! a bit mask of the checks that failed (0 = all passed).

#![no_std]
#![no_main]

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
        write(1, b"sysabi: checks done\n") == 20,
    ];
    checks
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .fold(0, |mask, (i, _)| mask | 1 << i)
}
