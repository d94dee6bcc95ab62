//! Synchronous userfaultfd faults: the faulting process waits, a handler
//! (a fork child whose descriptor still acts on the parent) reads the
//! `uffd_msg` and resolves it, and what wakes a waiter and what does not.

use super::*;
use crate::mmap::MAP_FIXED;
use crate::syscall::{Outcome, SYS_READ};
use crate::testing::Access;
use crate::testing::user::{user_try, user_try_wait};
use crate::uffd_wait::{EVENT_PAGEFAULT, PAGEFAULT_FLAG_WP, PAGEFAULT_FLAG_WRITE};
use crate::userfaultfd::{
    MODE_MISSING, MODE_WP, UFFD_API, UFFD_USER_MODE_ONLY, WP_MODE_DONTWAKE, WP_MODE_WP,
};
use crate::{FaultStop, PhysMem};

const A: u64 = 0x4000_0000;
const PG: u64 = 4096;
/// Where the handler reads its messages.
const BUF: u64 = 0x5000_0000;
const O_NONBLOCK: u64 = 0o4000;

/// `p` with 4 written pages at `A` registered (`mode`) on a context, and a
/// forked handler `h`; returns (system, p, h, uffd).
fn served(mode: u64, flags: u64) -> (Sys, Pid, Pid, u64) {
    let (mut s, p) = setup();
    mmap(&mut s, p, A, 4 * PG, RW, PRIV | MAP_FIXED).unwrap();
    mmap(&mut s, p, BUF, PG, RW, PRIV | MAP_FIXED).unwrap();
    if mode & MODE_WP != 0 {
        write(&mut s, p, A, &[1; 4 * PG as usize]);
    }
    let uffd = s.userfaultfd(p, UFFD_USER_MODE_ONLY | flags).unwrap();
    s.uffdio_api(p, uffd, UFFD_API, 0).unwrap();
    s.uffdio_register(p, uffd, A, 4 * PG, mode).unwrap();
    if mode & MODE_WP != 0 {
        s.uffdio_writeprotect(p, uffd, A, 4 * PG, WP_MODE_WP)
            .unwrap();
    }
    let h = s.fork(p).unwrap();
    (s, p, h, uffd)
}

fn read_msgs(s: &mut Sys, h: Pid, uffd: u64, len: u64) -> Outcome {
    s.syscall(h, SYS_READ, [uffd, BUF, len, 0, 0, 0], &mut |_| ())
}

/// The (event, flags, address) of message `i` in the handler's buffer.
fn msg(s: &mut Sys, h: Pid, i: u64) -> (u8, u64, u64) {
    let mut m = [0u8; 32];
    s.copy_from_user(h, BUF + 32 * i, &mut m).unwrap();
    let word = |o: usize| u64::from_le_bytes(m[o..o + 8].try_into().unwrap());
    (m[0], word(8), word(16))
}

fn write_waits(s: &mut Sys, p: Pid, va: u64) -> bool {
    match user_try_wait(s, p, 0, va, Access::Write) {
        Ok(pa) => {
            s.hw.write_bytes(pa, &[9]);
            false
        }
        Err(FaultStop::Userfault) => true,
        Err(FaultStop::Signal(r)) => panic!("{r:?}"),
    }
}

#[test]
fn a_wp_fault_waits_for_the_handler_which_reads_and_unprotects() {
    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert!(write_waits(&mut s, p, A + PG + 5));
    assert_eq!(s.take_woken(), alloc::vec![], "no reader was waiting");
    assert!(s.uffd_waiting(p));
    ok(&s);
    assert_eq!(read_msgs(&mut s, h, uffd, 64), Outcome::Return(32));
    let (event, flags, addr) = msg(&mut s, h, 0);
    assert_eq!(event, EVENT_PAGEFAULT);
    assert_eq!(flags, PAGEFAULT_FLAG_WRITE | PAGEFAULT_FLAG_WP);
    assert_eq!(addr, A + PG, "the page, not the byte");
    // Read once: a second read finds nothing new and would block.
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::WaitUffd);
    // Unprotecting another page wakes nobody.
    s.uffdio_writeprotect(h, uffd, A, PG, 0).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![]);
    s.uffdio_writeprotect(h, uffd, A + PG, PG, 0).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert!(!s.uffd_waiting(p));
    assert!(!write_waits(&mut s, p, A + PG + 5));
    assert_eq!(read(&mut s, p, A + PG + 5, 1), [9]);
    // Still protected pages keep waiting.
    assert!(write_waits(&mut s, p, A + 2 * PG));
    ok(&s);
}

#[test]
fn a_blocked_reader_is_woken_by_the_next_fault() {
    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::WaitUffd);
    assert!(write_waits(&mut s, p, A));
    assert_eq!(s.take_woken(), alloc::vec![h]);
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::Return(32));
}

