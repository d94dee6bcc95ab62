//! hugetlb: pool counters with Linux's meanings, reservations across
//! mmap, fault, fork, COW, munmap and exit, huge page granularity, and the
//! one-logical-entry rmap. The checker (which recomputes the reservation
//! count exactly) runs after every step.

use super::*;
use crate::hugetlb::{HSTATE_1G, HSTATE_2M, HugeCounters, PoolKnob};
use crate::hw::PhysMem;
use crate::madvise::{MADV_DONTNEED, MADV_REMOVE};
use crate::mmap::{MAP_FIXED, MAP_HUGETLB, MAP_NORESERVE};
use crate::testing::Access;
use crate::testing::user::user_try;

const A: u64 = 0x4000_0000;
const HP: u64 = 2 << 20;
const HPRIV: u32 = PRIV | MAP_HUGETLB;
const HSHARED: u32 = SHARED | MAP_HUGETLB;

/// A 64 MiB, 2-CPU system with one process and `pool` 2 MiB pages.
fn huge_setup(pool: u64) -> (Sys, Pid) {
    let (mut s, p) = setup_with_mib(64);
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, pool)
        .unwrap();
    ok(&s);
    (s, p)
}

fn setup_with_mib(mib: usize) -> (Sys, Pid) {
    let mut sys = crate::testing::user::sim_system(mib, 2, Config::default());
    let pid = sys.spawn(0).unwrap();
    (sys, pid)
}

/// `(total, free, rsvd, surp)` of the 2 MiB pool.
fn c(s: &Sys) -> (u64, u64, u64, u64) {
    let HugeCounters {
        total,
        free,
        rsvd,
        surp,
        ..
    } = s.hugetlb_counters(HSTATE_2M);
    (total, free, rsvd, surp)
}

fn touch(s: &mut Sys, p: Pid, va: u64, val: Option<u8>) -> Result<u8, i32> {
    let kind = if val.is_some() {
        Access::Write
    } else {
        Access::Read
    };
    let r = user_try(s, p, 0, va, kind).map_err(|r| r.signal);
    ok(s);
    let pa = r?;
    let mut b = [val.unwrap_or(0)];
    if val.is_some() {
        s.hw.write_bytes(pa, &b);
    } else {
        s.hw.read_bytes(pa, &mut b);
    }
    Ok(b[0])
}

#[test]
fn pool_grows_shrinks_and_keeps_used_pages_as_surplus() {
    let (mut s, p) = huge_setup(4);
    assert_eq!(c(&s), (4, 4, 0, 0));
    mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED).unwrap();
    assert_eq!(c(&s), (4, 4, 2, 0), "a private mapping reserves at mmap");
    touch(&mut s, p, A, Some(1)).unwrap();
    assert_eq!(c(&s), (4, 3, 1, 0), "the fault consumed a reservation");
    // Shrinking keeps what is in use or reserved, as surplus.
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 0)
        .unwrap();
    ok(&s);
    assert_eq!(c(&s), (2, 1, 1, 2));
    s.munmap(p, A, 2 * HP).unwrap();
    ok(&s);
    assert_eq!(c(&s), (0, 0, 0, 0), "surplus pages leave when freed");
    // Growing takes pages out of surplus first.
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 3)
        .unwrap();
    mmap(&mut s, p, A, HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(1)).unwrap();
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 0)
        .unwrap();
    assert_eq!(c(&s), (1, 0, 0, 1));
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 2)
        .unwrap();
    ok(&s);
    assert_eq!(c(&s), (2, 1, 0, 0));
}

#[test]
fn unmet_reservation_is_enomem_and_noreserve_faults_sigbus() {
    let (mut s, p) = huge_setup(1);
    assert_eq!(
        mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED),
        Err(Errno::ENOMEM)
    );
    assert_eq!(
        mmap(&mut s, p, A, 2 * HP, RW, HSHARED | MAP_FIXED),
        Err(Errno::ENOMEM)
    );
    assert_eq!(c(&s), (1, 1, 0, 0), "a failed mmap keeps nothing");
    // A failed MAP_FIXED mmap has unmapped what was there, as in Linux.
    mmap(&mut s, p, A, 2 * HP, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, &[7]);
    assert_eq!(
        mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED),
        Err(Errno::ENOMEM)
    );
    assert!(s.mm(s.procs[&p].mm.unwrap()).vmas.find(A).is_none());
    mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED | MAP_NORESERVE).unwrap();
    assert_eq!(c(&s), (1, 1, 0, 0));
    touch(&mut s, p, A, Some(1)).unwrap();
    assert_eq!(touch(&mut s, p, A + HP, Some(1)), Err(crate::SIGBUS));
}

