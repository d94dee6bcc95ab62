//! `mremap`: shrink, grow in place, or move (and grow) a mapping.
//!
//! Mirrors `mm/mremap.c` as of Linux 6.18 (`check_mremap_params`,
//! `check_prep_vma`, `mremap_at`, `mremap_to`, `remap_move`, `move_vma`,
//! `copy_vma`). What follows from it:
//! - Shrinking unmaps the tail without looking at VMA boundaries, so it
//!   works across VMAs and holes; a same-size call is a no-op that succeeds.
//! - Growing or moving needs `[old, old + old_len)` inside one VMA
//!   (`EFAULT`), except a fixed same-size move, which (6.17+) moves every
//!   VMA of the range, keeping the gaps between them.
//! - `MREMAP_FIXED` and `MREMAP_DONTUNMAP` give a new address; without
//!   `MREMAP_FIXED` it is a hint, used if free. A destination overlapping
//!   the source is `EINVAL`, checked before anything is unmapped.
//! - `old_len == 0` makes a second mapping of a shared mapping's pages;
//!   for private memory it is `EINVAL`.
//! - A moved VMA keeps its page offset, so anonymous folios keep their
//!   rmap index and only the PTEs move; a never-faulted anonymous VMA takes
//!   the new address as its offset instead, so it merges with its new
//!   neighbours. `MREMAP_DONTUNMAP` leaves the old VMA in place, empty
//!   and unlocked.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::gather::{MmuGather, Zap};
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::MEMLOCK_LIMIT;
use crate::pgtable;
use crate::pte::Pte;
use crate::system::MemSystem;
use crate::vma::{Backing, TASK_SIZE, VmFlags, Vma};

/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u64 = 1;
/// `MREMAP_FIXED`.
pub const MREMAP_FIXED: u64 = 2;
/// `MREMAP_DONTUNMAP`: move the pages but leave the old range mapped (and
/// empty).
pub const MREMAP_DONTUNMAP: u64 = 4;

/// One remap operation (`struct vma_remap_struct`): the piece of one VMA
/// being resized or moved.
#[derive(Debug, Clone, Copy)]
struct Remap {
    addr: u64,
    old_len: u64,
    new_len: u64,
    flags: u64,
    new_addr: u64,
}

impl Remap {
    fn implies_new_addr(&self) -> bool {
        self.flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
    }
    fn overlaps(&self) -> bool {
        // Unsigned long arithmetic, as the kernel's check.
        self.addr.wrapping_add(self.old_len) > self.new_addr
            && self.new_addr.wrapping_add(self.new_len) > self.addr
    }
}

