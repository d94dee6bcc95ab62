//! The write-tracking benchmarks (`vmm/benches/tracking.rs`): one body of
//! code that runs in a guest process (`trackbench`) and, through
//! `#[path]`, in a Linux process on the host, making the same system calls
//! (`mmap`, `userfaultfd` and its ioctls, `PAGEMAP_SCAN` on
//! `/proc/self/pagemap`) and the same GetWriteWatch emulation
//! ([`crate::writewatch`] over [`crate::watch::Syscalls`]), so the two
//! sides' times compare like for like.
//!
//! Every operation works on [`PAGES`] pages (64 MiB) and reports how many
//! pages it covered and how many ticks of the side's clock it took:
//! - `scan_mostly_clean_4k` / `scan_mostly_written_4k`: `PAGEMAP_SCAN` for
//!   WRITTEN over a write-watch allocation (WP_ASYNC, protected) where one
//!   page in [`STRIDE`] was written, or all but one in [`STRIDE`].
//! - `scan_sparse_2m` / `scan_full_2m`: `PAGEMAP_SCAN` for PRESENT over 32
//!   hugetlb pages of 2 MiB, one in eight faulted in, or all (pages counted
//!   as 4 KiB ones; the guest cannot write-protect hugetlb memory yet).
//! - `wp_async_write_fault`: the first write to each protected page, which
//!   the kernel resolves itself (the page counts as written).
//! - `getwritewatch` / `getwritewatch_reset`: GetWriteWatch over the whole
//!   allocation with one page in [`STRIDE`] written, without and with
//!   `WRITE_WATCH_FLAG_RESET` (the pages are written again between calls,
//!   outside the timing).

use crate::call6;
use crate::script::{
    PAGE, PAGEMAP_SCAN, SYS_CLOSE, SYS_IOCTL, SYS_MMAP, SYS_MUNMAP, SYS_OPEN, ScanArgs,
};
use crate::watch::Syscalls;
use crate::writewatch::{WRITE_WATCH_FLAG_RESET, WriteWatch};

/// Pages of every operation: 64 MiB.
pub const PAGES: u64 = 16384;
/// One page in this many is written (or left alone); a power of two.
pub const STRIDE: u64 = 64;
const _: () = assert!(STRIDE.is_power_of_two());
/// Timed repetitions of the scans and GetWriteWatch calls.
pub const ROUNDS: u64 = 8;
/// 2 MiB pages of the hugetlb scans (64 MiB).
pub const HUGE_PAGES: u64 = 32;
const HUGE: u64 = 2 << 20;

const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_HUGE: u64 = 1 << 6;
const PROT_RW: u64 = 3;
const MAP_PRIVATE_ANON_HUGETLB: u64 = 0x02 | 0x20 | 0x4_0000;
/// Regions one `PAGEMAP_SCAN` may return: more than any operation makes.
const REGIONS: usize = 512;

/// What differs between the two sides.
pub trait Platform {
    /// Now, in the side's ticks (guest: TSC cycles; host: nanoseconds).
    fn now(&self) -> u64;
    /// Sizes the 2 MiB hugetlb pool so that `pages` more can be reserved;
    /// whether it could.
    fn hugetlb_pool(&mut self, pages: u64) -> bool;
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub name: &'static str,
    /// Pages the operation covered (4 KiB ones).
    pub pages: u64,
    pub ticks: u64,
}

/// Runs every operation, handing each measurement to `report`; returns a
/// mask of the operations that failed (0: none).
pub fn run(p: &mut impl Platform, report: &mut impl FnMut(Sample)) -> u32 {
    let mut failed = 0;
    if write_watch(p, report).is_none() {
        failed |= 1;
    }
    if hugetlb_scans(p, report).is_none() {
        failed |= 2;
    }
    failed
}

fn write(addr: u64, val: u8) {
    // Only called on pages of a mapping this module made.
    // SAFETY: the page is readable, writable and not otherwise referenced.
    unsafe { core::ptr::write_volatile(addr as *mut u8, val) };
}

/// Writes the pages `i` of `[base, base + PAGES)` for which `which(i)`.
fn write_pages(base: u64, val: u8, which: impl Fn(u64) -> bool) {
    for i in (0..PAGES).filter(|&i| which(i)) {
        write(base + i * PAGE, val);
    }
}

/// `/proc/self/pagemap`, for the raw scans.
struct Pagemap(u64);

impl Pagemap {
    fn open() -> Option<Self> {
        let fd = call6(
            SYS_OPEN,
            [c"/proc/self/pagemap".as_ptr() as u64, 0, 0, 0, 0, 0],
        );
        (fd >= 0).then_some(Pagemap(fd as u64))
    }

    /// Scans `[start, start + len)` whole for `mask` (reporting `ret`),
    /// going on from `walk_end` until the end; the regions found.
    fn scan(&self, start: u64, len: u64, mask: u64, ret: u64) -> Option<u64> {
        let mut regions = [[0u64; 3]; REGIONS];
        let (mut at, end, mut found) = (start, start + len, 0);
        while at < end {
            let args = ScanArgs {
                mask,
                ret,
                vec_len: REGIONS as u64,
                ..ScanArgs::default()
            };
            let mut arg = args.words(at, end - at, regions.as_mut_ptr() as u64);
            let r = call6(
                SYS_IOCTL,
                [self.0, PAGEMAP_SCAN, arg.as_mut_ptr() as u64, 0, 0, 0],
            );
            let walk_end = arg[4];
            if r < 0 || walk_end <= at {
                return None;
            }
            found += r as u64;
            at = walk_end;
        }
        Some(found)
    }
}

