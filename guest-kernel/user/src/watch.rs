//! [`crate::writewatch`] for this process, through the guest kernel's
//! system calls: `mmap`, `userfaultfd`, its ioctls, and `PAGEMAP_SCAN` on
//! `/proc/self/pagemap`.

use crate::call6;
use crate::script::{
    PAGEMAP_SCAN, SYS_CLOSE, SYS_IOCTL, SYS_MMAP, SYS_OPEN, SYS_USERFAULTFD, ScanArgs, UffdCall,
};
use crate::writewatch::Tracking;

/// The calling process's own system calls.
pub struct Syscalls;

impl Tracking for Syscalls {
    fn mmap_anon(&mut self, addr: u64, len: u64) -> i64 {
        let flags = crate::writewatch::alloc_flags(addr);
        call6(SYS_MMAP, [addr, len, 3, flags, u64::MAX, 0])
    }

    fn userfaultfd(&mut self) -> i64 {
        call6(SYS_USERFAULTFD, [1, 0, 0, 0, 0, 0])
    }

    fn uffd(&mut self, fd: u64, call: UffdCall) -> i64 {
        let (cmd, mut w) = call.ioctl();
        call6(SYS_IOCTL, [fd, cmd, w.as_mut_ptr() as u64, 0, 0, 0])
    }

    fn scan(&mut self, start: u64, len: u64, args: ScanArgs, out: &mut [[u64; 3]]) -> (i64, u64) {
        let args = ScanArgs {
            vec_len: args.vec_len.min(out.len() as u64),
            ..args
        };
        let mut arg = args.words(start, len, out.as_mut_ptr() as u64);
        let pm = call6(
            SYS_OPEN,
            [c"/proc/self/pagemap".as_ptr() as u64, 0, 0, 0, 0, 0],
        );
        if pm < 0 {
            return (pm, 0);
        }
        let r = call6(
            SYS_IOCTL,
            [pm as u64, PAGEMAP_SCAN, arg.as_mut_ptr() as u64, 0, 0, 0],
        );
        call6(SYS_CLOSE, [pm as u64, 0, 0, 0, 0, 0]);
        (r, arg[4])
    }
}
