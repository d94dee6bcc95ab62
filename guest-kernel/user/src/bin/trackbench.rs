//! `trackbench`: the write-tracking benchmarks ([`guest_user::trackbench`])
//! in this guest, timed with `rdtsc` in ring 3 and sent as `bench` records
//! (`pages` covered, `cycles` taken; docs/GUEST_ABI.md). Exits 0, or the
//! mask of the operations that failed.

#![no_std]
#![no_main]

use core::fmt::Write;
use guest_user::fmt::Buf;
use guest_user::script::{HUGE_2M_LOG, SYS_HUGETLB_POOL};
use guest_user::trackbench::{self, Platform, Sample};
use guest_user::*;

guest_user::entry!(main);

struct Guest;

impl Platform for Guest {
    fn now(&self) -> u64 {
        rdtsc()
    }

    fn hugetlb_pool(&mut self, pages: u64) -> bool {
        call6(SYS_HUGETLB_POOL, [HUGE_2M_LOG, 0, pages, 0, 0, 0]) == 0
    }
}

fn main(_arg: u64) -> i32 {
    let mut lost = 0;
    let failed = trackbench::run(&mut Guest, &mut |s: Sample| {
        let mut b = Buf::new();
        let _ = write!(
            b,
            r#"{{"type":"bench","name":"{}","ops":{},"cycles":{}}}"#,
            s.name, s.pages, s.ticks
        );
        if record(b.as_bytes()) != 0 {
            lost |= 4;
        }
    });
    (failed | lost) as i32
}