#[test]
fn overcommit_gathers_surplus_and_returns_it() {
    let (mut s, p) = huge_setup(0);
    assert_eq!(
        mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED),
        Err(Errno::ENOMEM)
    );
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrOvercommit, 2)
        .unwrap();
    mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED).unwrap();
    assert_eq!(c(&s), (2, 2, 2, 2));
    touch(&mut s, p, A + HP, Some(3)).unwrap();
    assert_eq!(c(&s), (2, 1, 1, 2));
    s.munmap(p, A, 2 * HP).unwrap();
    ok(&s);
    assert_eq!(c(&s), (0, 0, 0, 0));
    assert_eq!(
        s.hugetlb_set_pool(HSTATE_1G, PoolKnob::NrOvercommit, 1),
        Err(Errno::EINVAL),
        "gigantic pages cannot be overcommitted"
    );
}

#[test]
fn shared_mapping_reserves_once_and_shares_pages_across_fork() {
    let (mut s, p) = huge_setup(3);
    mmap(&mut s, p, A, 2 * HP, RW, HSHARED | MAP_FIXED).unwrap();
    assert_eq!(c(&s), (3, 3, 2, 0));
    touch(&mut s, p, A + 5, Some(9)).unwrap();
    assert_eq!(c(&s), (3, 2, 1, 0));
    let child = s.fork(p).unwrap();
    ok(&s);
    assert_eq!(touch(&mut s, child, A + 5, None), Ok(9));
    touch(&mut s, child, A + HP, Some(4)).unwrap();
    assert_eq!(touch(&mut s, p, A + HP, None), Ok(4), "one page for both");
    assert_eq!(c(&s), (3, 1, 0, 0));
    let head = s.frames.folio_of(crate::hw::Pfn(
        crate::pgtable::lookup_page(&s.hw, s.mm(s.procs[&p].mm.unwrap()).root, A).pfn_or_zero(),
    ));
    assert_eq!(
        s.frames.at(head).mapcount,
        2,
        "one entire mapcount per mapping"
    );
    assert_eq!(
        s.frames.at(head.offset(1)).mapcount,
        0,
        "tails are not counted"
    );
    s.exit(child, 0).unwrap();
    s.munmap(p, A, 2 * HP).unwrap();
    ok(&s);
    assert_eq!(
        c(&s),
        (3, 3, 0, 0),
        "the file's pages and reservations went"
    );
}

#[test]
fn private_cow_after_fork_copies_then_reuses() {
    let (mut s, p) = huge_setup(3);
    mmap(&mut s, p, A, HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(b'a')).unwrap();
    let child = s.fork(p).unwrap();
    ok(&s);
    touch(&mut s, child, A, Some(b'b')).unwrap();
    assert_eq!(touch(&mut s, p, A, None), Ok(b'a'));
    assert_eq!(
        c(&s),
        (3, 1, 0, 0),
        "the child copied without a reservation"
    );
    let reuses = s.counters().cow_reuses;
    touch(&mut s, p, A, Some(b'c')).unwrap();
    assert_eq!(
        s.counters().cow_reuses,
        reuses + 1,
        "mapped once again: reused"
    );
    assert_eq!(touch(&mut s, child, A, None), Ok(b'b'));
    s.exit(child, 0).unwrap();
    ok(&s);
    assert_eq!(c(&s), (3, 2, 0, 0));
}

#[test]
fn owner_without_a_page_for_cow_takes_it_back_from_the_child() {
    let (mut s, p) = huge_setup(1);
    mmap(&mut s, p, A, HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(b'a')).unwrap();
    let child = s.fork(p).unwrap();
    touch(&mut s, p, A, Some(b'z')).unwrap();
    assert_eq!(touch(&mut s, p, A, None), Ok(b'z'));
    // unmap_ref_private: the child lost the page and now gets SIGBUS.
    assert_eq!(touch(&mut s, child, A, None), Err(crate::SIGBUS));
    assert_eq!(c(&s), (1, 0, 0, 0));
    // A non-owner child that finds no page gets SIGBUS on its COW.
    let (mut s, p) = huge_setup(1);
    mmap(&mut s, p, A, HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(b'a')).unwrap();
    let child = s.fork(p).unwrap();
    assert_eq!(touch(&mut s, child, A, Some(b'b')), Err(crate::SIGBUS));
    assert_eq!(touch(&mut s, p, A, None), Ok(b'a'));
}

