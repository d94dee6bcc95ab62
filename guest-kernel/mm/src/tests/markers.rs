//! PTE markers: what each kind means on fault, and which zaps keep it
//! (`zap_nonpresent_ptes` with and without `ZAP_FLAG_DROP_MARKER`).

use super::*;
use crate::errno::SegvCode;
use crate::madvise::{MADV_DONTNEED, MADV_FREE, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE};
use crate::mmap::MAP_FIXED;
use crate::pte::{MarkerKind, Pte};
use crate::testing::Access;
use crate::testing::user::user_try;

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

fn slot(s: &mut Sys, pid: Pid, va: u64) -> u64 {
    let root = s.mm(s.procs[&pid].mm.unwrap()).root;
    crate::pgtable::pte_slot_alloc(&mut s.hw, &mut s.frames, root, va).unwrap()
}

fn pte(s: &Sys, pid: Pid, va: u64) -> Pte {
    let root = s.mm(s.procs[&pid].mm.unwrap()).root;
    crate::pgtable::lookup(&s.hw, root, va)
}

fn plant(s: &mut Sys, pid: Pid, va: u64, kind: MarkerKind) {
    let at = slot(s, pid, va);
    crate::pgtable::write_pte(&mut s.hw, at, Pte::Marker(kind));
}

#[test]
fn none_mostly_covers_every_marker_and_nothing_else() {
    for k in [MarkerKind::Guard, MarkerKind::Poisoned, MarkerKind::UffdWp] {
        assert!(Pte::Marker(k).is_none_mostly());
        assert_eq!(Pte::Marker(k).marker(), Some(k));
    }
    assert!(Pte::None.is_none_mostly());
    let swap = Pte::Swap(crate::pte::SwapEntry {
        dev: 0,
        offset: 3,
        uffd_wp: false,
        soft_dirty: false,
    });
    assert!(!swap.is_none_mostly());
    assert_eq!(swap.marker(), None);
}

#[test]
fn dontneed_keeps_guard_and_shared_uffd_wp_drops_the_rest() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 8 * PG, 4 * PG, RW, SHARED | MAP_FIXED).unwrap();
    plant(&mut s, p, A, MarkerKind::Guard);
    plant(&mut s, p, A + PG, MarkerKind::Poisoned);
    plant(&mut s, p, A + 2 * PG, MarkerKind::UffdWp);
    plant(&mut s, p, A + 8 * PG, MarkerKind::UffdWp);
    plant(&mut s, p, A + 9 * PG, MarkerKind::Guard);
    s.madvise(p, A, 4 * PG, MADV_DONTNEED).unwrap();
    s.madvise(p, A + 8 * PG, 4 * PG, MADV_DONTNEED).unwrap();
    ok(&s);
    assert_eq!(pte(&s, p, A), Pte::Marker(MarkerKind::Guard));
    assert_eq!(pte(&s, p, A + PG), Pte::None, "poison goes with the pages");
    assert_eq!(pte(&s, p, A + 2 * PG), Pte::None, "anon uffd-wp is rebuilt");
    assert_eq!(pte(&s, p, A + 8 * PG), Pte::Marker(MarkerKind::UffdWp));
    assert_eq!(pte(&s, p, A + 9 * PG), Pte::Marker(MarkerKind::Guard));
    // munmap drops every marker with the mapping.
    s.munmap(p, A + 8 * PG, 4 * PG).unwrap();
    mmap(&mut s, p, A + 8 * PG, 4 * PG, RW, SHARED | MAP_FIXED).unwrap();
    assert_eq!(pte(&s, p, A + 8 * PG), Pte::None);
    assert_eq!(pte(&s, p, A + 9 * PG), Pte::None);
}

#[test]
fn faults_on_markers_mean_the_marker() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    plant(&mut s, p, A, MarkerKind::Poisoned);
    plant(&mut s, p, A + PG, MarkerKind::UffdWp);
    let r = user_try(&mut s, p, 0, A, Access::Read).unwrap_err();
    assert_eq!(r.signal, crate::SIGBUS);
    // A uffd-wp marker with nothing registered is a fault on none.
    user_try(&mut s, p, 0, A + PG, Access::Write).unwrap();
    s.madvise(p, A + 2 * PG, PG, MADV_GUARD_INSTALL).unwrap();
    let r = user_try(&mut s, p, 0, A + 2 * PG, Access::Write).unwrap_err();
    assert_eq!((r.signal, r.code), (crate::SIGSEGV, Some(SegvCode::MapErr)));
    assert_eq!(
        s.populate(s.procs[&p].mm.unwrap(), A, A + 4 * PG, false),
        Err(Errno::EFAULT),
        "populate stops at a guard page"
    );
    ok(&s);
}

#[test]
fn guard_install_replaces_pages_and_remove_leaves_holes() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    for i in 0..4 {
        write(&mut s, p, A + i * PG, &[i as u8 + 1]);
    }
    let free = s.free_frames();
    s.madvise(p, A + PG, 2 * PG, MADV_GUARD_INSTALL).unwrap();
    ok(&s);
    assert_eq!(s.free_frames(), free + 2, "the guarded pages were freed");
    s.madvise(p, A, 4 * PG, MADV_FREE).unwrap();
    assert_eq!(pte(&s, p, A + PG), Pte::Marker(MarkerKind::Guard));
    s.madvise(p, A, 4 * PG, MADV_GUARD_REMOVE).unwrap();
    ok(&s);
    assert_eq!(pte(&s, p, A + PG), Pte::None);
    assert_eq!(read(&mut s, p, A + PG, 1), [0]);
    assert_eq!(read(&mut s, p, A + 3 * PG, 1), [4], "outside pages stay");
    // mlocked memory refuses installing but not removing.
    s.mlock(p, A, 4 * PG, 0).unwrap();
    assert_eq!(s.madvise(p, A, PG, MADV_GUARD_INSTALL), Err(Errno::EINVAL));
    assert_eq!(s.madvise(p, A, PG, MADV_GUARD_REMOVE), Ok(()));
}