impl Drop for Pagemap {
    fn drop(&mut self) {
        call6(SYS_CLOSE, [self.0, 0, 0, 0, 0, 0]);
    }
}

/// Times `ROUNDS` scans of `[base, base + len)`.
fn timed_scans(
    p: &impl Platform,
    pm: &Pagemap,
    (base, len): (u64, u64),
    (mask, ret): (u64, u64),
    want: u64,
) -> Option<u64> {
    let t0 = p.now();
    for _ in 0..ROUNDS {
        if pm.scan(base, len, mask, ret)? != want {
            return None;
        }
    }
    Some(p.now() - t0)
}

fn write_watch(p: &mut impl Platform, report: &mut impl FnMut(Sample)) -> Option<()> {
    let len = PAGES * PAGE;
    let mut ww = WriteWatch::default();
    let sys = &mut Syscalls;
    let base = ww.alloc(sys, 0, len);
    if base < 0 {
        return None;
    }
    let base = base as u64;
    let pm = Pagemap::open()?;
    // STRIDE is a power of two (`is_multiple_of` is newer than the host
    // side's Rust 1.85).
    let sparse = |i: u64| i & (STRIDE - 1) == 0;
    // Every page present (each pattern protects them all again first):
    // the scans look at present pages.
    write_pages(base, 1, |_| true);
    // Both patterns leave 256 regions of written pages: one page in
    // STRIDE written, or all but one in STRIDE.
    let patterns = [
        ("scan_mostly_clean_4k", 2, true),
        ("scan_mostly_written_4k", 3, false),
    ];
    for (name, val, few) in patterns {
        ww.reset(sys, base, len).ok()?;
        write_pages(base, val, |i| sparse(i) == few);
        let written = (PAGE_IS_WRITTEN, PAGE_IS_WRITTEN);
        let ticks = timed_scans(p, &pm, (base, len), written, PAGES / STRIDE)?;
        report(Sample {
            name,
            pages: PAGES * ROUNDS,
            ticks,
        });
    }

    ww.reset(sys, base, len).ok()?;
    let t0 = p.now();
    write_pages(base, 4, |_| true);
    report(Sample {
        name: "wp_async_write_fault",
        pages: PAGES,
        ticks: p.now() - t0,
    });

    let mut addrs = [0u64; 2 * (PAGES / STRIDE) as usize];
    let want = (PAGES / STRIDE) as usize;
    ww.reset(sys, base, len).ok()?;
    write_pages(base, 5, sparse);
    let t0 = p.now();
    for _ in 0..ROUNDS {
        if ww.get(sys, 0, base, len, &mut addrs).ok()?.0 != want {
            return None;
        }
    }
    report(Sample {
        name: "getwritewatch",
        pages: PAGES * ROUNDS,
        ticks: p.now() - t0,
    });
    let mut ticks = 0;
    for round in 0..ROUNDS {
        write_pages(base, 6 + round as u8, sparse);
        let t0 = p.now();
        let got = ww
            .get(sys, WRITE_WATCH_FLAG_RESET, base, len, &mut addrs)
            .ok()?
            .0;
        ticks += p.now() - t0;
        if got != want {
            return None;
        }
    }
    report(Sample {
        name: "getwritewatch_reset",
        pages: PAGES * ROUNDS,
        ticks,
    });
    (call6(SYS_MUNMAP, [base, len, 0, 0, 0, 0]) == 0).then_some(())
}

fn hugetlb_scans(p: &mut impl Platform, report: &mut impl FnMut(Sample)) -> Option<()> {
    if !p.hugetlb_pool(HUGE_PAGES) {
        // No pool to be had (on the host: not root): nothing to report.
        return Some(());
    }
    let len = HUGE_PAGES * HUGE;
    let base = call6(
        SYS_MMAP,
        [0, len, PROT_RW, MAP_PRIVATE_ANON_HUGETLB, u64::MAX, 0],
    );
    let result = (|| {
        let base = u64::try_from(base).ok()?;
        let pm = Pagemap::open()?;
        let (mask, ret) = (PAGE_IS_PRESENT, PAGE_IS_PRESENT | PAGE_IS_HUGE);
        for i in (0..HUGE_PAGES).step_by(8) {
            write(base + i * HUGE, 1);
        }
        // Faulted pages one in eight: one region each.
        let ticks = timed_scans(p, &pm, (base, len), (mask, ret), HUGE_PAGES / 8)?;
        report(Sample {
            name: "scan_sparse_2m",
            pages: len / PAGE * ROUNDS,
            ticks,
        });
        for i in 0..HUGE_PAGES {
            write(base + i * HUGE, 1);
        }
        let ticks = timed_scans(p, &pm, (base, len), (mask, ret), 1)?;
        report(Sample {
            name: "scan_full_2m",
            pages: len / PAGE * ROUNDS,
            ticks,
        });
        Some(())
    })();
    if base >= 0 {
        call6(SYS_MUNMAP, [base as u64, len, 0, 0, 0, 0]);
    }
    p.hugetlb_pool(0);
    result
}
