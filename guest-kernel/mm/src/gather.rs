//! `mmu_gather`: batch TLB invalidation, then (and only then) drop the
//! reverse mappings and references of the unmapped pages and free the
//! emptied page tables.
//!
//! Mirrors `mm/mmu_gather.c` (`tlb_gather_mmu`, `__tlb_remove_folio_pages`
//! with `delay_rmap`, `tlb_flush_mmu`, `tlb_remove_table`) and
//! `mm/memory.c` (`zap_pte_range`, `zap_present_ptes`,
//! `zap_nonpresent_ptes`). Linux once dropped the rmap of a dirty shared page
//! in `zap_pte_range` *before* the TLB flush, so `folio_mkclean` could miss a
//! writable translation still cached by another CPU; the fix delays the rmap
//! removal to after the flush. Here every removal is delayed, and the
//! functions that drop a mapcount ([`MemSystem::unmap_ptes`]) demand a
//! [`Flushed`] token that only [`MemSystem::flush_tlb`] can create, so the
//! old order does not compile.

use alloc::vec::Vec;

use crate::frame::FolioFlags;
use crate::hw::{FlushRange, FlushRequest, Hw, PAGE_SIZE, Pfn};
use crate::ids::MmId;
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{Backing, VmFlags};

/// What a zap removes (`struct zap_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zap {
    /// The pages only (`MADV_DONTNEED`, hole punch): markers that say
    /// something about the address itself survive.
    Pages,
    /// The mapping goes away and its emptied tables are freed (munmap,
    /// mremap's old range): `ZAP_FLAG_DROP_MARKER`, everything goes.
    Unmap,
    /// Like `Unmap`, but the caller frees every table itself (exit).
    Exit,
    /// Only the pages of this file, as `Pages` (a hole punched in a file
    /// leaves a private mapping's copied pages alone: `even_cows` false).
    FilePages(crate::ids::ShmemId),
}

/// Proof that a TLB flush was issued. Only [`MemSystem::flush_tlb`] makes one.
pub(crate) struct Flushed(());

/// Pages and tables unmapped from one address space, waiting for the flush.
pub(crate) struct MmuGather {
    mm: MmId,
    start: u64,
    end: u64,
    /// `(first page, count)` runs of pages of one folio.
    pages: Vec<(Pfn, u32)>,
    tables: Vec<Pfn>,
}

impl MmuGather {
    /// `tlb_gather_mmu`.
    pub fn new(mm: MmId) -> Self {
        MmuGather {
            mm,
            start: u64::MAX,
            end: 0,
            pages: Vec::new(),
            tables: Vec::new(),
        }
    }

    fn track(&mut self, va: u64) {
        self.start = self.start.min(va);
        self.end = self.end.max(va + PAGE_SIZE);
    }
}

impl<H: Hw> MemSystem<H> {
    /// Invalidates `range` of `mm` on every CPU that may cache it.
    pub(crate) fn flush_tlb(&mut self, mm: MmId, range: FlushRange) -> Flushed {
        let a = self.mm(mm);
        let req = FlushRequest {
            root: a.root,
            cpus: a.cpus,
            range,
        };
        if a.cpus.0 != 0 {
            self.hw.flush(&req);
            self.counters.tlb_flushes += 1;
        }
        Flushed(())
    }

    /// A token for an operation that changed no present PTE, so no TLB can
    /// hold anything it is about to release.
    pub(crate) fn flush_nothing(&self) -> Flushed {
        Flushed(())
    }

    /// Adds `nr` PTE mappings of consecutive pages starting at `page` (all
    /// in one folio): mapcount of each page and one folio reference per PTE
    /// (`folio_ref_add` + `folio_add_*_rmap_ptes`).
    pub(crate) fn map_ptes(&mut self, page: Pfn, nr: u32) {
        let head = self.frames.folio_of(page);
        for i in 0..nr as u64 {
            self.frames.get_mut(page.offset(i)).mapcount += 1;
        }
        self.frames.get_folio(head, nr);
    }

    /// Drops `nr` PTE mappings (`folio_remove_rmap_ptes` + `folio_put_refs`);
    /// requires a flush to have happened since the PTEs were cleared.
    pub(crate) fn unmap_ptes(&mut self, _flushed: &Flushed, page: Pfn, nr: u32) {
        let head = self.frames.folio_of(page);
        for i in 0..nr as u64 {
            let f = self.frames.get_mut(page.offset(i));
            assert!(f.mapcount > 0, "mapcount underflow at {:#x}", page.0 + i);
            f.mapcount -= 1;
            if f.mapcount == 0 {
                f.anon_exclusive = false;
                self.hw
                    .frame_released(page.offset(i), crate::hw::Release::Unmapped);
            }
        }
        self.frames.put_folio(&mut self.hw, head, nr);
    }

