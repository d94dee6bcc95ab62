//! The life of a hugetlb VMA after mmap: unmapping, fork, mprotect,
//! madvise, hole punching.
//!
//! Mirrors `mm/hugetlb.c` (6.18): `hugetlb_vm_op_split` (a hugetlb VMA
//! splits only at huge page boundaries: `EINVAL` otherwise, which is why
//! munmap and mprotect of part of a huge page fail), `__unmap_hugepage_range`,
//! `copy_hugetlb_page_range`, `hugetlb_change_protection`, and
//! `fs/hugetlbfs/inode.c` (`hugetlbfs_punch_hole`). Every change clears the
//! entries, flushes the TLB, and only then drops the folios' mapcounts.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::frame::FolioFlags;
use crate::hw::{FlushRange, Hw, Pfn};
use crate::ids::{HugeFileId, MmId};
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{Backing, HugeResv, VmFlags, Vma};

use super::{HSTATE_ORDERS, HugeFile, huge_level, huge_size};

impl<H: Hw> MemSystem<H> {
    /// The hugetlb part of `mmap`: the anonymous hugetlbfs file of `len`
    /// bytes (`hugetlb_file_setup`), or the memfd's `existing` one, and
    /// its reservation (`hugetlbfs_file_mmap`). Returns the backing for
    /// the new VMA.
    pub(crate) fn hugetlb_mmap_setup(
        &mut self,
        h: usize,
        len: u64,
        pgoff: u64,
        vf: u64,
        existing: Option<HugeFileId>,
    ) -> Result<Backing, Errno> {
        let size = huge_size(h);
        if pgoff & ((size >> 12) - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let from = pgoff >> HSTATE_ORDERS[h];
        let to = from + len / size;
        if let Some(file) = existing {
            let resv = self.hugetlb_reserve_pages(file, from, to, vf)?;
            // i_size grows to the end of a writable mapping.
            let f = self.huge.files.get_mut(&file).expect("open file");
            if vf & VmFlags::WRITE != 0 && f.i_size < to * size {
                f.set_size(to * size, size);
            }
            return Ok(Backing::Hugetlb {
                file,
                chain: Vec::new(),
                resv,
            });
        }
        let file = HugeFileId(self.new_id());
        // i_size grows to the end of a writable mapping.
        let pages = if vf & VmFlags::WRITE != 0 {
            to
        } else {
            len / size
        };
        self.huge.files.insert(file, HugeFile::new(h, pages * size));
        match self.hugetlb_reserve_pages(file, from, to, vf) {
            Ok(resv) => Ok(Backing::Hugetlb {
                file,
                chain: Vec::new(),
                resv,
            }),
            Err(e) => {
                self.huge.files.remove(&file);
                Err(e)
            }
        }
    }

    /// `hugetlb_vm_op_split`: whether `mm` may split a VMA at `addr` (only
    /// hugetlb VMAs object, at addresses inside a huge page).
    pub(crate) fn hugetlb_split_ok(&self, mm: MmId, addr: u64) -> bool {
        match self.mm(mm).vmas.find(addr) {
            Some(v) if v.is_hugetlb() && v.start != addr => {
                let (_, h) = self.huge_file_of(v);
                addr % huge_size(h) == 0
            }
            _ => true,
        }
    }

    /// `__unmap_hugepage_range`: clears the huge entries of hugetlb VMA
    /// `v` in `[start, end)` (huge page aligned), flushes, then drops the
    /// folios. `drop_markers` as for [`crate::gather::Zap`]: only the
    /// mapping's end drops markers.
    pub(crate) fn unmap_hugepage_range(
        &mut self,
        mm: MmId,
        v: &Vma,
        start: u64,
        end: u64,
        drop_markers: bool,
    ) {
        let (_, h) = self.huge_file_of(v);
        let level = huge_level(h);
        let root = self.mm(mm).root;
        let owner = match v.backing {
            Backing::Hugetlb {
                resv: HugeResv::Owner(id),
                ..
            } => Some(id),
            _ => None,
        };
        let mut gone: Vec<Pfn> = Vec::new();
        for (va, slot, e) in pgtable::huge_leaves(&self.hw, root, start, end, level) {
            match e {
                Pte::Mapped { pfn, flags } => {
                    let f = self.frames.get_mut(pfn);
                    if flags.contains(PteFlags::DIRTY) {
                        f.flags.set(FolioFlags::DIRTY, true);
                    }
                    // The owner's anonymous page gives its reservation back
                    // when freed, unless the pool has surplus pages, so that
                    // nobody steals the page a refault will need.
                    let anon = f.flags.contains(FolioFlags::ANON);
                    if let (Some(id), true, 0) = (owner, anon, self.huge.hstates[h].surplus) {
                        self.frames
                            .get_mut(pfn)
                            .flags
                            .set(FolioFlags::RESTORE_RESERVE, true);
                        let idx = self.huge_index(v, va);
                        if let Some(m) = self.huge.private.get_mut(&id) {
                            m.consumed.remove(&idx);
                        }
                    }
                    gone.push(pfn);
                }
                Pte::Marker(MarkerKind::UffdWp | MarkerKind::Guard) if !drop_markers => continue,
                _ => {}
            }
            // A protected page leaves its protection behind as a marker
            // (__unmap_hugepage_range), unless the mapping itself goes.
            let left = match e {
                Pte::Mapped { flags, .. } if flags.contains(PteFlags::UFFD_WP) && !drop_markers => {
                    Pte::Marker(MarkerKind::UffdWp)
                }
                _ => Pte::None,
            };
            pgtable::write_huge(&mut self.hw, slot, left);
        }
        if gone.is_empty() {
            return;
        }
        self.flush_tlb(mm, FlushRange::Range { start, end });
        for head in gone {
            self.huge_unmap(head);
        }
    }

    /// `copy_hugetlb_page_range` for fork: the child maps the same folios;
    /// private ones lose `PageAnonExclusive` and are write-protected on
    /// both sides. Poison markers are copied.
    pub(crate) fn copy_hugetlb_page_range(
        &mut self,
        parent: MmId,
        child: MmId,
        v: &Vma,
    ) -> Result<(), Errno> {
        let (_, h) = self.huge_file_of(v);
        let level = huge_level(h);
        let (proot, croot) = (self.mm(parent).root, self.mm(child).root);
        for (va, slot, e) in pgtable::huge_leaves(&self.hw, proot, v.start, v.end, level) {
            let ce = match e {
                Pte::Mapped { pfn, flags } => {
                    // The child's range is not registered (no EVENT_FORK):
                    // its entries lose the uffd-wp bit, markers are not
                    // copied (copy_pte_marker).
                    let mut cf = flags.without(PteFlags::UFFD_WP);
                    if v.is_cow() {
                        self.frames.get_mut(pfn).anon_exclusive = false;
                        cf = cf.without(PteFlags::WRITE);
                        let pf = flags.without(PteFlags::WRITE);
                        pgtable::write_huge(&mut self.hw, slot, Pte::Mapped { pfn, flags: pf });
                    }
                    self.huge_map(pfn);
                    Pte::Mapped { pfn, flags: cf }
                }
                Pte::Marker(MarkerKind::Poisoned) => e,
                _ => continue,
            };
            let Some(cslot) =
                pgtable::huge_slot_alloc(&mut self.hw, &mut self.frames, croot, va, level)
            else {
                if let Pte::Mapped { pfn, .. } = ce {
                    self.huge_unmap(pfn);
                }
                return Err(Errno::ENOMEM);
            };
            pgtable::write_huge(&mut self.hw, cslot, ce);
        }
        Ok(())
    }

    /// `hugetlb_change_protection`: the huge entries of `[start, end)` of
    /// `v` (whose flags are already the new ones) get its new permissions;
    /// private memory stays read-only until a write fault.
    pub(crate) fn hugetlb_change_protection(&mut self, mm: MmId, v: &Vma, start: u64, end: u64) {
        let (_, h) = self.huge_file_of(v);
        let level = huge_level(h);
        let root = self.mm(mm).root;
        let mut changed = false;
        for (_, slot, e) in pgtable::huge_leaves(&self.hw, root, start, end, level) {
            let Pte::Mapped { pfn, flags } = e else {
                continue;
            };
            let mut nf = v.rebuilt_pte_flags(flags);
            // A write-protect-registered VMA's page protection has no
            // write permission (vma_wants_writenotify): its entries wait
            // for their write fault.
            if v.is_shared() && v.flags.has(VmFlags::WRITE) && !v.flags.has(VmFlags::UFFD_WP) {
                nf = nf.with(PteFlags::WRITE);
            }
            if nf != flags {
                pgtable::write_huge(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                changed = true;
            }
        }
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
    }

    /// `MADV_DONTNEED` on hugetlb (`madvise_dontneed_free_valid_vma`): the
    /// start must be huge page aligned (`EINVAL`), the end is rounded down
    /// so that no huge page is dropped that was not asked for whole.
    pub(crate) fn hugetlb_dontneed(
        &mut self,
        mm: MmId,
        v: &Vma,
        start: u64,
        end: u64,
    ) -> Result<(), Errno> {
        let (_, h) = self.huge_file_of(v);
        let size = huge_size(h);
        if start % size != 0 {
            return Err(Errno::EINVAL);
        }
        let end = end & !(size - 1);
        if start < end {
            self.unmap_hugepage_range(mm, v, start, end, false);
        }
        Ok(())
    }

    /// `MADV_REMOVE` on hugetlb: `hugetlbfs_punch_hole` over the range's
    /// file offsets (`file.rs`).
    pub(crate) fn hugetlb_punch_hole(
        &mut self,
        v: &Vma,
        start: u64,
        end: u64,
    ) -> Result<(), Errno> {
        if !v.flags.has(VmFlags::MAYSHARE) || !v.flags.has(VmFlags::MAYWRITE) {
            return Err(Errno::EACCES);
        }
        let (file, _) = self.huge_file_of(v);
        let (off, off_end) = (v.page_index(start) << 12, v.page_index(end) << 12);
        self.hugetlbfs_punch_hole(file, off, off_end);
        Ok(())
    }

    /// `hugetlbfs_zero_partial_page`: zeroes file bytes `[from, to)` inside
    /// one huge page, if that page is in the cache.
    pub(crate) fn hugetlb_zero_partial(&mut self, file: HugeFileId, from: u64, to: u64, size: u64) {
        if from >= to {
            return;
        }
        let Some(&head) = self.huge.files[&file].pages.get(&(from / size)) else {
            return;
        };
        let mut off = from % size;
        let end = off + (to - from);
        while off < end {
            let page = head.offset(off / 4096);
            let within = off % 4096;
            let n = (4096 - within).min(end - off);
            self.hw
                .write_bytes(page.addr() + within, &alloc::vec![0u8; n as usize]);
            off += n;
        }
    }

    /// `clear_vma_resv_huge_pages`: the VMA at `start` stops owning its
    /// reservations (mremap moved them to the new VMA).
    pub(crate) fn hugetlb_clear_resv(&mut self, mm: MmId, start: u64) {
        if let Some(Backing::Hugetlb { resv, .. }) =
            self.mm_mut(mm).vmas.get_mut(start).map(|v| &mut v.backing)
        {
            *resv = HugeResv::None;
        }
    }
}
