//! `forkwork`: fork-heavy churn for write-watch experiments (`watch
//! --workload fork`). The parent keeps a private arena of `arg` pages
//! (default 64); forever, it forks two children that each write a quarter
//! of the arena (each write a copy-on-write break, so a new page and a new
//! translation), lets them exit, and rewrites a quarter itself.

#![no_std]
#![no_main]

use guest_user::*;

guest_user::entry!(main);

fn main(arg: u64) -> i32 {
    let pages = if arg == 0 { 64 } else { arg.min(4096) };
    let base = mmap(
        0,
        pages * PAGE,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
    );
    if base < 0 {
        return 1;
    }
    let base = base as u64;
    let mut round = 0u64;
    loop {
        round += 1;
        for child in 0..2u64 {
            match fork() {
                0 => {
                    for p in (child..pages).step_by(4) {
                        poke(base + p * PAGE, round);
                    }
                    exit(0);
                }
                pid if pid < 0 => return 2,
                _ => {}
            }
        }
        for p in (2..pages).step_by(4) {
            poke(base + p * PAGE, round);
        }
        let mut status = 0;
        while wait4(-1, &mut status) > 0 {}
    }
}
