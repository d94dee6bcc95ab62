//! Fault handling: zero page, anonymous allocation, COW reuse and copy,
//! unshare, the early consistency checks, user vs kernel accesses.

use super::*;
use crate::errno::{Fault, SegvCode};
use crate::fault::FaultFlags;
use crate::mmap::{MAP_FIXED, PROT_EXEC};
use crate::testing::user::{user_exec, user_read, user_write};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

fn mm_of(s: &Sys, pid: crate::ids::Pid) -> crate::ids::MmId {
    s.procs[&pid].mm.unwrap()
}

#[test]
fn read_maps_zero_page_then_write_allocates() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    assert_eq!(read(&mut s, p, A, 8), [0; 8]);
    let st = s.mm_stats(p).unwrap();
    assert_eq!(
        (st.counters.zero_maps, st.anon_frames, st.rss_pages),
        (1, 0, 1)
    );
    write(&mut s, p, A, b"hello");
    let st = s.mm_stats(p).unwrap();
    assert_eq!(
        (st.counters.cow_copies, st.anon_frames),
        (1, 1),
        "zero page is copied (wp_page_copy)"
    );
    write(&mut s, p, A + PG, b"x");
    assert_eq!(
        s.mm_stats(p).unwrap().counters.anon_allocs,
        1,
        "write to none PTE: do_anonymous_page"
    );
    assert_eq!(read(&mut s, p, A, 5), b"hello");
    // A second write to an exclusive page takes no fault at all.
    let faults = s.counters().faults;
    write(&mut s, p, A + 1, b"E");
    assert_eq!(s.counters().faults, faults);
}

#[test]
fn bad_accesses_kill_only_the_process() {
    let (mut s, p) = setup();
    let q = s.spawn(0).unwrap();
    mmap(&mut s, p, A, PG, PROT_READ, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, q, A, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, q, A, b"q");
    let e = user_write(&mut s, p, 0, A, b"x").unwrap_err();
    assert_eq!(
        (e.signal, e.code, e.addr),
        (crate::SIGSEGV, Some(SegvCode::AccErr), A)
    );
    assert_eq!(
        s.proc_state(p),
        Some(crate::ProcState::Zombie(crate::SIGSEGV))
    );
    ok(&s);
    assert_eq!(read(&mut s, q, A, 1), b"q");
    let e = user_read(&mut s, q, 0, A + PG, &mut [0]).unwrap_err();
    assert_eq!(e.code, Some(SegvCode::MapErr));
    let r = s.spawn(0).unwrap();
    let e = user_read(&mut s, r, 0, 0xffff_8000_0000_0000, &mut [0]).unwrap_err();
    assert_eq!(e.code, Some(SegvCode::MapErr), "kernel address from ring 3");
    ok(&s);
}

#[test]
fn exec_permission() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, PG, PROT_READ | PROT_EXEC, PRIV | MAP_FIXED).unwrap();
    user_exec(&mut s, p, 0, A).unwrap();
    mmap(&mut s, p, A + PG, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A + PG, b"nx");
    let e = user_exec(&mut s, p, 0, A + PG).unwrap_err();
    assert_eq!(e.code, Some(SegvCode::AccErr));
    ok(&s);
}

#[test]
fn write_fault_without_vm_write_is_an_error_even_for_kernel() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, PG, PROT_READ, SHARED | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + PG, PG, PROT_READ, PRIV | MAP_FIXED).unwrap();
    let mm = mm_of(&s, p);
    for va in [A, A + PG] {
        let w = FaultFlags {
            write: true,
            ..FaultFlags::default()
        };
        assert_eq!(
            s.handle_mm_fault(mm, va, w),
            Err(Fault::Segv(SegvCode::AccErr))
        );
        assert_eq!(s.copy_to_user(p, va, b"k"), Err(Errno::EFAULT));
    }
    assert_eq!(
        s.proc_state(p),
        Some(crate::ProcState::Running),
        "kernel accesses do not kill"
    );
    assert_eq!(
        s.mm_stats(p).unwrap().rss_pages,
        0,
        "nothing was mapped silently"
    );
    ok(&s);
}

#[test]
fn kernel_user_copies_and_console_write() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV | MAP_FIXED).unwrap();
    let msg = b"across a page boundary";
    s.copy_to_user(p, A + PG - 5, msg).unwrap();
    ok(&s);
    let mut back = [0u8; 22];
    s.copy_from_user(p, A + PG - 5, &mut back).unwrap();
    assert_eq!(&back, msg);
    let mut out = alloc::vec::Vec::new();
    assert_eq!(
        s.write(p, 1, A + PG - 5, 22, |b| out.extend_from_slice(b)),
        Ok(22)
    );
    assert_eq!(out, msg);
    assert_eq!(s.write(p, 7, A, 1, |_| ()), Err(Errno::EBADF));
    assert_eq!(s.write(p, 1, A + 2 * PG - 1, 2, |_| ()), Err(Errno::EFAULT));
    assert_eq!(s.copy_from_user(p, 0x10, &mut [0]), Err(Errno::EFAULT));
    ok(&s);
}

