//! `mmtest`: checks of the MM calls from ring 3; the argument picks the
//! group. Exits 0 when every check of the group passed, else a bit mask of
//! the failed checks (bit `i` = check `i`, in source order).
//!
//! 0 `MAP_FIXED_NOREPLACE`, 1 zero page, 2 swap round trip, 3 unshare
//! (read pin of a COW page), 4 mprotect/munmap/mremap/madvise.

#![no_std]
#![no_main]

use guest_user::*;

guest_user::entry!(main);

const RW: u64 = PROT_READ | PROT_WRITE;
const ANON: u64 = MAP_PRIVATE | MAP_ANONYMOUS;

fn main(group: u64) -> i32 {
    let checks: &mut [bool] = &mut [true; 24];
    let n = match group {
        0 => noreplace(checks),
        1 => zero_page(checks),
        2 => swap(checks),
        3 => unshare(checks),
        4 => calls(checks),
        _ => 0,
    };
    if n == 0 {
        return -1;
    }
    checks[..n]
        .iter()
        .enumerate()
        .filter(|(_, ok)| !**ok)
        .fold(0, |mask, (i, _)| mask | 1 << i)
}

fn stats() -> [u64; STATS_WORDS] {
    mm_stats().unwrap_or([0; STATS_WORDS])
}

/// Runs `f` in a child and returns its wait status.
fn in_child(f: fn() -> i32) -> i32 {
    match fork() {
        0 => exit(f()),
        pid if pid > 0 => {
            let mut status = 0;
            if wait4(pid, &mut status) == pid {
                status
            } else {
                -1
            }
        }
        _ => -1,
    }
}

const FIXED_AT: u64 = 0x1000_0000;

fn noreplace(c: &mut [bool]) -> usize {
    c[0] = mmap(FIXED_AT, 4 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE) == FIXED_AT as i64;
    poke(FIXED_AT + 2 * PAGE, 0x5a5a);
    // Overlapping the middle, the start, and the whole: EEXIST.
    c[1] = mmap(
        FIXED_AT + 2 * PAGE,
        4 * PAGE,
        RW,
        ANON | MAP_FIXED_NOREPLACE,
    ) == EEXIST;
    c[2] = mmap(FIXED_AT - PAGE, 2 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE) == EEXIST;
    c[3] = mmap(FIXED_AT, 4 * PAGE, RW, ANON | MAP_FIXED_NOREPLACE) == EEXIST;
    // The failed calls changed nothing.
    c[4] = peek(FIXED_AT + 2 * PAGE) == 0x5a5a;
    // Adjacent but not overlapping: fine.
    c[5] = mmap(FIXED_AT + 4 * PAGE, PAGE, RW, ANON | MAP_FIXED_NOREPLACE)
        == (FIXED_AT + 4 * PAGE) as i64;
    // Plain MAP_FIXED replaces instead.
    c[6] = mmap(FIXED_AT + 2 * PAGE, PAGE, RW, ANON | MAP_FIXED) == (FIXED_AT + 2 * PAGE) as i64;
    c[7] = peek(FIXED_AT + 2 * PAGE) == 0;
    c[8] = munmap(FIXED_AT, 5 * PAGE) == 0;
    9
}

fn zero_page(c: &mut [bool]) -> usize {
    const N: u64 = 8;
    let base = mmap(0, N * PAGE, RW, ANON);
    c[0] = base > 0;
    let base = base as u64;
    let s0 = stats();
    let sum: u64 = (0..N).map(|p| peek(base + p * PAGE + 8)).sum();
    let s1 = stats();
    c[1] = sum == 0;
    c[2] = s1[ST_ZERO_MAPS] - s0[ST_ZERO_MAPS] >= N;
    c[3] = s1[ST_ANON_ALLOCS] == s0[ST_ANON_ALLOCS];
    poke(base + 3 * PAGE + 8, 77);
    let s2 = stats();
    c[4] = peek(base + 3 * PAGE + 8) == 77;
    // A write over the zero page copies it (Linux: `wp_page_copy`).
    c[5] = s2[ST_ANON_ALLOCS] + s2[ST_COW_COPIES] > s1[ST_ANON_ALLOCS] + s1[ST_COW_COPIES];
    c[6] = (0..N)
        .filter(|&p| p != 3)
        .all(|p| peek(base + p * PAGE + 8) == 0);
    c[7] = munmap(base, N * PAGE) == 0;
    8
}

fn swap(c: &mut [bool]) -> usize {
    const N: u64 = 16;
    let base = mmap(0, N * PAGE, RW, ANON);
    c[0] = base > 0;
    let base = base as u64;
    for p in 0..N {
        poke(base + p * PAGE, 0xabc0_0000 + p);
        poke(base + p * PAGE + PAGE - 8, !p);
    }
    let s0 = stats();
    c[1] = madvise(base, N * PAGE, MADV_PAGEOUT) == 0;
    let s1 = stats();
    c[2] = s1[ST_SWAP_OUTS] - s0[ST_SWAP_OUTS] >= N;
    c[3] = s1[ST_SWAP_USED] >= N;
    c[4] = s1[ST_RSS] + N <= s0[ST_RSS];
    c[5] = (0..N).all(|p| {
        peek(base + p * PAGE) == 0xabc0_0000 + p && peek(base + p * PAGE + PAGE - 8) == !p
    });
    let s2 = stats();
    c[6] = s2[ST_SWAP_INS] - s1[ST_SWAP_INS] >= N;
    c[7] = munmap(base, N * PAGE) == 0;
    c[8] = stats()[ST_SWAP_USED] + N <= s1[ST_SWAP_USED];
    9
}

