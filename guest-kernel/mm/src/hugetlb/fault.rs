//! hugetlb page faults: one huge entry per fault.
//!
//! Mirrors `mm/hugetlb.c` (6.18): `hugetlb_fault`, `hugetlb_no_page`,
//! `hugetlb_wp`, `alloc_hugetlb_folio`, `unmap_ref_private`. There is no
//! zero page for hugetlb: a read fault on private memory allocates (and
//! consumes a reservation) like a write. A private folio mapped once is
//! reused on write; otherwise the write copies it, and when the owner of
//! the reservation finds no page for that copy it takes the page back
//! from its fork children instead, which then get SIGBUS on their next
//! fault there (`HPAGE_RESV_UNMAPPED`).

use crate::errno::{Fault, SegvCode};
use crate::frame::{FolioFlags, Mapping};
use crate::hw::{FlushRange, Hw, Pfn};
use crate::ids::MmId;
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{Backing, HugeResv, VmFlags, Vma};

use super::{HSTATE_ORDERS, huge_level, huge_size};

impl<H: Hw> MemSystem<H> {
    /// `hugetlb_fault` at `va` in hugetlb VMA `v`.
    pub(crate) fn hugetlb_fault(
        &mut self,
        mm: MmId,
        v: &Vma,
        va: u64,
        write: bool,
    ) -> Result<(), Fault> {
        let (_, h) = self.huge_file_of(v);
        let (level, size) = (huge_level(h), huge_size(h));
        let haddr = va & !(size - 1);
        let root = self.mm(mm).root;
        let slot = pgtable::huge_slot_alloc(&mut self.hw, &mut self.frames, root, haddr, level)
            .ok_or(Fault::Oom)?;
        self.counters.faults += 1;
        match pgtable::read_huge(&self.hw, slot, level) {
            orig @ (Pte::None | Pte::Marker(MarkerKind::UffdWp)) => {
                let marker = orig != Pte::None;
                self.hugetlb_no_page(mm, v, haddr, slot, write, marker)?;
                if marker && write {
                    // Mapped protected: the write is a write-protect fault
                    // now (Linux retries it; hugetlb_wp never copies a
                    // protected page).
                    return self.hugetlb_fault(mm, v, va, write);
                }
                Ok(())
            }
            Pte::Marker(MarkerKind::Guard) => Err(Fault::Segv(SegvCode::MapErr)),
            Pte::Marker(MarkerKind::Poisoned) | Pte::Swap(_) => Err(Fault::Bus),
            Pte::Mapped { pfn, flags } => {
                if flags.contains(PteFlags::PROTNONE) {
                    let nf = v.rebuilt_pte_flags(flags);
                    pgtable::write_huge(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                    return Err(Fault::Retry);
                }
                let mut flags = flags;
                if write
                    && flags.contains(PteFlags::UFFD_WP)
                    && v.flags.has(VmFlags::UFFD_WP)
                    && !flags.contains(PteFlags::WRITE)
                {
                    // Userfault write-protection first: the handler's, or
                    // resolved at once in async mode (then copy-on-write).
                    if !self.uffd_wp_async(v) {
                        return Err(self.handle_userfault(v, haddr, true, true));
                    }
                    flags = flags.without(PteFlags::UFFD_WP);
                    pgtable::write_huge(&mut self.hw, slot, Pte::Mapped { pfn, flags });
                }
                if write && !flags.contains(PteFlags::WRITE) {
                    return self.hugetlb_wp(mm, v, haddr, slot, pfn, flags);
                }
                let nf = flags
                    .with(PteFlags::ACCESSED)
                    .set(PteFlags::DIRTY, write || flags.contains(PteFlags::DIRTY))
                    .with(self.soft_dirty_if(write));
                pgtable::write_huge(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                self.flush_tlb(
                    mm,
                    FlushRange::Range {
                        start: haddr,
                        end: haddr + size,
                    },
                );
                Ok(())
            }
            Pte::Table(_) => unreachable!("a table where a huge entry belongs"),
        }
    }

    /// `alloc_hugetlb_folio`: a huge folio for index `idx` of `v`, using
    /// the VMA's reservation if it has one (never for the owner's own
    /// copy-on-write, `cow_from_owner`). `None` is SIGBUS.
    fn alloc_hugetlb_folio(&mut self, v: &Vma, idx: u64, cow_from_owner: bool) -> Option<Pfn> {
        let (_, h) = self.huge_file_of(v);
        let reserved = !cow_from_owner && !self.vma_needs_reservation(v, idx);
        let head = self.hugetlb_take_folio(h, reserved)?;
        if !cow_from_owner {
            self.vma_commit_reservation(v, idx);
        }
        Some(head)
    }

    /// Zeroes every frame of a huge folio (`folio_zero_user`).
    fn zero_huge(&mut self, head: Pfn) {
        for i in 0..1u64 << self.frames.at(head).order {
            self.hw.zero_frame(head.offset(i));
        }
    }

    /// `make_huge_pte`: the entry for a folio, writable (and dirty) when
    /// asked and the VMA allows it.
    fn huge_pte(&self, v: &Vma, pfn: Pfn, writable: bool) -> Pte {
        let mut flags = v.base_pte_flags().with(PteFlags::ACCESSED);
        if writable && v.flags.has(VmFlags::WRITE) {
            flags = flags.with(PteFlags::WRITE).with(self.dirty_bits());
        }
        Pte::Mapped { pfn, flags }
    }

    /// `hugetlb_no_page`: nothing mapped at `haddr`. A shared mapping maps
    /// the file's page, allocating it into the page cache if missing; a
    /// private one gets a new exclusive anonymous folio. A missing page of
    /// a `VM_UFFD_MISSING` range is the handler's to provide; after a
    /// uffd-wp `marker` the new entry is write-protected.
    fn hugetlb_no_page(
        &mut self,
        mm: MmId,
        v: &Vma,
        haddr: u64,
        slot: u64,
        write: bool,
        marker: bool,
    ) -> Result<(), Fault> {
        let (file, h) = self.huge_file_of(v);
        let idx = self.huge_index(v, haddr);
        if idx >= self.huge.files[&file].size {
            return Err(Fault::Bus);
        }
        let cached = self.huge.files[&file].pages.contains_key(&idx);
        if !cached && v.flags.has(VmFlags::UFFD_MISSING) {
            return Err(self.handle_userfault(v, haddr, write, false));
        }
        let protect = |pte: Pte| match pte {
            Pte::Mapped { pfn, flags } if marker => Pte::Mapped {
                pfn,
                flags: flags.without(PteFlags::WRITE).with(PteFlags::UFFD_WP),
            },
            other => other,
        };
        if v.flags.has(VmFlags::MAYSHARE) {
            let head = match self.huge.files[&file].pages.get(&idx).copied() {
                Some(head) => head,
                None => {
                    let head = self.alloc_hugetlb_folio(v, idx, false).ok_or(Fault::Bus)?;
                    self.zero_huge(head);
                    let f = self.frames.get_mut(head);
                    f.mapping = Mapping::HugeFile {
                        file,
                        index: idx << HSTATE_ORDERS[h],
                    };
                    // The allocation's reference becomes the page cache's.
                    let f = self.huge.files.get_mut(&file).expect("live file");
                    f.pages.insert(idx, head);
                    head
                }
            };
            let pte = protect(self.huge_pte(v, head, true));
            pgtable::write_huge(&mut self.hw, slot, pte);
            self.huge_map(head);
            return Ok(());
        }
        if let (true, Some(&head)) = (cached, self.huge.files[&file].pages.get(&idx)) {
            // A private mapping of a file maps its page read-only; a write
            // copies it (hugetlb_wp, at once for a write fault).
            let pte = protect(self.huge_pte(v, head, false));
            pgtable::write_huge(&mut self.hw, slot, pte);
            self.huge_map(head);
            if write && !marker {
                let Pte::Mapped { pfn, flags } = pte else {
                    unreachable!("just mapped")
                };
                return self.hugetlb_wp(mm, v, haddr, slot, pfn, flags);
            }
            return Ok(());
        }
        if matches!(
            v.backing,
            Backing::Hugetlb {
                resv: HugeResv::Unmapped,
                ..
            }
        ) {
            // The owner took this mapping's pages back (unmap_ref_private).
            return Err(Fault::Bus);
        }
        let head = self.alloc_hugetlb_folio(v, idx, false).ok_or(Fault::Bus)?;
        self.zero_huge(head);
        self.huge_add_new_anon(mm, v, haddr, head);
        let pte = protect(self.huge_pte(v, head, write));
        pgtable::write_huge(&mut self.hw, slot, pte);
        self.huge_map(head);
        self.huge_put(head, 1);
        self.counters.anon_allocs += 1;
        Ok(())
    }

    /// `hugetlb_add_new_anon_rmap`: `head` becomes an exclusive anonymous
    /// folio of `v`'s anon_vma at `haddr`.
    fn huge_add_new_anon(&mut self, mm: MmId, v: &Vma, haddr: u64, head: Pfn) {
        let av = self.anon_vma_prepare(mm, haddr);
        let f = self.frames.get_mut(head);
        f.mapping = Mapping::Anon {
            anon_vma: av,
            index: v.page_index(haddr),
        };
        f.flags.set(FolioFlags::ANON, true);
        f.anon_exclusive = true;
    }

    /// One more huge entry maps `head` (`hugetlb_add_*_rmap`): the entire
    /// mapcount and a reference.
    pub(crate) fn huge_map(&mut self, head: Pfn) {
        let f = self.frames.get_mut(head);
        f.mapcount += 1;
        f.refcount += 1;
    }

    /// `hugetlb_wp`: a write to a read-only huge entry.
    #[allow(clippy::too_many_arguments)]
    fn hugetlb_wp(
        &mut self,
        mm: MmId,
        v: &Vma,
        haddr: u64,
        slot: u64,
        old: Pfn,
        flags: PteFlags,
    ) -> Result<(), Fault> {
        // A writable entry is never write-protected: a bit left from a
        // range that is no longer registered goes (hugetlb_fault lifts a
        // registered one before this).
        let writable = Pte::Mapped {
            pfn: old,
            flags: flags
                .without(PteFlags::UFFD_WP)
                .with(PteFlags::WRITE)
                .with(self.dirty_bits())
                .with(PteFlags::ACCESSED),
        };
        if v.flags.has(VmFlags::MAYSHARE) {
            pgtable::write_huge(&mut self.hw, slot, writable);
            return Ok(());
        }
        let f = self.frames.at(old);
        if f.mapcount == 1 && f.flags.contains(FolioFlags::ANON) {
            if !f.anon_exclusive {
                // folio_move_anon_rmap: the folio now belongs to this VMA.
                let av = self.anon_vma_prepare(mm, haddr);
                let f = self.frames.get_mut(old);
                if let Mapping::Anon { anon_vma, .. } = &mut f.mapping {
                    *anon_vma = av;
                }
                f.anon_exclusive = true;
            }
            pgtable::write_huge(&mut self.hw, slot, writable);
            self.counters.cow_reuses += 1;
            return Ok(());
        }
        // cow_from_owner: the owner copies a page it shares with its fork
        // children without its reservation; a copy of the page cache's
        // page uses it.
        let owner = matches!(
            v.backing,
            Backing::Hugetlb {
                resv: HugeResv::Owner(_),
                ..
            }
        ) && f.flags.contains(FolioFlags::ANON);
        let idx = self.huge_index(v, haddr);
        let Some(new) = self.alloc_hugetlb_folio(v, idx, owner) else {
            if owner {
                // The children lose the page; the owner keeps it.
                self.unmap_ref_private(mm, v, old, haddr);
                if self.frames.at(old).mapcount == 1 {
                    return self.hugetlb_wp(mm, v, haddr, slot, old, flags);
                }
            }
            return Err(Fault::Bus);
        };
        let (_, h) = self.huge_file_of(v);
        for i in 0..1u64 << HSTATE_ORDERS[h] {
            self.hw.copy_frame(new.offset(i), old.offset(i));
        }
        self.huge_add_new_anon(mm, v, haddr, new);
        // Clear and flush before the new entry appears, then drop the old.
        pgtable::write_huge(&mut self.hw, slot, Pte::None);
        let size = huge_size(h);
        self.flush_tlb(
            mm,
            FlushRange::Range {
                start: haddr,
                end: haddr + size,
            },
        );
        let pte = self.huge_pte(v, new, true);
        pgtable::write_huge(&mut self.hw, slot, pte);
        self.huge_map(new);
        self.huge_put(new, 1);
        self.huge_unmap(old);
        self.counters.cow_copies += 1;
        Ok(())
    }

    /// Drops one huge entry's mapping of `head` (after its TLB flush).
    pub(crate) fn huge_unmap(&mut self, head: Pfn) {
        let f = self.frames.get_mut(head);
        assert!(f.mapcount > 0, "huge mapcount underflow at {:#x}", head.0);
        f.mapcount -= 1;
        if f.mapcount == 0 {
            f.anon_exclusive = false;
        }
        self.huge_put(head, 1);
    }

    /// `unmap_ref_private`: every other private VMA of the file loses its
    /// mapping of `page` at the same file offset, and is marked so that its
    /// next fault on a missing page is SIGBUS.
    fn unmap_ref_private(&mut self, mm: MmId, v: &Vma, page: Pfn, haddr: u64) {
        let (file, h) = self.huge_file_of(v);
        let pgoff = v.page_index(haddr);
        let level = huge_level(h);
        let others: alloc::vec::Vec<(MmId, u64)> = self.huge.files[&file]
            .i_mmap
            .iter()
            .copied()
            .filter(|&k| k != (mm, v.start))
            .collect();
        for (m, start) in others {
            let Some(w) = self.mms.get(&m).and_then(|a| a.vmas.get(start)).cloned() else {
                continue;
            };
            if w.flags.has(VmFlags::MAYSHARE)
                || matches!(
                    w.backing,
                    Backing::Hugetlb {
                        resv: HugeResv::Unmapped,
                        ..
                    }
                )
            {
                continue;
            }
            let Some(va) = w.address_of(pgoff) else {
                continue;
            };
            let root = self.mm(m).root;
            let Some(slot) = pgtable::huge_slot(&self.hw, root, va, level) else {
                continue;
            };
            if !matches!(pgtable::read_huge(&self.hw, slot, level), Pte::Mapped { pfn, .. } if pfn == page)
            {
                continue;
            }
            pgtable::write_huge(&mut self.hw, slot, Pte::None);
            self.flush_tlb(
                m,
                FlushRange::Range {
                    start: va,
                    end: va + huge_size(h),
                },
            );
            self.huge_unmap(page);
            if let Some(Backing::Hugetlb { resv, .. }) =
                self.mm_mut(m).vmas.get_mut(start).map(|x| &mut x.backing)
            {
                *resv = HugeResv::Unmapped;
            }
        }
    }
}
