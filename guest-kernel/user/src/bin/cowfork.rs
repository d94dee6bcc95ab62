//! `cowfork`: copy-on-write after fork. The parent fills a private mapping,
//! forks `arg & 0xff` children, and then parent and children all write
//! their own pattern at once (children run on other CPUs when there are
//! several); each must see only its own writes, and the children must see
//! the contents from the time of the fork. With bit 8 of `arg` set, at
//! least one child must have run on another CPU than the parent.
//!
//! Exits 0 when all is well, else a bit mask: 1 = mmap failed, 2 = fork
//! failed, 4 = parent saw a foreign write, 8 = a child saw wrong data or
//! failed, 16 = wait failed, 32 = no child ran on another CPU.

#![no_std]
#![no_main]

use core::fmt::Write;
use guest_user::fmt::Buf;
use guest_user::*;

guest_user::entry!(main);

/// Pages in the mapping.
const PAGES: u64 = 16;
/// Words written per page.
const WORDS: u64 = 8;
/// Rounds of writing and checking (more overlap between CPUs).
const ROUNDS: u64 = 4;

fn fill(base: u64, tag: u64) {
    for p in 0..PAGES {
        for w in 0..WORDS {
            poke(base + p * PAGE + w * 8, tag << 32 | p << 8 | w);
        }
    }
}

fn check(base: u64, tag: u64) -> bool {
    (0..PAGES).all(|p| (0..WORDS).all(|w| peek(base + p * PAGE + w * 8) == tag << 32 | p << 8 | w))
}

fn child(base: u64, i: u64) -> i32 {
    if !check(base, 1) {
        return 100;
    }
    for _ in 0..ROUNDS {
        fill(base, 0x10 + i);
        if !check(base, 0x10 + i) {
            return 101;
        }
    }
    getcpu() as i32
}

fn main(arg: u64) -> i32 {
    let children = (arg & 0xff).min(16);
    let want_other_cpu = arg & 0x100 != 0;
    let base = mmap(
        0,
        PAGES * PAGE,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS,
    );
    if base < 0 {
        return 1;
    }
    let base = base as u64;
    fill(base, 1);
    let me = getcpu();
    let mut failed = 0;
    let mut started = 0;
    for i in 0..children {
        match fork() {
            0 => exit(child(base, i)),
            pid if pid > 0 => started += 1,
            _ => failed |= 2,
        }
    }
    for _ in 0..ROUNDS {
        fill(base, 2);
        if !check(base, 2) {
            failed |= 4;
        }
    }
    let mut cpus = 0u64;
    for _ in 0..started {
        let mut status = 0;
        if wait4(-1, &mut status) <= 0 {
            failed |= 16;
            continue;
        }
        match exit_code(status) {
            code if status & 0x7f == 0 && code < 64 => cpus |= 1 << code,
            _ => failed |= 8,
        }
    }
    if !check(base, 2) {
        failed |= 4;
    }
    if want_other_cpu && cpus & !(1 << me) == 0 {
        failed |= 32;
    }
    let mut line = Buf::new();
    let _ = writeln!(
        line,
        "cowfork: parent on cpu {me}, {started} children on cpus {cpus:#x}"
    );
    write(1, line.as_bytes());
    failed
}
