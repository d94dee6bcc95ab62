//! Reverse mapping: from a folio to every PTE that maps it.
//!
//! Mirrors `mm/rmap.c`: `rmap_walk_anon` (through the anon_vma to the VMAs
//! chained to it, computing `vma_address` from the folio index and
//! `vm_pgoff`), `rmap_walk_file` (through the shmem object's `i_mmap`),
//! `try_to_unmap`, `folio_mkclean` and `folio_referenced`. A hugetlb folio
//! is found at its one huge entry per mapping (`hugetlb` rmap: the
//! entire mapcount). Each operation
//! changes the PTEs, flushes the TLB of every affected address space, and
//! only then drops mapcounts (see `gather.rs`).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::hw::{FlushRange, Hw, PAGE_SIZE, Pfn};
use crate::ids::MmId;
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags, SwapEntry};
use crate::system::{MemSystem, VmaKey};
use crate::vma::VmFlags;

/// One PTE found by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RmapHit {
    pub mm: MmId,
    pub va: u64,
    pub slot: u64,
    pub flags: PteFlags,
    /// Page-table level of the entry: 1, or 2/3 for a hugetlb folio's
    /// one logical entry.
    pub level: u8,
}

impl RmapHit {
    /// Bytes the entry maps.
    fn span(&self) -> u64 {
        if self.level == 1 {
            PAGE_SIZE
        } else {
            pgtable::huge_span(self.level)
        }
    }
}

impl<H: Hw> MemSystem<H> {
    /// Every PTE mapping `page` (`rmap_walk`).
    pub(crate) fn rmap_walk(&self, page: Pfn) -> Vec<RmapHit> {
        let head = self.frames.folio_of(page);
        let f = self.frames.at(head);
        let (vmas, idx): (Vec<VmaKey>, u64) = match f.mapping {
            Mapping::Anon { anon_vma, index } => (
                self.anon_vmas
                    .get(&anon_vma)
                    .map(|a| a.vmas.iter().copied().collect())
                    .unwrap_or_default(),
                index + (page.0 - head.0),
            ),
            Mapping::Shmem { obj, index } => (
                self.shmems
                    .get(&obj)
                    .map(|s| s.i_mmap.iter().copied().collect())
                    .unwrap_or_default(),
                index + (page.0 - head.0),
            ),
            Mapping::HugeFile { file, index } => (
                self.huge
                    .files
                    .get(&file)
                    .map(|s| s.i_mmap.iter().copied().collect())
                    .unwrap_or_default(),
                index,
            ),
            Mapping::None => return Vec::new(),
        };
        if f.flags.contains(FolioFlags::HUGETLB) {
            return self.rmap_walk_huge(head, &vmas, idx);
        }
        let mut out = Vec::new();
        for (mm, start) in vmas {
            let Some(a) = self.mms.get(&mm) else { continue };
            let Some(v) = a.vmas.get(start) else { continue };
            let Some(va) = v.address_of(idx) else {
                continue;
            };
            let Some(slot) = pgtable::pte_slot(&self.hw, a.root, va) else {
                continue;
            };
            if let Pte::Mapped { pfn, flags } = pgtable::read_pte(&self.hw, slot) {
                if pfn == page {
                    out.push(RmapHit {
                        mm,
                        va,
                        slot,
                        flags,
                        level: 1,
                    });
                }
            }
        }
        out
    }

    /// The huge entries mapping hugetlb folio `head` (whose page index is
    /// `idx`) in `vmas`: one per mapping, the folio's whole span.
    fn rmap_walk_huge(&self, head: Pfn, vmas: &[VmaKey], idx: u64) -> Vec<RmapHit> {
        let order = self.frames.at(head).order;
        let level = if order == crate::hugetlb::HSTATE_ORDERS[crate::hugetlb::HSTATE_1G] {
            3
        } else {
            2
        };
        let mut out = Vec::new();
        for &(mm, start) in vmas {
            let Some(a) = self.mms.get(&mm) else { continue };
            let Some(v) = a.vmas.get(start) else { continue };
            let Some(va) = v.address_of(idx) else {
                continue;
            };
            let Some(slot) = pgtable::huge_slot(&self.hw, a.root, va, level) else {
                continue;
            };
            if let Pte::Mapped { pfn, flags } = pgtable::read_huge(&self.hw, slot, level) {
                if pfn == head {
                    out.push(RmapHit {
                        mm,
                        va,
                        slot,
                        flags,
                        level,
                    });
                }
            }
        }
        out
    }

    /// Writes `pte` where hit `h` was found, at its level.
    fn write_hit(&mut self, h: &RmapHit, pte: Pte) {
        if h.level == 1 {
            pgtable::write_pte(&mut self.hw, h.slot, pte);
        } else {
            pgtable::write_huge(&mut self.hw, h.slot, pte);
        }
    }

    /// Flushes each address space over the span of its hits.
    fn flush_hits(&mut self, hits: &[RmapHit]) -> crate::gather::Flushed {
        let mut spans: BTreeMap<MmId, (u64, u64)> = BTreeMap::new();
        for h in hits {
            let e = spans.entry(h.mm).or_insert((h.va, h.va + h.span()));
            e.0 = e.0.min(h.va);
            e.1 = e.1.max(h.va + h.span());
        }
        let mut token = None;
        for (mm, (start, end)) in spans {
            token = Some(self.flush_tlb(mm, FlushRange::Range { start, end }));
        }
        token.unwrap_or_else(|| self.flush_nothing())
    }

