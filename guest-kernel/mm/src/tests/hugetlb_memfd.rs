//! hugetlb memfds: the file lives while an open file or a mapping holds
//! it, and its pages and reservations go with the last of them; the
//! checker (reservations recomputed exactly) runs after every step.

use super::*;
use crate::hugetlb::{HSTATE_2M, HugeCounters, PoolKnob};
use crate::memfd::MFD_HUGETLB;
use crate::mmap::{MAP_FIXED, MAP_SHARED};

const A: u64 = 0x4000_0000;
const HP: u64 = 2 << 20;

fn counters(s: &Sys) -> (u64, u64) {
    let HugeCounters { free, rsvd, .. } = s.hugetlb_counters(HSTATE_2M);
    (free, rsvd)
}

fn huge_memfd(pool: u64) -> (Sys, Pid, u64) {
    let mut s = crate::testing::user::sim_system(64, 2, Config::default());
    let p = s.spawn(0).unwrap();
    s.hugetlb_set_pool(HSTATE_2M, PoolKnob::NrHugepages, pool)
        .unwrap();
    mmap(&mut s, p, 0x5000_0000, 4096, RW, PRIV | MAP_FIXED).unwrap();
    write(&mut s, p, 0x5000_0000, b"h\0");
    let fd = s.memfd_create(p, 0x5000_0000, MFD_HUGETLB).unwrap();
    ok(&s);
    (s, p, fd)
}

#[test]
fn the_file_lives_until_its_last_mapping_and_open_file_go() {
    let (mut s, p, fd) = huge_memfd(2);
    s.ftruncate(p, fd, 2 * HP).unwrap();
    s.mmap_fd(p, A, 2 * HP, RW, MAP_SHARED | MAP_FIXED, fd, 0)
        .unwrap();
    ok(&s);
    write(&mut s, p, A + HP, &[7]);
    assert_eq!(counters(&s), (1, 1));
    // The mapping holds the file after the close...
    s.close(p, fd).unwrap();
    ok(&s);
    assert_eq!(read(&mut s, p, A + HP, 1), [7]);
    assert_eq!(counters(&s), (1, 1));
    // ...and the file its pages and reservations until the munmap.
    s.munmap(p, A, 2 * HP).unwrap();
    ok(&s);
    assert_eq!(counters(&s), (2, 0));
    assert!(s.huge.files.is_empty());
}

#[test]
fn sizes_are_whole_huge_pages_and_writes_are_refused() {
    let (mut s, p, fd) = huge_memfd(1);
    assert_eq!(s.ftruncate(p, fd, 4096), Err(Errno::EINVAL));
    assert_eq!(
        s.file_write(p, fd, 0x5000_0000, 1, None),
        Err(Errno::EINVAL)
    );
    s.fallocate(p, fd, 0, 10, 1).unwrap();
    ok(&s);
    assert_eq!(counters(&s), (0, 0));
    assert_eq!(s.lseek(p, fd, 0, 2), Ok(11), "i_size follows the bytes");
    assert_eq!(s.fallocate(p, fd, 0, HP, 1), Err(Errno::ENOSPC));
    s.fallocate(p, fd, 3, 0, HP).unwrap();
    ok(&s);
    assert_eq!(counters(&s), (1, 0));
}
