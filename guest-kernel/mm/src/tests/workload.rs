//! The write workload both tracking tests run (`write_tracking`,
//! `soft_dirty`) over a region of [`PAGES`] pages at [`A`]: single steps
//! of a process and what each did to the pages, so each test can hold its
//! tracker to the pages written.

use proptest::prelude::*;

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_PAGEOUT};
use crate::testing::user::user_write;

pub(crate) const A: u64 = 0x4000_0000;
pub(crate) const PG: u64 = 4096;
pub(crate) const PAGES: u64 = 24;

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Write(u64),
    Read(u64),
    /// `pread` from a memfd into the page: the kernel writes it.
    KernelWrite(u64),
    Dontneed(u64),
    Pageout(u64),
    ReadOnlyAndBack(u64),
    ForkAndExit,
    /// Compare the tracker with the pages written, then start over.
    Check,
}

/// What a step did to page `i`.
pub(crate) enum Effect {
    Written(u64),
    Dropped(u64),
    /// Reclaimed: its data is in swap or the page cache.
    PagedOut(u64),
    Nothing,
}

pub(crate) fn step() -> impl Strategy<Value = Step> {
    let page = 0..PAGES;
    prop_oneof![
        4 => page.clone().prop_map(Step::Write),
        2 => page.clone().prop_map(Step::Read),
        1 => page.clone().prop_map(Step::KernelWrite),
        1 => page.clone().prop_map(Step::Dontneed),
        1 => page.clone().prop_map(Step::Pageout),
        1 => page.prop_map(Step::ReadOnlyAndBack),
        1 => Just(Step::ForkAndExit),
        2 => Just(Step::Check),
    ]
}

/// Runs `st` (not [`Step::Check`]) in process `p`; `file` is a memfd of
/// one page for the kernel's writes.
pub(crate) fn apply(s: &mut Sys, p: Pid, file: u64, st: &Step) -> Effect {
    match *st {
        Step::Write(i) => {
            user_write(s, p, 0, A + i * PG + 8, &[i as u8 + 1]).unwrap();
            Effect::Written(i)
        }
        Step::Read(i) => {
            read(s, p, A + i * PG, 1);
            Effect::Nothing
        }
        Step::KernelWrite(i) => {
            assert_eq!(s.file_read(p, file, A + i * PG, 16, Some(0)), Ok(16));
            Effect::Written(i)
        }
        Step::Dontneed(i) => {
            s.madvise(p, A + i * PG, PG, MADV_DONTNEED).unwrap();
            Effect::Dropped(i)
        }
        Step::Pageout(i) => {
            s.madvise(p, A + i * PG, PG, MADV_PAGEOUT).unwrap();
            Effect::PagedOut(i)
        }
        Step::ReadOnlyAndBack(i) => {
            s.mprotect(p, A + i * PG, PG, u64::from(PROT_READ)).unwrap();
            s.mprotect(p, A + i * PG, PG, u64::from(RW)).unwrap();
            Effect::Nothing
        }
        Step::ForkAndExit => {
            let c = s.fork(p).unwrap();
            s.exit(c, 0).unwrap();
            s.wait(p, i64::from(c)).unwrap();
            Effect::Nothing
        }
        Step::Check => unreachable!("the test checks"),
    }
}