    /// Unmaps every page of the folio headed by `head` (`try_to_unmap`).
    /// With `swap`, page `i`'s PTEs become `Swap(swap[i])` and each takes a
    /// swap reference; without, they become none (shmem: the object keeps
    /// the data). Dirty bits move to the folio. Returns whether the folio is
    /// now unmapped everywhere.
    pub(crate) fn try_to_unmap(&mut self, head: Pfn, swap: Option<&[SwapEntry]>) -> bool {
        if self.frames.at(head).flags.contains(FolioFlags::HUGETLB) {
            debug_assert!(swap.is_none(), "hugetlb folios are not swapped");
            let hits = self.rmap_walk(head);
            for h in &hits {
                self.write_hit(h, Pte::None);
                if h.flags.contains(PteFlags::DIRTY) {
                    self.frames.get_mut(head).flags.set(FolioFlags::DIRTY, true);
                }
            }
            self.flush_hits(&hits);
            for _ in &hits {
                self.huge_unmap(head);
            }
            return self.frames.at(head).mapcount == 0;
        }
        let nr = 1u64 << self.frames.at(head).order;
        let mut all = Vec::new();
        for i in 0..nr {
            for h in self.rmap_walk(head.offset(i)) {
                let new = match swap {
                    Some(s) => {
                        self.swap_dup(s[i as usize]);
                        // try_to_unmap_one: the protection and soft-dirty
                        // move to the entry.
                        Pte::Swap(SwapEntry {
                            uffd_wp: h.flags.contains(PteFlags::UFFD_WP),
                            soft_dirty: h.flags.contains(PteFlags::SOFT_DIRTY),
                            ..s[i as usize]
                        })
                    }
                    // pte_install_uffd_wp_if_needed: a protected page of
                    // file memory leaves a marker, or a write after it
                    // comes back would not fault.
                    None if h.flags.contains(PteFlags::UFFD_WP)
                        && self
                            .mm(h.mm)
                            .vmas
                            .find(h.va)
                            .is_some_and(|v| v.flags.has(VmFlags::UFFD_WP)) =>
                    {
                        Pte::Marker(MarkerKind::UffdWp)
                    }
                    None => Pte::None,
                };
                pgtable::write_pte(&mut self.hw, h.slot, new);
                if h.flags.contains(PteFlags::DIRTY) {
                    self.frames.get_mut(head).flags.set(FolioFlags::DIRTY, true);
                }
                all.push((h, head.offset(i)));
            }
        }
        let hits: Vec<RmapHit> = all.iter().map(|(h, _)| *h).collect();
        let flushed = self.flush_hits(&hits);
        for (_, page) in all {
            self.unmap_ptes(&flushed, page, 1);
        }
        (0..nr).all(|i| self.frames.at(head.offset(i)).mapcount == 0)
    }

    /// Write-protects and cleans every PTE of a shared folio, moving the
    /// dirty state to the folio (`folio_mkclean`). Returns how many PTEs were
    /// cleaned.
    pub fn folio_mkclean(&mut self, head: Pfn) -> usize {
        let head = self.frames.folio_of(head);
        if !self.frames.get(head).is_some_and(|f| {
            f.use_ == FrameUse::Folio && matches!(f.mapping, Mapping::Shmem { .. })
        }) {
            return 0;
        }
        let mut hits = Vec::new();
        for i in 0..1u64 << self.frames.at(head).order {
            for h in self.rmap_walk(head.offset(i)) {
                if h.flags.contains(PteFlags::WRITE) || h.flags.contains(PteFlags::DIRTY) {
                    if h.flags.contains(PteFlags::DIRTY) {
                        self.frames.get_mut(head).flags.set(FolioFlags::DIRTY, true);
                    }
                    let pfn = head.offset(i);
                    let flags = h.flags.without(PteFlags::WRITE).without(PteFlags::DIRTY);
                    pgtable::write_pte(&mut self.hw, h.slot, Pte::Mapped { pfn, flags });
                    hits.push(h);
                }
            }
        }
        self.flush_hits(&hits);
        hits.len()
    }

    /// Counts and clears the accessed bits of every PTE of the folio
    /// (`folio_referenced` with `ptep_clear_flush_young`).
    pub fn folio_referenced(&mut self, head: Pfn) -> usize {
        let head = self.frames.folio_of(head);
        if self.frames.get(head).map(|f| f.use_) != Some(FrameUse::Folio) {
            return 0;
        }
        let mut hits = Vec::new();
        // A hugetlb folio has one logical entry per mapping, at its head.
        let pages = if self.frames.at(head).flags.contains(FolioFlags::HUGETLB) {
            1
        } else {
            1u64 << self.frames.at(head).order
        };
        for i in 0..pages {
            for h in self.rmap_walk(head.offset(i)) {
                if h.flags.contains(PteFlags::ACCESSED) {
                    let flags = h.flags.without(PteFlags::ACCESSED);
                    let pfn = head.offset(i);
                    self.write_hit(&h, Pte::Mapped { pfn, flags });
                    hits.push(h);
                }
            }
        }
        self.flush_hits(&hits);
        self.frames
            .get_mut(head)
            .flags
            .set(FolioFlags::REFERENCED, !hits.is_empty());
        hits.len()
    }
}
