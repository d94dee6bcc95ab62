//! Write tracking with userfaultfd WP_ASYNC and `PAGEMAP_SCAN`, held to
//! the exact set of pages a workload wrote: every written page is reported
//! (nothing missed), and nothing else is unless its page was dropped since
//! the last reset (Linux 6.18 reports an emptied entry as written).

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::workload::{A, Effect, PAGES, PG, Step, apply, step};
use super::*;
use crate::mmap::MAP_FIXED;
use crate::pagemap::{
    PAGE_IS_WRITTEN, PM_SCAN_ARG_SIZE, PM_SCAN_CHECK_WPASYNC, PM_SCAN_WP_MATCHING, PM_UFFD_WP,
    PmScanArg,
};
use crate::userfaultfd::{
    FEATURE_WP_ASYNC, FEATURE_WP_UNPOPULATED, MODE_WP, UFFD_API, UFFD_USER_MODE_ONLY, WP_MODE_WP,
};

/// A tracked region of `PAGES` pages at `A` (shared or private), write
/// protected from the start with WP_ASYNC; returns the system, the
/// process and a memfd holding one page of data for kernel-side writes.
fn tracked(shared: bool) -> (Sys, Pid, u64) {
    let (s, p, _, file) = tracked_with(shared, FEATURE_WP_ASYNC);
    (s, p, file)
}

/// [`tracked`] with a context of `features`; also returns the uffd.
fn tracked_with(shared: bool, features: u64) -> (Sys, Pid, u64, u64) {
    let (mut s, p) = setup();
    let flags = if shared { SHARED } else { PRIV } | MAP_FIXED;
    mmap(&mut s, p, A, PAGES * PG, RW, flags).unwrap();
    let uffd = s.userfaultfd(p, UFFD_USER_MODE_ONLY).unwrap();
    s.uffdio_api(p, uffd, UFFD_API, features).unwrap();
    s.uffdio_register(p, uffd, A, PAGES * PG, MODE_WP).unwrap();
    s.uffdio_writeprotect(p, uffd, A, PAGES * PG, WP_MODE_WP)
        .unwrap();
    let name = A + 0x10_0000;
    mmap(&mut s, p, name, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, name, b"t\0");
    let file = s.memfd_create(p, name, 0).unwrap();
    s.ftruncate(p, file, PG).unwrap();
    ok(&s);
    (s, p, uffd, file)
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

fn run(shared: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let (mut s, p, file) = tracked(shared);
    let (mut written, mut dropped) = (BTreeSet::new(), BTreeSet::new());
    for st in steps.into_iter().chain([Step::Check]) {
        if !matches!(st, Step::Check) {
            match apply(&mut s, p, file, &st) {
                Effect::Written(i) => {
                    written.insert(i);
                }
                // Linux 6.18 reports an emptied entry as written.
                Effect::Dropped(i) | Effect::PagedOut(i) => {
                    dropped.insert(i);
                }
                Effect::Nothing => {}
            }
            ok(&s);
            continue;
        }
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

/// A region as [`tracked`] makes it, but protected for a synchronous
/// handler (with WP_UNPOPULATED, so that empty pages are protected too):
/// a fork child whose descriptor serves the parent. Returns the system,
/// the process, the handler, the uffd and the memfd.
fn tracked_sync(shared: bool) -> (Sys, Pid, Pid, u64, u64) {
    let (mut s, p, uffd, file) = tracked_with(shared, FEATURE_WP_UNPOPULATED);
    let h = s.fork(p).unwrap();
    ok(&s);
    (s, p, h, uffd, file)
}

/// The handler's side of one fault: reads its one message, records the
/// page, unprotects it, and checks that the writer is woken.
fn serve(s: &mut Sys, p: Pid, h: Pid, uffd: u64, seen: &mut BTreeSet<u64>) {
    use crate::syscall::{Outcome, SYS_READ};
    let buf = A + 0x20_0000;
    let r = s.syscall(h, SYS_READ, [uffd, buf, 64, 0, 0, 0], &mut |_| ());
    assert_eq!(r, Outcome::Return(32), "exactly one message");
    let mut m = [0u8; 32];
    s.copy_from_user(h, buf, &mut m).unwrap();
    let addr = u64::from_le_bytes(m[16..24].try_into().unwrap());
    seen.insert((addr - A) / PG);
    s.uffdio_writeprotect(h, uffd, addr, PG, 0).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
}

/// The synchronous handler against the pages written. Linux drops the
/// protection of a private anonymous page that is zapped
/// (`zap_install_uffd_wp_if_needed`: "Zap on anonymous always means
/// dropping everything"), so a write to it after that is not seen until
/// the next protection; shared memory keeps a marker, and there nothing
/// may be missed.
fn run_sync(shared: bool, steps: Vec<Step>) -> Result<(), TestCaseError> {
    use crate::FaultStop;
    use crate::testing::Access;
    use crate::testing::user::user_try_wait;
    let (mut s, p, h, uffd, file) = tracked_sync(shared);
    let buf = A + 0x20_0000;
    mmap(&mut s, h, buf, PG, RW, PRIV | MAP_FIXED).unwrap();
    let (mut written, mut seen, mut unguarded) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for st in steps.into_iter().chain([Step::Check]) {
        match st {
            Step::Write(i) => loop {
                match user_try_wait(&mut s, p, 0, A + i * PG + 8, Access::Write) {
                    Ok(pa) => {
                        crate::hw::PhysMem::write_bytes(&mut s.hw, pa, &[i as u8 + 1]);
                        written.insert(i);
                        break;
                    }
                    Err(FaultStop::Userfault) => serve(&mut s, p, h, uffd, &mut seen),
                    Err(FaultStop::Signal(r)) => panic!("{r:?}"),
                }
            },
            // The kernel's write into a protected page fails (a
            // user-mode-only context), so nothing is written unseen.
            Step::KernelWrite(i) => match s.file_read(p, file, A + i * PG, 16, Some(0)) {
                Ok(16) => {
                    written.insert(i);
                }
                r => prop_assert_eq!(r, Err(Errno::EFAULT)),
            },
            Step::Check => {
                let missed: Vec<_> = written
                    .difference(&seen)
                    .filter(|i| shared || !unguarded.contains(*i))
                    .collect();
                prop_assert!(missed.is_empty(), "written pages not seen: {:?}", missed);
                let extra: Vec<_> = seen.difference(&written).collect();
                prop_assert!(extra.is_empty(), "seen but not written: {:?}", extra);
                s.uffdio_writeprotect(p, uffd, A, PAGES * PG, WP_MODE_WP)
                    .unwrap();
                written.clear();
                seen.clear();
                unguarded.clear();
            }
            other => {
                if let Effect::Dropped(i) = apply(&mut s, p, file, &other) {
                    unguarded.insert(i);
                }
            }
        }
        ok(&s);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: super::cases(64), ..ProptestConfig::default() })]

    #[test]
    fn a_sync_wp_handler_sees_exactly_the_written_pages(
        steps in proptest::collection::vec(step(), 1..60),
        shared in any::<bool>(),
    ) {
        run_sync(shared, steps)?;
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
