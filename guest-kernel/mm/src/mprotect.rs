//! `mprotect`: change VMA permissions, splitting and merging, and rewrite
//! the PTEs in the range.
//!
//! Mirrors `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`,
//! `change_pte_range`, `can_change_pte_writable`). As in Linux, the change
//! is applied VMA by VMA and a hole stops it with `ENOMEM` after the part
//! before it was changed; asking for more than `VM_MAY*` allows is
//! `EACCES`. A private page becomes writable only if it is anon-exclusive:
//! shared (COW) pages stay read-only so the next write copies them.

use crate::errno::Errno;
use crate::hw::{FlushRange, Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::{PROT_EXEC, PROT_READ, PROT_WRITE, page_align, prot_to_vm};
use crate::pgtable::{self, USER_TOP};
use crate::pte::{Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::VmFlags;

impl<H: Hw> MemSystem<H> {
    /// `mprotect`.
    pub(crate) fn do_mprotect(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        prot: u32,
    ) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0 || prot & !(PROT_READ | PROT_WRITE | PROT_EXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if end > USER_TOP {
            return Err(Errno::ENOMEM);
        }
        let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
        let mut cur = addr;
        while cur < end {
            let Some(v) = self.mm(mm).vmas.find(cur).cloned() else {
                return Err(Errno::ENOMEM);
            };
            let newflags = (v.flags.0 & !access) | prot_to_vm(prot);
            if newflags & !(newflags >> 4) & access != 0 {
                return Err(Errno::EACCES);
            }
            let seg_end = v.end.min(end);
            if newflags != v.flags.0 {
                self.split_vma_at(mm, cur);
                self.split_vma_at(mm, seg_end);
                if let Some(v) = self.mm_mut(mm).vmas.get_mut(cur) {
                    v.flags = VmFlags(newflags);
                }
                self.change_protection(mm, cur, seg_end);
                self.merge_vma_at(mm, seg_end);
                self.merge_vma_at(mm, cur);
            }
            cur = seg_end;
        }
        Ok(())
    }

    /// `change_pte_range`: recompute every mapped PTE in `[start, end)` (one
    /// VMA) from the VMA's flags, then flush.
    fn change_protection(&mut self, mm: MmId, start: u64, end: u64) {
        let v = self.mm(mm).vmas.find(start).cloned().expect("vma");
        let root = self.mm(mm).root;
        let mut changed = false;
        for (_, slot, pte) in pgtable::leaves(&self.hw, root, start, end) {
            let Pte::Mapped { pfn, flags } = pte else {
                continue;
            };
            let keep = flags.contains(PteFlags::ACCESSED) as u8;
            let mut nf = v
                .base_pte_flags()
                .set(PteFlags::ACCESSED, keep != 0)
                .set(PteFlags::DIRTY, flags.contains(PteFlags::DIRTY));
            let writable = v.flags.has(VmFlags::WRITE)
                && !nf.contains(PteFlags::PROTNONE)
                && (v.is_shared() || (pfn != self.zero && self.frames.at(pfn).anon_exclusive));
            nf = nf.set(PteFlags::WRITE, writable);
            if nf != flags {
                pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                changed = true;
            }
        }
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
    }
}