#[test]
fn huge_page_granularity_and_linux_errors() {
    let (mut s, p) = huge_setup(8);
    assert_eq!(
        mmap(&mut s, p, A + 4096, HP, RW, HPRIV | MAP_FIXED),
        Err(Errno::EINVAL)
    );
    // The length rounds up to whole huge pages.
    mmap(&mut s, p, A, HP + 1, RW, HPRIV | MAP_FIXED).unwrap();
    assert_eq!(
        s.mm(s.procs[&p].mm.unwrap()).vmas.find(A).unwrap().end,
        A + 2 * HP
    );
    assert_eq!(s.munmap(p, A, 4096), Err(Errno::EINVAL));
    assert_eq!(s.munmap(p, A + 4096, HP), Err(Errno::EINVAL));
    assert_eq!(
        s.mprotect(p, A, 4096, u64::from(PROT_READ)),
        Err(Errno::EINVAL)
    );
    for i in 0..2 {
        touch(&mut s, p, A + i * HP, Some(1)).unwrap();
    }
    // hugetlb-madvise.c: DONTNEED needs an aligned start and rounds the
    // end down.
    assert_eq!(
        s.madvise(p, A + 4096, HP, MADV_DONTNEED),
        Err(Errno::EINVAL)
    );
    s.madvise(p, A, HP + 4096, MADV_DONTNEED).unwrap();
    ok(&s);
    assert_eq!(
        c(&s),
        (8, 7, 1, 0),
        "only the first page went, and its reservation came back"
    );
    assert_eq!(touch(&mut s, p, A + HP, None), Ok(1));
    assert_eq!(touch(&mut s, p, A, None), Ok(0));
    assert_eq!(c(&s), (8, 6, 0, 0), "the refault used it");
    s.mprotect(p, A, HP, u64::from(PROT_READ)).unwrap();
    ok(&s);
    assert_eq!(touch(&mut s, p, A, Some(1)), Err(crate::SIGSEGV));
    assert_eq!(s.madvise(p, A, HP, MADV_REMOVE), Err(Errno::EACCES));
}

#[test]
fn mremap_shrinks_and_moves_but_never_grows() {
    let (mut s, p) = huge_setup(4);
    mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(5)).unwrap();
    assert_eq!(s.mremap(p, A, 2 * HP, 3 * HP, 1u64, 0), Err(Errno::EINVAL));
    assert_eq!(
        s.mremap(p, A, HP, HP, 3u64, A + 4096 + 16 * HP),
        Err(Errno::EINVAL)
    );
    assert_eq!(c(&s), (4, 3, 1, 0));
    // Moving keeps the page and the reservation of the unfaulted one.
    let to = A + 16 * HP;
    assert_eq!(s.mremap(p, A, 2 * HP, 2 * HP, 3u64, to), Ok(to));
    ok(&s);
    assert_eq!(c(&s), (4, 3, 1, 0));
    assert_eq!(touch(&mut s, p, to, None), Ok(5));
    // Shrinking returns the tail's reservation.
    assert_eq!(s.mremap(p, to, 2 * HP, HP, 0u64, 0), Ok(to));
    ok(&s);
    assert_eq!(c(&s), (4, 3, 0, 0));
}

#[test]
fn shared_hole_punch_drops_whole_pages_and_zeroes_partial_ones() {
    let (mut s, p) = huge_setup(4);
    mmap(&mut s, p, A, 3 * HP, RW, HSHARED | MAP_FIXED).unwrap();
    for i in 0..3 {
        touch(&mut s, p, A + i * HP + 4096, Some(7)).unwrap();
    }
    assert_eq!(c(&s), (4, 1, 0, 0));
    // From inside page 0 to inside page 2: page 1 goes, the edges are zeroed.
    s.madvise(p, A + 4096, 2 * HP, MADV_REMOVE).unwrap();
    ok(&s);
    assert_eq!(c(&s), (4, 2, 0, 0));
    assert_eq!(touch(&mut s, p, A + 4096, None), Ok(0));
    assert_eq!(touch(&mut s, p, A + 2 * HP + 4096, None), Ok(7));
    assert_eq!(touch(&mut s, p, A + HP + 4096, None), Ok(0));
}

