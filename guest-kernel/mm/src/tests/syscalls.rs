//! The syscall dispatcher, with the per-operation checker enabled.

use super::*;
use crate::mmap::{MAP_FIXED, PROT_READ};
use crate::syscall::*;
use crate::testing::user::user_write;

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

fn call(s: &mut Sys, pid: crate::ids::Pid, nr: u64, args: [u64; 6]) -> Outcome {
    s.syscall(pid, nr, args, &mut |_| ())
}

#[test]
fn dispatch_end_to_end() {
    let (mut s, p) = setup_with(crate::Config {
        swap_frames: 8,
        check_every_op: true,
        ..Default::default()
    });
    let r = call(
        &mut s,
        p,
        SYS_MMAP,
        [A, 2 * PG, RW as u64, (PRIV | MAP_FIXED) as u64, u64::MAX, 0],
    );
    assert_eq!(r, Outcome::Return(A as i64));
    assert_eq!(
        call(&mut s, p, SYS_MMAP, [0, 0, 3, PRIV as u64, u64::MAX, 0]),
        Outcome::Return(-22)
    );
    user_write(&mut s, p, 0, A, b"hello console").unwrap();
    let mut out = alloc::vec::Vec::new();
    let r = s.syscall(p, SYS_WRITE, [1, A, 13, 0, 0, 0], &mut |b| {
        out.extend_from_slice(b)
    });
    assert_eq!(
        (r, out.as_slice()),
        (Outcome::Return(13), &b"hello console"[..])
    );
    assert_eq!(
        call(&mut s, p, SYS_MPROTECT, [A, PG, PROT_READ as u64, 0, 0, 0]),
        Outcome::Return(0)
    );
    assert_eq!(
        call(&mut s, p, SYS_MADVISE, [A + PG, PG, 4, 0, 0, 0]),
        Outcome::Return(0)
    );
    let r = call(&mut s, p, SYS_MREMAP, [A + PG, PG, 2 * PG, 1, 0, 0]);
    let Outcome::Return(moved) = r else {
        panic!("{r:?}")
    };
    assert!(moved > 0);
    assert_eq!(
        call(&mut s, p, SYS_GETPID, [0; 6]),
        Outcome::Return(p as i64)
    );
    // Stats land in user memory in the documented layout.
    let r = call(
        &mut s,
        p,
        SYS_MM_STATS,
        [moved as u64, 8 * crate::MmStats::WORDS as u64, 0, 0, 0, 0],
    );
    assert_eq!(r, Outcome::Return(8 * crate::MmStats::WORDS as i64));
    let mut buf = [0u8; 8 * crate::MmStats::WORDS];
    s.copy_from_user(p, moved as u64, &mut buf).unwrap();
    let word = |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(0), s.mm_stats(p).unwrap().total_frames);
    assert_eq!(word(8), 2, "two VMAs");
    let Outcome::Forked { child } = call(&mut s, p, SYS_FORK, [0; 6]) else {
        panic!()
    };
    assert_eq!(
        call(&mut s, p, SYS_WAIT4, [u64::MAX, 0, 0, 0, 0, 0]),
        Outcome::Block
    );
    assert_eq!(
        call(&mut s, child, SYS_EXIT, [7, 0, 0, 0, 0, 0]),
        Outcome::Exited
    );
    let r = call(&mut s, p, SYS_WAIT4, [u64::MAX, moved as u64, 0, 0, 0, 0]);
    assert_eq!(r, Outcome::Return(child as i64));
    let mut st = [0u8; 4];
    s.copy_from_user(p, moved as u64, &mut st).unwrap();
    assert_eq!(i32::from_le_bytes(st), 7 << 8, "WEXITSTATUS 7");
    assert_eq!(
        call(&mut s, p, SYS_WAIT4, [u64::MAX, 0, 0, 0, 0, 0]),
        Outcome::Return(-10)
    );
    assert_eq!(call(&mut s, p, 4242, [0; 6]), Outcome::Return(-38));
    assert_eq!(
        call(&mut s, p, SYS_MUNMAP, [A, 1 << 40, 0, 0, 0, 0]),
        Outcome::Return(0)
    );
    ok(&s);
}
