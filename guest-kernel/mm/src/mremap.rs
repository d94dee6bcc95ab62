//! `mremap`: shrink, grow in place, or move (and grow) a mapping.
//!
//! Mirrors `mm/mremap.c` (`SYSCALL_DEFINE5(mremap)`, `vma_to_resize`,
//! `move_vma`, `move_page_tables`). Moving keeps `vm_pgoff`, so anonymous
//! folios keep their rmap index and only the PTEs move; the old range is
//! flushed before its page tables are freed. `MREMAP_DONTUNMAP` moves the
//! pages and leaves the old VMA in place, empty; `old_len == 0` on a shared
//! mapping creates a second mapping of the same pages (private: `EINVAL`).

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::gather::MmuGather;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::page_align;
use crate::pgtable::{self, USER_TOP};
use crate::pte::Pte;
use crate::system::MemSystem;
use crate::vma::{MMAP_MIN_ADDR, Vma};

/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u32 = 1;
/// `MREMAP_FIXED`.
pub const MREMAP_FIXED: u32 = 2;
/// `MREMAP_DONTUNMAP`: move the pages but leave the old range mapped (and
/// empty).
pub const MREMAP_DONTUNMAP: u32 = 4;

impl<H: Hw> MemSystem<H> {
    /// `mremap`.
    pub(crate) fn do_mremap(
        &mut self,
        mm: MmId,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        let may_move = flags & MREMAP_MAYMOVE != 0;
        let dontunmap = flags & MREMAP_DONTUNMAP != 0;
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
            || (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 && !may_move)
            || old & (PAGE_SIZE - 1) != 0
        {
            return Err(Errno::EINVAL);
        }
        let old_len = page_align(old_len).ok_or(Errno::EINVAL)?;
        let new_len = page_align(new_len).ok_or(Errno::EINVAL)?;
        if new_len == 0 || (dontunmap && old_len != new_len) {
            return Err(Errno::EINVAL);
        }
        if old_len == 0 {
            return self.dup_shared(mm, old, new_len, flags, new_addr);
        }
        let old_end = old.checked_add(old_len).ok_or(Errno::EFAULT)?;
        let check_vma = |s: &Self| -> Result<Vma, Errno> {
            let v = s.mm(mm).vmas.find(old).cloned().ok_or(Errno::EFAULT)?;
            if old_end > v.end {
                Err(Errno::EFAULT)
            } else {
                Ok(v)
            }
        };
        if flags & MREMAP_FIXED != 0 {
            if new_addr & (PAGE_SIZE - 1) != 0
                || new_len > USER_TOP
                || new_addr > USER_TOP - new_len
            {
                return Err(Errno::EINVAL);
            }
            if new_addr < MMAP_MIN_ADDR {
                return Err(Errno::EPERM);
            }
            if new_addr < old_end && old < new_addr + new_len {
                return Err(Errno::EINVAL);
            }
            check_vma(self)?;
            self.unmap_region(mm, new_addr, new_addr + new_len);
            let mut len = old_len;
            if old_len > new_len {
                self.unmap_region(mm, old + new_len, old_end);
                len = new_len;
            }
            return self.move_vma(mm, old, len, new_len, new_addr, dontunmap);
        }
        let v = check_vma(self)?;
        if dontunmap {
            let dst = self
                .mm(mm)
                .vmas
                .find_gap(new_len, 0, USER_TOP)
                .ok_or(Errno::ENOMEM)?;
            return self.move_vma(mm, old, old_len, new_len, dst, true);
        }
        if new_len <= old_len {
            if new_len < old_len {
                self.unmap_region(mm, old + new_len, old_end);
            }
            return Ok(old);
        }
        let grow_end = old.checked_add(new_len).filter(|&e| e <= USER_TOP);
        if let Some(e) = grow_end {
            if old_end == v.end && !self.mm(mm).vmas.any_overlap(v.end, e) {
                if let Some(vm) = self.mm_mut(mm).vmas.get_mut(v.start) {
                    vm.end = e;
                }
                self.merge_vma_at(mm, e);
                return Ok(old);
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let dst = self
            .mm(mm)
            .vmas
            .find_gap(new_len, 0, USER_TOP)
            .ok_or(Errno::ENOMEM)?;
        self.move_vma(mm, old, old_len, new_len, dst, false)
    }

    /// `mremap(old, 0, new_len, MAYMOVE...)` of a shared mapping: a second
    /// VMA over the same object pages (`copy_vma` without moving PTEs).
    fn dup_shared(
        &mut self,
        mm: MmId,
        old: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        let v = self.mm(mm).vmas.find(old).cloned().ok_or(Errno::EFAULT)?;
        if !v.is_shared() || flags & MREMAP_MAYMOVE == 0 || flags & MREMAP_DONTUNMAP != 0 {
            return Err(Errno::EINVAL);
        }
        let dst = if flags & MREMAP_FIXED != 0 {
            if new_addr & (PAGE_SIZE - 1) != 0
                || new_len > USER_TOP
                || new_addr > USER_TOP - new_len
            {
                return Err(Errno::EINVAL);
            }
            if new_addr < MMAP_MIN_ADDR {
                return Err(Errno::EPERM);
            }
            self.unmap_region(mm, new_addr, new_addr + new_len);
            new_addr
        } else {
            self.mm(mm)
                .vmas
                .find_gap(new_len, 0, USER_TOP)
                .ok_or(Errno::ENOMEM)?
        };
        // The unmap above may have removed the source VMA itself.
        let v = self
            .mm(mm)
            .vmas
            .find(old)
            .cloned()
            .filter(|x| x.backing == v.backing)
            .ok_or(Errno::EFAULT)?;
        let nv = Vma {
            start: dst,
            end: dst + new_len,
            flags: v.flags,
            pgoff: v.page_index(old),
            backing: v.backing,
        };
        self.vma_link(mm, &nv);
        self.mm_mut(mm).vmas.insert(nv);
        self.merge_vma_at(mm, dst + new_len);
        self.merge_vma_at(mm, dst);
        Ok(dst)
    }

    /// `move_vma`: `[old, old+old_len)` (inside one VMA) moves to `new`,
    /// growing to `new_len`. With `keep_old` (`MREMAP_DONTUNMAP`) the old
    /// VMA stays, without pages.
    fn move_vma(
        &mut self,
        mm: MmId,
        old: u64,
        old_len: u64,
        new_len: u64,
        new: u64,
        keep_old: bool,
    ) -> Result<u64, Errno> {
        let root = self.mm(mm).root;
        let leaves = pgtable::leaves(&self.hw, root, old, old + old_len);
        let mut dst = Vec::with_capacity(leaves.len());
        for &(va, _, _) in &leaves {
            let s = pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, root, new + (va - old))
                .ok_or(Errno::ENOMEM)?;
            dst.push(s);
        }
        self.split_vma_at(mm, old);
        self.split_vma_at(mm, old + old_len);
        let v = self.mm(mm).vmas.find(old).cloned().expect("vma");
        let nv = Vma {
            start: new,
            end: new + new_len,
            flags: v.flags,
            pgoff: v.pgoff,
            backing: v.backing.clone(),
        };
        for (&(_, slot, pte), &d) in leaves.iter().zip(&dst) {
            pgtable::write_pte(&mut self.hw, d, pte);
            pgtable::write_pte(&mut self.hw, slot, Pte::None);
        }
        self.vma_link(mm, &nv);
        self.mm_mut(mm).vmas.insert(nv);
        if !keep_old {
            if let Some(gone) = self.mm_mut(mm).vmas.remove(old) {
                self.vma_unlink(mm, &gone);
            }
        }
        // Flush the old translations, then free the old range's tables.
        let mut g = MmuGather::new(mm);
        self.zap_range(&mut g, old, old + old_len, true);
        if !leaves.is_empty() {
            self.flush_tlb(
                mm,
                crate::hw::FlushRange::Range {
                    start: old,
                    end: old + old_len,
                },
            );
        }
        self.tlb_finish(g);
        if keep_old {
            self.merge_vma_at(mm, old + old_len);
            self.merge_vma_at(mm, old);
        }
        self.merge_vma_at(mm, new + new_len);
        self.merge_vma_at(mm, new);
        Ok(new)
    }
}
