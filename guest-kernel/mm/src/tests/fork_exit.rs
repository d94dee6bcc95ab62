//! fork, exit, wait.

use super::*;
use crate::mmap::MAP_FIXED;
use crate::testing::user::{user_read, user_write};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;

#[test]
fn fork_isolates_private_and_shares_shared() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 8 * PG, PG, RW, SHARED | MAP_FIXED).unwrap();
    write(&mut s, p, A, b"parent");
    write(&mut s, p, A + 8 * PG, b"shared");
    read(&mut s, p, A + PG, 1); // zero page
    let c = s.fork(p).unwrap();
    ok(&s);
    user_write(&mut s, c, 1, A, b"child!").unwrap();
    user_write(&mut s, c, 1, A + PG, b"z").unwrap();
    user_write(&mut s, c, 1, A + 8 * PG, b"SHARED").unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A, 6), b"parent");
    assert_eq!(read(&mut s, p, A + PG, 1), [0]);
    assert_eq!(read(&mut s, p, A + 8 * PG, 6), b"SHARED");
    write(&mut s, p, A + 8 * PG, b"back");
    let mut b = [0; 4];
    user_read(&mut s, c, 1, A + 8 * PG, &mut b).unwrap();
    assert_eq!(&b, b"back");
}

#[test]
fn exit_frees_everything_and_wait_reaps() {
    let (mut s, p) = setup();
    let base = s.free_frames();
    assert_eq!(s.wait(p, -1), Err(Errno::ECHILD));
    mmap(&mut s, p, A, 16 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, A + 64 * PG, 4 * PG, RW, SHARED | MAP_FIXED).unwrap();
    for i in 0..16 {
        write(&mut s, p, A + i * PG, &[i as u8]);
    }
    write(&mut s, p, A + 64 * PG, b"s");
    let c = s.fork(p).unwrap();
    let g = s.fork(c).unwrap();
    ok(&s);
    assert_eq!(s.wait(p, -1), Ok(None), "child still running");
    assert_eq!(
        s.wait(p, g as i64),
        Err(Errno::ECHILD),
        "grandchild is not p's child"
    );
    s.exit(c, 3 << 8).unwrap();
    ok(&s);
    assert_eq!(s.wait(p, c as i64), Ok(Some((c, 3 << 8))));
    assert_eq!(p, 1, "first process is init");
    assert_eq!(s.procs[&g].parent, 1, "orphan reparented to init");
    assert_eq!(s.wait(p, -1), Ok(None), "adopted grandchild still running");
    user_write(&mut s, g, 0, A, b"g").unwrap();
    s.exit(g, 0).unwrap();
    ok(&s);
    assert_eq!(s.wait(p, -1), Ok(Some((g, 0))));
    assert_eq!(s.wait(p, -1), Err(Errno::ECHILD));
    assert_eq!(read(&mut s, p, A, 1), [0]);
    assert_eq!(s.getpid(p), Ok(p));
    assert_eq!(s.getpid(g), Err(Errno::ESRCH));
    s.exit(p, 0).unwrap();
    ok(&s);
    assert_eq!(
        s.free_frames(),
        base + 1,
        "all frames back (incl. root table)"
    );
    assert!(s.anon_vmas.is_empty() && s.shmems.is_empty() && s.mms.is_empty());
}

#[test]
fn fork_out_of_memory_rolls_back() {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 64 * PG, RW, PRIV | MAP_FIXED).unwrap();
    for i in 0..64 {
        write(&mut s, p, A + i * PG, &[1]);
    }
    // Fill memory with another process until a fork cannot get its tables.
    let hog = s.spawn(0).unwrap();
    let len = s.free_frames() * PG;
    mmap(&mut s, hog, A, len, RW, PRIV | MAP_FIXED).unwrap();
    let mut i = 0;
    while s.free_frames() > 1 {
        user_write(&mut s, hog, 0, A + i * PG, &[1]).unwrap();
        i += 1;
    }
    ok(&s);
    assert_eq!(s.fork(p), Err(Errno::ENOMEM));
    ok(&s);
    assert_eq!(read(&mut s, p, A, 1), [1]);
    write(&mut s, p, A, &[2]);
    // The hog keeps faulting in new pages until the OOM kill.
    let killed = loop {
        if let Err(r) = user_write(&mut s, hog, 0, A + i * PG, &[1]) {
            break r;
        }
        i += 1;
    };
    assert_eq!(killed.signal, crate::SIGKILL);
    ok(&s);
    assert_eq!(s.wait(0, hog as i64), Ok(Some((hog, crate::SIGKILL))));
}
