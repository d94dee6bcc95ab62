//! TLB ordering across simulated CPUs: frames are freed or unmapped only
//! after every CPU's stale translation is gone (the delayed-rmap rule of
//! `mmu_gather`), and permission downgrades are shot down everywhere.

use super::*;
use crate::madvise::{MADV_DONTNEED, MADV_PAGEOUT};
use crate::mmap::MAP_FIXED;
use crate::testing::user::{user_read, user_write};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

/// A process whose pages are cached in the TLBs of both CPUs.
fn two_cpu_process() -> (Sys, crate::ids::Pid) {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 8 * PG, 2 * PG, RW, SHARED | MAP_FIXED).unwrap();
    for cpu in [0, 1] {
        for va in [A, A + PG, A + 8 * PG] {
            user_write(&mut s, p, cpu, va, b"cached").unwrap();
        }
    }
    let root = s.mm(s.procs[&p].mm.unwrap()).root;
    assert!(s.hw.tlb_has(1, root, A) && s.hw.tlb_has(0, root, A));
    (s, p)
}

#[test]
fn zap_frees_only_after_shootdown() {
    for op in 0..4 {
        let (mut s, p) = two_cpu_process();
        s.hw.set_cpu(0);
        match op {
            0 => s.munmap(p, A, 16 * PG).unwrap(),
            1 => assert_eq!(
                s.madvise(p, A, 16 * PG, MADV_DONTNEED),
                Err(Errno::ENOMEM),
                "hole"
            ),
            2 => s.exit(p, 0).unwrap(),
            _ => s.madvise(p, A, 4 * PG, MADV_PAGEOUT).unwrap(),
        }
        ok(&s);
        let root_gone = s.procs[&p].mm.is_none();
        if !root_gone {
            let root = s.mm(s.procs[&p].mm.unwrap()).root;
            assert!(
                !s.hw.tlb_has(1, root, A),
                "op {op}: CPU 1 still caches the unmapped page"
            );
        }
    }
}

#[test]
fn detector_catches_a_lost_shootdown() {
    // The same zap with the remote flush dropped must be reported: this is
    // what would happen if rmap removal/freeing ran before the flush reached
    // every CPU (the zap_pte_range ordering bug).
    let (mut s, p) = two_cpu_process();
    s.hw.set_cpu(0);
    s.hw.drop_remote_shootdowns = true;
    s.munmap(p, A, 2 * PG).unwrap();
    assert!(
        !s.hw.violations.is_empty(),
        "a freed frame still in CPU 1's TLB went unnoticed"
    );
    assert!(
        s.hw.violations.iter().any(|v| v.contains("Unmapped")),
        "{:?}",
        s.hw.violations
    );
}

#[test]
fn fork_write_protects_cached_parent_translations() {
    let (mut s, p) = two_cpu_process();
    let c = s.fork(p).unwrap();
    // CPU 1 cached a writable translation before fork; without the flush in
    // dup_mmap this write would land in the page the child shares.
    user_write(&mut s, p, 1, A, b"parent").unwrap();
    ok(&s);
    let mut b = [0; 6];
    user_read(&mut s, c, 0, A, &mut b).unwrap();
    assert_eq!(&b, b"cached");
}

#[test]
fn mprotect_downgrade_reaches_other_cpus() {
    let (mut s, p) = two_cpu_process();
    s.hw.set_cpu(0);
    s.mprotect(p, A, PG, crate::mmap::PROT_READ).unwrap();
    ok(&s);
    let e = user_write(&mut s, p, 1, A, b"x").unwrap_err();
    assert_eq!(e.code, Some(crate::SegvCode::AccErr));
}

#[test]
fn mremap_move_flushes_old_range() {
    let (mut s, p) = two_cpu_process();
    let n = s
        .mremap(
            p,
            A,
            4 * PG,
            4 * PG,
            crate::mremap::MREMAP_MAYMOVE | crate::mremap::MREMAP_FIXED,
            A + 32 * PG,
        )
        .unwrap();
    ok(&s);
    let root = s.mm(s.procs[&p].mm.unwrap()).root;
    assert!(!s.hw.tlb_has(1, root, A));
    let mut b = [0; 6];
    user_read(&mut s, p, 1, n, &mut b).unwrap();
    assert_eq!(&b, b"cached");
    assert!(user_read(&mut s, p, 1, A, &mut b).is_err());
}

#[test]
fn detector_catches_rmap_removal_before_flush() {
    // The pre-fix zap_pte_range order: mapcount dropped (and the page made
    // invisible to rmap / freeable) while CPU 1 still caches a writable
    // translation. The simulated TLB must report it.
    let (mut s, p) = two_cpu_process();
    s.bug_early_rmap = true;
    s.hw.set_cpu(0);
    s.madvise(p, A + 8 * PG, PG, MADV_DONTNEED).unwrap();
    assert!(
        s.hw.violations.iter().any(|v| v.contains("Unmapped")),
        "{:?}",
        s.hw.violations
    );
    // The correct order on the same scenario is clean.
    let (mut s, p) = two_cpu_process();
    s.hw.set_cpu(0);
    s.madvise(p, A + 8 * PG, PG, MADV_DONTNEED).unwrap();
    ok(&s);
}
