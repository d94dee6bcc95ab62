//! mmap / munmap / mprotect / madvise / mremap semantics and errno values.

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_NORMAL};
use crate::mmap::{MAP_FIXED, MAP_FIXED_NOREPLACE, PROT_EXEC};
use crate::mremap::{MREMAP_FIXED, MREMAP_MAYMOVE};
use crate::vma::{MMAP_BASE, MMAP_MIN_ADDR};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

#[test]
fn mmap_errno_matches_linux() {
    let (mut s, p) = setup();
    assert_eq!(mmap(&mut s, p, 0, 0, RW, PRIV), Err(Errno::EINVAL), "len 0");
    assert_eq!(
        mmap(&mut s, p, A + 1, PG, RW, PRIV | MAP_FIXED),
        Err(Errno::EINVAL),
        "unaligned fixed"
    );
    assert_eq!(
        mmap(&mut s, p, A, PG, RW, MAP_ANONYMOUS),
        Err(Errno::EINVAL),
        "no type"
    );
    assert_eq!(
        mmap(&mut s, p, A, PG, RW, MAP_PRIVATE),
        Err(Errno::EBADF),
        "file mapping"
    );
    assert_eq!(
        mmap(&mut s, p, 0x1000, PG, RW, PRIV | MAP_FIXED),
        Err(Errno::EPERM),
        "below mmap_min_addr"
    );
    assert_eq!(
        mmap(&mut s, p, 0, u64::MAX, RW, PRIV),
        Err(Errno::ENOMEM),
        "len overflows"
    );
    assert_eq!(
        mmap(&mut s, p, 0, 1 << 48, RW, PRIV),
        Err(Errno::ENOMEM),
        "larger than user space"
    );
    assert_eq!(
        mmap(&mut s, p, (1 << 47) - PG, 2 * PG, RW, PRIV | MAP_FIXED),
        Err(Errno::ENOMEM),
        "past TASK_SIZE"
    );
    assert_eq!(
        s.mmap(p, A, PG, RW, PRIV, 3),
        Err(Errno::EINVAL),
        "unaligned offset"
    );
    // Linux's do_mmap ignores prot bits it does not know.
    assert_eq!(
        mmap(&mut s, p, A, PG, 8 | 0x80, PRIV),
        Ok(A),
        "unknown prot"
    );
}

#[test]
fn fixed_noreplace_and_fixed() {
    let (mut s, p) = setup();
    assert_eq!(
        mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED_NOREPLACE),
        Ok(A)
    );
    write(&mut s, p, A + PG, b"keep");
    assert_eq!(
        mmap(
            &mut s,
            p,
            A + 2 * PG,
            4 * PG,
            RW,
            PRIV | MAP_FIXED_NOREPLACE
        ),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        read(&mut s, p, A + PG, 4),
        b"keep",
        "failed NOREPLACE must not touch the old mapping"
    );
    // MAP_FIXED replaces: the overlapped page reads as zero afterwards.
    assert_eq!(
        mmap(&mut s, p, A + PG, PG, RW, PRIV | MAP_FIXED),
        Ok(A + PG)
    );
    assert_eq!(read(&mut s, p, A + PG, 4), [0; 4]);
    // A fresh private anon mapping next to an unfaulted one merges.
    assert_eq!(s.mm_stats(p).unwrap().vmas, 1);
}

#[test]
fn hint_and_top_down_placement() {
    let (mut s, p) = setup();
    let a = mmap(&mut s, p, 0, 3 * PG, RW, PRIV).unwrap();
    assert_eq!(a, MMAP_BASE - 3 * PG);
    let b = mmap(&mut s, p, 0, PG, PROT_READ, PRIV).unwrap();
    assert_eq!(b, a - PG, "different flags: no merge, placed below");
    assert_eq!(
        mmap(&mut s, p, A + 5, PG, RW, PRIV),
        Ok(A),
        "free hint is used, rounded down"
    );
    assert_eq!(
        mmap(&mut s, p, A, PG, RW, PRIV),
        Ok(b - PG),
        "taken hint falls back to top-down"
    );
    assert!(mmap(&mut s, p, MMAP_MIN_ADDR - PG, PG, RW, PRIV).unwrap() >= MMAP_MIN_ADDR);
}

#[test]
fn munmap_splits_and_frees() {
    let (mut s, p) = setup();
    let free0 = s.free_frames();
    mmap(&mut s, p, A, 8 * PG, RW, PRIV | MAP_FIXED).unwrap();
    for i in 0..8 {
        write(&mut s, p, A + i * PG, &[i as u8 + 1]);
    }
    assert_eq!(s.munmap(p, A + PG, 0), Err(Errno::EINVAL));
    assert_eq!(s.munmap(p, A + 1, PG), Err(Errno::EINVAL));
    s.munmap(p, A + 2 * PG, 3 * PG).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(p).unwrap().vmas, 2);
    assert_eq!(read(&mut s, p, A + PG, 1), [2]);
    assert_eq!(read(&mut s, p, A + 5 * PG, 1), [6]);
    let r = crate::testing::user::user_read(&mut s, p, 0, A + 3 * PG, &mut [0]);
    assert_eq!(r.unwrap_err().signal, crate::SIGSEGV);
    // The process died of it; its frames are all back.
    assert_eq!(s.wait(0, -1), Ok(Some((p, crate::SIGSEGV))));
    assert_eq!(
        s.free_frames(),
        free0 + 1,
        "everything freed, incl. the root table"
    );
    ok(&s);
}