#[test]
fn reclaim_walks_hugetlb_folios_as_one_entry() {
    let (mut s, p) = huge_setup(2);
    mmap(&mut s, p, A, HP, RW, HSHARED | MAP_FIXED).unwrap();
    touch(&mut s, p, A, Some(3)).unwrap();
    let child = s.fork(p).unwrap();
    touch(&mut s, child, A, None).unwrap();
    let root = s.mm(s.procs[&p].mm.unwrap()).root;
    let head = crate::hw::Pfn(crate::pgtable::lookup_page(&s.hw, root, A).pfn_or_zero());
    assert_eq!(s.folio_referenced(head), 2, "one young entry per mapping");
    assert_eq!(s.folio_referenced(head), 0);
    assert!(s.try_to_unmap(head, None));
    ok(&s);
    assert_eq!(s.frames.at(head).mapcount, 0);
    assert_eq!(
        touch(&mut s, child, A, None),
        Ok(3),
        "the page cache kept it"
    );
}

#[test]
fn gigantic_pages_map_at_the_pud_level() {
    let (mut s, p) = setup_with_mib(2100);
    s.hugetlb_set_pool(HSTATE_1G, PoolKnob::NrHugepages, 1)
        .unwrap();
    assert_eq!(s.hugetlb_counters(HSTATE_1G).total, 1);
    let flags = HPRIV | MAP_FIXED | (30 << crate::mmap::MAP_HUGE_SHIFT);
    let a = 1 << 40;
    assert_eq!(s.mmap(p, a + HP, 1 << 30, RW, flags, 0), Err(Errno::EINVAL));
    s.mmap(p, a, 1, RW, flags, 0).unwrap();
    touch(&mut s, p, a + (1 << 29), Some(8)).unwrap();
    assert_eq!(s.hugetlb_counters(HSTATE_1G).free, 0);
    assert_eq!(s.munmap(p, a, HP), Err(Errno::EINVAL));
    s.munmap(p, a, 1 << 30).unwrap();
    s.hugetlb_set_pool(HSTATE_1G, PoolKnob::NrHugepages, 0)
        .unwrap();
    ok(&s);
    assert_eq!(s.hugetlb_counters(HSTATE_1G).total, 0);
}

#[test]
fn planted_reservation_leak_is_caught() {
    let (mut s, p) = huge_setup(2);
    mmap(&mut s, p, A, 2 * HP, RW, HPRIV | MAP_FIXED).unwrap();
    s.bug_huge_resv_leak = true;
    s.munmap(p, A + HP, HP).unwrap();
    let e = s.check().expect_err("the leaked reservation is seen");
    assert!(
        e.violations.iter().any(|v| v.contains("outstanding")),
        "{:?}",
        e.violations
    );
}

#[test]
fn hvo_gives_pooled_metadata_back_and_restores_it_on_use() {
    let (mut s, p) = huge_setup(0);
    let whole = s.frames.metadata_bytes();
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::OptimizeVmemmap, 1)
        .unwrap();
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 4)
        .unwrap();
    ok(&s);
    let saved = whole - s.frames.metadata_bytes();
    let frame = core::mem::size_of::<crate::frame::Frame>() as u64;
    assert_eq!(
        saved,
        4 * (512 - 2) * frame,
        "all but a head and a tail entry each"
    );
    // A fault hands a page out whole; freeing it optimises it again.
    mmap(&mut s, p, A, HP, RW, HPRIV | MAP_FIXED).unwrap();
    touch(&mut s, p, A + 5 * 4096, Some(6)).unwrap();
    assert_eq!(whole - s.frames.metadata_bytes(), 3 * (512 - 2) * frame);
    let child = s.fork(p).unwrap();
    assert_eq!(
        touch(&mut s, child, A + 5 * 4096, Some(7)),
        Ok(7),
        "the COW copy is whole"
    );
    s.exit(child, 0).unwrap();
    s.munmap(p, A, HP).unwrap();
    ok(&s);
    assert_eq!(whole - s.frames.metadata_bytes(), 4 * (512 - 2) * frame);
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, 0)
        .unwrap();
    ok(&s);
    assert_eq!(
        s.frames.metadata_bytes(),
        whole,
        "restored before the buddy allocator"
    );
}
