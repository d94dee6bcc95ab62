//! Page-fault handling.
//!
//! Mirrors `arch/x86/mm/fault.c` (`access_error`) and `mm/memory.c`
//! (`sanitize_fault_flags`, `handle_pte_fault`, `do_anonymous_page`,
//! `do_wp_page`, `wp_can_reuse_anon_folio`, `wp_page_copy`,
//! `wp_page_shared`, `do_swap_page`, `do_pte_missing` for shmem via
//! `shmem_fault`). The early checks come first: a write to a VMA without
//! `VM_WRITE`, an unshare of a non-COW mapping, or an access to a
//! `PROT_NONE` mapping is an error, never a silent mapping.

use crate::errno::{Fault, SegvCode};
use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::hw::{FlushRange, Hw, PAGE_SIZE, Pfn};
use crate::ids::MmId;
use crate::pgtable::{self, USER_TOP};
use crate::pte::{MarkerKind, Pte, PteFlags, SwapEntry};
use crate::system::{MemSystem, ShmemPage};
use crate::vma::{VmFlags, Vma};

/// What kind of access faulted (`FAULT_FLAG_*`, x86 error code).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultFlags {
    /// A write (`FAULT_FLAG_WRITE`).
    pub write: bool,
    /// An instruction fetch.
    pub exec: bool,
    /// From ring 3 (`FAULT_FLAG_USER`); false for kernel accesses to user
    /// memory (copy_to/from_user).
    pub user: bool,
    /// `FAULT_FLAG_UNSHARE`: make an anonymous page exclusive without
    /// making it writable (used for read-only pins).
    pub unshare: bool,
}

const SEGV_MAP: Fault = Fault::Segv(SegvCode::MapErr);
const SEGV_ACC: Fault = Fault::Segv(SegvCode::AccErr);

/// What a shmem page is wanted for (`enum sgp_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sgp {
    /// A fault or a read (`SGP_CACHE`): only inside the file.
    Cache,
    /// A `write(2)` (`SGP_WRITE`): also past the end, which it then moves.
    Write,
}

