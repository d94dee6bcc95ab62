//! `mlock`, `mlock2` and `munlock`: set or clear `VM_LOCKED` on a range,
//! splitting and merging VMAs, and populate what was locked.
//!
//! Mirrors `mm/mlock.c` (`do_mlock`, `apply_vma_lock_flags`, `mlock_fixup`)
//! and `mm/gup.c` (`__mm_populate`) as of Linux 6.18. The start rounds
//! down and the length up; a hole anywhere is `ENOMEM` (at the start,
//! before anything changed); more than `RLIMIT_MEMLOCK` locked in total is
//! `ENOMEM` (no CAP_IPC_LOCK here). Populating a `PROT_NONE` range fails,
//! which `mlock` reports as `ENOMEM` with the flags already set, like
//! Linux. Locked memory refuses `MADV_DONTNEED`, `MADV_FREE` and
//! `MADV_PAGEOUT`; fork does not pass the lock on.

use crate::errno::Errno;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::{MEMLOCK_LIMIT, page_align};
use crate::system::MemSystem;
use crate::vma::VmFlags;

/// `MLOCK_ONFAULT`: lock pages as they are faulted in, populate nothing.
pub const MLOCK_ONFAULT: u64 = 1;

impl<H: Hw> MemSystem<H> {
    /// `mlock2(addr, len, flags)`.
    pub(crate) fn do_mlock(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        flags: u64,
    ) -> Result<(), Errno> {
        if flags & !MLOCK_ONFAULT != 0 {
            return Err(Errno::EINVAL);
        }
        let (start, len) = Self::lock_range(addr, len)?;
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        // Pages already locked inside the range do not count twice
        // (count_mm_mlocked_page_nr).
        let already: u64 = self
            .mm(mm)
            .vmas
            .iter()
            .filter(|v| v.flags.has(VmFlags::LOCKED) && v.start < end && start < v.end)
            .map(|v| v.end.min(end) - v.start.max(start))
            .sum();
        if self.locked_bytes(mm) + len - already > MEMLOCK_LIMIT {
            return Err(Errno::ENOMEM);
        }
        let mut lock = VmFlags::LOCKED;
        if flags & MLOCK_ONFAULT != 0 {
            lock |= VmFlags::LOCKONFAULT;
        }
        self.apply_lock_flags(mm, start, end, lock)?;
        // __mlock_posix_error_return: a failed populate is ENOMEM.
        self.populate(mm, start, end, false).map_err(|e| match e {
            Errno::EFAULT => Errno::ENOMEM,
            e => e,
        })
    }

    /// `munlock`.
    pub(crate) fn do_munlock(&mut self, mm: MmId, addr: u64, len: u64) -> Result<(), Errno> {
        let (start, len) = Self::lock_range(addr, len)?;
        let end = start.checked_add(len).ok_or(Errno::EINVAL)?;
        self.apply_lock_flags(mm, start, end, 0)
    }

    /// The page range of an mlock call: start rounded down, the length
    /// (plus the start's offset) rounded up.
    fn lock_range(addr: u64, len: u64) -> Result<(u64, u64), Errno> {
        let off = addr & (PAGE_SIZE - 1);
        let len = len
            .checked_add(off)
            .and_then(page_align)
            .ok_or(Errno::EINVAL)?;
        Ok((addr - off, len))
    }

    /// `apply_vma_lock_flags`: replaces the lock bits of every VMA in
    /// `[start, end)` with `lock`.
    fn apply_lock_flags(&mut self, mm: MmId, start: u64, end: u64, lock: u64) -> Result<(), Errno> {
        if end == start {
            return Ok(());
        }
        if self.mm(mm).vmas.find(start).is_none() {
            return Err(Errno::ENOMEM);
        }
        let mut cur = start;
        while cur < end {
            let Some(v) = self.mm(mm).vmas.find(cur).cloned() else {
                return Err(Errno::ENOMEM);
            };
            let seg_end = v.end.min(end);
            let newflags = (v.flags.0 & !VmFlags::LOCKED_MASK) | lock;
            // mlock_fixup leaves droppable and hugetlb memory alone (the
            // populate that follows still faults hugetlb pages in).
            if newflags != v.flags.0 && !v.flags.has(VmFlags::DROPPABLE | VmFlags::HUGETLB) {
                self.modify_vma_flags(mm, cur, seg_end, newflags);
            }
            cur = seg_end;
        }
        Ok(())
    }
}
