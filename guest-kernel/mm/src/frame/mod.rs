//! Physical memory: the buddy allocator plus per-frame metadata.
//!
//! `FrameTable` is the MM core's `mem_map` + zone: it is built from the
//! memory map (PVH `hvm_memmap_table_entry` RAM ranges), keeps one [`Frame`]
//! per managed frame (per range, so MMIO holes cost nothing) and hands out
//! blocks from the buddy allocator. Folio helpers (`folio_of`, `put_folio`)
//! live here because they touch only this metadata.

pub mod buddy;
pub mod folio;
pub mod memmap;
mod vmemmap;

use alloc::vec::Vec;

pub use buddy::MAX_ORDER;
pub use folio::{FolioFlags, Frame, FrameUse, Mapping};

use crate::hw::{Pfn, PhysMem, Release};

use vmemmap::Zone;

/// All managed frames and the allocator.
pub struct FrameTable {
    zones: Vec<Zone>,
    buddy: buddy::Buddy,
    total: u64,
}

impl FrameTable {
    /// Builds the table from usable RAM ranges `[start, end)` in bytes.
    /// Partial frames at range edges are dropped; ranges must not overlap.
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        let mut zones: Vec<Zone> = Vec::new();
        let mut buddy = buddy::Buddy::default();
        let mut total = 0;
        for &(s, e) in ranges {
            let start = s.div_ceil(crate::hw::PAGE_SIZE);
            let end = e / crate::hw::PAGE_SIZE;
            if end <= start {
                continue;
            }
            zones.push(Zone::new(start, end - start, FrameUse::Free));
            buddy.add_range(start, end);
            total += end - start;
        }
        zones.sort_by_key(|z| z.base);
        FrameTable {
            zones,
            buddy,
            total,
        }
    }

    /// Adds the usable RAM range `[start, end)` (bytes) to a built table,
    /// as [`FrameTable::new`] does for each of its ranges: the kernel's
    /// deferred `struct page` initialisation (Linux:
    /// `CONFIG_DEFERRED_STRUCT_PAGE_INIT`), so boot need not fill metadata
    /// for all of RAM. Partial frames are dropped; the range must not
    /// overlap managed frames. Returns the number of frames added.
    pub fn add_range(&mut self, start: u64, end: u64) -> u64 {
        let s = start.div_ceil(crate::hw::PAGE_SIZE);
        let e = end / crate::hw::PAGE_SIZE;
        if e <= s || self.overlaps(s, e) {
            return 0;
        }
        self.zones.push(Zone::new(s, e - s, FrameUse::Free));
        self.zones.sort_by_key(|z| z.base);
        self.buddy.add_range(s, e);
        self.total += e - s;
        e - s
    }

    fn overlaps(&self, s: u64, e: u64) -> bool {
        self.zones
            .iter()
            .any(|z| z.base < e && s < z.base + z.len())
    }

    /// Removes frame `pfn` from the allocator for good (boot reservations,
    /// the swap region). Returns false if it is not free.
    pub fn reserve(&mut self, pfn: Pfn) -> bool {
        if self.get(pfn).map(|f| f.use_) != Some(FrameUse::Free) || !self.buddy.take(pfn.0) {
            return false;
        }
        self.get_mut(pfn).use_ = FrameUse::Reserved;
        self.total -= 1;
        true
    }

    fn locate(&self, pfn: Pfn) -> Option<usize> {
        let z = self
            .zones
            .partition_point(|z| z.base <= pfn.0)
            .checked_sub(1)?;
        self.zones[z].contains(pfn.0).then_some(z)
    }

    /// Metadata of `pfn`, if managed.
    pub fn get(&self, pfn: Pfn) -> Option<&Frame> {
        self.locate(pfn).map(|z| self.zones[z].get(pfn.0))
    }

    /// Metadata of a managed `pfn`. Panics on an unmanaged frame: that is an
    /// MM-core bug, not a user error.
    pub(crate) fn get_mut(&mut self, pfn: Pfn) -> &mut Frame {
        let z = self.locate(pfn).expect("unmanaged frame");
        self.zones[z].get_mut(pfn.0)
    }

    /// Metadata of a managed `pfn` (panics if unmanaged).
    pub(crate) fn at(&self, pfn: Pfn) -> &Frame {
        self.get(pfn).expect("unmanaged frame")
    }

    /// Allocates `2^order` frames for `use_`; the head gets refcount 1.
    pub fn alloc(&mut self, order: u8, use_: FrameUse) -> Option<Pfn> {
        let head = Pfn(self.buddy.alloc(order)?);
        for i in 0..(1u64 << order) {
            let f = self.get_mut(head.offset(i));
            debug_assert_eq!(f.use_, FrameUse::Free);
            *f = Frame::new(if i == 0 { use_ } else { FrameUse::Tail(head) });
        }
        let f = self.get_mut(head);
        f.order = order;
        f.refcount = 1;
        if order > 0 && use_ == FrameUse::Folio {
            f.flags.set(FolioFlags::LARGE, true);
        }
        Some(head)
    }

    /// Allocates a huge folio of `order` (a hugetlb page): from the buddy
    /// allocator up to [`MAX_ORDER`], above it (1 GiB) as the first
    /// aligned run of free `MAX_ORDER` blocks, like Linux's
    /// `alloc_contig_pages` without page migration.
    pub fn alloc_huge(&mut self, order: u8) -> Option<Pfn> {
        if order <= MAX_ORDER {
            return self.alloc(order, FrameUse::Folio);
        }
        let n = 1u64 << order;
        let candidates: Vec<u64> = self
            .zones
            .iter()
            .flat_map(|z| {
                let end = z.base + z.len();
                (z.base.div_ceil(n)..end / n).map(move |k| k * n)
            })
            .collect();
        let head = candidates
            .into_iter()
            .find(|&p| self.buddy.take_max_blocks(p, n >> MAX_ORDER))?;
        let head = Pfn(head);
        for i in 0..n {
            *self.get_mut(head.offset(i)) = Frame::new(if i == 0 {
                FrameUse::Folio
            } else {
                FrameUse::Tail(head)
            });
        }
        let f = self.get_mut(head);
        f.order = order;
        f.refcount = 1;
        f.flags.set(FolioFlags::LARGE, true);
        Some(head)
    }

    /// HVO: gives back the tail metadata of the huge folio at `head`
    /// while it sits free in a pool (its frames must be chunk aligned, as
    /// 2 MiB and 1 GiB pages are). Returns the bytes freed.
    pub fn vmemmap_optimize(&mut self, head: Pfn) -> u64 {
        let order = self.at(head).order;
        let z = self.locate(head).expect("managed huge page");
        self.zones[z].optimize(head.0, order)
    }

    /// Undoes [`Self::vmemmap_optimize`] before the folio is used or freed.
    pub fn vmemmap_restore(&mut self, head: Pfn) {
        let order = self.at(head).order;
        let z = self.locate(head).expect("managed huge page");
        self.zones[z].restore(head.0, order);
    }

    /// Whether the metadata of `pfn` is in its optimised form.
    pub fn vmemmap_optimized(&self, pfn: Pfn) -> bool {
        self.locate(pfn)
            .is_some_and(|z| self.zones[z].is_optimized(pfn.0))
    }

    /// Bytes of frame metadata held now (the `struct page` array).
    pub fn metadata_bytes(&self) -> u64 {
        self.zones.iter().map(Zone::metadata_bytes).sum()
    }

    /// Returns the block headed by `head` to the allocator.
    pub fn free<H: PhysMem>(&mut self, hw: &mut H, head: Pfn) {
        let order = self.at(head).order;
        for i in 0..(1u64 << order) {
            let f = self.get_mut(head.offset(i));
            assert!(f.mapcount == 0, "freeing a mapped frame {:#x}", head.0 + i);
            *f = Frame::new(FrameUse::Free);
            hw.frame_released(head.offset(i), Release::Freed);
        }
        if order > MAX_ORDER {
            for i in 0..1u64 << (order - MAX_ORDER) {
                self.buddy.free_block(head.0 + (i << MAX_ORDER), MAX_ORDER);
            }
        } else {
            self.buddy.free_block(head.0, order);
        }
    }

    /// The head frame of the folio containing `pfn`.
    /// `pfn` itself if it is not a tail (or not managed).
    pub fn folio_of(&self, pfn: Pfn) -> Pfn {
        match self.get(pfn).map(|f| f.use_) {
            Some(FrameUse::Tail(h)) => h,
            _ => pfn,
        }
    }

    /// Takes `n` more references on the folio headed by `head`.
    pub(crate) fn get_folio(&mut self, head: Pfn, n: u32) {
        let f = self.get_mut(head);
        debug_assert!(f.refcount > 0, "get on a dead folio");
        f.refcount += n;
    }

    /// Drops `n` references; frees the folio when the count reaches zero
    /// (`folio_put`). Returns true if freed.
    pub(crate) fn put_folio<H: PhysMem>(&mut self, hw: &mut H, head: Pfn, n: u32) -> bool {
        let f = self.get_mut(head);
        assert!(f.refcount >= n, "folio refcount underflow at {:#x}", head.0);
        f.refcount -= n;
        if f.refcount == 0 {
            self.free(hw, head);
            true
        } else {
            false
        }
    }

    /// Free frames.
    pub fn nr_free(&self) -> u64 {
        self.buddy.nr_free()
    }

    /// Managed frames (free or in use).
    pub fn nr_total(&self) -> u64 {
        self.total
    }

    /// Every managed frame with its metadata.
    pub fn iter(&self) -> impl Iterator<Item = (Pfn, &Frame)> + '_ {
        self.zones
            .iter()
            .flat_map(|z| z.iter().map(|(p, f)| (Pfn(p), f)))
    }

    /// Free blocks as the allocator sees them.
    pub(crate) fn free_blocks(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.buddy.blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::SimMachine;

    #[test]
    fn alloc_free_with_holes() {
        let mut hw = SimMachine::new(1 << 20, 1);
        let mut ft = FrameTable::new(&[(0, 0x9fc00), (0x10_0000, 0x10_0000)]);
        assert_eq!(ft.nr_total(), 0x9f);
        assert!(ft.reserve(Pfn(0)));
        assert!(!ft.reserve(Pfn(0)));
        let h = ft.alloc(2, FrameUse::Folio).unwrap();
        assert_eq!(h.0 % 4, 0);
        assert_eq!(ft.folio_of(h.offset(3)), h);
        assert!(ft.at(h).flags.contains(FolioFlags::LARGE));
        ft.get_folio(h, 1);
        assert!(!ft.put_folio(&mut hw, h, 1));
        assert!(ft.put_folio(&mut hw, h, 1));
        assert_eq!(ft.nr_free(), 0x9e);
        assert!(ft.get(Pfn(0xa0)).is_none(), "hole is unmanaged");
    }
}
