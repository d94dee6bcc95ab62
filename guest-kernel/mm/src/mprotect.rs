//! `mprotect`: change VMA permissions, splitting and merging, and rewrite
//! the PTEs in the range.
//!
//! Mirrors `mm/mprotect.c` (`do_mprotect_pkey`, `mprotect_fixup`,
//! `change_pte_range`, `can_change_pte_writable`) as of Linux 6.18. The
//! checks run in Linux's order: `PROT_GROWSDOWN | PROT_GROWSUP` together,
//! alignment, a zero length (success before `prot` is looked at), overflow
//! (`ENOMEM`), then `prot` (`PROT_SEM` is accepted). The change is applied
//! VMA by VMA and a hole stops it with `ENOMEM` after the part before it
//! was changed; asking for more than `VM_MAY*` allows is `EACCES`. A
//! private page becomes writable only if it is anon-exclusive: shared
//! (COW) pages stay read-only so the next write copies them. A private
//! mapping made writable for the first time takes `VM_ACCOUNT` (and drops
//! it again when made read-only before any page was faulted), and an
//! mlocked one is populated for writing, as `mprotect_fixup` does.

use crate::errno::Errno;
use crate::hw::{FlushRange, Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::{PROT_EXEC, PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE};
use crate::mmap::{page_align, prot_to_vm};
use crate::pgtable;
use crate::pte::{Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{Backing, VmFlags};

impl<H: Hw> MemSystem<H> {
    /// `mprotect`.
    pub(crate) fn do_mprotect(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        prot: u64,
    ) -> Result<(), Errno> {
        let grows = prot & u64::from(PROT_GROWSDOWN | PROT_GROWSUP);
        let prot = prot & !grows;
        if grows == u64::from(PROT_GROWSDOWN | PROT_GROWSUP) || addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(());
        }
        let len = page_align(len).ok_or(Errno::ENOMEM)?;
        let end = addr.checked_add(len).ok_or(Errno::ENOMEM)?;
        if prot & !u64::from(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM) != 0 {
            return Err(Errno::EINVAL);
        }
        let first = self.mm(mm).vmas.overlapping(addr, end).first().copied();
        let Some(first) = first.and_then(|s| self.mm(mm).vmas.get(s)).cloned() else {
            return Err(Errno::ENOMEM);
        };
        let mut start = addr;
        if grows & u64::from(PROT_GROWSDOWN) != 0 {
            start = first.start;
            if !first.flags.has(VmFlags::GROWSDOWN) {
                return Err(Errno::EINVAL);
            }
        } else {
            if first.start > start {
                return Err(Errno::ENOMEM);
            }
            if grows != 0 {
                // PROT_GROWSUP: x86 has no VM_GROWSUP mappings.
                return Err(Errno::EINVAL);
            }
        }
        let mut cur = start;
        while cur < end {
            let Some(v) = self.mm(mm).vmas.find(cur).cloned() else {
                return Err(Errno::ENOMEM);
            };
            let mut newflags = (v.flags.0 & !VmFlags::ACCESS) | prot_to_vm(prot);
            if newflags & !(newflags >> 4) & VmFlags::ACCESS != 0 {
                return Err(Errno::EACCES);
            }
            let old = v.flags.0;
            let no_charge = VmFlags::ACCOUNT
                | VmFlags::WRITE
                | VmFlags::HUGETLB
                | VmFlags::SHARED
                | VmFlags::NORESERVE;
            let first_write = newflags & VmFlags::WRITE != 0 && old & no_charge == 0;
            let never_faulted = matches!(&v.backing, Backing::Anon { chain } if chain.is_empty());
            if first_write {
                newflags |= VmFlags::ACCOUNT;
            } else if newflags & VmFlags::WRITE == 0 && old & VmFlags::ACCOUNT != 0 && never_faulted
            {
                // Nothing was charged to private pages yet: the commit
                // charge can go (an anon_vma would make it stay).
                newflags &= !VmFlags::ACCOUNT;
            }
            let seg_end = v.end.min(end);
            if newflags != old {
                // hugetlb_vm_op_split refuses to cut a huge page.
                if !self.hugetlb_split_ok(mm, cur) || !self.hugetlb_split_ok(mm, seg_end) {
                    return Err(Errno::EINVAL);
                }
                self.modify_vma_flags(mm, cur, seg_end, newflags);
                if v.is_hugetlb() {
                    let nv = self.mm(mm).vmas.find(cur).cloned().expect("vma");
                    self.hugetlb_change_protection(mm, &nv, cur, seg_end);
                } else {
                    self.change_protection(mm, cur, seg_end);
                }
                let locked_private =
                    old & (VmFlags::WRITE | VmFlags::SHARED | VmFlags::LOCKED) == VmFlags::LOCKED;
                if locked_private && newflags & VmFlags::WRITE != 0 {
                    // mprotect_fixup: break COW now so the locked range stays
                    // populated with writable pages.
                    let _ = self.fault_range(mm, cur, seg_end, true);
                }
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
                .set(PteFlags::DIRTY, flags.contains(PteFlags::DIRTY))
                .set(PteFlags::SOFT_DIRTY, flags.contains(PteFlags::SOFT_DIRTY))
                .set(PteFlags::UFFD_WP, flags.contains(PteFlags::UFFD_WP));
            // can_change_pte_writable: uffd-wp and soft-dirty tracking need
            // the fault.
            let writable = v.flags.has(VmFlags::WRITE)
                && !nf.contains(PteFlags::UFFD_WP)
                && !self.soft_dirty_needs_fault(&v, nf)
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
