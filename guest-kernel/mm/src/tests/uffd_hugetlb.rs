//! userfaultfd on hugetlb memory: write-protection of whole huge entries,
//! huge uffd-wp markers across zaps and fork, missing faults, and
//! `PAGEMAP_SCAN`'s whole-page write-protection. The checker runs after
//! every step.

use super::*;
use crate::FaultStop;
use crate::hugetlb::{HSTATE_2M, PoolKnob};
use crate::hw::PhysMem;
use crate::madvise::MADV_DONTNEED;
use crate::mmap::{MAP_FIXED, MAP_HUGETLB};
use crate::pagemap::{
    PAGE_IS_WRITTEN, PM_MMAP_EXCLUSIVE, PM_PRESENT, PM_SCAN_ARG_SIZE, PM_SCAN_WP_MATCHING,
    PM_UFFD_WP, PmScanArg,
};
use crate::syscall::{Outcome, SYS_READ};
use crate::testing::Access;
use crate::testing::user::user_try_wait;
use crate::userfaultfd::{
    FEATURE_WP_ASYNC, MODE_MISSING, MODE_WP, UFFD_API, UFFD_USER_MODE_ONLY, WP_MODE_WP,
};

const A: u64 = 0x4000_0000;
const HP: u64 = 2 << 20;
const BUF: u64 = 0x5000_0000;

/// A process with a 2-page pool and two huge pages at `A` (`flags`),
/// registered (`mode`) on a context with `features`; returns the uffd.
fn huge_registered(flags: u32, mode: u64, features: u64) -> (Sys, Pid, u64) {
    let mut s = crate::testing::user::sim_system(64, 2, Config::default());
    let p = s.spawn(0).unwrap();
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 2)
        .unwrap();
    mmap(&mut s, p, A, 2 * HP, RW, flags | MAP_HUGETLB | MAP_FIXED).unwrap();
    mmap(&mut s, p, BUF, 4096, RW, PRIV | MAP_FIXED).unwrap();
    let uffd = s.userfaultfd(p, UFFD_USER_MODE_ONLY).unwrap();
    s.uffdio_api(p, uffd, UFFD_API, features).unwrap();
    s.uffdio_register(p, uffd, A, 2 * HP, mode).unwrap();
    ok(&s);
    (s, p, uffd)
}

/// A ring-3 write: `Ok(true)` done, `Ok(false)` waits for the handler.
fn try_write(s: &mut Sys, p: Pid, va: u64, v: u8) -> Result<bool, i32> {
    let r = user_try_wait(s, p, 0, va, Access::Write);
    ok(s);
    match r {
        Ok(pa) => {
            s.hw.write_bytes(pa, &[v]);
            Ok(true)
        }
        Err(FaultStop::Userfault) => Ok(false),
        Err(FaultStop::Signal(r)) => Err(r.signal),
    }
}

fn pm(s: &Sys, p: Pid, va: u64) -> u64 {
    s.pagemap(p, va, 1).unwrap()[0] & (PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_UFFD_WP)
}

/// The huge entry's frame at `va`.
fn pfn_at(s: &Sys, p: Pid, va: u64) -> Option<crate::Pfn> {
    let root = s.mm(s.procs[&p].mm.unwrap()).root;
    match crate::pgtable::lookup_page(&s.hw, root, va) {
        crate::pte::Pte::Mapped { pfn, .. } => Some(pfn),
        _ => None,
    }
}

#[test]
fn a_protected_huge_page_waits_for_its_handler_and_is_reused_in_place() {
    let (mut s, p, uffd) = huge_registered(PRIV, MODE_WP, 0);
    assert_eq!(try_write(&mut s, p, A + 5, 1), Ok(true));
    let before = pfn_at(&s, p, A);
    assert_eq!(
        s.uffdio_writeprotect(p, uffd, A + 4096, HP, WP_MODE_WP),
        Err(Errno::EINVAL),
        "not huge-page aligned"
    );
    s.uffdio_writeprotect(p, uffd, A, HP, WP_MODE_WP).unwrap();
    assert_eq!(pm(&s, p, A), PM_PRESENT | PM_MMAP_EXCLUSIVE | PM_UFFD_WP);
    assert_eq!(try_write(&mut s, p, A + 0x1234, 2), Ok(false));
    let r = s.syscall(p, SYS_READ, [uffd, BUF, 32, 0, 0, 0], &mut |_| ());
    assert_eq!(r, Outcome::Return(32));
    let mut m = [0u8; 32];
    s.copy_from_user(p, BUF, &mut m).unwrap();
    assert_eq!(
        u64::from_le_bytes(m[16..24].try_into().unwrap()),
        A,
        "the huge page"
    );
    s.uffdio_writeprotect(p, uffd, A, HP, 0).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert_eq!(try_write(&mut s, p, A + 0x1234, 2), Ok(true));
    assert_eq!(pfn_at(&s, p, A), before, "exclusive: written in place");
    assert_eq!(pm(&s, p, A), PM_PRESENT | PM_MMAP_EXCLUSIVE);
}

