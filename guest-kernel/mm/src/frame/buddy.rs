//! Binary buddy allocator over physical frame numbers.
//!
//! Mirrors `mm/page_alloc.c` (`__rmqueue_smallest`, `expand`,
//! `__free_one_page`): free blocks of `2^order` frames aligned to their size,
//! split on allocation and merged with their buddy (`pfn ^ (1 << order)`) on
//! free. Free lists are ordered sets so that finding a buddy is O(log n) and
//! allocation is deterministic (lowest address first), which keeps simulated
//! runs reproducible.

use alloc::collections::BTreeSet;

/// Largest block order (`MAX_PAGE_ORDER`): 2^10 frames = 4 MiB.
pub const MAX_ORDER: u8 = 10;

/// The free lists.
#[derive(Debug, Default)]
pub struct Buddy {
    free: [BTreeSet<u64>; MAX_ORDER as usize + 1],
    nr_free: u64,
}

impl Buddy {
    /// Adds `[start, end)` (frame numbers) as free, in maximal aligned blocks.
    /// The frames must not already be free.
    pub fn add_range(&mut self, start: u64, end: u64) {
        let mut pfn = start;
        while pfn < end {
            let mut order = MAX_ORDER;
            while order > 0 && (pfn & ((1 << order) - 1) != 0 || pfn + (1 << order) > end) {
                order -= 1;
            }
            self.free_block(pfn, order);
            pfn += 1 << order;
        }
    }

    /// Allocates `2^order` contiguous frames; returns the first.
    pub fn alloc(&mut self, order: u8) -> Option<u64> {
        let found = (order..=MAX_ORDER).find(|&o| !self.free[o as usize].is_empty())?;
        let pfn = self.free[found as usize].pop_first()?;
        // expand(): give back the upper halves.
        let mut o = found;
        while o > order {
            o -= 1;
            self.free[o as usize].insert(pfn + (1 << o));
        }
        self.nr_free -= 1 << order;
        Some(pfn)
    }

    /// Frees the block `[pfn, pfn + 2^order)`, merging with free buddies.
    pub fn free_block(&mut self, mut pfn: u64, mut order: u8) {
        debug_assert_eq!(pfn & ((1 << order) - 1), 0, "unaligned block");
        self.nr_free += 1 << order;
        while order < MAX_ORDER {
            let buddy = pfn ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            pfn &= !(1 << order);
            order += 1;
        }
        self.free[order as usize].insert(pfn);
    }

    /// Takes the single frame `pfn` out of the free lists (for reserving
    /// frames after setup). Returns false if it is not free.
    pub fn take(&mut self, pfn: u64) -> bool {
        for order in 0..=MAX_ORDER {
            let head = pfn & !((1u64 << order) - 1);
            if self.free[order as usize].remove(&head) {
                // Split the block, keeping every half that does not hold pfn.
                let mut o = order;
                let mut base = head;
                while o > 0 {
                    o -= 1;
                    let upper = base + (1 << o);
                    if pfn >= upper {
                        self.free[o as usize].insert(base);
                        base = upper;
                    } else {
                        self.free[o as usize].insert(upper);
                    }
                }
                self.nr_free -= 1;
                return true;
            }
        }
        false
    }

    /// Takes the `count` free blocks of `MAX_ORDER` starting at `start`
    /// if all of them are free (a gigantic page, `alloc_contig_range`
    /// without migration); returns whether it did.
    pub fn take_max_blocks(&mut self, start: u64, count: u64) -> bool {
        let top = &mut self.free[MAX_ORDER as usize];
        if !(0..count).all(|i| top.contains(&(start + (i << MAX_ORDER)))) {
            return false;
        }
        for i in 0..count {
            top.remove(&(start + (i << MAX_ORDER)));
        }
        self.nr_free -= count << MAX_ORDER;
        true
    }

    /// Number of free frames.
    pub fn nr_free(&self) -> u64 {
        self.nr_free
    }

    /// Every free block as `(first pfn, order)`.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, u8)> + '_ {
        self.free
            .iter()
            .enumerate()
            .flat_map(|(o, set)| set.iter().map(move |&p| (p, o as u8)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn split_and_merge_back() {
        let mut b = Buddy::default();
        b.add_range(0, 1024);
        assert_eq!(b.blocks().collect::<Vec<_>>(), [(0, 10)]);
        let a = b.alloc(0).unwrap();
        let c = b.alloc(3).unwrap();
        assert_eq!(a, 0);
        assert_eq!(c, 8);
        assert_eq!(b.nr_free(), 1024 - 9);
        b.free_block(a, 0);
        b.free_block(c, 3);
        assert_eq!(b.blocks().collect::<Vec<_>>(), [(0, 10)]);
    }

    #[test]
    fn unaligned_ranges_and_take() {
        let mut b = Buddy::default();
        b.add_range(3, 37);
        assert_eq!(b.nr_free(), 34);
        assert!(b.take(20));
        assert!(!b.take(20));
        assert_eq!(b.nr_free(), 33);
        let mut got = Vec::new();
        while let Some(p) = b.alloc(0) {
            got.push(p);
        }
        got.sort();
        let want: Vec<u64> = (3..37).filter(|&p| p != 20).collect();
        assert_eq!(got, want);
        assert_eq!(b.alloc(0), None);
    }
}
