//! A swap device in a reserved region of guest RAM, swap-out through the
//! reverse map, and the swap-slot reference counts.
//!
//! Mirrors `mm/swapfile.c` (`swap_map` counts: `folio_alloc_swap`,
//! `swap_duplicate`, `swap_free`), `mm/vmscan.c` (`shrink_folio_list`:
//! `folio_referenced` for a second chance, `try_to_unmap`, `pageout`) and
//! `mm/shmem.c` (`shmem_writeout`: the object, not the PTEs, holds the
//! swap entry). There is no swap cache: each swap-in makes a private copy,
//! which is why a swapped-in anonymous page is always exclusive.

use alloc::vec::Vec;

use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::hw::{Hw, Pfn};
use crate::pte::SwapEntry;
use crate::system::{MemSystem, ShmemPage};

/// The swap device: one frame of reserved RAM per slot.
#[derive(Debug)]
pub struct SwapDevice {
    frames: Vec<Pfn>,
    count: Vec<u32>,
    bad: Vec<bool>,
    used: u64,
}

/// Why a folio could not be swapped out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwapOutError {
    /// No swap device, or it is full.
    NoSpace,
    /// Not a swappable folio (zero page, page table, free frame...).
    NotSwappable,
}

impl SwapDevice {
    pub(crate) fn new(frames: Vec<Pfn>) -> Self {
        let n = frames.len();
        SwapDevice {
            frames,
            count: alloc::vec![0; n],
            bad: alloc::vec![false; n],
            used: 0,
        }
    }
    fn alloc(&mut self) -> Option<u64> {
        let off = self.count.iter().position(|&c| c == 0)?;
        self.count[off] = 1;
        self.used += 1;
        Some(off as u64)
    }
    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used
    }
    /// Slots in total.
    pub fn total(&self) -> u64 {
        self.frames.len() as u64
    }
    /// References held on slot `off` (`swap_map[off]`).
    pub fn count(&self, off: u64) -> u32 {
        self.count.get(off as usize).copied().unwrap_or(0)
    }
    /// Makes the next read of slot `off` fail (I/O error injection). The
    /// flag clears when the slot is freed.
    pub fn inject_error(&mut self, off: u64) {
        if let Some(b) = self.bad.get_mut(off as usize) {
            *b = true;
        }
    }
}

impl<H: Hw> MemSystem<H> {
    /// The swap device, if configured.
    pub fn swap_device(&mut self) -> Option<&mut SwapDevice> {
        self.swap.as_mut()
    }

    /// `swap_duplicate`.
    pub(crate) fn swap_dup(&mut self, e: SwapEntry) {
        let d = self.swap.as_mut().expect("swap device");
        assert!(d.count[e.offset as usize] > 0, "dup of free swap slot");
        d.count[e.offset as usize] += 1;
    }

    /// `swap_free`: drops one reference; frees the slot at zero.
    pub(crate) fn swap_free(&mut self, e: SwapEntry) {
        let d = self.swap.as_mut().expect("swap device");
        let c = &mut d.count[e.offset as usize];
        assert!(*c > 0, "swap slot refcount underflow");
        *c -= 1;
        if *c == 0 {
            d.bad[e.offset as usize] = false;
            d.used -= 1;
        }
    }

    /// Reads slot `e` into frame `dst` (`swap_read_folio`); `Err` on an I/O
    /// error.
    pub(crate) fn swap_read(&mut self, e: SwapEntry, dst: Pfn) -> Result<(), ()> {
        let d = self.swap.as_ref().expect("swap device");
        if d.bad[e.offset as usize] {
            return Err(());
        }
        let src = d.frames[e.offset as usize];
        self.hw.copy_frame(dst, src);
        self.counters.swap_ins += 1;
        Ok(())
    }

    /// Swaps out the folio containing `page`: unmap everywhere through the
    /// rmap, then write it out, then free it (`shrink_folio_list`).
    pub fn swap_out_folio(&mut self, page: Pfn) -> Result<(), SwapOutError> {
        let head = self.frames.folio_of(page);
        let f = *self.frames.get(head).ok_or(SwapOutError::NotSwappable)?;
        if f.use_ != FrameUse::Folio {
            return Err(SwapOutError::NotSwappable);
        }
        let nr = 1u64 << f.order;
        let dev = self.swap.as_mut().ok_or(SwapOutError::NoSpace)?;
        if dev.total() - dev.used() < nr {
            return Err(SwapOutError::NoSpace);
        }
        let entries: Vec<SwapEntry> = (0..nr)
            .map(|_| SwapEntry {
                uffd_wp: false,
                soft_dirty: false,
                dev: 0,
                offset: dev.alloc().expect("checked free slots"),
            })
            .collect();
        // Isolate and lock: our own reference keeps the folio alive while
        // unmapped.
        self.frames.get_folio(head, 1);
        self.frames
            .get_mut(head)
            .flags
            .set(FolioFlags::LOCKED, true);
        match f.mapping {
            Mapping::Anon { .. } => {
                self.try_to_unmap(head, Some(&entries));
            }
            Mapping::Shmem { obj, index } => {
                self.try_to_unmap(head, None);
                let s = self.shmems.get_mut(&obj).expect("live shmem");
                s.pages.insert(index, ShmemPage::Swap(entries[0]));
                // The object's page-cache reference becomes a swap reference.
                self.frames.put_folio(&mut self.hw, head, 1);
            }
            Mapping::None | Mapping::HugeFile { .. } => {
                unreachable!("no swap for this folio")
            }
        }
        // pageout(): the folio is unmapped and flushed; nobody can write it.
        for (i, e) in entries.iter().enumerate() {
            let d = self.swap.as_ref().expect("swap device");
            let slot = d.frames[e.offset as usize];
            self.hw.copy_frame(slot, head.offset(i as u64));
        }
        self.counters.swap_outs += nr;
        if matches!(f.mapping, Mapping::Anon { .. }) {
            // Drop the allocation references: slots no PTE took are freed.
            for e in entries {
                self.swap_free(e);
            }
        }
        self.frames
            .get_mut(head)
            .flags
            .set(FolioFlags::LOCKED, false);
        self.frames.put_folio(&mut self.hw, head, 1);
        Ok(())
    }

    /// Reclaims up to `nr` folios: folios referenced since the last scan
    /// get a second chance (their accessed bits are cleared), the others are
    /// swapped out. Returns how many were swapped out.
    pub fn reclaim(&mut self, nr: usize) -> usize {
        let candidates: Vec<Pfn> = self
            .frames
            .iter()
            .filter(|(_, f)| f.use_ == FrameUse::Folio && f.mapping != Mapping::None)
            .map(|(p, _)| p)
            .collect();
        let mut done = 0;
        for head in candidates {
            if done == nr {
                break;
            }
            if self.folio_referenced(head) > 0 {
                continue;
            }
            match self.swap_out_folio(head) {
                Ok(()) => done += 1,
                Err(SwapOutError::NoSpace) => break,
                Err(SwapOutError::NotSwappable) => {}
            }
        }
        done
    }
}
