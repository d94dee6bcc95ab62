//! Swap-out through the rmap, swap-in on fault, swap errors as poisoned
//! markers, second chance for referenced folios, shmem swap, mkclean.

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_PAGEOUT};
use crate::mmap::MAP_FIXED;
use crate::pte::{MarkerKind, Pte};
use crate::testing::user::{user_read, user_write};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

fn pte(s: &Sys, pid: crate::ids::Pid, va: u64) -> Pte {
    let root = s.mm(s.procs[&pid].mm.unwrap()).root;
    crate::pgtable::lookup(&s.hw, root, va)
}

#[test]
fn swap_out_and_in_roundtrip() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 8 * PG, RW, PRIV | MAP_FIXED).unwrap();
    for i in 0..8u64 {
        write(&mut s, p, A + i * PG, &[i as u8 + 10; 100]);
    }
    let free = s.free_frames();
    s.madvise(p, A, 8 * PG, MADV_PAGEOUT).unwrap();
    ok(&s);
    assert_eq!(s.free_frames(), free + 8);
    assert!(matches!(pte(&s, p, A), Pte::Swap(_)));
    assert_eq!(s.mm_stats(p).unwrap().swap_used, 8);
    for i in 0..8u64 {
        assert_eq!(read(&mut s, p, A + i * PG, 100), [i as u8 + 10; 100]);
    }
    assert_eq!(
        s.mm_stats(p).unwrap().swap_used,
        0,
        "slots freed on swap-in"
    );
    assert_eq!(s.counters().swap_ins, 8);
    // A swapped-in page is exclusive: writing needs no copy.
    let copies = s.counters().cow_copies;
    write(&mut s, p, A, b"w");
    assert_eq!(s.counters().cow_copies, copies);
}

#[test]
fn swap_of_cow_shared_page_and_second_chance() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"both");
    write(&mut s, p, A + PG, b"other");
    let c = s.fork(p).unwrap();
    ok(&s);
    // Both pages were just touched by nobody since fork cleared the child's
    // young bits, but the parent's are set: first pass gives a second chance.
    assert_eq!(s.reclaim(10), 0);
    ok(&s);
    assert_eq!(
        s.reclaim(10),
        2,
        "accessed bits were cleared by the first scan"
    );
    ok(&s);
    let Pte::Swap(e) = pte(&s, p, A) else {
        panic!("parent PTE not swapped")
    };
    assert_eq!(pte(&s, c, A), Pte::Swap(e), "rmap found both PTEs");
    assert_eq!(s.swap.as_ref().unwrap().count(e.offset), 2);
    user_write(&mut s, c, 1, A, b"kid").unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A, 4), b"both");
    let mut b = [0; 5];
    user_read(&mut s, c, 1, A + PG, &mut b).unwrap();
    assert_eq!(&b, b"other");
    ok(&s);
}

#[test]
fn swap_in_error_poisons_instead_of_zeroing() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"lost");
    s.madvise(p, A, PG, MADV_PAGEOUT).unwrap();
    let Pte::Swap(e) = pte(&s, p, A) else {
        panic!()
    };
    s.swap_device().unwrap().inject_error(e.offset);
    // Kernel access: EFAULT, the process lives, the loss is recorded.
    assert_eq!(s.copy_from_user(p, A, &mut [0; 4]), Err(Errno::EFAULT));
    ok(&s);
    assert_eq!(pte(&s, p, A), Pte::Marker(MarkerKind::Poisoned));
    assert_eq!(s.counters().swap_errors, 1);
    assert_eq!(
        s.copy_from_user(p, A, &mut [0; 4]),
        Err(Errno::EFAULT),
        "still gone, not zero"
    );
    // fork keeps the marker.
    let c = s.fork(p).unwrap();
    ok(&s);
    let e = user_read(&mut s, c, 0, A, &mut [0]).unwrap_err();
    assert_eq!(e.signal, crate::SIGBUS);
    ok(&s);
    // MADV_DONTNEED drops it: the page reads as zero again.
    s.madvise(p, A, PG, MADV_DONTNEED).unwrap();
    assert_eq!(read(&mut s, p, A, 4), [0; 4]);
    let e = {
        s.madvise(p, A + PG, PG, MADV_DONTNEED).unwrap();
        write(&mut s, p, A + PG, b"x");
        s.madvise(p, A + PG, PG, MADV_PAGEOUT).unwrap();
        let Pte::Swap(e) = pte(&s, p, A + PG) else {
            panic!()
        };
        e
    };
    s.swap_device().unwrap().inject_error(e.offset);
    let r = user_read(&mut s, p, 0, A + PG, &mut [0]).unwrap_err();
    assert_eq!(r.signal, crate::SIGBUS);
    ok(&s);
}

#[test]
fn shmem_swap_and_mkclean() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"shm!");
    let c = s.fork(p).unwrap();
    // Fork does not copy shared PTEs; the child's write maps the page.
    user_write(&mut s, c, 1, A + 1, b"H").unwrap();
    let Pte::Mapped { pfn, .. } = pte(&s, p, A) else {
        panic!()
    };
    assert_eq!(
        s.folio_mkclean(pfn),
        2,
        "parent's dirty PTE and child's writable one"
    );
    assert_eq!(s.folio_mkclean(pfn), 0, "already clean");
    ok(&s);
    assert!(
        s.frames
            .at(pfn)
            .flags
            .contains(crate::frame::FolioFlags::DIRTY)
    );
    write(&mut s, p, A, b"SHM"); // wp_page_shared makes it writable again
    assert_eq!(s.swap_out_folio(pfn), Ok(()));
    ok(&s);
    assert_eq!(
        pte(&s, p, A),
        Pte::None,
        "shmem PTEs are cleared; the object holds the swap entry"
    );
    assert_eq!(pte(&s, c, A), Pte::None);
    let mut b = [0; 4];
    user_read(&mut s, c, 1, A, &mut b).unwrap();
    assert_eq!(&b, b"SHM!");
    ok(&s);
}

#[test]
fn swap_full_is_reported() {
    let (mut s, p) = setup_with(crate::Config {
        swap_frames: 2,
        ..Default::default()
    });
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    for i in 0..4 {
        write(&mut s, p, A + i * PG, &[7]);
    }
    s.madvise(p, A, 4 * PG, MADV_PAGEOUT).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(p).unwrap().swap_used, 2);
    for i in 0..4 {
        assert_eq!(read(&mut s, p, A + i * PG, 1), [7]);
    }
}

#[test]
fn rmap_entry_points_reject_non_folios() {
    let (mut s, _) = setup();
    for pfn in [crate::Pfn(0), crate::Pfn(1 << 40), s.zero] {
        assert_eq!(s.folio_mkclean(pfn), 0);
        assert_eq!(s.folio_referenced(pfn), 0);
        assert_eq!(
            s.swap_out_folio(pfn),
            Err(crate::swap::SwapOutError::NotSwappable)
        );
    }
    ok(&s);
}
