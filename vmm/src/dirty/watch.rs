//! One consumer's view of guest writes: the pages written since its last
//! reset. Harvests fill every watch's `pending` bitmaps; a watch answers
//! `get` from them and `reset` clears only what it returned.
//!
//! A virtual-range watch (`VaWatch`) turns guest-physical writes into writes
//! to the virtual pages of one process, through that process's page tables:
//! a virtual page counts as written when the physical page it maps was
//! written, or when its translation changed since the last look (COW,
//! swap-out, remap — a moved page must never look clean). Pending physical
//! writes are consumed for the whole watched range at once, so a physical
//! page mapped at two watched addresses marks both.

use super::bitmap::PageBitmap;
use super::guest_pt::{self, WalkError};
use super::slots::{SlotRange, Slots};
use crate::memory::GuestMemoryMmap;

/// Write-watch granularity: the 4 KiB page.
pub const GRANULARITY: u64 = 4096;

/// A consumer of harvested writes.
pub struct Watch {
    /// Writes harvested and not yet consumed, one bitmap per slot.
    pub pending: Vec<PageBitmap>,
    pub kind: WatchKind,
}

pub enum WatchKind {
    /// Guest-physical: `pending` is the written state itself.
    Gpa,
    /// A range of one process's virtual memory.
    Va(VaWatch),
}

impl Watch {
    pub fn new(slots: &Slots, kind: WatchKind) -> Self {
        Watch {
            pending: slots.0.iter().map(|s| PageBitmap::new(s.pages)).collect(),
            kind,
        }
    }

    /// Records `words` (KVM's layout) as written pages of slot `slot`.
    pub fn absorb_words(&mut self, slot: usize, words: &[u64]) {
        self.pending[slot].or_words(words);
    }

    pub fn absorb_page(&mut self, slot: usize, page: u64) {
        self.pending[slot].set(page);
    }

    /// The written guest-physical pages in `ranges` (ascending), at most
    /// `limit`, as addresses into `out` when given; with `reset`, exactly
    /// those taken are cleared. Returns how many.
    pub fn take_gpa(
        &mut self,
        slots: &Slots,
        ranges: &[SlotRange],
        reset: bool,
        limit: usize,
        mut out: Option<&mut Vec<u64>>,
    ) -> usize {
        let mut taken = 0;
        for r in ranges {
            let sink = out.as_deref_mut().map(|o| (o, slots.address(r.slot, 0)));
            taken += self.pending[r.slot].take(r.first, r.end, limit - taken, reset, sink);
            if taken == limit {
                break;
            }
        }
        taken
    }

    /// Clears the written state of `ranges`.
    pub fn reset_gpa(&mut self, ranges: &[SlotRange]) {
        for r in ranges {
            self.pending[r.slot].take(r.first, r.end, usize::MAX, true, None);
        }
    }
}

/// The state of a watched virtual range.
pub struct VaWatch {
    pub cr3: u64,
    pub start: u64,
    pub pages: u64,
    /// The translation of each page at the last look.
    snapshot: Vec<Option<u64>>,
    /// Virtual pages written since their last reset.
    written: PageBitmap,
}

impl VaWatch {
    /// Starts watching `pages` pages from `start` through page table `cr3`,
    /// all clean, with the translations they have now.
    pub fn new(mem: &GuestMemoryMmap, cr3: u64, start: u64, pages: u64) -> Result<Self, WalkError> {
        Ok(VaWatch {
            cr3,
            start,
            pages,
            snapshot: guest_pt::translate_range(mem, cr3, start, pages)?,
            written: PageBitmap::new(pages),
        })
    }