#[test]
fn munmap_of_nothing_succeeds() {
    let (mut s, p) = setup();
    assert_eq!(s.munmap(p, A, 100 * PG), Ok(()));
    ok(&s);
}

#[test]
fn mprotect_split_merge_and_errors() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A + PG, b"x");
    assert_eq!(s.mprotect(p, A + 1, PG, PROT_READ), Err(Errno::EINVAL));
    assert_eq!(s.mprotect(p, A, PG, 0x10u32), Err(Errno::EINVAL));
    assert_eq!(s.mprotect(p, A, 0, PROT_READ), Ok(()));
    s.mprotect(p, A + PG, PG, PROT_READ).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(p).unwrap().vmas, 3);
    assert_eq!(read(&mut s, p, A + PG, 1), b"x");
    let e = crate::testing::user::user_write(&mut s, p, 0, A + PG, b"y");
    assert_eq!(e.unwrap_err().code, Some(crate::SegvCode::AccErr));
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    s.mprotect(p, A + PG, PG, PROT_READ).unwrap();
    s.mprotect(p, A + PG, PG, RW).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(p).unwrap().vmas, 1, "merged back");
    // Hole: applied up to the hole, then ENOMEM.
    mmap(&mut s, p, A + 5 * PG, PG, RW, PRIV | MAP_FIXED).unwrap();
    assert_eq!(s.mprotect(p, A, 6 * PG, PROT_READ), Err(Errno::ENOMEM));
    ok(&s);
    assert_eq!(
        s.mprotect(p, A + 100 * PG, PG, PROT_READ),
        Err(Errno::ENOMEM)
    );
}

#[test]
fn prot_none_then_back_keeps_data() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, PG, RW | PROT_EXEC, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"data");
    s.mprotect(p, A, PG, 0u32).unwrap();
    ok(&s);
    let mut sys2 = s;
    let e = crate::testing::user::user_read(&mut sys2, p, 1, A, &mut [0]).unwrap_err();
    assert_eq!(e.code, Some(crate::SegvCode::AccErr));
    let (mut s, p) = setup();
    mmap(&mut s, p, A, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"data");
    s.mprotect(p, A, PG, 0u32).unwrap();
    s.mprotect(p, A, PG, RW).unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A, 4), b"data");
    write(&mut s, p, A, b"more");
}

#[test]
fn madvise_dontneed_private_and_shared() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 4 * PG, 2 * PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"private");
    write(&mut s, p, A + 4 * PG, b"shared");
    assert_eq!(s.madvise(p, A + 1, PG, MADV_DONTNEED), Err(Errno::EINVAL));
    assert_eq!(s.madvise(p, A, PG, 99), Err(Errno::EINVAL));
    assert_eq!(s.madvise(p, A, PG, MADV_NORMAL), Ok(()));
    assert_eq!(
        s.madvise(p, A, 6 * PG, MADV_DONTNEED),
        Err(Errno::ENOMEM),
        "hole in the range"
    );
    ok(&s);
    assert_eq!(
        read(&mut s, p, A, 7),
        [0; 7],
        "private anon reads zero after DONTNEED"
    );
    assert_eq!(
        read(&mut s, p, A + 4 * PG, 6),
        b"shared",
        "shmem keeps its data"
    );
}

