//! `wwprobe`: a process whose memory the host write watch looks at from
//! outside (tests/write_watch_va.rs). It maps a private arena, a shared
//! region and a flag page, announces them, and then goes through phases.
//! Each phase starts when the host writes its number into the flag page and
//! ends with a `wwprobe_done` record; in between the process spins, so the
//! host sees exactly the writes and mapping changes of the phase:
//!
//! 1. write arena pages 0, 3, 6, 9;
//! 2. fork; the parent writes arena page 4 (a COW break) and shared page 5;
//! 3. the child writes arena page 1 (its own COW copy) and shared page 2;
//! 4. the child exits and the parent reaps it;
//! 5. `MADV_DONTNEED` on arena page 7, then a read of it (the zero page);
//! 6. `munmap` of arena page 8;
//! 7. nothing;
//!
//! then it exits 0 (or 1 if a call failed).

#![no_std]
#![no_main]

use core::fmt::Write;
use guest_user::fmt::Buf;
use guest_user::*;

guest_user::entry!(main);

const ARENA: u64 = 32;
const SHARED: u64 = 8;

fn wait_for(flag: u64, phase: u64) {
    while peek(flag) < phase {
        core::hint::spin_loop();
    }
}

fn done(phase: u64) {
    let mut b = Buf::new();
    let _ = write!(
        b,
        r#"{{"type":"wwprobe_done","phase":{phase},"pid":{}}}"#,
        getpid()
    );
    record(b.as_bytes());
}

fn map(pages: u64, flags: u64) -> u64 {
    let addr = mmap(
        0,
        pages * PAGE,
        PROT_READ | PROT_WRITE,
        flags | MAP_ANONYMOUS | MAP_POPULATE,
    );
    if addr < 0 {
        exit(1);
    }
    for p in 0..pages {
        poke(addr as u64 + p * PAGE, 0x1111);
    }
    addr as u64
}

fn main(_arg: u64) -> i32 {
    let arena = map(ARENA, MAP_PRIVATE);
    let shared = map(SHARED, MAP_SHARED);
    let flag = map(1, MAP_PRIVATE);
    poke(flag, 0);
    let page = |base: u64, i: u64| base + i * PAGE;
    let mut b = Buf::new();
    let _ = write!(
        b,
        r#"{{"type":"wwprobe","pid":{},"arena":{arena},"arena_pages":{ARENA},"shared":{shared},"shared_pages":{SHARED},"flag":{flag}}}"#,
        getpid()
    );
    record(b.as_bytes());

    wait_for(flag, 1);
    for i in [0, 3, 6, 9] {
        poke(page(arena, i), 1);
    }
    done(1);

    wait_for(flag, 2);
    let child = fork();
    if child < 0 {
        return 1;
    }
    if child == 0 {
        wait_for(flag, 3);
        poke(page(arena, 1), 3);
        poke(page(shared, 2), 3);
        done(3);
        wait_for(flag, 4);
        exit(0);
    }
    poke(page(arena, 4), 2);
    poke(page(shared, 5), 2);
    done(2);

    wait_for(flag, 4);
    let mut status = 0;
    if wait4(child, &mut status) != child || status != 0 {
        return 1;
    }
    done(4);

    wait_for(flag, 5);
    if madvise(page(arena, 7), PAGE, MADV_DONTNEED) != 0 || peek(page(arena, 7)) != 0 {
        return 1;
    }
    done(5);

    wait_for(flag, 6);
    if munmap(page(arena, 8), PAGE) != 0 {
        return 1;
    }
    done(6);

    wait_for(flag, 7);
    done(7);
    wait_for(flag, 8);
    0
}
