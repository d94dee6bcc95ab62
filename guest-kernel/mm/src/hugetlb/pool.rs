//! The huge page pools: growing and shrinking them, surplus pages, the
//! reservation count, and huge folio allocation and freeing.
//!
//! Mirrors `mm/hugetlb.c` (6.18): `set_max_huge_pages`,
//! `adjust_pool_surplus`, `alloc_surplus_hugetlb_folio`,
//! `gather_surplus_pages`, `return_unused_surplus_pages`,
//! `hugetlb_acct_memory`, `dequeue_hugetlb_folio_vma`, `free_huge_folio`.
//! Gigantic (1 GiB) pages can be added to and removed from the pool at
//! run time but are never surplus, as in Linux. `resv` is an unsigned
//! count that Linux lets wrap: an owner that unmaps a page a fork child
//! still maps returns its reservation at close and again when the child
//! frees the page, so `HugePages_Rsvd` reads 2^64 - 1 until then. guest-mm
//! does the same arithmetic, so its counters read as Linux's do.

use crate::errno::Errno;
use crate::frame::{FolioFlags, Mapping};
use crate::hw::{Hw, Pfn};
use crate::system::MemSystem;

use super::{HSTATE_1G, HSTATE_ORDERS, Hstate};

/// Which pool setting to change (the sysfs files
/// `/sys/kernel/mm/hugepages/hugepages-*/nr_hugepages` and
/// `nr_overcommit_hugepages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKnob {
    /// `nr_hugepages`: the persistent pool size.
    NrHugepages,
    /// `nr_overcommit_hugepages`: the surplus limit.
    NrOvercommit,
    /// `vm.hugetlb_optimize_vmemmap` (any pool): HVO for the huge pages
    /// that enter a pool from now on.
    OptimizeVmemmap,
}

/// A pool's counters, as `/proc/meminfo` and sysfs show them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HugeCounters {
    /// `HugePages_Total` (`nr_hugepages`).
    pub total: u64,
    /// `HugePages_Free`.
    pub free: u64,
    /// `HugePages_Rsvd`.
    pub rsvd: u64,
    /// `HugePages_Surp`.
    pub surp: u64,
    /// `nr_overcommit_hugepages`.
    pub overcommit: u64,
}

impl HugeCounters {
    /// The counters as words: total, free, rsvd, surp, overcommit.
    pub fn to_words(&self) -> [u64; 5] {
        [self.total, self.free, self.rsvd, self.surp, self.overcommit]
    }
}

impl Hstate {
    /// `persistent_huge_pages`.
    fn persistent(&self) -> u64 {
        self.nr - self.surplus
    }
}

impl<H: Hw> MemSystem<H> {
    /// The counters of hstate `h`.
    pub fn hugetlb_counters(&self, h: usize) -> HugeCounters {
        let s = &self.huge.hstates[h];
        HugeCounters {
            total: s.nr,
            free: s.free,
            rsvd: s.resv,
            surp: s.surplus,
            overcommit: s.overcommit,
        }
    }

    /// Writes a pool setting of hstate `h`, as writing the sysfs file
    /// does. Growing stops quietly where memory runs out; shrinking
    /// keeps the pages that are in use or reserved, as surplus.
    pub fn hugetlb_set_pool(&mut self, h: usize, knob: PoolKnob, value: u64) -> Result<(), Errno> {
        match knob {
            PoolKnob::NrHugepages => self.set_max_huge_pages(h, value),
            // nr_overcommit_hugepages_store: gigantic pages cannot be
            // overcommitted.
            PoolKnob::NrOvercommit if h == HSTATE_1G => return Err(Errno::EINVAL),
            PoolKnob::NrOvercommit => self.huge.hstates[h].overcommit = value,
            PoolKnob::OptimizeVmemmap => self.cfg.hugetlb_vmemmap_optimize = value != 0,
        }
        Ok(())
    }

