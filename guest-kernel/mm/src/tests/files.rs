//! tmpfs names and file I/O: a name outlives neither `unlink` nor its
//! last holder; `pread`/`pwrite` reach pages that are swapped out; the
//! checker counts open files exactly.

use super::*;
use crate::mmap::MAP_FIXED;
use crate::tmpfs::O_CREAT;

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;
const PATH: u64 = 0x5000_0000;
const RDWR: u32 = crate::file::O_RDWR;

fn path(s: &mut Sys, p: Pid, name: &[u8]) -> u64 {
    if s.mm(s.procs[&p].mm.unwrap()).vmas.find(PATH).is_none() {
        mmap(s, p, PATH, PG, RW, PRIV | MAP_FIXED).unwrap();
    }
    user_write(s, p, 0, PATH, name).unwrap();
    PATH
}

#[test]
fn an_unlinked_file_lives_until_its_last_descriptor_closes() {
    let (mut s, p) = setup();
    let at = path(&mut s, p, b"/dev/shm/a\0");
    let fd = s
        .openat(p, crate::tmpfs::AT_FDCWD, at, O_CREAT | RDWR, 0o600)
        .unwrap();
    mmap(&mut s, p, A, PG, RW, PRIV).unwrap();
    write(&mut s, p, A, b"hello");
    assert_eq!(s.file_write(p, fd, A, 5, Some(PG)), Ok(5));
    s.unlink(p, at).unwrap();
    ok(&s);
    assert!(s.names.is_empty());
    assert_eq!(s.unlink(p, at), Err(Errno::ENOENT));
    assert_eq!(s.file_read(p, fd, A + 8, 5, Some(PG)), Ok(5));
    assert_eq!(read(&mut s, p, A + 8, 5), b"hello");
    assert_eq!(s.shmems.len(), 1, "the descriptor keeps the inode");
    s.close(p, fd).unwrap();
    ok(&s);
    assert!(s.shmems.is_empty() && s.files.is_empty());
}

#[test]
fn file_io_swaps_pages_back_in() {
    let (mut s, p) = setup();
    let at = path(&mut s, p, b"/dev/shm/b\0");
    let fd = s
        .openat(p, crate::tmpfs::AT_FDCWD, at, O_CREAT | RDWR, 0o600)
        .unwrap();
    mmap(&mut s, p, A, 2 * PG, RW, PRIV).unwrap();
    write(&mut s, p, A, &[7; 16]);
    write(&mut s, p, A + PG, &[9; 16]);
    assert_eq!(s.file_write(p, fd, A, 2 * PG, Some(0)), Ok(2 * PG));
    let before = s.counters.swap_ins;
    assert!(s.reclaim(64) >= 2, "the file's pages go to swap");
    ok(&s);
    // A write into a swapped page keeps the rest of it.
    write(&mut s, p, A, &[5]);
    assert_eq!(s.file_write(p, fd, A, 1, Some(PG + 1)), Ok(1));
    assert_eq!(s.file_read(p, fd, A, 2 * PG, Some(0)), Ok(2 * PG));
    assert_eq!(read(&mut s, p, A, 2), [7, 7]);
    assert_eq!(read(&mut s, p, A + PG, 3), [9, 5, 9]);
    assert!(s.counters.swap_ins >= before + 2);
    ok(&s);
}

#[test]
fn the_checker_counts_open_file_references() {
    let (mut s, p) = setup();
    let at = path(&mut s, p, b"/dev/shm/c\0");
    let fd = s
        .openat(p, crate::tmpfs::AT_FDCWD, at, O_CREAT | RDWR, 0o600)
        .unwrap();
    let child = s.fork(p).unwrap();
    ok(&s);
    let id = s.open_file(child, fd).unwrap();
    assert_eq!(s.files[&id].refs, 2, "fork shares the open file");
    s.files.get_mut(&id).unwrap().refs += 1;
    let err = s.check().unwrap_err();
    assert!(
        err.violations.iter().any(|v| v.contains("references")),
        "{err:?}"
    );
}

#[test]
fn seeking_a_huge_sparse_file_visits_only_its_pages() {
    let (mut s, p) = setup();
    let at = path(&mut s, p, b"/dev/shm/d\0");
    let fd = s
        .openat(p, crate::tmpfs::AT_FDCWD, at, O_CREAT | RDWR, 0o600)
        .unwrap();
    // An exabyte of holes and one page of data near its end.
    s.ftruncate(p, fd, 1 << 60).unwrap();
    mmap(&mut s, p, A, PG, RW, PRIV).unwrap();
    write(&mut s, p, A, &[1]);
    let last = (1u64 << 60) - PG;
    assert_eq!(s.file_write(p, fd, A, 1, Some(last)), Ok(1));
    use crate::file::{SEEK_DATA, SEEK_HOLE};
    assert_eq!(s.lseek(p, fd, 0, SEEK_DATA), Ok(last));
    assert_eq!(s.lseek(p, fd, last, SEEK_HOLE), Ok(1 << 60));
    assert_eq!(s.lseek(p, fd, 5, SEEK_HOLE), Ok(5));
    ok(&s);
}
