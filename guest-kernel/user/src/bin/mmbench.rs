//! `mmbench`: the MM benchmarks of `mode=bench`, measured with `rdtsc` in
//! ring 3 and sent as `bench` records (docs/GUEST_ABI.md). The argument is
//! `fault_pages | big_pages << 32`: pages for the three fault benchmarks and
//! for `fork_64m` / `munmap_64m` (16384 pages = 64 MiB); `getpid` makes as
//! many calls as the fault benchmarks touch pages.
//!
//! Exits 0, or a bit mask of the benchmarks that failed.

#![no_std]
#![no_main]

use core::fmt::Write;
use guest_user::fmt::Buf;
use guest_user::*;

guest_user::entry!(main);

const RW: u64 = PROT_READ | PROT_WRITE;
const ANON: u64 = MAP_PRIVATE | MAP_ANONYMOUS;

fn report(name: &str, ops: u64, cycles: u64) -> bool {
    let mut b = Buf::new();
    let _ = write!(
        b,
        r#"{{"type":"bench","name":"{name}","ops":{ops},"cycles":{cycles}}}"#
    );
    record(b.as_bytes()) == 0
}

fn map(pages: u64) -> Option<u64> {
    let a = mmap(0, pages * PAGE, RW, ANON);
    (a > 0).then_some(a as u64)
}

fn touch(base: u64, pages: u64) {
    for p in 0..pages {
        poke(base + p * PAGE, p);
    }
}

fn anon_write_fault(pages: u64) -> bool {
    let Some(base) = map(pages) else { return false };
    let t0 = rdtsc();
    touch(base, pages);
    let t1 = rdtsc();
    munmap(base, pages * PAGE) == 0 && report("anon_write_fault", pages, t1 - t0)
}

fn zero_page_read_fault(pages: u64) -> bool {
    let Some(base) = map(pages) else { return false };
    let t0 = rdtsc();
    let sum: u64 = (0..pages).map(|p| peek(base + p * PAGE)).sum();
    let t1 = rdtsc();
    sum == 0 && munmap(base, pages * PAGE) == 0 && report("zero_page_read_fault", pages, t1 - t0)
}

fn cow_fault(pages: u64) -> bool {
    let Some(base) = map(pages) else { return false };
    touch(base, pages);
    // The child keeps the pages mapped until the parent is done writing.
    let flag = mmap(0, PAGE, RW, MAP_SHARED | MAP_ANONYMOUS);
    if flag < 0 {
        return false;
    }
    let flag = flag as u64;
    let pid = fork();
    if pid == 0 {
        while peek(flag) == 0 {
            core::hint::spin_loop();
        }
        exit(0);
    }
    if pid < 0 {
        return false;
    }
    let t0 = rdtsc();
    for p in 0..pages {
        poke(base + p * PAGE, !p);
    }
    let t1 = rdtsc();
    poke(flag, 1);
    let mut status = 0;
    wait4(pid, &mut status) == pid
        && munmap(base, pages * PAGE) == 0
        && munmap(flag, PAGE) == 0
        && report("cow_fault", pages, t1 - t0)
}

fn fork_and_munmap(pages: u64) -> u32 {
    // Populated in one call (not measured): a fault per page would cost
    // a trap each on top of the same kernel work.
    let base = mmap(0, pages * PAGE, RW, ANON | MAP_POPULATE);
    if base <= 0 {
        return 3;
    }
    let base = base as u64;
    touch(base, pages);
    let t0 = rdtsc();
    let pid = fork();
    if pid == 0 {
        exit(0);
    }
    let t1 = rdtsc();
    let mut status = 0;
    let mut failed = 0;
    if pid < 0 || wait4(pid, &mut status) != pid || !report("fork_64m", 1, t1 - t0) {
        failed |= 1;
    }
    let t0 = rdtsc();
    let r = munmap(base, pages * PAGE);
    let t1 = rdtsc();
    if r != 0 || !report("munmap_64m", 1, t1 - t0) {
        failed |= 2;
    }
    failed
}

