//! `hello-rs`: a static x86-64 Linux program for `writewatch run --init`,
//! in Rust without the standard library. It makes the same checks as
//! `../hello.c` through Linux's `syscall` convention and numbers, so the same
//! binary also runs on Linux, and exits with a mask of the checks that failed
//! (0: all passed).

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

const SYS_WRITE: u64 = 1;
const SYS_MMAP: u64 = 9;
const SYS_MUNMAP: u64 = 11;
const SYS_BRK: u64 = 12;
const SYS_GETPID: u64 = 39;
const SYS_FORK: u64 = 57;
const SYS_WAIT4: u64 = 61;
const SYS_ARCH_PRCTL: u64 = 158;
const SYS_CLOCK_GETTIME: u64 = 228;
const SYS_EXIT_GROUP: u64 = 231;
const ARCH_SET_FS: u64 = 0x1002;
const CLOCK_MONOTONIC: u64 = 1;
const ENOSYS: i64 = -38;

fn syscall(nr: u64, args: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` enters the kernel, which reads the arguments and
    // changes `rax`, `rcx`, `r11` and the memory the arguments point at.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            in("rdi") args[0], in("rsi") args[1], in("rdx") args[2],
            in("r10") args[3], in("r8") args[4], in("r9") args[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack)
        )
    };
    ret
}

fn sys3(nr: u64, a: u64, b: u64, c: u64) -> i64 {
    syscall(nr, [a, b, c, 0, 0, 0])
}

fn say(text: &str) {
    sys3(SYS_WRITE, 1, text.as_ptr() as u64, text.len() as u64);
}

fn exit(status: u64) -> ! {
    sys3(SYS_EXIT_GROUP, status, 0, 0);
    // `exit_group` does not return; trap if it did.
    loop {
        // SAFETY: `ud2` only raises #UD, which ends the program.
        unsafe { asm!("ud2", options(nomem, nostack)) };
    }
}

/// The words `arch_prctl(ARCH_SET_FS)` points FS at.
static mut TLS: [u64; 2] = [0, 0x5eed];

fn checks() -> [bool; 8] {
    let pid = sys3(SYS_GETPID, 0, 0, 0);
    let mapped = {
        let p = syscall(SYS_MMAP, [0, 4 * 4096, 3, 0x22, u64::MAX, 0]);
        p > 0 && {
            let page = p as *mut u8;
            // SAFETY: four fresh read-write pages at `page`.
            let round_trip = (0..4).all(|i| unsafe {
                page.add(i * 4096).write_volatile(i as u8);
                page.add(i * 4096).read_volatile() == i as u8
            });
            round_trip && sys3(SYS_MUNMAP, p as u64, 4 * 4096, 0) == 0
        }
    };
    let heap = {
        let cur = sys3(SYS_BRK, 0, 0, 0) as u64;
        let grown = sys3(SYS_BRK, cur + 8192, 0, 0) as u64;
        let moved = cur > 0 && grown == cur + 8192;
        if moved {
            // SAFETY: the break moved by 8 KiB, so the byte below it is ours.
            unsafe { ((cur + 8191) as *mut u8).write_volatile(1) };
        }
        moved
    };
    let tls = {
        let base = &raw mut TLS as u64;
        let mut via_fs = 0u64;
        if sys3(SYS_ARCH_PRCTL, ARCH_SET_FS, base, 0) == 0 {
            // SAFETY: FS points at `TLS`, two words.
            unsafe { asm!("mov {}, fs:[8]", out(reg) via_fs, options(nostack, readonly)) };
        }
        via_fs == 0x5eed
    };
    let clock = {
        let (mut t0, mut t1) = ([0i64; 2], [0i64; 2]);
        sys3(
            SYS_CLOCK_GETTIME,
            CLOCK_MONOTONIC,
            t0.as_mut_ptr() as u64,
            0,
        ) == 0
            && sys3(
                SYS_CLOCK_GETTIME,
                CLOCK_MONOTONIC,
                t1.as_mut_ptr() as u64,
                0,
            ) == 0
            && t0[1] < 1_000_000_000
            && (t1[0], t1[1]) >= (t0[0], t0[1])
    };
    let forked = {
        let child = sys3(SYS_FORK, 0, 0, 0);
        if child == 0 {
            exit(7);
        }
        let mut status = 0i32;
        child > 0
            && syscall(
                SYS_WAIT4,
                [child as u64, &raw mut status as u64, 0, 0, 0, 0],
            ) == child
            && status == 7 << 8
    };
    [
        pid > 0,
        mapped,
        heap,
        tls,
        clock,
        forked,
        sys3(4242, 0, 0, 0) == ENOSYS,
        sys3(SYS_WRITE, 1, 0, 8) == -14,
    ]
}

#[unsafe(no_mangle)]
extern "C" fn start_rust(_stack: *const u64) -> ! {
    say("hello from Rust on writewatch\n");
    let failed = checks()
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    say(if failed == 0 {
        "all checks passed\n"
    } else {
        "some checks failed\n"
    });
    exit(failed)
}

// Linux enters with `rsp` at `argc`; calls need it 16-byte aligned.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call start_rust",
    "ud2",
);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(255)
}