    pub fn end(&self) -> u64 {
        self.start + self.pages * GRANULARITY
    }

    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start < self.end() && self.start < end
    }

    pub fn covers(&self, start: u64, end: u64) -> bool {
        self.start <= start && end <= self.end()
    }

    /// Moves the watch's pending physical writes onto its virtual pages,
    /// through the translations the page tables hold now, and notes changed
    /// translations as writes.
    pub fn consume(
        &mut self,
        mem: &GuestMemoryMmap,
        slots: &Slots,
        pending: &mut [PageBitmap],
    ) -> Result<(), WalkError> {
        let now = guest_pt::translate_range(mem, self.cr3, self.start, self.pages)?;
        for (i, (&before, &after)) in self.snapshot.iter().zip(&now).enumerate() {
            let written_there = after
                .and_then(|gpa| slots.locate(gpa))
                .is_some_and(|(slot, page)| pending[slot].get(page));
            if before != after || written_there {
                self.written.set(i as u64);
            }
        }
        self.snapshot = now;
        for bitmap in pending {
            bitmap.clear_all();
        }
        Ok(())
    }

    /// The written virtual pages in `[start, end)` (ascending), at most
    /// `limit`; with `reset`, exactly those returned are cleared.
    pub fn take(&mut self, start: u64, end: u64, reset: bool, limit: usize) -> Vec<u64> {
        let first = (start - self.start) / GRANULARITY;
        let last = (end - self.start).div_ceil(GRANULARITY);
        let pages = self.written.set_pages(first, last, limit);
        if reset {
            for &p in &pages {
                self.written.clear(p);
            }
        }
        pages
            .into_iter()
            .map(|p| self.start + p * GRANULARITY)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::dirty::guest_pt::tests::TableBuilder;
    use crate::memory::create_guest_memory;

    const VA: u64 = 0x4000_0000;

    fn setup() -> (GuestMemoryMmap, Slots) {
        let mem = create_guest_memory(64 << 20, Backing::Anon, 46).unwrap();
        let slots = Slots::of(&mem);
        (mem, slots)
    }

    fn pending(slots: &Slots, gpas: &[u64]) -> Vec<PageBitmap> {
        let mut p: Vec<PageBitmap> = slots.0.iter().map(|s| PageBitmap::new(s.pages)).collect();
        for &gpa in gpas {
            let (slot, page) = slots.locate(gpa).unwrap();
            p[slot].set(page);
        }
        p
    }

    #[test]
    fn a_physical_write_marks_every_virtual_alias_and_a_moved_page_is_written() {
        let (mem, slots) = setup();
        let mut t = TableBuilder::new(&mem, 0x10_0000);
        t.map(VA, 0x20_0000, GRANULARITY);
        t.map(VA + GRANULARITY, 0x20_0000, GRANULARITY); // an alias
        t.map(VA + 2 * GRANULARITY, 0x20_1000, GRANULARITY);
        let mut w = VaWatch::new(&mem, t.root, VA, 4).unwrap();
        // A write to the aliased physical page marks both virtual pages.
        let mut p = pending(&slots, &[0x20_0000]);
        w.consume(&mem, &slots, &mut p).unwrap();
        assert!(p.iter().all(PageBitmap::is_clear));
        assert_eq!(
            w.take(VA, VA + 4 * GRANULARITY, true, usize::MAX),
            vec![VA, VA + GRANULARITY]
        );
        // COW: page 2 now maps a new physical page; nothing "written" there
        // by the log, yet the virtual page changed.
        t.map(VA + 2 * GRANULARITY, 0x30_0000, GRANULARITY);
        // Unmapping page 1 changes it too; mapping page 3 for the first time too.
        t.unmap(VA + GRANULARITY);
        t.map(VA + 3 * GRANULARITY, 0x30_1000, GRANULARITY);
        let mut p = pending(&slots, &[]);
        w.consume(&mem, &slots, &mut p).unwrap();
        assert_eq!(
            w.take(VA, VA + 4 * GRANULARITY, false, usize::MAX),
            vec![VA + GRANULARITY, VA + 2 * GRANULARITY, VA + 3 * GRANULARITY]
        );
        // Nothing changes after that: a second look with no writes is clean
        // once reset.
        w.take(VA, VA + 4 * GRANULARITY, true, usize::MAX);
        let mut p = pending(&slots, &[]);
        w.consume(&mem, &slots, &mut p).unwrap();
        assert!(
            w.take(VA, VA + 4 * GRANULARITY, false, usize::MAX)
                .is_empty()
        );
    }

    #[test]
    fn a_limited_take_resets_only_what_it_returned() {
        let (mem, slots) = setup();
        let mut t = TableBuilder::new(&mem, 0x10_0000);
        for i in 0..8 {
            t.map(
                VA + i * GRANULARITY,
                0x20_0000 + i * GRANULARITY,
                GRANULARITY,
            );
        }
        let mut w = VaWatch::new(&mem, t.root, VA, 8).unwrap();
        let gpas: Vec<u64> = (0..8).map(|i| 0x20_0000 + i * GRANULARITY).collect();
        w.consume(&mem, &slots, &mut pending(&slots, &gpas))
            .unwrap();
        assert_eq!(w.take(VA, VA + 8 * GRANULARITY, true, 3).len(), 3);
        let rest = w.take(VA, VA + 8 * GRANULARITY, true, usize::MAX);
        assert_eq!(
            rest,
            (3..8).map(|i| VA + i * GRANULARITY).collect::<Vec<_>>()
        );
    }

    #[test]
    fn gpa_take_respects_the_limit_and_resets_exactly_what_it_returned() {
        let (_, slots) = setup();
        let mut w = Watch::new(&slots, WatchKind::Gpa);
        for page in [1u64, 5, 9, 200] {
            w.absorb_page(0, page);
        }
        let all = slots.split(0, 64 << 20).unwrap();
        let take = |w: &mut Watch, reset, limit| {
            let mut out = Vec::new();
            let n = w.take_gpa(&slots, &all, reset, limit, Some(&mut out));
            assert_eq!(n, out.len());
            out
        };
        assert_eq!(take(&mut w, true, 2), vec![0x1000, 0x5000]);
        assert_eq!(take(&mut w, false, usize::MAX), vec![0x9000, 200 * 4096]);
        let part = slots.split(0x9000, 0x1000).unwrap();
        w.reset_gpa(&part);
        assert_eq!(w.take_gpa(&slots, &all, false, usize::MAX, None), 1);
        assert_eq!(take(&mut w, false, usize::MAX), vec![200 * 4096]);
    }
}