fn getpid_round_trip(calls: u64) -> bool {
    let pid = getpid();
    let t0 = rdtsc();
    let same = (0..calls).all(|_| getpid() == pid);
    let t1 = rdtsc();
    pid > 0 && same && report("getpid", calls, t1 - t0)
}

/// 2 MiB pages of the hugetlb benchmarks (64 MiB, as the others).
const HUGE_PAGES: u64 = 32;
const HUGE: u64 = 2 << 20;
/// writewatch's `hugetlb_pool(size_log, knob, value)`: `nr_hugepages`.
const SYS_HUGETLB_POOL: u64 = 1006;
const MAP_HUGETLB: u64 = 0x4_0000;

fn set_pool(n: u64) -> bool {
    call6(SYS_HUGETLB_POOL, [21, 0, n, 0, 0, 0]) == 0
}

/// `vm.hugetlb_optimize_vmemmap` (HVO) on or off.
fn set_hvo(on: bool) -> bool {
    call6(SYS_HUGETLB_POOL, [21, 2, u64::from(on), 0, 0, 0]) == 0
}

/// `hugetlb_pool_grow_hvo` and `hugetlb_pool_shrink_hvo`.
fn hugetlb_hvo() -> u32 {
    let mut failed = 0;
    let t0 = rdtsc();
    let grown = set_hvo(true) && set_pool(HUGE_PAGES);
    let t1 = rdtsc();
    if !grown || !report("hugetlb_pool_grow_hvo", HUGE_PAGES, t1 - t0) {
        failed |= 1;
    }
    let t0 = rdtsc();
    let shrunk = set_pool(0);
    let t1 = rdtsc();
    if !shrunk || !set_hvo(false) || !report("hugetlb_pool_shrink_hvo", HUGE_PAGES, t1 - t0) {
        failed |= 2;
    }
    failed
}

/// `hugetlb_pool_grow`, `hugetlb_write_fault` (first write to each 2 MiB
/// page of a private `MAP_HUGETLB` mapping), `hugetlb_pool_shrink`.
fn hugetlb() -> u32 {
    let mut failed = 0;
    let t0 = rdtsc();
    let grown = set_pool(HUGE_PAGES);
    let t1 = rdtsc();
    if !grown || !report("hugetlb_pool_grow", HUGE_PAGES, t1 - t0) {
        failed |= 1;
    }
    let base = mmap(0, HUGE_PAGES * HUGE, RW, ANON | MAP_HUGETLB);
    if base > 0 {
        let base = base as u64;
        let t0 = rdtsc();
        for i in 0..HUGE_PAGES {
            poke(base + i * HUGE, i);
        }
        let t1 = rdtsc();
        if munmap(base, HUGE_PAGES * HUGE) != 0
            || !report("hugetlb_write_fault", HUGE_PAGES, t1 - t0)
        {
            failed |= 2;
        }
    } else {
        failed |= 2;
    }
    let t0 = rdtsc();
    let shrunk = set_pool(0);
    let t1 = rdtsc();
    if !shrunk || !report("hugetlb_pool_shrink", HUGE_PAGES, t1 - t0) {
        failed |= 4;
    }
    failed
}

fn main(arg: u64) -> i32 {
    let fault_pages = arg & 0xffff_ffff;
    let big_pages = arg >> 32;
    let mut failed = 0;
    for (bit, ok) in [
        anon_write_fault(fault_pages),
        zero_page_read_fault(fault_pages),
        cow_fault(fault_pages),
    ]
    .into_iter()
    .enumerate()
    {
        if !ok {
            failed |= 1 << bit;
        }
    }
    failed |= (fork_and_munmap(big_pages) << 3) as i32;
    if !getpid_round_trip(fault_pages) {
        failed |= 1 << 5;
    }
    failed |= (hugetlb() << 6) as i32;
    failed |= (hugetlb_hvo() << 9) as i32;
    failed
}