#[test]
fn huge_markers_survive_dontneed_and_refaults_stay_protected_but_not_in_a_child() {
    for flags in [PRIV, SHARED] {
        let (mut s, p, uffd) = huge_registered(flags, MODE_WP, FEATURE_WP_ASYNC);
        assert_eq!(try_write(&mut s, p, A, 1), Ok(true));
        s.uffdio_writeprotect(p, uffd, A, 2 * HP, WP_MODE_WP)
            .unwrap();
        assert_eq!(
            pm(&s, p, A + HP),
            PM_UFFD_WP,
            "a marker where nothing is mapped"
        );
        s.madvise(p, A, HP, MADV_DONTNEED).unwrap();
        ok(&s);
        assert_eq!(pm(&s, p, A), PM_UFFD_WP, "the protection stays as a marker");
        // A read maps the page protected; the async write lifts it.
        assert!(user_try_wait(&mut s, p, 0, A, Access::Read).is_ok());
        assert_eq!(
            pm(&s, p, A) & (PM_PRESENT | PM_UFFD_WP),
            PM_PRESENT | PM_UFFD_WP
        );
        let c = s.fork(p).unwrap();
        ok(&s);
        assert_eq!(pm(&s, c, A + HP), 0, "{flags:#x}: markers are not copied");
        assert_eq!(pm(&s, c, A) & PM_UFFD_WP, 0, "nor the bit");
        assert_eq!(pm(&s, p, A + HP), PM_UFFD_WP, "the parent keeps its own");
        assert_eq!(try_write(&mut s, p, A + HP, 3), Ok(true));
        assert_eq!(pm(&s, p, A + HP) & PM_UFFD_WP, 0);
        // munmap drops markers with the mapping (the child's pages and
        // reservations go first, so the pool has room again).
        s.exit(c, 0).unwrap();
        s.uffdio_writeprotect(p, uffd, A, 2 * HP, WP_MODE_WP)
            .unwrap();
        s.madvise(p, A, 2 * HP, MADV_DONTNEED).unwrap();
        s.munmap(p, A, 2 * HP).unwrap();
        mmap(&mut s, p, A, 2 * HP, RW, flags | MAP_HUGETLB | MAP_FIXED).unwrap();
        assert_eq!(pm(&s, p, A), 0);
    }
}

#[test]
fn a_missing_huge_page_waits_unless_the_page_cache_has_it() {
    let (mut s, p, uffd) = huge_registered(SHARED, MODE_MISSING, 0);
    assert_eq!(try_write(&mut s, p, A + HP + 8, 1), Ok(false));
    assert!(s.uffd_waiting(p));
    s.uffdio_unregister(p, uffd, A, 2 * HP).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert_eq!(try_write(&mut s, p, A + HP + 8, 1), Ok(true));
    s.uffdio_register(p, uffd, A, 2 * HP, MODE_MISSING).unwrap();
    s.madvise(p, A, 2 * HP, MADV_DONTNEED).unwrap();
    // Still in the page cache: no message, the page comes back.
    assert_eq!(try_write(&mut s, p, A + HP, 2), Ok(true));
    assert_eq!(read(&mut s, p, A + HP + 8, 1), [1]);
}

#[test]
fn pagemap_scan_write_protects_whole_huge_pages_only() {
    let (mut s, p, _uffd) = huge_registered(PRIV, MODE_WP, FEATURE_WP_ASYNC);
    assert_eq!(try_write(&mut s, p, A, 1), Ok(true));
    assert_eq!(try_write(&mut s, p, A + HP, 2), Ok(true));
    let scan = |s: &mut Sys, start: u64, end: u64| {
        let arg = PmScanArg {
            size: PM_SCAN_ARG_SIZE,
            flags: PM_SCAN_WP_MATCHING,
            start,
            end,
            vec: BUF,
            vec_len: 8,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..PmScanArg::default()
        };
        let r = s.pagemap_scan(p, arg).unwrap();
        ok(s);
        r
    };
    // Half of the first page: nothing reported, nothing protected, and
    // walk_end at the page.
    let r = scan(&mut s, A, A + HP / 2);
    assert!(r.regions.is_empty());
    assert_eq!(r.walk_end, A);
    assert_eq!(pm(&s, p, A) & PM_UFFD_WP, 0);
    // From the middle of the first to the end: the first is refused, the
    // second protected whole.
    let r = scan(&mut s, A + HP / 2, A + 2 * HP);
    assert_eq!(r.regions.len(), 1);
    assert_eq!((r.regions[0].start, r.regions[0].end), (A + HP, A + 2 * HP));
    assert_eq!(r.walk_end, A + HP / 2);
    assert_eq!(pm(&s, p, A) & PM_UFFD_WP, 0);
    assert_ne!(pm(&s, p, A + HP) & PM_UFFD_WP, 0);
    let r = scan(&mut s, A, A + 2 * HP);
    assert_eq!((r.regions[0].start, r.regions[0].end), (A, A + HP));
    assert_ne!(pm(&s, p, A) & PM_UFFD_WP, 0);
}
