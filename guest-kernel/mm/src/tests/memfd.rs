//! memfd lifetimes: the shmem object lives while a descriptor or a mapping
//! does; fork shares descriptors; exit closes them.

use super::*;
use crate::mmap::MAP_FIXED;
use crate::testing::user::user_write;

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;
const NAME: u64 = 0x5000_0000;

fn memfd(s: &mut Sys, p: Pid) -> u64 {
    if s.mm(s.procs[&p].mm.unwrap()).vmas.find(NAME).is_none() {
        mmap(s, p, NAME, PG, RW, PRIV | MAP_FIXED).unwrap();
        user_write(s, p, 0, NAME, b"t\0").unwrap();
    }
    let fd = s.memfd_create(p, NAME, 0).unwrap();
    ok(s);
    fd
}

#[test]
fn object_lives_while_a_descriptor_or_mapping_does() {
    let (mut s, p) = setup();
    let fd = memfd(&mut s, p);
    assert_eq!(fd, 3, "the lowest free descriptor after the console");
    s.ftruncate(p, fd, 2 * PG).unwrap();
    s.mmap_fd(p, A, 2 * PG, RW, crate::mmap::MAP_SHARED | MAP_FIXED, fd, 0)
        .unwrap();
    write(&mut s, p, A, &[4]);
    let free = s.free_frames();
    s.close(p, fd).unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A, 1), [4], "the mapping keeps the file");
    assert_eq!(s.close(p, fd), Err(Errno::EBADF));
    s.munmap(p, A, 2 * PG).unwrap();
    ok(&s);
    assert!(s.free_frames() > free, "the last reference freed the pages");
    assert!(s.shmems.is_empty());
}

#[test]
fn fork_shares_descriptors_and_exit_closes_them() {
    let (mut s, p) = setup();
    let fd = memfd(&mut s, p);
    let child = s.fork(p).unwrap();
    ok(&s);
    s.ftruncate(child, fd, PG).unwrap();
    assert_eq!(
        s.shmems.values().next().unwrap().size,
        PG,
        "one file for both"
    );
    s.close(p, fd).unwrap();
    s.exit(child, 0).unwrap();
    ok(&s);
    assert!(
        s.shmems.is_empty(),
        "the child's exit closed the last descriptor"
    );
    assert_eq!(s.memfd_create(p, NAME, 0x100), Err(Errno::EINVAL));
    assert_eq!(s.memfd_create(p, 0, 0), Err(Errno::EFAULT));
}