/// `PAGE_ALIGN`, wrapping like the kernel's macro.
fn align_wrapping(len: u64) -> u64 {
    len.wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl<H: Hw> MemSystem<H> {
    /// `mremap`.
    pub(crate) fn do_mremap(
        &mut self,
        mm: MmId,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        let mut r = Remap {
            addr,
            old_len,
            new_len,
            flags,
            new_addr,
        };
        // check_mremap_params.
        if flags & !(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP) != 0
            || addr & (PAGE_SIZE - 1) != 0
            || align_wrapping(new_len) == 0
        {
            return Err(Errno::EINVAL);
        }
        if r.implies_new_addr() {
            if new_addr & (PAGE_SIZE - 1) != 0
                || flags & MREMAP_MAYMOVE == 0
                || (flags & MREMAP_DONTUNMAP != 0 && old_len != new_len)
            {
                return Err(Errno::EINVAL);
            }
            // The destination is checked against TASK_SIZE and the source
            // before any VMA is looked up (6.18 checks these first).
            let (o, n) = (align_wrapping(old_len), align_wrapping(new_len));
            let whole = Remap {
                old_len: o,
                new_len: n,
                ..r
            };
            if n > TASK_SIZE || new_addr > TASK_SIZE - n || whole.overlaps() {
                return Err(Errno::EINVAL);
            }
            if self.mm(mm).vmas.len() + 2 >= self.cfg.max_map_count.saturating_sub(3) {
                return Err(Errno::ENOMEM);
            }
        }
        r.old_len = align_wrapping(old_len);
        r.new_len = align_wrapping(new_len);
        if flags & MREMAP_FIXED != 0 && r.old_len == r.new_len {
            return self.remap_move(mm, r);
        }
        let v = self.mm(mm).vmas.find(addr).cloned().ok_or(Errno::EFAULT)?;
        self.remap_piece(mm, &v, r)
    }

    /// `remap_move`: a fixed same-size move of every VMA in the range, each
    /// to the same offset from the destination; no hole at the start.
    fn remap_move(&mut self, mm: MmId, r: Remap) -> Result<u64, Errno> {
        let end = r.addr.checked_add(r.old_len).ok_or(Errno::EFAULT)?;
        let mut result = Err(Errno::EFAULT);
        let mut cursor = r.addr;
        let mut target = r.new_addr;
        let mut last_end = None;
        while cursor < end {
            let Some(&s) = self.mm(mm).vmas.overlapping(cursor, end).first() else {
                break;
            };
            let v = self.mm(mm).vmas.get(s).cloned().expect("vma");
            if last_end.is_none() && r.addr < v.start {
                return Err(Errno::EFAULT);
            }
            // vma_multi_allowed: a userfaultfd-armed VMA moves only alone.
            let armed = v.flags.has(VmFlags::UFFD_FLAGS);
            if armed && (last_end.is_some() || v.end < end) {
                return Err(Errno::EFAULT);
            }
            let piece_start = v.start.max(r.addr);
            let piece_len = end.min(v.end) - piece_start;
            let gap = last_end.map_or(0, |e| v.start - e);
            last_end = Some(v.end);
            let piece = Remap {
                addr: piece_start,
                old_len: piece_len,
                new_len: piece_len,
                flags: r.flags,
                new_addr: target + gap,
            };
            let moved = self.remap_piece(mm, &v, piece)?;
            if result.is_err() {
                result = Ok(moved);
            }
            target = moved + piece_len;
            cursor = piece_start + piece_len;
        }
        result
    }

    /// `mremap_to` or `mremap_at` for one VMA.
    fn remap_piece(&mut self, mm: MmId, v: &Vma, mut r: Remap) -> Result<u64, Errno> {
        if v.is_hugetlb() {
            // align_hugetlb: lengths round up to the huge page size, the
            // addresses must be aligned, and it never grows (its
            // reservations cannot be split).
            let size = crate::hugetlb::huge_size(self.huge_file_of(v).1);
            r.old_len = r.old_len.checked_add(size - 1).ok_or(Errno::EINVAL)? & !(size - 1);
            r.new_len = r.new_len.checked_add(size - 1).ok_or(Errno::EINVAL)? & !(size - 1);
            if r.addr % size != 0 || r.new_addr % size != 0 || r.new_len > r.old_len {
                return Err(Errno::EINVAL);
            }
            if r.flags & MREMAP_DONTUNMAP != 0 {
                // check_prep_vma: VM_DONTEXPAND mappings cannot stay behind.
                return Err(Errno::EINVAL);
            }
        }
        if r.implies_new_addr() {
            // check_prep_vma, before anything is unmapped: what stays after
            // a shrink must lie in the VMA.
            let kept = Remap {
                old_len: r.old_len.min(r.new_len),
                ..r
            };
            self.remap_is_valid(mm, v, kept)?;
            return self.mremap_to(mm, r);
        }
        r.new_addr = r.addr;
        if r.new_len == r.old_len {
            return Ok(r.addr);
        }
        if r.new_len < r.old_len {
            self.munmap_checked(mm, r.addr + r.new_len, r.addr + r.old_len)?;
            return Ok(r.addr);
        }
        self.remap_is_valid(mm, v, r)?;
        // expand_vma: in place if the range ends the VMA and there is room.
        let delta = r.new_len - r.old_len;
        let room = v.end - r.addr == r.old_len
            && v.end
                .checked_add(delta)
                .is_some_and(|e| e <= TASK_SIZE && !self.mm(mm).vmas.any_overlap(v.end, e));
        if room {
            let e = v.end + delta;
            if let Some(x) = self.mm_mut(mm).vmas.get_mut(v.start) {
                x.end = e;
            }
            self.merge_vma_at(mm, e);
            if v.flags.has(VmFlags::LOCKED) {
                let _ = self.populate(mm, r.addr + r.old_len, r.addr + r.new_len, true);
            }
            return Ok(r.addr);
        }
        if r.flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::ENOMEM);
        }
        let dst = self.get_unmapped_area(mm, 0, r.new_len, false)?;
        r.new_addr = dst;
        self.move_vma(mm, r)
    }

    /// `remap_is_valid`: what growing or moving `[addr, addr + old_len)` of
    /// `v` needs.
    fn remap_is_valid(&self, mm: MmId, v: &Vma, r: Remap) -> Result<(), Errno> {
        if r.old_len == 0 && !v.flags.has(VmFlags::SHARED | VmFlags::MAYSHARE) {
            return Err(Errno::EINVAL);
        }
        if r.old_len > v.end - r.addr {
            return Err(Errno::EFAULT);
        }
        if r.new_len == r.old_len {
            return Ok(());
        }
        let pgoff = v.page_index(r.addr);
        if pgoff.checked_add(r.new_len / PAGE_SIZE).is_none() {
            return Err(Errno::EINVAL);
        }
        if v.flags.has(VmFlags::LOCKED)
            && self.locked_bytes(mm) + (r.new_len - r.old_len) > MEMLOCK_LIMIT
        {
            return Err(Errno::EAGAIN);
        }
        Ok(())
    }

    /// `mremap_to`: the destination is given (fixed) or hinted.
    fn mremap_to(&mut self, mm: MmId, mut r: Remap) -> Result<u64, Errno> {
        if r.new_len > TASK_SIZE || r.new_addr > TASK_SIZE - r.new_len || r.overlaps() {
            return Err(Errno::EINVAL);
        }
        if r.flags & MREMAP_FIXED != 0 {
            self.munmap_checked(mm, r.new_addr, r.new_addr + r.new_len)?;
            if self.mm(mm).vmas.find(r.addr).is_none() {
                return Err(Errno::EFAULT);
            }
        }
        if r.new_len < r.old_len {
            self.munmap_checked(mm, r.addr + r.new_len, r.addr + r.old_len)?;
            r.old_len = r.new_len;
        }
        if self.mm(mm).vmas.find(r.addr).is_none() {
            return Err(Errno::EFAULT);
        }
        let fixed = r.flags & MREMAP_FIXED != 0;
        r.new_addr = self.get_unmapped_area(mm, r.new_addr, r.new_len, fixed)?;
        self.move_vma(mm, r)
    }

    /// `move_vma`: `[addr, addr + old_len)` (inside one VMA) moves to
    /// `new_addr`, growing to `new_len`.
    fn move_vma(&mut self, mm: MmId, r: Remap) -> Result<u64, Errno> {
        if self.mm(mm).vmas.len() >= self.cfg.max_map_count.saturating_sub(3) {
            return Err(Errno::ENOMEM);
        }
        let v = self
            .mm(mm)
            .vmas
            .find(r.addr)
            .cloned()
            .ok_or(Errno::EFAULT)?;
        let (old, new) = (r.addr, r.new_addr);
        let root = self.mm(mm).root;
        // move_hugetlb_page_tables moves huge entries the same way.
        let level = if v.is_hugetlb() {
            crate::hugetlb::huge_level(self.huge_file_of(&v).1)
        } else {
            1
        };
        let leaves = if level == 1 {
            pgtable::leaves(&self.hw, root, old, old + r.old_len)
        } else {
            pgtable::huge_leaves(&self.hw, root, old, old + r.old_len, level)
        };
        let mut dst = Vec::with_capacity(leaves.len());
        for &(va, _, _) in &leaves {
            let to = new + (va - old);
            let s = if level == 1 {
                pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, root, to)
            } else {
                pgtable::huge_slot_alloc(&mut self.hw, &mut self.frames, root, to, level)
            };
            dst.push(s.ok_or(Errno::ENOMEM)?);
        }
        // copy_vma: a never-faulted anonymous VMA has nothing indexed by its
        // offset, so it takes the new address as one.
        let never_faulted = matches!(&v.backing, Backing::Anon { chain } if chain.is_empty());
        let pgoff = if never_faulted {
            new / PAGE_SIZE
        } else {
            v.page_index(old)
        };
        // mremap_userfaultfd_prep: without UFFD_EVENT_REMAP (which the
        // guest does not offer) the moved range leaves its userfaultfd,
        // and move_ptes drops its uffd-wp bits and markers.
        let nv = Vma {
            start: new,
            end: new + r.new_len,
            flags: VmFlags(v.flags.0 & !VmFlags::UFFD_FLAGS),
            pgoff,
            backing: v.backing.clone(),
            uffd: None,
        };
        let clear_wp = v.uffd.is_some();
        for (&(_, slot, pte), &d) in leaves.iter().zip(&dst) {
            let pte = if clear_wp {
                crate::userfaultfd::without_uffd_wp(pte)
            } else {
                pte
            };
            let pte = self.move_soft_dirty_pte(pte);
            if level == 1 {
                pgtable::write_pte(&mut self.hw, d, pte);
                pgtable::write_pte(&mut self.hw, slot, Pte::None);
            } else {
                pgtable::write_huge(&mut self.hw, d, pte);
                pgtable::write_huge(&mut self.hw, slot, Pte::None);
            }
        }
        self.vma_link(mm, &nv);
        self.mm_mut(mm).vmas.insert(nv);
        // Flush the old translations, then free the old range's tables.
        if !leaves.is_empty() {
            self.flush_tlb(
                mm,
                crate::hw::FlushRange::Range {
                    start: old,
                    end: old + r.old_len,
                },
            );
        }
        // With MREMAP_DONTUNMAP the old VMA stays, and so do its tables.
        if r.flags & MREMAP_DONTUNMAP == 0 {
            let mut g = MmuGather::new(mm);
            self.zap_range(&mut g, old, old + r.old_len, Zap::Unmap);
            self.tlb_finish(g);
        }
        if r.flags & MREMAP_DONTUNMAP != 0 {
            self.dontunmap_complete(mm, &v, old, old + r.old_len);
        } else if r.old_len > 0 {
            if v.is_hugetlb() {
                // clear_vma_resv_huge_pages: the reservations moved with
                // the mapping; closing the old range must not return them.
                // (Linux clears the whole source VMA's; here only the moved
                // piece's, so a partial move keeps the rest reserved.)
                self.split_vma_at(mm, old);
                self.split_vma_at(mm, old + r.old_len);
                self.hugetlb_clear_resv(mm, old);
            }
            self.unmap_region(mm, old, old + r.old_len);
        }
        self.merge_vma_at(mm, new + r.new_len);
        self.merge_vma_at(mm, new);
        if v.flags.has(VmFlags::LOCKED) && r.new_len > r.old_len {
            let _ = self.populate(mm, new + r.old_len, new + r.new_len, true);
        }
        Ok(new)
    }

    /// `dontunmap_complete`: the old VMA stays, unlocked, and without its
    /// anon_vma if it moved as a whole; it is not merged with anything. (Linux 6.18 keeps its `VM_ACCOUNT`:
    /// it still merges with a new writable neighbour.)
    fn dontunmap_complete(&mut self, mm: MmId, v: &Vma, start: u64, end: u64) {
        let whole = start == v.start && end == v.end;
        let anon = matches!(
            v.backing,
            Backing::Anon { .. } | Backing::PrivateFile { .. }
        );
        if whole && anon {
            // unlink_anon_vmas: the moved VMA keeps the anon_vma alive (and
            // the file, which it maps too).
            let Some(old) = self.mm_mut(mm).vmas.remove(v.start) else {
                return;
            };
            self.vma_unlink(mm, &old);
            let mut kept = old;
            match &mut kept.backing {
                Backing::Anon { chain } | Backing::PrivateFile { chain, .. } => chain.clear(),
                _ => {}
            }
            kept.flags.0 &= !VmFlags::LOCKED_MASK;
            self.vma_link(mm, &kept);
            self.mm_mut(mm).vmas.insert(kept);
        } else if let Some(x) = self.mm_mut(mm).vmas.get_mut(v.start) {
            x.flags.0 &= !VmFlags::LOCKED_MASK;
        }
        // Linux tries no merge here: the old VMA stays as it was, even
        // where it could now merge with a neighbour.
    }
}
