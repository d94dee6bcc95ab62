//! `mode=bench`: the MM benchmarks (docs/GUEST_ABI.md). The `mmbench`
//! program measures in ring 3 and sends the `bench` records itself; this
//! side makes sure the MM core already manages enough RAM (so deferred
//! memory initialisation is not measured) and reports the outcome.

use crate::memory::mm;
use crate::process::programs;
use crate::process::{Exit, Process};

/// Pages for the fault benchmarks (`anon_write_fault`,
/// `zero_page_read_fault`, `cow_fault`) and `getpid` calls: the host side's
/// 64 MiB (with the ring-3 kernel context a guest round takes ~20 s here).
pub const FAULT_PAGES: u64 = 16384;
/// Pages touched before `fork_64m` and unmapped by `munmap_64m` (64 MiB).
pub const BIG_PAGES: u64 = 16384;

/// Runs the benchmarks; true when all reported.
pub fn run_all() -> bool {
    // Data pages, COW copies, page tables, the hugetlb pool (32 pages of
    // 2 MiB) and slack.
    mm::reserve(BIG_PAGES + 3 * FAULT_PAGES + 32 * 512 + 4096);
    let mut p = match Process::spawn(&programs::MMBENCH) {
        Ok(p) => p,
        Err(e) => {
            crate::println!("bench: spawning mmbench: {e:?}");
            return false;
        }
    };
    let exit = p.run(FAULT_PAGES | BIG_PAGES << 32);
    crate::println!("bench: mmbench ended with {exit:?}");
    exit == Exit::Exited(0)
}