impl<H: Hw> MemSystem<H> {
    /// Resolves a fault at `va` in `mm` (`handle_mm_fault`).
    pub(crate) fn handle_mm_fault(
        &mut self,
        mm: MmId,
        va: u64,
        ff: FaultFlags,
    ) -> Result<(), Fault> {
        if va >= USER_TOP {
            return Err(SEGV_MAP);
        }
        let va = va & !(PAGE_SIZE - 1);
        let vma = if ff.user {
            self.find_vma_or_grow(mm, va)
        } else {
            self.mm(mm).vmas.find(va).cloned()
        };
        let vma = vma.ok_or(SEGV_MAP)?;
        // sanitize_fault_flags + access_error.
        if ff.unshare && (ff.write || !vma.is_cow()) {
            return Err(SEGV_ACC);
        }
        let f = vma.flags;
        if (ff.write && !f.has(VmFlags::WRITE))
            || (ff.exec && !f.has(VmFlags::EXEC))
            || !f.has(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
        {
            return Err(SEGV_ACC);
        }
        if vma.is_hugetlb() {
            return self.hugetlb_fault(mm, &vma, va, ff.write);
        }
        let root = self.mm(mm).root;
        let slot =
            pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, root, va).ok_or(Fault::Oom)?;
        self.counters.faults += 1;
        match pgtable::read_pte(&self.hw, slot) {
            Pte::Marker(MarkerKind::UffdWp) if !vma.flags.has(VmFlags::UFFD_WP) => {
                // pte_marker_handle_uffd_wp: a leftover of a range no
                // longer registered is cleared, and the access retried.
                pgtable::write_pte(&mut self.hw, slot, Pte::None);
                Err(Fault::Retry)
            }
            orig @ (Pte::None | Pte::Marker(MarkerKind::UffdWp)) => {
                if vma.flags.has(VmFlags::UFFD_MISSING) && self.is_missing(&vma, va) {
                    return Err(self.handle_userfault(&vma, va, ff.write, false));
                }
                self.do_pte_missing(mm, &vma, va, slot, ff)?;
                if orig == Pte::None {
                    return Ok(());
                }
                // vmf_orig_pte_uffd_wp: the new entry keeps the marker's
                // protection; a write then faults on it (do_wp_page), which
                // the async mode resolves at once.
                let Pte::Mapped { pfn, flags } = pgtable::read_pte(&self.hw, slot) else {
                    return Ok(());
                };
                if ff.write && self.uffd_wp_async(&vma) {
                    return Ok(());
                }
                let wp = flags.without(PteFlags::WRITE).with(PteFlags::UFFD_WP);
                pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: wp });
                if ff.write {
                    return Err(self.handle_userfault(&vma, va, true, true));
                }
                Ok(())
            }
            Pte::Marker(MarkerKind::Poisoned) => Err(Fault::Bus),
            // handle_pte_marker: VM_FAULT_SIGSEGV, which x86 reports as
            // bad_area_nosemaphore, SEGV_MAPERR.
            Pte::Marker(MarkerKind::Guard) => Err(SEGV_MAP),
            Pte::Swap(e) => self.do_swap_page(mm, &vma, va, slot, e, ff.write),
            Pte::Mapped { pfn, flags } => {
                if flags.contains(PteFlags::PROTNONE) {
                    // The VMA is accessible now: rebuild from it and retry.
                    let nf = vma.rebuilt_pte_flags(flags);
                    pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                    return Err(Fault::Retry);
                }
                if (ff.write && !flags.contains(PteFlags::WRITE)) || ff.unshare {
                    return self.do_wp_page(mm, &vma, va, slot, pfn, flags, ff.unshare);
                }
                // Spurious (stale TLB entry): mark young/dirty, flush locally.
                let nf = flags
                    .with(PteFlags::ACCESSED)
                    .set(PteFlags::DIRTY, ff.write || flags.contains(PteFlags::DIRTY))
                    .with(self.soft_dirty_if(ff.write));
                pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                self.flush_tlb(
                    mm,
                    FlushRange::Range {
                        start: va,
                        end: va + PAGE_SIZE,
                    },
                );
                Ok(())
            }
            Pte::Table(_) => unreachable!("table at PTE level"),
        }
    }

    /// `do_pte_missing`: maps a page where there was none (or a marker).
    fn do_pte_missing(
        &mut self,
        mm: MmId,
        vma: &Vma,
        va: u64,
        slot: u64,
        ff: FaultFlags,
    ) -> Result<(), Fault> {
        if vma.is_shared() {
            self.shmem_fault(mm, vma, va, slot, ff.write)
        } else if vma.file().is_some() {
            // A private file mapping: do_cow_fault on a write,
            // do_read_fault (unshare included) otherwise.
            if ff.write {
                self.do_cow_fault(mm, vma, va, slot)
            } else {
                self.shmem_fault(mm, vma, va, slot, false)
            }
        } else if ff.write || ff.unshare {
            self.do_anonymous_page(mm, vma, va, slot, ff.unshare)
        } else {
            let flags = vma.base_pte_flags().with(PteFlags::ACCESSED);
            pgtable::write_pte(
                &mut self.hw,
                slot,
                Pte::Mapped {
                    pfn: self.zero,
                    flags,
                },
            );
            self.counters.zero_maps += 1;
            Ok(())
        }
    }

    /// Allocates and attaches a new exclusive anonymous folio
    /// (`folio_add_new_anon_rmap`); returns its head with refcount 1.
    fn new_anon_folio(&mut self, mm: MmId, va: u64, index: u64, order: u8) -> Result<Pfn, Fault> {
        let head = self
            .frames
            .alloc(order, FrameUse::Folio)
            .ok_or(Fault::Oom)?;
        let av = self.anon_vma_prepare(mm, va);
        // MAP_DROPPABLE memory is never swap-backed: reclaim drops it.
        let droppable = self
            .mm(mm)
            .vmas
            .find(va)
            .is_some_and(|v| v.flags.has(VmFlags::DROPPABLE));
        let f = self.frames.get_mut(head);
        f.mapping = Mapping::Anon {
            anon_vma: av,
            index,
        };
        f.flags.set(FolioFlags::ANON, true);
        f.flags.set(FolioFlags::SWAPBACKED, !droppable);
        for i in 0..1u64 << order {
            self.frames.get_mut(head.offset(i)).anon_exclusive = true;
        }
        Ok(head)
    }

    /// Order for a new anonymous folio at `va`: the configured order if its
    /// aligned range fits the VMA and holds no entries, else 0.
    fn anon_order(&self, root: Pfn, vma: &Vma, va: u64) -> u8 {
        let o = self.cfg.anon_folio_order.min(9);
        if o == 0 {
            return 0;
        }
        let size = PAGE_SIZE << o;
        let base = va & !(size - 1);
        if base >= vma.start
            && base + size <= vma.end
            && pgtable::leaves(&self.hw, root, base, base + size).is_empty()
        {
            o
        } else {
            0
        }
    }

    /// `do_anonymous_page` for a write (or unshare): a zeroed exclusive
    /// folio, possibly large. Unshare maps it read-only.
    fn do_anonymous_page(
        &mut self,
        mm: MmId,
        vma: &Vma,
        va: u64,
        slot: u64,
        unshare: bool,
    ) -> Result<(), Fault> {
        let root = self.mm(mm).root;
        let order = if unshare {
            0
        } else {
            self.anon_order(root, vma, va)
        };
        let nr = 1u64 << order;
        let base = va & !((PAGE_SIZE << order) - 1);
        let head = self.new_anon_folio(mm, va, vma.page_index(base), order)?;
        let mut flags = vma.base_pte_flags().with(PteFlags::ACCESSED);
        if !unshare {
            flags = flags.with(PteFlags::WRITE).with(self.dirty_bits());
        }
        for i in 0..nr {
            self.hw.zero_frame(head.offset(i));
            let s = if order == 0 {
                slot
            } else {
                pgtable::pte_slot(&self.hw, root, base + i * PAGE_SIZE).expect("same table")
            };
            pgtable::write_pte(
                &mut self.hw,
                s,
                Pte::Mapped {
                    pfn: head.offset(i),
                    flags,
                },
            );
        }
        self.map_ptes(head, nr as u32);
        self.frames.put_folio(&mut self.hw, head, 1);
        self.counters.anon_allocs += 1;
        Ok(())
    }

    /// `do_wp_page`: write (or unshare) fault on a present read-only PTE.
    #[allow(clippy::too_many_arguments)]
    fn do_wp_page(
        &mut self,
        mm: MmId,
        vma: &Vma,
        va: u64,
        slot: u64,
        pfn: Pfn,
        flags: PteFlags,
        unshare: bool,
    ) -> Result<(), Fault> {
        let mut flags = flags;
        if !unshare && flags.contains(PteFlags::UFFD_WP) && vma.flags.has(VmFlags::UFFD_WP) {
            // userfaultfd_pte_wp: the write is what the tracker waits for.
            if !self.uffd_wp_async(vma) {
                return Err(self.handle_userfault(vma, va, true, true));
            }
            flags = flags.without(PteFlags::UFFD_WP);
            pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags });
        }
        if vma.is_shared() {
            // wp_page_shared -> wp_page_reuse: shmem needs no writenotify.
            let head = self.frames.folio_of(pfn);
            self.frames.get_mut(head).flags.set(FolioFlags::DIRTY, true);
            let nf = flags
                .with(PteFlags::WRITE)
                .with(self.dirty_bits())
                .with(PteFlags::ACCESSED);
            pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
            return Ok(());
        }
        let file_page = pfn != self.zero
            && !self
                .frames
                .at(self.frames.folio_of(pfn))
                .flags
                .contains(FolioFlags::ANON);
        if file_page && unshare {
            // Unsharing is for anonymous pages; a file page stays mapped.
            return Ok(());
        }
        if pfn != self.zero && !file_page {
            let head = self.frames.folio_of(pfn);
            let exclusive = self.frames.at(pfn).anon_exclusive;
            // wp_can_reuse_anon_folio: our PTE holds the only reference.
            let reusable = exclusive || self.frames.at(head).refcount == 1;
            if reusable {
                if !exclusive {
                    // folio_move_anon_rmap: the folio now belongs to this VMA.
                    let av = self.anon_vma_prepare(mm, va);
                    if let Mapping::Anon { anon_vma, .. } = &mut self.frames.get_mut(head).mapping {
                        *anon_vma = av;
                    }
                    self.frames.get_mut(pfn).anon_exclusive = true;
                }
                if unshare {
                    self.counters.unshares += u64::from(!exclusive);
                    return Ok(());
                }
                let nf = flags
                    .with(PteFlags::WRITE)
                    .with(self.dirty_bits())
                    .with(PteFlags::ACCESSED);
                pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: nf });
                self.counters.cow_reuses += 1;
                return Ok(());
            }
        }
        // wp_page_copy.
        let new = self.new_anon_folio(mm, va, vma.page_index(va), 0)?;
        if pfn == self.zero {
            self.hw.zero_frame(new);
        } else {
            self.hw.copy_frame(new, pfn);
        }
        let mut nf = vma.base_pte_flags().with(PteFlags::ACCESSED);
        if !unshare {
            nf = nf.with(PteFlags::WRITE).with(self.dirty_bits());
        }
        // ptep_clear_flush, then set the new PTE, then drop the old rmap.
        pgtable::write_pte(&mut self.hw, slot, Pte::None);
        let flushed = self.flush_tlb(
            mm,
            FlushRange::Range {
                start: va,
                end: va + PAGE_SIZE,
            },
        );
        pgtable::write_pte(
            &mut self.hw,
            slot,
            Pte::Mapped {
                pfn: new,
                flags: nf,
            },
        );
        self.map_ptes(new, 1);
        self.frames.put_folio(&mut self.hw, new, 1);
        if pfn != self.zero {
            self.unmap_ptes(&flushed, pfn, 1);
        }
        if unshare {
            self.counters.unshares += 1;
        } else {
            self.counters.cow_copies += 1;
        }
        Ok(())
    }

    /// `do_swap_page`: read the page back into a new exclusive folio. On an
    /// I/O error the entry becomes a poisoned marker, so the loss of the page
    /// stays recorded (SIGBUS now and on every later access).
    fn do_swap_page(
        &mut self,
        mm: MmId,
        vma: &Vma,
        va: u64,
        slot: u64,
        e: SwapEntry,
        write: bool,
    ) -> Result<(), Fault> {
        let new = self.new_anon_folio(mm, va, vma.page_index(va), 0)?;
        if self.swap_read(e, new).is_err() {
            self.frames.get_mut(new).anon_exclusive = false;
            self.frames.put_folio(&mut self.hw, new, 1);
            pgtable::write_pte(&mut self.hw, slot, Pte::Marker(MarkerKind::Poisoned));
            self.swap_free(e);
            self.counters.swap_errors += 1;
            return Err(Fault::Bus);
        }
        // pte_swp_uffd_wp: the page comes back protected; a write then
        // takes do_wp_page's path, which the async mode resolves at once.
        let wp = e.uffd_wp && vma.flags.has(VmFlags::UFFD_WP);
        let sync_wp = wp && write && !self.uffd_wp_async(vma);
        // pte_swp_soft_dirty: the bit comes back with the page.
        let mut flags = vma
            .base_pte_flags()
            .with(PteFlags::ACCESSED)
            .with(self.soft_dirty_if(e.soft_dirty));
        if write && !sync_wp {
            flags = flags.with(PteFlags::WRITE).with(self.dirty_bits());
        } else if wp {
            flags = flags.with(PteFlags::UFFD_WP);
        }
        pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn: new, flags });
        self.map_ptes(new, 1);
        self.frames.put_folio(&mut self.hw, new, 1);
        self.swap_free(e);
        if sync_wp {
            return Err(self.handle_userfault(vma, va, true, true));
        }
        Ok(())
    }

    /// `do_cow_fault`: a write to a private file mapping where nothing is
    /// mapped copies the file's page (created if it is a hole) into a new
    /// exclusive anonymous folio.
    fn do_cow_fault(&mut self, mm: MmId, vma: &Vma, va: u64, slot: u64) -> Result<(), Fault> {
        let obj = vma.file().expect("file mapping");
        let page = self.shmem_get_page(obj, vma.page_index(va), Sgp::Cache)?;
        let new = self.new_anon_folio(mm, va, vma.page_index(va), 0)?;
        self.hw.copy_frame(new, page);
        let flags = vma
            .base_pte_flags()
            .with(PteFlags::ACCESSED)
            .with(PteFlags::WRITE)
            .with(self.dirty_bits());
        pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn: new, flags });
        self.map_ptes(new, 1);
        self.frames.put_folio(&mut self.hw, new, 1);
        self.counters.cow_copies += 1;
        Ok(())
    }

    /// `shmem_fault` + `finish_fault`: find or create the object's page,
    /// swapping it in if needed, and map it (writable only in a shared
    /// mapping).
    fn shmem_fault(
        &mut self,
        _mm: MmId,
        vma: &Vma,
        va: u64,
        slot: u64,
        write: bool,
    ) -> Result<(), Fault> {
        let obj = vma.file().expect("file mapping");
        let page = self.shmem_get_page(obj, vma.page_index(va), Sgp::Cache)?;
        let mut flags = vma.base_pte_flags().with(PteFlags::ACCESSED);
        if write {
            flags = flags.with(PteFlags::WRITE).with(self.dirty_bits());
            self.frames.get_mut(page).flags.set(FolioFlags::DIRTY, true);
        }
        pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn: page, flags });
        self.map_ptes(page, 1);
        // uffd_disable_fault_around: each page must fault on its own.
        if !write && !vma.flags.has(VmFlags::UFFD_WP) {
            self.fault_around(vma, obj, va, slot);
        }
        Ok(())
    }

    /// `shmem_get_folio`: the object's page at `idx`, read back from swap
    /// or created zeroed if missing; SIGBUS for a page lost to a swap
    /// error, and past the end unless for a write (`SGP_WRITE`), which may
    /// place a page there.
    pub(crate) fn shmem_get_page(
        &mut self,
        obj: crate::ids::ShmemId,
        idx: u64,
        sgp: Sgp,
    ) -> Result<Pfn, Fault> {
        let s = self.shmems.get(&obj).expect("live shmem");
        if sgp == Sgp::Cache && idx >= s.pages_len() {
            return Err(Fault::Bus);
        }
        let page = match s.pages.get(&idx).copied() {
            Some(ShmemPage::Folio(h)) => {
                // A fallocated page becomes data once faulted in.
                let f = self.frames.get_mut(h);
                f.flags.set(FolioFlags::FALLOCATED, false);
                h
            }
            Some(ShmemPage::Poisoned) => return Err(Fault::Bus),
            found => {
                let new = self.frames.alloc(0, FrameUse::Folio).ok_or(Fault::Oom)?;
                let f = self.frames.get_mut(new);
                f.mapping = Mapping::Shmem { obj, index: idx };
                f.flags.set(FolioFlags::SWAPBACKED, true);
                let entry = match found {
                    Some(ShmemPage::Swap(e)) => {
                        let r = self.swap_read(e, new);
                        self.swap_free(e);
                        if r.is_err() {
                            self.frames.put_folio(&mut self.hw, new, 1);
                            self.counters.swap_errors += 1;
                            let s = self.shmems.get_mut(&obj).expect("live shmem");
                            s.pages.insert(idx, ShmemPage::Poisoned);
                            return Err(Fault::Bus);
                        }
                        ShmemPage::Folio(new)
                    }
                    _ => {
                        self.hw.zero_frame(new);
                        ShmemPage::Folio(new)
                    }
                };
                self.shmems
                    .get_mut(&obj)
                    .expect("live shmem")
                    .pages
                    .insert(idx, entry);
                new
            }
        };
        Ok(page)
    }

    /// `do_fault_around` + `filemap_map_pages`: a read fault on shared
    /// memory also maps the object's pages already in memory around it,
    /// in the aligned 16-page window (`fault_around_bytes`, 64 KiB) clipped
    /// to the VMA and the page table, where nothing is mapped yet.
    fn fault_around(&mut self, vma: &Vma, obj: crate::ids::ShmemId, va: u64, slot: u64) {
        const WINDOW: u64 = 16;
        let pte_off = (va / PAGE_SIZE) % 512;
        let vma_off = (va - vma.start) / PAGE_SIZE;
        let vma_pages = (vma.end - vma.start) / PAGE_SIZE;
        let from = (pte_off & !(WINDOW - 1)).max(pte_off - pte_off.min(vma_off));
        let to = (from + WINDOW).min(512).min(pte_off + vma_pages - vma_off);
        let idx = vma.page_index(va);
        for p in (from..to).filter(|&p| p != pte_off) {
            let (i, s) = (idx + p - pte_off, slot + p * 8 - pte_off * 8);
            // Never past the end of the file, where a failed write can
            // leave a page.
            let Some(ShmemPage::Folio(page)) = self
                .shmems
                .get(&obj)
                .filter(|o| i < o.pages_len())
                .and_then(|o| o.pages.get(&i))
                .copied()
            else {
                continue;
            };
            // filemap_map_pages maps only pages that are up to date.
            if self
                .frames
                .get(page)
                .is_some_and(|f| f.flags.contains(FolioFlags::FALLOCATED))
            {
                continue;
            }
            if pgtable::read_pte(&self.hw, s) != Pte::None {
                continue;
            }
            let flags = vma.base_pte_flags();
            pgtable::write_pte(&mut self.hw, s, Pte::Mapped { pfn: page, flags });
            self.map_ptes(page, 1);
        }
    }
}
