//! Write tracking with userfaultfd WP_ASYNC and `PAGEMAP_SCAN`, held to
//! the exact set of pages a workload wrote: every written page is reported
//! (nothing missed), and nothing else is unless its page was dropped since
//! the last reset (Linux 6.18 reports an emptied entry as written).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_PAGEOUT};
use crate::mmap::MAP_FIXED;
use crate::pagemap::{
    PAGE_IS_WRITTEN, PM_SCAN_ARG_SIZE, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_UFFD_WP,
    PmScanArg,
};
use crate::testing::user::user_write;
use crate::userfaultfd::{FEATURE_WP_ASYNC, MODE_WP, UFFD_API, UFFD_USER_MODE_ONLY, WP_MODE_WP};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;
const PAGES: u64 = 24;

/// A tracked region of `PAGES` pages at `A` (shared or private), write
/// protected from the start; returns the system, the process and a memfd
/// holding one page of data for kernel-side writes.
fn tracked(shared: bool) -> (Sys, Pid, u64) {
    let (mut s, p) = setup();
    let flags = if shared { SHARED } else { PRIV } | MAP_FIXED;
    mmap(&mut s, p, A, PAGES * PG, RW, flags).unwrap();
    let uffd = s.userfaultfd(p, UFFD_USER_MODE_ONLY).unwrap();
    s.uffdio_api(p, uffd, UFFD_API, FEATURE_WP_ASYNC).unwrap();
    s.uffdio_register(p, uffd, A, PAGES * PG, MODE_WP).unwrap();
    s.uffdio_writeprotect(p, uffd, A, PAGES * PG, WP_MODE_WP)
        .unwrap();
    let name = A + 0x10_0000;
    mmap(&mut s, p, name, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, name, b"t\0");
    let file = s.memfd_create(p, name, 0).unwrap();
    s.ftruncate(p, file, PG).unwrap();
    ok(&s);
    (s, p, file)
}

/// GetWriteWatch with `WRITE_WATCH_FLAG_RESET`, as Wine does it: the
/// written pages, write-protected again in the same call.
fn scan_and_reset(s: &mut Sys, p: Pid) -> BTreeSet<u64> {
    let arg = PmScanArg {
        size: PM_SCAN_ARG_SIZE,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start: A,
        end: A + PAGES * PG,
        vec: A,
        vec_len: PAGES,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    let r = s.pagemap_scan(p, arg).unwrap();
    ok(s);
    assert_eq!(r.error, None);
    r.regions
        .iter()
        .flat_map(|g| (g.start..g.end).step_by(PG as usize))
        .map(|va| (va - A) / PG)
        .collect()
}

#[derive(Debug, Clone)]
enum Step {
    Write(u64),
    Read(u64),
    /// `pread` from the memfd into the page: the kernel writes it.
    KernelWrite(u64),
    Dontneed(u64),
    Pageout(u64),
    ReadOnlyAndBack(u64),
    ForkAndExit,
    Reset,
}

fn step() -> impl Strategy<Value = Step> {
    let page = 0..PAGES;
    prop_oneof![
        4 => page.clone().prop_map(Step::Write),
        2 => page.clone().prop_map(Step::Read),
        1 => page.clone().prop_map(Step::KernelWrite),
        1 => page.clone().prop_map(Step::Dontneed),
        1 => page.clone().prop_map(Step::Pageout),
        1 => page.prop_map(Step::ReadOnlyAndBack),
        1 => Just(Step::ForkAndExit),
        2 => Just(Step::Reset),
    ]
}

fn run(shared: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (mut s, p, file) = tracked(shared);
    let (mut written, mut dropped) = (BTreeSet::new(), BTreeSet::new());
    for st in steps.into_iter().chain([Step::Reset]) {
        match st {
            Step::Write(i) => {
                user_write(&mut s, p, 0, A + i * PG + 8, &[i as u8 + 1]).unwrap();
                written.insert(i);
            }
            Step::Read(i) => {
                read(&mut s, p, A + i * PG, 1);
            }
            Step::KernelWrite(i) => {
                assert_eq!(s.file_read(p, file, A + i * PG, 16, Some(0)), Ok(16));
                written.insert(i);
            }
            Step::Dontneed(i) => {
                s.madvise(p, A + i * PG, PG, MADV_DONTNEED).unwrap();
                dropped.insert(i);
            }
            Step::Pageout(i) => {
                s.madvise(p, A + i * PG, PG, MADV_PAGEOUT).unwrap();
                dropped.insert(i);
            }
            Step::ReadOnlyAndBack(i) => {
                s.mprotect(p, A + i * PG, PG, u64::from(PROT_READ)).unwrap();
                s.mprotect(p, A + i * PG, PG, u64::from(RW)).unwrap();
            }
            Step::ForkAndExit => {
                let c = s.fork(p).unwrap();
                s.exit(c, 0).unwrap();
                s.wait(p, i64::from(c)).unwrap();
            }
            Step::Reset => {
                let got = scan_and_reset(&mut s, p);
                let missed: Vec<_> = written.difference(&got).collect();
                prop_assert!(
                    missed.is_empty(),
                    "written pages not reported: {:?}",
                    missed
                );
                let extra: Vec<_> = got
                    .difference(&written)
                    .filter(|i| !dropped.contains(i))
                    .collect();
                prop_assert!(
                    extra.is_empty(),
                    "pages reported but not written: {:?}",
                    extra
                );
                written.clear();
                dropped.clear();
            }
        }
        ok(&s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::cases(64), ..ProptestConfig::default() })]

    #[test]
    fn wp_async_scan_reports_exactly_the_written_pages(
        steps in proptest::collection::vec(step(), 1..60),
        shared in any::<bool>(),
    ) {
        run(shared, steps)?;
    }
}

#[test]
fn a_write_clears_the_pagemap_bit_of_its_page_only() {
    let (mut s, p, _) = tracked(false);
    write(&mut s, p, A + 3 * PG, &[1]);
    let e = s.pagemap(p, A, PAGES).unwrap();
    for (i, e) in e.iter().enumerate() {
        assert_eq!(e & PM_UFFD_WP == 0, i == 3, "page {i}: {e:#x}");
    }
}

#[test]
fn the_checker_refuses_broken_tracking_state() {
    // A registration whose context is gone.
    let (mut s, p, _) = tracked(false);
    let mm = s.procs[&p].mm.unwrap();
    s.mm_mut(mm).vmas.get_mut(A).unwrap().uffd = Some(crate::ids::UffdId(999_999));
    assert!(s.check().is_err());
    // A page writable while protected: its write would go unseen.
    let (mut s, p, _) = tracked(false);
    write(&mut s, p, A, &[1]);
    let root = s.mm(s.procs[&p].mm.unwrap()).root;
    let slot = crate::pgtable::pte_slot(&s.hw, root, A).unwrap();
    let crate::pte::Pte::Mapped { pfn, flags } = crate::pgtable::read_pte(&s.hw, slot) else {
        panic!("page mapped");
    };
    let bad = flags
        .with(crate::pte::PteFlags::UFFD_WP)
        .with(crate::pte::PteFlags::WRITE);
    crate::pgtable::write_pte(&mut s.hw, slot, crate::pte::Pte::Mapped { pfn, flags: bad });
    assert!(s.check().is_err());
}
