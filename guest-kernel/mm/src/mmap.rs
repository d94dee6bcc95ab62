//! `mmap` and `munmap`, plus VMA split/merge with their reference
//! bookkeeping.
//!
//! Mirrors `mm/mmap.c` (`do_mmap`, `get_unmapped_area`, `mmap_region`,
//! `__vm_munmap`) and `mm/vma.c` (`do_vmi_munmap`, `vma_merge_new_range`,
//! `__split_vma`). Errors are Linux's: `EINVAL` for a zero length, an
//! unaligned fixed address or bad flags, `ENOMEM` when no range fits,
//! `EEXIST` for `MAP_FIXED_NOREPLACE` over a mapping, `EPERM` below
//! `mmap_min_addr`, `EBADF` for a file mapping (there are no files).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::errno::{Errno, MapError};
use crate::gather::MmuGather;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{MmId, ShmemId};
use crate::pgtable::USER_TOP;
use crate::system::{MemSystem, Shmem};
use crate::vma::{Backing, MMAP_MIN_ADDR, VmFlags, Vma};

/// `PROT_READ`.
pub const PROT_READ: u32 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = 0x4;
/// `MAP_SHARED`.
pub const MAP_SHARED: u32 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u32 = 0x02;
/// `MAP_SHARED_VALIDATE`.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// `MAP_FIXED`.
pub const MAP_FIXED: u32 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u32 = 0x20;
/// `MAP_NORESERVE` (accepted, no effect).
pub const MAP_NORESERVE: u32 = 0x4000;
/// `MAP_POPULATE`: fault every page in now (write-faulting writable
/// mappings, like `populate_vma_page_range`); failures are ignored.
pub const MAP_POPULATE: u32 = 0x8000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;
const MAP_TYPE: u32 = 0x0f;
const KNOWN_FLAGS: u32 =
    MAP_TYPE | MAP_FIXED | MAP_ANONYMOUS | MAP_NORESERVE | MAP_POPULATE | MAP_FIXED_NOREPLACE;

/// Rounds `len` up to pages; `None` on overflow.
pub(crate) fn page_align(len: u64) -> Option<u64> {
    len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1))
}

/// `calc_vm_prot_bits`.
pub(crate) fn prot_to_vm(prot: u32) -> u32 {
    let mut f = 0;
    if prot & PROT_READ != 0 {
        f |= VmFlags::READ;
    }
    if prot & PROT_WRITE != 0 {
        f |= VmFlags::WRITE;
    }
    if prot & PROT_EXEC != 0 {
        f |= VmFlags::EXEC;
    }
    f
}