#[test]
fn cow_reuse_versus_copy() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"orig");
    let c = s.fork(p).unwrap();
    ok(&s);
    let before = s.counters();
    user_write(&mut s, c, 1, A, b"kid!").unwrap();
    ok(&s);
    assert_eq!(
        s.counters().cow_copies,
        before.cow_copies + 1,
        "shared page: copy"
    );
    // Now the parent's page has one mapping but is not marked exclusive:
    // wp_can_reuse_anon_folio reuses it.
    write(&mut s, p, A, b"par!");
    assert_eq!(s.counters().cow_reuses, before.cow_reuses + 1);
    assert_eq!(s.counters().cow_copies, before.cow_copies + 1);
    assert_eq!(read(&mut s, p, A, 4), b"par!");
    let mut b = [0; 4];
    user_read(&mut s, c, 1, A, &mut b).unwrap();
    assert_eq!(&b, b"kid!");
}

#[test]
fn unshare_semantics() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 3 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 8 * PG, PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"cow");
    read(&mut s, p, A + PG, 1);
    let c = s.fork(p).unwrap();
    let mm = mm_of(&s, p);
    let un = FaultFlags {
        unshare: true,
        ..FaultFlags::default()
    };
    // Unshare of a non-COW mapping and unshare+write are rejected.
    assert_eq!(
        s.handle_mm_fault(mm, A + 8 * PG, un),
        Err(Fault::Segv(SegvCode::AccErr))
    );
    let bad = FaultFlags {
        unshare: true,
        write: true,
        ..FaultFlags::default()
    };
    assert_eq!(
        s.handle_mm_fault(mm, A, bad),
        Err(Fault::Segv(SegvCode::AccErr))
    );
    // Unshare a COW-shared page: private copy, still read-only.
    s.handle_mm_fault(mm, A, un).unwrap();
    ok(&s);
    let root = s.mm(mm).root;
    let crate::pte::Pte::Mapped { pfn, flags } = crate::pgtable::lookup(&s.hw, root, A) else {
        panic!()
    };
    assert!(
        !flags.contains(crate::pte::PteFlags::WRITE),
        "unshare must not grant write"
    );
    assert!(s.frames.at(pfn).anon_exclusive);
    // The following write reuses without copying.
    let copies = s.counters().cow_copies;
    write(&mut s, p, A, b"COW");
    assert_eq!(s.counters().cow_copies, copies);
    // Unshare of the zero page gives a private zeroed page, read-only.
    s.handle_mm_fault(mm, A + PG, un).unwrap();
    ok(&s);
    let crate::pte::Pte::Mapped { pfn, flags } = crate::pgtable::lookup(&s.hw, root, A + PG) else {
        panic!()
    };
    assert!(pfn != s.zero && !flags.contains(crate::pte::PteFlags::WRITE));
    // Unshare of a none PTE in a COW mapping: same.
    s.handle_mm_fault(mm, A + 2 * PG, un).unwrap();
    ok(&s);
    let mut b = [0; 3];
    user_read(&mut s, c, 0, A, &mut b).unwrap();
    assert_eq!(&b, b"cow", "child unaffected");
}

#[test]
fn large_anon_folios() {
    let (mut s, p) = setup_with(crate::Config {
        swap_frames: 64,
        anon_folio_order: 2,
        ..Default::default()
    });
    mmap(&mut s, p, A, 8 * PG, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, A + PG, b"L");
    let st = s.mm_stats(p).unwrap();
    assert_eq!(
        (st.anon_frames, st.rss_pages, st.counters.anon_allocs),
        (4, 4, 1),
        "one order-2 folio maps 4 PTEs"
    );
    // Partial munmap keeps the folio with exact per-page mapcounts.
    s.munmap(p, A + 2 * PG, PG).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(p).unwrap().rss_pages, 3);
    let c = s.fork(p).unwrap();
    ok(&s);
    user_write(&mut s, c, 0, A + PG, b"C").unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A + PG, 1), b"L");
    s.exit(c, 0).unwrap();
    ok(&s);
    s.exit(p, 0).unwrap();
    ok(&s);
    assert_eq!(s.mm_stats(0).map(|_| ()), Err(Errno::ESRCH));
}