#[test]
fn a_read_takes_as_many_whole_messages_as_fit_oldest_first() {
    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    let q = s.fork(p).unwrap();
    assert!(write_waits(&mut s, p, A + 3 * PG));
    // q's range is not registered (no EVENT_FORK), so q does not wait:
    // two faults need two tasks of p's address space, which only
    // threads give; the second comes from p again after a wake.
    assert!(!write_waits(&mut s, q, A + 3 * PG));
    s.uffdio_wake(h, uffd, A + 3 * PG, PG).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    // Woken without a resolution: the retry faults again, a new message.
    assert!(write_waits(&mut s, p, A + 3 * PG));
    assert!(write_waits(&mut s, p, A));
    assert_eq!(read_msgs(&mut s, h, uffd, 63), Outcome::Return(32));
    assert_eq!(msg(&mut s, h, 0).2, A + 3 * PG);
    assert_eq!(read_msgs(&mut s, h, uffd, 96), Outcome::Return(32));
    assert_eq!(msg(&mut s, h, 0).2, A);
}

#[test]
fn read_errors_and_nonblocking_reads() {
    let (mut s, p, h, uffd) = served(MODE_WP, O_NONBLOCK);
    assert_eq!(
        read_msgs(&mut s, h, uffd, 31),
        Outcome::Return(Errno::EINVAL.to_ret())
    );
    assert_eq!(
        read_msgs(&mut s, h, uffd, 32),
        Outcome::Return(Errno::EAGAIN.to_ret())
    );
    assert!(write_waits(&mut s, p, A));
    // A buffer the handler cannot write: EFAULT, and the message stays.
    let bad = s.syscall(h, SYS_READ, [uffd, 0x10, 32, 0, 0, 0], &mut |_| ());
    assert_eq!(bad, Outcome::Return(Errno::EFAULT.to_ret()));
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::Return(32));
    // Before UFFDIO_API: EINVAL.
    let fresh = s.userfaultfd(h, UFFD_USER_MODE_ONLY).unwrap();
    assert_eq!(
        read_msgs(&mut s, h, fresh, 32),
        Outcome::Return(Errno::EINVAL.to_ret())
    );
}

#[test]
fn dontwake_leaves_the_waiter_and_wake_checks_its_range() {
    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert!(write_waits(&mut s, p, A));
    s.uffdio_writeprotect(h, uffd, A, PG, WP_MODE_DONTWAKE)
        .unwrap();
    assert_eq!(s.take_woken(), alloc::vec![]);
    assert_eq!(s.uffdio_wake(h, uffd, A + 1, PG), Err(Errno::EINVAL));
    s.uffdio_wake(h, uffd, A, PG).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert!(!write_waits(&mut s, p, A));
}

#[test]
fn kernel_accesses_get_efault_instead_of_waiting() {
    let (mut s, p, _h, _uffd) = served(MODE_WP, 0);
    // read(2) of the pagemap into a protected page: the kernel's write
    // is not a user fault, so a user-mode-only context fails it.
    let pm = s.open_pagemap(p, 0).unwrap();
    let r = s.syscall(p, SYS_READ, [pm, A, 8, 0, 0, 0], &mut |_| ());
    assert_eq!(r, Outcome::Return(Errno::EFAULT.to_ret()));
    assert!(!s.uffd_waiting(p));
}

#[test]
fn missing_faults_wait_and_unregister_wakes_them_but_not_wp_ones() {
    let (mut s, p, h, uffd) = served(MODE_MISSING, 0);
    assert!(matches!(
        user_try_wait(&mut s, p, 0, A, Access::Read),
        Err(FaultStop::Userfault)
    ));
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::Return(32));
    assert_eq!(msg(&mut s, h, 0).1, 0, "a read: neither WRITE nor WP");
    s.uffdio_unregister(h, uffd, A, 4 * PG).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert_eq!(user_try(&mut s, p, 0, A, Access::Read).map(|_| ()), Ok(()));

    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert!(write_waits(&mut s, p, A));
    s.uffdio_unregister(h, uffd, A, 4 * PG).unwrap();
    assert_eq!(
        s.take_woken(),
        alloc::vec![],
        "Linux wakes only missing ranges"
    );
    s.uffdio_wake(h, uffd, A, PG).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert!(!write_waits(&mut s, p, A), "unregistered: writable again");
}

#[test]
fn the_last_close_wakes_everyone_and_an_exit_forgets_its_waits() {
    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert!(write_waits(&mut s, p, A));
    s.close(h, uffd).unwrap();
    assert_eq!(
        s.take_woken(),
        alloc::vec![],
        "p still holds the descriptor"
    );
    s.close(p, uffd).unwrap();
    assert_eq!(s.take_woken(), alloc::vec![p]);
    assert!(!write_waits(&mut s, p, A));
    ok(&s);

    let (mut s, p, h, uffd) = served(MODE_WP, 0);
    assert_eq!(read_msgs(&mut s, h, uffd, 32), Outcome::WaitUffd);
    s.exit(h, 0).unwrap();
    assert!(write_waits(&mut s, p, A));
    assert_eq!(s.take_woken(), alloc::vec![], "the reader is gone");
    s.exit(p, 0).unwrap();
    assert!(!s.uffd_waiting(p));
}
