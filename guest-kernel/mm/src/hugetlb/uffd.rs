//! userfaultfd write-protection of hugetlb memory: one huge entry at a
//! time, with huge uffd-wp markers where nothing is mapped.
//!
//! Mirrors `mm/hugetlb.c` (6.18): `hugetlb_change_protection` under
//! `MM_CP_UFFD_WP` / `MM_CP_UFFD_WP_RESOLVE` (a present entry is
//! write-protected and gets the bit, or loses it and stays read-only until
//! its write fault; an empty one gets a marker, which unprotecting
//! removes; poison stays), and `fs/proc/task_mmu.c`'s
//! `make_uffd_wp_huge_pte` for `PAGEMAP_SCAN`.

use crate::hw::{FlushRange, Hw};
use crate::ids::MmId;
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::Vma;

use super::{huge_level, huge_size};

impl<H: Hw> MemSystem<H> {
    /// `uffd_wp_range` of hugetlb VMA `v` over `[start, end)` (whole huge
    /// pages: the ioctls check the alignment).
    pub(crate) fn hugetlb_uffd_wp_range(
        &mut self,
        mm: MmId,
        v: &Vma,
        start: u64,
        end: u64,
        enable: bool,
    ) {
        let (_, h) = self.huge_file_of(v);
        let (level, size) = (huge_level(h), huge_size(h));
        let root = self.mm(mm).root;
        let mut changed = false;
        let mut haddr = start & !(size - 1);
        while haddr < end {
            // Markers need the table the entry lives in.
            let slot = if enable {
                pgtable::huge_slot_alloc(&mut self.hw, &mut self.frames, root, haddr, level)
            } else {
                pgtable::huge_slot(&self.hw, root, haddr, level)
            };
            if let Some(slot) = slot {
                let pte = pgtable::read_huge(&self.hw, slot, level);
                let new = match pte {
                    Pte::Mapped { pfn, flags } => {
                        let f = v.rebuilt_pte_flags(flags);
                        Pte::Mapped {
                            pfn,
                            flags: f.set(PteFlags::UFFD_WP, enable),
                        }
                    }
                    Pte::None if enable => Pte::Marker(MarkerKind::UffdWp),
                    Pte::Marker(MarkerKind::UffdWp) if !enable => Pte::None,
                    other => other,
                };
                if new != pte {
                    pgtable::write_huge(&mut self.hw, slot, new);
                    changed = true;
                }
            }
            haddr += size;
        }
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
    }

    /// `make_uffd_wp_huge_pte`: write-protects the huge page at `haddr`
    /// (a marker where nothing is mapped; poison and markers stay).
    pub(crate) fn make_uffd_wp_huge(&mut self, mm: MmId, v: &Vma, haddr: u64) {
        let (_, h) = self.huge_file_of(v);
        let (level, size) = (huge_level(h), huge_size(h));
        let root = self.mm(mm).root;
        let Some(slot) =
            pgtable::huge_slot_alloc(&mut self.hw, &mut self.frames, root, haddr, level)
        else {
            return;
        };
        let new = match pgtable::read_huge(&self.hw, slot, level) {
            Pte::Mapped { pfn, flags } => Pte::Mapped {
                pfn,
                flags: flags.without(PteFlags::WRITE).with(PteFlags::UFFD_WP),
            },
            Pte::None => Pte::Marker(MarkerKind::UffdWp),
            _ => return,
        };
        pgtable::write_huge(&mut self.hw, slot, new);
        self.flush_tlb(
            mm,
            FlushRange::Range {
                start: haddr,
                end: haddr + size,
            },
        );
    }
}