    /// `set_max_huge_pages`.
    fn set_max_huge_pages(&mut self, h: usize, count: u64) {
        // Take pages out of surplus first, then allocate fresh ones.
        while self.huge.hstates[h].surplus > 0 && count > self.huge.hstates[h].persistent() {
            self.huge.hstates[h].surplus -= 1;
        }
        // Allocate first, then optimise and enqueue the batch
        // (prep_and_add_allocated_folios).
        let mut fresh = alloc::vec::Vec::new();
        while count > self.huge.hstates[h].persistent() {
            let Some(head) = self.alloc_fresh_huge(h) else {
                break;
            };
            fresh.push(head);
        }
        let short = count > self.huge.hstates[h].persistent();
        self.vmemmap_optimize_batch(&fresh);
        for head in fresh {
            self.enqueue_huge(h, head);
        }
        if short {
            return;
        }
        // Free pages go first, but never below what is in use or reserved.
        let s = &self.huge.hstates[h];
        let min_count = s.resv.wrapping_add(s.nr).wrapping_sub(s.free).max(count);
        let mut gone = alloc::vec::Vec::new();
        while min_count < self.huge.hstates[h].persistent() {
            let Some(head) = self.remove_pool_huge(h, false) else {
                break;
            };
            gone.push(head);
        }
        // update_and_free_pages_bulk: restore the batch, then free it.
        self.vmemmap_restore_batch(&gone);
        for head in gone {
            self.frames.free(&mut self.hw, head);
        }
        // What is still above the target becomes surplus, freed when unused.
        while count < self.huge.hstates[h].persistent() {
            let s = &mut self.huge.hstates[h];
            if s.surplus >= s.nr {
                break;
            }
            s.surplus += 1;
        }
    }

    /// HVO for a batch of huge folios entering the pool
    /// (`hugetlb_vmemmap_optimize_folios`), if configured.
    fn vmemmap_optimize_batch(&mut self, heads: &[Pfn]) {
        if self.cfg.hugetlb_vmemmap_optimize {
            for &head in heads {
                self.frames.vmemmap_optimize(head);
            }
        }
    }

    /// Rebuilds the metadata of a batch leaving the pool
    /// (`hugetlb_vmemmap_restore_folios`).
    fn vmemmap_restore_batch(&mut self, heads: &[Pfn]) {
        for &head in heads {
            self.frames.vmemmap_restore(head);
        }
    }

    /// A fresh huge folio from the buddy allocator, counted in the pool
    /// (`alloc_fresh_hugetlb_folio` + `prep_new_hugetlb_folio`), with
    /// refcount 0: it is not handed out yet.
    fn alloc_fresh_huge(&mut self, h: usize) -> Option<Pfn> {
        let head = self.frames.alloc_huge(HSTATE_ORDERS[h])?;
        let f = self.frames.get_mut(head);
        f.flags.set(FolioFlags::HUGETLB, true);
        f.refcount = 0;
        self.huge.hstates[h].nr += 1;
        Some(head)
    }

    /// Puts a huge folio on the free list (`enqueue_hugetlb_folio`).
    fn enqueue_huge(&mut self, h: usize, head: Pfn) {
        let s = &mut self.huge.hstates[h];
        s.free_list.push(head);
        s.free += 1;
    }

    /// Takes a free huge folio out of the pool for the buddy allocator
    /// (`remove_pool_hugetlb_folio`); with `acct_surplus` only while
    /// there is surplus, which it then reduces.
    fn remove_pool_huge(&mut self, h: usize, acct_surplus: bool) -> Option<Pfn> {
        let s = &mut self.huge.hstates[h];
        if acct_surplus && s.surplus == 0 {
            return None;
        }
        let head = s.free_list.pop()?;
        s.free -= 1;
        s.nr -= 1;
        if acct_surplus {
            s.surplus -= 1;
        }
        Some(head)
    }

    /// `alloc_surplus_hugetlb_folio`: a fresh page above the persistent
    /// pool, if the overcommit limit allows (never a gigantic one).
    fn alloc_surplus_huge(&mut self, h: usize) -> Option<Pfn> {
        let s = &self.huge.hstates[h];
        if h == HSTATE_1G || s.surplus >= s.overcommit {
            return None;
        }
        let head = self.alloc_fresh_huge(h)?;
        self.huge.hstates[h].surplus += 1;
        Some(head)
    }

    /// `hugetlb_acct_memory`: reserve `delta` more pages (gathering
    /// surplus pages if the free ones do not cover it), or release
    /// `-delta`. `Err` when the reservation cannot be met.
    pub(crate) fn hugetlb_acct_memory(&mut self, h: usize, delta: i64) -> Result<(), Errno> {
        if delta > 0 {
            self.gather_surplus_pages(h, delta as u64)
        } else {
            self.return_unused_surplus_pages(h, delta.unsigned_abs());
            Ok(())
        }
    }