impl<H: Hw> MemSystem<H> {
    /// `do_mmap` for anonymous memory. Returns the address.
    pub(crate) fn do_mmap(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
    ) -> Result<u64, MapError> {
        if len == 0 || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(MapError::Invalid);
        }
        let len = page_align(len).ok_or(MapError::NoMemory)?;
        let ty = flags & MAP_TYPE;
        if ty == MAP_SHARED_VALIDATE && flags & !KNOWN_FLAGS != 0 {
            return Err(MapError::Invalid);
        }
        let shared = match ty {
            MAP_SHARED | MAP_SHARED_VALIDATE => true,
            MAP_PRIVATE => false,
            _ => return Err(MapError::Invalid),
        };
        if flags & MAP_ANONYMOUS == 0 {
            return Err(MapError::NotAnonymous);
        }
        if len > USER_TOP - MMAP_MIN_ADDR {
            return Err(MapError::NoSpace);
        }
        let start = if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE) != 0 {
            if addr & (PAGE_SIZE - 1) != 0 {
                return Err(MapError::Invalid);
            }
            if addr > USER_TOP - len {
                return Err(MapError::NoSpace);
            }
            if addr < MMAP_MIN_ADDR {
                return Err(MapError::Permission);
            }
            if self.mm(mm).vmas.any_overlap(addr, addr + len) {
                if flags & MAP_FIXED_NOREPLACE != 0 {
                    return Err(MapError::Overlap);
                }
                if self.mm(mm).vmas.len() + 2 > self.cfg.max_map_count {
                    return Err(MapError::NoMemory);
                }
                self.unmap_region(mm, addr, addr + len);
            }
            addr
        } else {
            self.mm(mm)
                .vmas
                .find_gap(len, addr, USER_TOP)
                .ok_or(MapError::NoSpace)?
        };
        if self.mm(mm).vmas.len() >= self.cfg.max_map_count {
            return Err(MapError::NoMemory);
        }
        let mut vf = prot_to_vm(prot) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        let (backing, pgoff) = if shared {
            vf |= VmFlags::SHARED | VmFlags::MAYSHARE;
            let id = ShmemId(self.new_id());
            self.shmems.insert(
                id,
                Shmem {
                    pages_len: len / PAGE_SIZE,
                    pages: BTreeMap::new(),
                    i_mmap: BTreeSet::new(),
                },
            );
            (Backing::Shmem(id), 0)
        } else {
            (Backing::Anon { chain: Vec::new() }, start / PAGE_SIZE)
        };
        let v = Vma {
            start,
            end: start + len,
            flags: VmFlags(vf),
            pgoff,
            backing,
        };
        self.vma_link(mm, &v);
        self.mm_mut(mm).vmas.insert(v);
        self.merge_vma_at(mm, start + len);
        self.merge_vma_at(mm, start);
        if flags & MAP_POPULATE != 0 && prot != 0 {
            let write = prot & PROT_WRITE != 0;
            for va in (start..start + len).step_by(PAGE_SIZE as usize) {
                let ff = crate::fault::FaultFlags {
                    write,
                    ..Default::default()
                };
                if self.handle_mm_fault(mm, va, ff).is_err() {
                    break;
                }
            }
        }
        Ok(start)
    }

    /// `munmap`.
    pub(crate) fn do_munmap(&mut self, mm: MmId, addr: u64, len: u64) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0 || len == 0 {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if addr >= USER_TOP || len > USER_TOP - addr {
            return Err(Errno::EINVAL);
        }
        if self.mm(mm).vmas.len() + 2 > self.cfg.max_map_count
            && self.mm(mm).vmas.any_overlap(addr, addr + len)
        {
            // A split in the middle of a VMA would exceed the limit.
            let inner = self
                .mm(mm)
                .vmas
                .find(addr)
                .is_some_and(|v| v.start < addr && v.end > addr + len);
            if inner {
                return Err(Errno::ENOMEM);
            }
        }
        self.unmap_region(mm, addr, addr + len);
        Ok(())
    }

    /// Splits the VMA strictly containing `addr` (no-op otherwise).
    pub(crate) fn split_vma_at(&mut self, mm: MmId, addr: u64) {
        if let Some(hi) = self.mm_mut(mm).vmas.split_at(addr).cloned() {
            self.vma_link(mm, &hi);
        }
    }

    /// Merges the VMAs meeting at `addr` if compatible.
    pub(crate) fn merge_vma_at(&mut self, mm: MmId, addr: u64) {
        let Some(prev) = addr
            .checked_sub(1)
            .and_then(|a| self.mm(mm).vmas.find(a))
            .cloned()
        else {
            return;
        };
        if let Some(gone) = self.mm_mut(mm).vmas.merge_at(addr) {
            // The survivor may have adopted the absorbed VMA's anon_vma chain.
            let kept = self
                .mm(mm)
                .vmas
                .get(prev.start)
                .cloned()
                .expect("merged vma");
            if kept.backing != prev.backing {
                self.vma_link(mm, &kept);
                self.vma_unlink(mm, &prev);
            }
            self.vma_unlink(mm, &gone);
        }
    }

    /// Removes every mapping in `[start, end)`: split at the edges, zap and
    /// flush through an mmu_gather, free emptied tables, drop the VMAs.
    pub(crate) fn unmap_region(&mut self, mm: MmId, start: u64, end: u64) {
        self.split_vma_at(mm, start);
        self.split_vma_at(mm, end);
        let starts = self.mm(mm).vmas.overlapping(start, end);
        let mut g = MmuGather::new(mm);
        self.zap_range(&mut g, start, end, true);
        self.tlb_finish(g);
        for s in starts {
            if let Some(v) = self.mm_mut(mm).vmas.remove(s) {
                self.vma_unlink(mm, &v);
            }
        }
    }
}
