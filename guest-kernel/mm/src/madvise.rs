//! `madvise`: `MADV_DONTNEED` (drop the pages of a range), `MADV_PAGEOUT`
//! (swap out private pages now), and the hints that need no action.
//!
//! Mirrors `mm/madvise.c` (`madvise_dontneed_single_vma` ->
//! `zap_page_range_single`, `madvise_pageout`). After `MADV_DONTNEED` a
//! private anonymous range reads as zeroes, while a shared range keeps its
//! data in the shmem object. A range with holes is processed where mapped
//! and then fails with `ENOMEM`, like Linux.

use alloc::collections::BTreeSet;
use alloc::vec::Vec;

use crate::errno::Errno;
use crate::gather::MmuGather;
use crate::hw::{Hw, PAGE_SIZE, Pfn};
use crate::ids::MmId;
use crate::mmap::page_align;
use crate::pgtable;
use crate::pte::Pte;
use crate::swap::SwapOutError;
use crate::system::MemSystem;

/// `MADV_NORMAL`.
pub const MADV_NORMAL: u32 = 0;
/// `MADV_RANDOM`.
pub const MADV_RANDOM: u32 = 1;
/// `MADV_SEQUENTIAL`.
pub const MADV_SEQUENTIAL: u32 = 2;
/// `MADV_WILLNEED`.
pub const MADV_WILLNEED: u32 = 3;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: u32 = 4;
/// `MADV_COLD`.
pub const MADV_COLD: u32 = 20;
/// `MADV_PAGEOUT`.
pub const MADV_PAGEOUT: u32 = 21;

impl<H: Hw> MemSystem<H> {
    /// `madvise`.
    pub(crate) fn do_madvise(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        advice: u32,
    ) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if !matches!(
            advice,
            MADV_NORMAL
                | MADV_RANDOM
                | MADV_SEQUENTIAL
                | MADV_WILLNEED
                | MADV_DONTNEED
                | MADV_COLD
                | MADV_PAGEOUT
        ) {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        let mut hole = false;
        let mut cur = addr;
        let mut ranges = Vec::new();
        while cur < end {
            match self.mm(mm).vmas.find(cur) {
                Some(v) => {
                    ranges.push((cur, v.end.min(end), v.is_shared()));
                    cur = v.end;
                }
                None => {
                    hole = true;
                    match self.mm(mm).vmas.overlapping(cur, end).first() {
                        Some(&next) => cur = next,
                        None => break,
                    }
                }
            }
        }
        for (s, e, shared) in ranges {
            match advice {
                MADV_DONTNEED => {
                    let mut g = MmuGather::new(mm);
                    self.zap_range(&mut g, s, e, false);
                    self.tlb_finish(g);
                }
                MADV_PAGEOUT if !shared && self.swap.is_some() => self.pageout(mm, s, e),
                _ => {}
            }
        }
        if hole { Err(Errno::ENOMEM) } else { Ok(()) }
    }

    /// `madvise_pageout`: swap out private folios mapped only here.
    fn pageout(&mut self, mm: MmId, start: u64, end: u64) {
        let root = self.mm(mm).root;
        let mut heads: BTreeSet<Pfn> = BTreeSet::new();
        for (_, _, pte) in pgtable::leaves(&self.hw, root, start, end) {
            if let Pte::Mapped { pfn, .. } = pte {
                if pfn != self.zero && self.frames.at(pfn).mapcount == 1 {
                    heads.insert(self.frames.folio_of(pfn));
                }
            }
        }
        for h in heads {
            if self.swap_out_folio(h) == Err(SwapOutError::NoSpace) {
                break;
            }
        }
    }
}