    /// Clears every PTE of `mm` in `[start, end)` into `g`
    /// (`unmap_page_range` / `zap_pte_range`). Swap entries are released at
    /// once (nothing can cache them); mapped pages wait in the gather.
    /// What happens to markers and emptied tables is `how`'s (see [`Zap`]).
    pub(crate) fn zap_range(&mut self, g: &mut MmuGather, start: u64, end: u64, how: Zap) {
        let root = self.mm(g.mm).root;
        for (va, slot, pte) in pgtable::leaves(&self.hw, root, start, end) {
            let keeps_markers = matches!(how, Zap::Pages | Zap::FilePages(_));
            if let Pte::Marker(kind) = pte {
                if keeps_markers && self.marker_survives_zap(g.mm, va, kind) {
                    continue;
                }
            }
            if let Zap::FilePages(obj) = how {
                let of_file = matches!(pte, Pte::Mapped { pfn, .. } if pfn != self.zero
                    && matches!(self.frames.at(self.frames.folio_of(pfn)).mapping,
                        crate::frame::Mapping::Shmem { obj: o, .. } if o == obj));
                if !of_file {
                    continue;
                }
            }
            // zap_install_uffd_wp_if_needed: a protected page of file
            // memory leaves a marker, so the protection outlives the zap.
            let arm = keeps_markers
                && matches!(pte, Pte::Mapped { flags, .. } if flags.contains(PteFlags::UFFD_WP))
                && self.mm(g.mm).vmas.find(va).is_some_and(|v| {
                    v.flags.has(VmFlags::UFFD_WP) && !matches!(v.backing, Backing::Anon { .. })
                });
            let left = if arm {
                Pte::Marker(MarkerKind::UffdWp)
            } else {
                Pte::None
            };
            pgtable::write_pte(&mut self.hw, slot, left);
            match pte {
                Pte::Mapped { pfn, flags } => {
                    g.track(va);
                    if pfn == self.zero {
                        continue;
                    }
                    let head = self.frames.folio_of(pfn);
                    if flags.contains(PteFlags::DIRTY) {
                        self.frames.get_mut(head).flags.set(FolioFlags::DIRTY, true);
                    }
                    match g.pages.last_mut() {
                        Some((p, n))
                            if p.0 + *n as u64 == pfn.0 && self.frames.folio_of(*p) == head =>
                        {
                            *n += 1
                        }
                        _ => g.pages.push((pfn, 1)),
                    }
                }
                Pte::Swap(e) => self.swap_free(e),
                Pte::Marker(_) | Pte::None => {}
                Pte::Table(_) => unreachable!("table entry at PTE level"),
            }
        }
        if how == Zap::Unmap {
            // free_pgtables' floor and ceiling: the neighbours outside the
            // range, whose tables stay.
            let vmas = &self.mm(g.mm).vmas;
            let floor = vmas
                .overlapping(0, start)
                .last()
                .and_then(|&s| vmas.get(s))
                .map_or(0, |v| v.end.min(start));
            let ceiling = vmas
                .overlapping(end, pgtable::USER_TOP)
                .first()
                .and_then(|&s| vmas.get(s))
                .map_or(pgtable::USER_TOP, |v| v.start.max(end));
            let t = pgtable::prune(&mut self.hw, root, (start, end), (floor, ceiling));
            if !t.is_empty() {
                g.start = g.start.min(start);
                g.end = g.end.max(end);
            }
            g.tables.extend(t);
        }
    }

    /// Whether a marker stays when only the pages of its range are zapped
    /// (`zap_nonpresent_ptes` without `ZAP_FLAG_DROP_MARKER`): a guard
    /// marker always, a uffd-wp marker where the memory is not anonymous
    /// (its page can come back from the object, the protection must stay
    /// with it); a poison marker never (`should_zap_cows`).
    fn marker_survives_zap(&self, mm: MmId, va: u64, kind: MarkerKind) -> bool {
        match kind {
            MarkerKind::Guard => true,
            MarkerKind::UffdWp => self
                .mm(mm)
                .vmas
                .find(va)
                .is_some_and(|v| !matches!(v.backing, Backing::Anon { .. })),
            MarkerKind::Poisoned => false,
        }
    }

    /// Queues a page-table frame to be freed after the flush.
    pub(crate) fn gather_table(&mut self, g: &mut MmuGather, table: Pfn) {
        g.tables.push(table);
        g.start = 0;
        g.end = pgtable::USER_TOP;
    }

    /// `tlb_finish_mmu`: flush, then drop rmaps and references, then free
    /// tables.
    pub(crate) fn tlb_finish(&mut self, g: MmuGather) {
        if g.start >= g.end {
            debug_assert!(g.pages.is_empty() && g.tables.is_empty());
            return;
        }
        let range = if g.start == 0 && g.end == pgtable::USER_TOP {
            FlushRange::All
        } else {
            FlushRange::Range {
                start: g.start,
                end: g.end,
            }
        };
        #[cfg(test)]
        if self.bug_early_rmap {
            let early = self.flush_nothing();
            for &(page, nr) in &g.pages {
                self.unmap_ptes(&early, page, nr);
            }
            self.flush_tlb(g.mm, range);
            for t in g.tables {
                self.frames.free(&mut self.hw, t);
            }
            return;
        }
        let flushed = self.flush_tlb(g.mm, range);
        for (page, nr) in g.pages {
            self.unmap_ptes(&flushed, page, nr);
        }
        for t in g.tables {
            self.frames.free(&mut self.hw, t);
        }
    }
}