    /// `gather_surplus_pages`.
    fn gather_surplus_pages(&mut self, h: usize, delta: u64) -> Result<(), Errno> {
        let s = &self.huge.hstates[h];
        let needed = s.resv.wrapping_add(delta) as i64 - s.free as i64;
        if needed <= 0 {
            self.huge.hstates[h].resv = s.resv.wrapping_add(delta);
            return Ok(());
        }
        let needed = needed as u64;
        let mut got = alloc::vec::Vec::new();
        for _ in 0..needed {
            match self.alloc_surplus_huge(h) {
                Some(p) => got.push(p),
                None => break,
            }
        }
        if (got.len() as u64) < needed {
            // free_huge_folio on each: surplus pages leave the pool.
            for head in got {
                let s = &mut self.huge.hstates[h];
                s.nr -= 1;
                s.surplus -= 1;
                self.frames.free(&mut self.hw, head);
            }
            return Err(Errno::ENOMEM);
        }
        let s = &mut self.huge.hstates[h];
        s.resv = s.resv.wrapping_add(delta);
        self.vmemmap_optimize_batch(&got);
        for head in got {
            self.enqueue_huge(h, head);
        }
        Ok(())
    }

    /// `return_unused_surplus_pages`: drop `unused` reservations and free
    /// as many free surplus pages (not gigantic ones).
    fn return_unused_surplus_pages(&mut self, h: usize, unused: u64) {
        if h != HSTATE_1G {
            let n = unused.min(self.huge.hstates[h].surplus);
            for _ in 0..n {
                let Some(head) = self.remove_pool_huge(h, true) else {
                    break;
                };
                self.frames.vmemmap_restore(head);
                self.frames.free(&mut self.hw, head);
            }
        }
        let s = &mut self.huge.hstates[h];
        s.resv = s.resv.wrapping_sub(unused);
    }

    /// Takes a huge folio for a fault: from the free list if a reservation
    /// covers it (`reserved`) or an unreserved free page exists, else a
    /// surplus page. The folio comes with refcount 1. Consuming a
    /// reservation lowers `resv`.
    pub(crate) fn hugetlb_take_folio(&mut self, h: usize, reserved: bool) -> Option<Pfn> {
        let s = &self.huge.hstates[h];
        let head = if reserved || s.free.wrapping_sub(s.resv) != 0 {
            let s = &mut self.huge.hstates[h];
            let head = s.free_list.pop()?;
            s.free -= 1;
            Some(head)
        } else {
            None
        };
        let head = match head {
            Some(head) => {
                // Handed out: its metadata must be whole again.
                self.frames.vmemmap_restore(head);
                head
            }
            None => self.alloc_surplus_huge(h)?,
        };
        if reserved {
            let s = &mut self.huge.hstates[h];
            s.resv = s.resv.wrapping_sub(1);
        }
        self.frames.get_mut(head).refcount = 1;
        Some(head)
    }

    /// Drops `n` references to a huge folio; the last one frees it
    /// (`folio_put` → `free_huge_folio`): back to the free list, or to the
    /// buddy allocator if the pool has surplus pages.
    pub(crate) fn huge_put(&mut self, head: Pfn, n: u32) {
        let f = self.frames.get_mut(head);
        assert!(
            f.refcount >= n,
            "huge folio refcount underflow at {:#x}",
            head.0
        );
        f.refcount -= n;
        if f.refcount > 0 {
            return;
        }
        let order = f.order;
        let restore = f.flags.contains(FolioFlags::RESTORE_RESERVE);
        f.flags.set(FolioFlags::RESTORE_RESERVE, false);
        f.mapping = Mapping::None;
        f.flags.set(FolioFlags::ANON, false);
        f.flags.set(FolioFlags::DIRTY, false);
        f.anon_exclusive = false;
        let h = HSTATE_ORDERS
            .iter()
            .position(|&o| o == order)
            .expect("huge folio of a known size");
        let s = &mut self.huge.hstates[h];
        if restore {
            s.resv = s.resv.wrapping_add(1);
        }
        if s.surplus > 0 {
            s.surplus -= 1;
            s.nr -= 1;
            self.frames.free(&mut self.hw, head);
        } else {
            self.vmemmap_optimize_batch(&[head]);
            self.enqueue_huge(h, head);
        }
    }
}