static mut SHARED_AT: u64 = 0;

fn shared_at() -> u64 {
    // SAFETY: written once by the parent before fork; read-only afterwards.
    unsafe { core::ptr::read_volatile(&raw const SHARED_AT) }
}

fn unshare_child() -> i32 {
    let base = shared_at();
    let s0 = stats();
    let mut bad = 0;
    if pin_read(base) != 0 {
        bad |= 1;
    }
    let s1 = stats();
    if s1[ST_UNSHARES] <= s0[ST_UNSHARES] {
        bad |= 2;
    }
    if peek(base) != 0x1234 {
        bad |= 4;
    }
    // Pinned pages stay read-only: the write below is an ordinary fault
    // that now reuses the page (exclusive) instead of copying it.
    poke(base, 0x4321);
    let s2 = stats();
    if s2[ST_COW_COPIES] != s1[ST_COW_COPIES] {
        bad |= 8;
    }
    if pin_read(0x10) != EFAULT {
        bad |= 16;
    }
    bad
}

fn unshare(c: &mut [bool]) -> usize {
    let base = mmap(0, PAGE, RW, ANON);
    c[0] = base > 0;
    let base = base as u64;
    poke(base, 0x1234);
    // SAFETY: single-threaded, before fork.
    unsafe { core::ptr::write_volatile(&raw mut SHARED_AT, base) };
    let status = in_child(unshare_child);
    c[1] = status == 0;
    c[2] = peek(base) == 0x1234;
    c[3] = munmap(base, PAGE) == 0;
    4
}

fn write_shared() -> i32 {
    poke(shared_at(), 1);
    0
}

fn read_shared() -> i32 {
    peek(shared_at()) as i32
}

fn calls(c: &mut [bool]) -> usize {
    c[0] = mmap(0, 0, RW, ANON) == EINVAL;
    let base = mmap(0, 8 * PAGE, RW, ANON);
    c[1] = base > 0;
    let base = base as u64;
    for p in 0..8 {
        poke(base + p * PAGE, 100 + p);
    }
    // mprotect: alignment, holes, then read-only for real.
    c[2] = mprotect(base + 1, PAGE, PROT_READ) == EINVAL;
    c[3] = mprotect(0x5000_0000, PAGE, PROT_READ) == ENOMEM;
    c[4] = mprotect(base, PAGE, PROT_READ) == 0;
    c[5] = peek(base) == 100;
    // SAFETY: single-threaded, before fork.
    unsafe { core::ptr::write_volatile(&raw mut SHARED_AT, base) };
    c[6] = killed_by(in_child(write_shared), 11);
    c[7] = mprotect(base, PAGE, RW) == 0;
    // munmap: alignment, then a page in the middle.
    c[8] = munmap(base + 1, PAGE) == EINVAL;
    c[9] = munmap(base + PAGE, PAGE) == 0;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&raw mut SHARED_AT, base + PAGE) };
    c[10] = killed_by(in_child(read_shared), 11);
    c[11] = peek(base + 2 * PAGE) == 102;
    // madvise: bad advice, then DONTNEED drops the data.
    c[12] = madvise(base, PAGE, 99) == EINVAL;
    c[13] = madvise(base + 2 * PAGE, PAGE, MADV_DONTNEED) == 0;
    c[14] = peek(base + 2 * PAGE) == 0 && peek(base + 3 * PAGE) == 103;
    // mremap: grow with MAYMOVE keeps the data; growing into a mapping
    // without MAYMOVE fails; shrinking stays in place.
    let tail = base + 4 * PAGE;
    let moved = mremap(tail, 4 * PAGE, 16 * PAGE, MREMAP_MAYMOVE, 0);
    c[15] = moved > 0;
    let moved = moved as u64;
    c[16] = (0..4).all(|p| peek(moved + p * PAGE) == 104 + p) && peek(moved + 8 * PAGE) == 0;
    let blocker = moved + 16 * PAGE;
    c[17] = mmap(blocker, PAGE, RW, ANON | MAP_FIXED_NOREPLACE) == blocker as i64;
    c[18] = mremap(moved, 16 * PAGE, 32 * PAGE, 0, 0) == ENOMEM;
    c[19] = mremap(moved, 16 * PAGE, 2 * PAGE, 0, 0) == moved as i64;
    c[20] = peek(moved + PAGE) == 105;
    c[21] =
        munmap(moved, 2 * PAGE) == 0 && munmap(blocker, PAGE) == 0 && munmap(base, 4 * PAGE) == 0;
    22
}