#[test]
fn mremap_shrink_grow_move() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"first");
    write(&mut s, p, A + PG, b"second");
    // Grow in place.
    assert_eq!(s.mremap(p, A, 2 * PG, 4 * PG, 0u64, 0), Ok(A));
    ok(&s);
    write(&mut s, p, A + 3 * PG, b"fourth");
    // Block growth, then grow without MAYMOVE fails, with MAYMOVE moves.
    mmap(&mut s, p, A + 4 * PG, PG, PROT_READ, PRIV | MAP_FIXED).unwrap();
    assert_eq!(s.mremap(p, A, 4 * PG, 8 * PG, 0u64, 0), Err(Errno::ENOMEM));
    let b = s.mremap(p, A, 4 * PG, 8 * PG, MREMAP_MAYMOVE, 0).unwrap();
    ok(&s);
    assert_ne!(b, A);
    assert_eq!(read(&mut s, p, b, 5), b"first");
    assert_eq!(read(&mut s, p, b + PG, 6), b"second");
    assert_eq!(read(&mut s, p, b + 3 * PG, 6), b"fourth");
    assert_eq!(read(&mut s, p, b + 7 * PG, 1), [0]);
    assert!(
        crate::testing::user::user_read(&mut s, p, 0, A, &mut [0]).is_err(),
        "old range is gone"
    );
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A + 3 * PG, b"z");
    assert_eq!(s.mremap(p, A, 4 * PG, PG, 0u64, 0), Ok(A), "shrink");
    ok(&s);
    assert_eq!(s.mremap(p, A + 1, PG, PG, 0u64, 0), Err(Errno::EINVAL));
    assert_eq!(
        s.mremap(p, A, PG, 2 * PG, MREMAP_FIXED, A + 8 * PG),
        Err(Errno::EINVAL),
        "FIXED needs MAYMOVE"
    );
    assert_eq!(
        s.mremap(p, A + 8 * PG, PG, PG, 0u64, 0),
        Err(Errno::EFAULT),
        "no vma"
    );
    assert_eq!(
        s.mremap(p, A, 2 * PG, 3 * PG, 0u64, 0),
        Err(Errno::EFAULT),
        "grows across the vma end"
    );
    assert_eq!(
        s.mremap(p, A, 2 * PG, 2 * PG, 0u64, 0),
        Ok(A),
        "same size: a no-op even across the vma end"
    );
    write(&mut s, p, A, b"moved");
    let c = s
        .mremap(p, A, PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, A + 16 * PG)
        .unwrap();
    ok(&s);
    assert_eq!(c, A + 16 * PG);
    assert_eq!(read(&mut s, p, c, 5), b"moved");
    assert_eq!(
        s.mremap(p, c, PG, 2 * PG, MREMAP_MAYMOVE | MREMAP_FIXED, c - PG),
        Err(Errno::EINVAL),
        "overlapping move"
    );
}

#[test]
fn shared_mapping_visible_through_two_vmas_after_mremap() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A + PG, b"shm");
    let b = s
        .mremap(
            p,
            A,
            2 * PG,
            2 * PG,
            MREMAP_MAYMOVE | MREMAP_FIXED,
            A + 8 * PG,
        )
        .unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, b + PG, 3), b"shm");
}

#[test]
fn map_populate_faults_in() {
    let (mut s, p) = setup();
    let f = PRIV | MAP_FIXED | crate::mmap::MAP_POPULATE;
    mmap(&mut s, p, A, 4 * PG, RW, f).unwrap();
    mmap(&mut s, p, A + 8 * PG, 2 * PG, PROT_READ, f).unwrap();
    let st = s.mm_stats(p).unwrap();
    assert_eq!(
        (st.rss_pages, st.anon_frames, st.counters.zero_maps),
        (6, 4, 2)
    );
    let faults = s.counters().faults;
    write(&mut s, p, A + 3 * PG, b"no fault needed");
    assert_eq!(s.counters().faults, faults);
}

#[test]
fn merge_adopts_the_neighbours_anon_vma() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A + PG, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A + PG, b"old");
    // An unfaulted mapping just below merges and takes over the anon_vma;
    // pages faulted in it later must be found by the rmap too.
    mmap(&mut s, p, A, PG, RW, PRIV | MAP_FIXED).unwrap();
    assert_eq!(s.mm_stats(p).unwrap().vmas, 1);
    write(&mut s, p, A, b"new");
    s.madvise(p, A, 2 * PG, crate::madvise::MADV_PAGEOUT)
        .unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A, 3), b"new");
    assert_eq!(read(&mut s, p, A + PG, 3), b"old");
}

#[test]
fn mremap_dontunmap_and_shared_duplicate() {
    use crate::mremap::MREMAP_DONTUNMAP;
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"moving");
    let f = MREMAP_MAYMOVE | MREMAP_DONTUNMAP;
    assert_eq!(
        s.mremap(p, A, 2 * PG, 3 * PG, f, 0),
        Err(Errno::EINVAL),
        "sizes must match"
    );
    assert_eq!(
        s.mremap(p, A, 2 * PG, 2 * PG, MREMAP_DONTUNMAP, 0),
        Err(Errno::EINVAL),
        "needs MAYMOVE"
    );
    let b = s.mremap(p, A, 2 * PG, 2 * PG, f, 0).unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, b, 6), b"moving");
    assert_eq!(
        read(&mut s, p, A, 6),
        [0; 6],
        "old range still mapped, now empty"
    );
    assert_eq!(s.mm_stats(p).unwrap().vmas, 2);
    // old_len == 0: a second view of a shared mapping; private is EINVAL.
    assert_eq!(s.mremap(p, A, 0, PG, MREMAP_MAYMOVE, 0), Err(Errno::EINVAL));
    mmap(&mut s, p, A + 16 * PG, 2 * PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A + 17 * PG, b"one");
    let d = s.mremap(p, A + 17 * PG, 0, PG, MREMAP_MAYMOVE, 0).unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, d, 3), b"one");
    write(&mut s, p, d, b"two");
    assert_eq!(read(&mut s, p, A + 17 * PG, 3), b"two");
    s.munmap(p, A + 16 * PG, 2 * PG).unwrap();
    ok(&s);
    assert_eq!(
        read(&mut s, p, d, 3),
        b"two",
        "the object lives while a VMA maps it"
    );
}
