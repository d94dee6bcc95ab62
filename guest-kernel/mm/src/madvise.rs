//! `madvise`: dropping pages (`DONTNEED`, `FREE`, `REMOVE`), reclaim
//! (`PAGEOUT`, `COLD`), populating (`POPULATE_READ` / `WRITE`) and the
//! advice that lives on the VMA as a flag (fork behaviour, access pattern,
//! dump, huge pages, KSM), which splits and merges VMAs like mprotect.
//!
//! Mirrors `mm/madvise.c` as of Linux 6.18 (`madvise_behavior_valid`,
//! `is_valid_madvise`, `madvise_walk_vmas`, `madvise_vma_behavior`,
//! `madvise_dontneed_free`, `madvise_free_pte_range`, `madvise_remove`,
//! `madvise_populate`). A range with holes is processed where mapped and
//! then fails with `ENOMEM`. `MADV_FREE` marks exclusive private pages
//! lazily free (Linux: anonymous folios without `PG_swapbacked`): they keep
//! their data until reclaim, which drops them if they were not written
//! since, even without swap. Locked memory refuses `DONTNEED`, `FREE`,
//! `COLD` and `PAGEOUT` (`DONTNEED_LOCKED` is the way to drop it). Guard
//! regions (`GUARD_INSTALL` / `REMOVE`, 6.13) are guard PTE markers
//! (`pte.rs`): they survive every zap but the mapping's own end, and fork
//! copies them. `MADV_COLLAPSE` needs THP, which guest-mm does not have.

use alloc::collections::BTreeSet;

use crate::errno::Errno;
use crate::frame::{FolioFlags, FrameUse};
use crate::gather::{MmuGather, Zap};
use crate::hw::{FlushRange, Hw, PAGE_SIZE, Pfn};
use crate::ids::MmId;
use crate::mmap::page_align;
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::swap::SwapOutError;
use crate::system::MemSystem;
use crate::vma::{Backing, VmFlags, Vma};

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
/// `MADV_FREE`: lazily free private pages.
pub const MADV_FREE: u32 = 8;
/// `MADV_REMOVE`: punch a hole in the shared object.
pub const MADV_REMOVE: u32 = 9;
/// `MADV_DONTFORK`.
pub const MADV_DONTFORK: u32 = 10;
/// `MADV_DOFORK`.
pub const MADV_DOFORK: u32 = 11;
/// `MADV_MERGEABLE` (KSM).
pub const MADV_MERGEABLE: u32 = 12;
/// `MADV_UNMERGEABLE`.
pub const MADV_UNMERGEABLE: u32 = 13;
/// `MADV_HUGEPAGE`.
pub const MADV_HUGEPAGE: u32 = 14;
/// `MADV_NOHUGEPAGE`.
pub const MADV_NOHUGEPAGE: u32 = 15;
/// `MADV_DONTDUMP`.
pub const MADV_DONTDUMP: u32 = 16;
/// `MADV_DODUMP`.
pub const MADV_DODUMP: u32 = 17;
/// `MADV_WIPEONFORK`.
pub const MADV_WIPEONFORK: u32 = 18;
/// `MADV_KEEPONFORK`.
pub const MADV_KEEPONFORK: u32 = 19;
/// `MADV_COLD`.
pub const MADV_COLD: u32 = 20;
/// `MADV_PAGEOUT`.
pub const MADV_PAGEOUT: u32 = 21;
/// `MADV_POPULATE_READ`.
pub const MADV_POPULATE_READ: u32 = 22;
/// `MADV_POPULATE_WRITE`.
pub const MADV_POPULATE_WRITE: u32 = 23;
/// `MADV_DONTNEED_LOCKED`: `DONTNEED` that also drops locked pages.
pub const MADV_DONTNEED_LOCKED: u32 = 24;
/// `MADV_GUARD_INSTALL` (6.13): every page of the range becomes a guard
/// marker; touching it is SIGSEGV.
pub const MADV_GUARD_INSTALL: u32 = 102;
/// `MADV_GUARD_REMOVE`: the range's guard markers become none again.
pub const MADV_GUARD_REMOVE: u32 = 103;

/// What one piece of advice does to a VMA's flags (`madvise_vma_behavior`),
/// or `None` if it is not a flag change. `Err` when the VMA refuses it.
fn flag_change(advice: u32, v: &Vma) -> Option<Result<u64, Errno>> {
    let f = v.flags.0;
    let new = match advice {
        MADV_NORMAL => f & !(VmFlags::RAND_READ | VmFlags::SEQ_READ),
        MADV_SEQUENTIAL => (f & !VmFlags::RAND_READ) | VmFlags::SEQ_READ,
        MADV_RANDOM => (f & !VmFlags::SEQ_READ) | VmFlags::RAND_READ,
        MADV_DONTFORK => f | VmFlags::DONTCOPY,
        MADV_DOFORK => f & !VmFlags::DONTCOPY,
        // Anonymous private memory only.
        MADV_WIPEONFORK if v.is_shared() || v.is_hugetlb() || v.file().is_some() => {
            return Some(Err(Errno::EINVAL));
        }
        MADV_WIPEONFORK => f | VmFlags::WIPEONFORK,
        MADV_KEEPONFORK if v.flags.has(VmFlags::DROPPABLE) => return Some(Err(Errno::EINVAL)),
        MADV_KEEPONFORK => f & !VmFlags::WIPEONFORK,
        MADV_DONTDUMP => f | VmFlags::DONTDUMP,
        MADV_DODUMP if v.flags.has(VmFlags::DROPPABLE) => return Some(Err(Errno::EINVAL)),
        MADV_DODUMP => f & !VmFlags::DONTDUMP,
        MADV_HUGEPAGE => (f & !VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE,
        MADV_NOHUGEPAGE => (f & !VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE,
        // ksm_madvise ignores shared and droppable memory.
        MADV_MERGEABLE
            if v.flags.has(
                VmFlags::SHARED | VmFlags::MAYSHARE | VmFlags::DROPPABLE | VmFlags::HUGETLB,
            ) =>
        {
            f
        }
        MADV_MERGEABLE => f | VmFlags::MERGEABLE,
        MADV_UNMERGEABLE => f & !VmFlags::MERGEABLE,
        _ => return None,
    };
    Some(Ok(new))
}

/// `madvise_behavior_valid`. `MADV_HWPOISON` and `MADV_SOFT_OFFLINE` are
/// not: they exist only with CONFIG_MEMORY_FAILURE, which the reference
/// kernel (the host's 6.18) is built without.
fn valid(advice: u32) -> bool {
    matches!(
        advice,
        MADV_NORMAL..=MADV_DONTNEED
            | MADV_FREE..=MADV_DONTNEED_LOCKED
            | MADV_GUARD_INSTALL
            | MADV_GUARD_REMOVE
    )
}

impl<H: Hw> MemSystem<H> {
    /// `madvise`.
    pub(crate) fn do_madvise(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        advice: u32,
    ) -> Result<(), Errno> {
        if !valid(advice) || addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        // is_valid_madvise: a length that rounds up to zero is invalid.
        let len = page_align(len)
            .filter(|&l| l != 0 || len == 0)
            .ok_or(Errno::EINVAL)?;
        let end = addr.checked_add(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Ok(());
        }
        if matches!(advice, MADV_POPULATE_READ | MADV_POPULATE_WRITE) {
            return self.madvise_populate(mm, addr, end, advice == MADV_POPULATE_WRITE);
        }
        // madvise_walk_vmas: each mapped piece in order; a hole is
        // remembered and reported after the rest was done.
        let mut hole = false;
        let mut cur = addr;
        while cur < end {
            let Some(&next) = self.mm(mm).vmas.overlapping(cur, end).first() else {
                return Err(Errno::ENOMEM);
            };
            let v = self.mm(mm).vmas.get(next).cloned().expect("vma");
            if v.start > cur {
                hole = true;
                cur = v.start;
            }
            let seg_end = v.end.min(end);
            self.madvise_vma(mm, &v, cur, seg_end, advice)?;
            cur = seg_end;
        }
        if hole { Err(Errno::ENOMEM) } else { Ok(()) }
    }

    /// The advice for `[start, end)` inside VMA `v`.
    fn madvise_vma(
        &mut self,
        mm: MmId,
        v: &Vma,
        start: u64,
        end: u64,
        advice: u32,
    ) -> Result<(), Errno> {
        let locked = v.flags.has(VmFlags::LOCKED);
        if let Some(change) = flag_change(advice, v) {
            let newflags = change?;
            if newflags != v.flags.0 {
                if !self.hugetlb_split_ok(mm, start) || !self.hugetlb_split_ok(mm, end) {
                    return Err(Errno::EINVAL);
                }
                self.modify_vma_flags(mm, start, end, newflags);
            }
            return Ok(());
        }
        if v.is_hugetlb() {
            return match advice {
                MADV_DONTNEED | MADV_DONTNEED_LOCKED => self.hugetlb_dontneed(mm, v, start, end),
                MADV_REMOVE => self.hugetlb_punch_hole(v, start, end),
                // Not for hugetlb: FREE (madvise_dontneed_free_valid_vma),
                // COLD and PAGEOUT (can_madv_lru_vma), guard regions.
                MADV_FREE | MADV_COLD | MADV_PAGEOUT | MADV_GUARD_INSTALL | MADV_GUARD_REMOVE => {
                    Err(Errno::EINVAL)
                }
                _ => Ok(()),
            };
        }
        match advice {
            MADV_DONTNEED | MADV_FREE if locked => Err(Errno::EINVAL),
            MADV_DONTNEED | MADV_DONTNEED_LOCKED => {
                let mut g = MmuGather::new(mm);
                self.zap_range(&mut g, start, end, Zap::Pages);
                self.tlb_finish(g);
                Ok(())
            }
            // madvise_free_single_vma: anonymous (not shmem) memory only.
            MADV_FREE if v.is_shared() || v.file().is_some() => Err(Errno::EINVAL),
            MADV_FREE => {
                self.lazy_free(mm, start, end);
                Ok(())
            }
            MADV_REMOVE => self.madvise_remove(v, start, end),
            MADV_GUARD_INSTALL => self.guard_install(mm, v, start, end),
            MADV_GUARD_REMOVE => self.guard_remove(mm, v, start, end),
            // can_madv_lru_vma.
            MADV_COLD | MADV_PAGEOUT if locked => Err(Errno::EINVAL),
            MADV_PAGEOUT => {
                self.pageout(mm, start, end);
                Ok(())
            }
            // WILLNEED reads swap ahead into the swap cache and COLD ages
            // pages: neither changes what is mapped.
            _ => Ok(()),
        }
    }

    /// `madvise_free_pte_range`: exclusive private pages become lazily free
    /// (clean, old, not swap-backed); swapped pages and poison markers are
    /// dropped.
    fn lazy_free(&mut self, mm: MmId, start: u64, end: u64) {
        let root = self.mm(mm).root;
        let mut changed = false;
        for (_, slot, pte) in pgtable::leaves(&self.hw, root, start, end) {
            match pte {
                Pte::Mapped { pfn, flags } if pfn != self.zero => {
                    let head = self.frames.folio_of(pfn);
                    let f = self.frames.at(head);
                    // Large folios and folios other processes map stay.
                    if f.order != 0 || f.mapcount != 1 || !f.flags.contains(FolioFlags::ANON) {
                        continue;
                    }
                    let clean = flags.without(PteFlags::DIRTY).without(PteFlags::ACCESSED);
                    if clean != flags {
                        pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: clean });
                        changed = true;
                    }
                    let f = self.frames.get_mut(head);
                    f.flags.set(FolioFlags::DIRTY, false);
                    f.flags.set(FolioFlags::SWAPBACKED, false);
                }
                Pte::Swap(e) => {
                    pgtable::write_pte(&mut self.hw, slot, Pte::None);
                    self.swap_free(e);
                }
                // A poison marker goes with the lost data; a guard stays.
                Pte::Marker(MarkerKind::Poisoned) => {
                    pgtable::write_pte(&mut self.hw, slot, Pte::None)
                }
                _ => {}
            }
        }
        // The next write must set the dirty bit again, so no CPU may keep a
        // translation that already has it.
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
    }

    /// Drops a lazily freed folio that nobody wrote since `MADV_FREE`, or
    /// a droppable one (`try_to_unmap_one` for `!PG_swapbacked`); a written
    /// lazily freed one becomes swap-backed again. Returns whether it was
    /// dropped.
    pub(crate) fn discard_lazyfree(&mut self, head: Pfn) -> bool {
        let f = self.frames.at(head);
        if f.use_ != FrameUse::Folio
            || !f.flags.contains(FolioFlags::ANON)
            || f.flags.contains(FolioFlags::SWAPBACKED)
        {
            return false;
        }
        let hits = self.rmap_walk(head);
        let written = f.flags.contains(FolioFlags::DIRTY)
            || hits.iter().any(|h| h.flags.contains(PteFlags::DIRTY));
        // Droppable memory goes even when written (try_to_unmap_one).
        let droppable = hits.iter().any(|h| {
            self.mms
                .get(&h.mm)
                .and_then(|a| a.vmas.find(h.va))
                .is_some_and(|v| v.flags.has(VmFlags::DROPPABLE))
        });
        if written && !droppable {
            self.frames
                .get_mut(head)
                .flags
                .set(FolioFlags::SWAPBACKED, true);
            return false;
        }
        self.frames.get_folio(head, 1);
        self.try_to_unmap(head, None);
        self.frames.put_folio(&mut self.hw, head, 1);
        true
    }

    /// `madvise_pageout`: reclaim the folios mapped only here
    /// (`shrink_folio_list`). Lazily freed clean anonymous folios are
    /// dropped; other anonymous ones go to swap if there is any, else stay
    /// mapped (they cannot be added to swap). Shared folios are unmapped
    /// first, then written to swap, or kept in the object without swap.
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
            let anon = self.frames.at(h).flags.contains(FolioFlags::ANON);
            if anon && self.discard_lazyfree(h) {
                continue;
            }
            if self.swap.is_some() {
                if self.swap_out_folio(h) == Err(SwapOutError::NoSpace) {
                    break;
                }
            } else if !anon {
                self.frames.get_folio(h, 1);
                self.try_to_unmap(h, None);
                self.frames.put_folio(&mut self.hw, h, 1);
            }
        }
    }

    /// `madvise_remove`: punch `[start, end)` out of the shared object
    /// (`shmem_fallocate(PUNCH_HOLE)`): every mapping of those pages loses
    /// them, and they read as zeroes afterwards. Private memory has no
    /// object (`EINVAL`).
    fn madvise_remove(&mut self, v: &Vma, start: u64, end: u64) -> Result<(), Errno> {
        if v.flags.has(VmFlags::LOCKED) {
            return Err(Errno::EINVAL);
        }
        // vma_is_shared_maywrite: a private file mapping has no hole to
        // punch through; anonymous memory has no file at all.
        let obj = match v.backing {
            Backing::Shmem { obj, .. } => obj,
            Backing::PrivateFile { .. } => return Err(Errno::EACCES),
            _ => return Err(Errno::EINVAL),
        };
        if !v.flags.has(VmFlags::MAYWRITE) {
            return Err(Errno::EACCES);
        }
        // vfs_fallocate(PUNCH_HOLE | KEEP_SIZE) over the range's file bytes.
        let (first, last) = (v.page_index(start), v.page_index(end));
        self.shmem_punch(obj, first * PAGE_SIZE, last * PAGE_SIZE, false);
        Ok(())
    }

    /// `is_valid_guard_vma`: not hugetlb, and not mlocked unless removing
    /// (removal destroys nothing).
    fn guard_vma_ok(v: &Vma, allow_locked: bool) -> bool {
        !v.flags.has(VmFlags::HUGETLB) && (allow_locked || !v.flags.has(VmFlags::LOCKED))
    }

    /// `madvise_guard_install`: zap whatever is mapped in `[start, end)`
    /// (existing guard markers stay) and put a guard marker in every slot.
    /// The VMA gets an anon_vma first, as in Linux, so fork copies its
    /// page tables (and with them the markers).
    fn guard_install(&mut self, mm: MmId, v: &Vma, start: u64, end: u64) -> Result<(), Errno> {
        if !Self::guard_vma_ok(v, false) {
            return Err(Errno::EINVAL);
        }
        match self
            .mm_mut(mm)
            .vmas
            .get_mut(v.start)
            .map(|x| &mut x.backing)
        {
            Some(Backing::Shmem { anon_vma, .. }) => *anon_vma = true,
            _ => {
                self.anon_vma_prepare(mm, start);
            }
        }
        let mut g = MmuGather::new(mm);
        self.zap_range(&mut g, start, end, Zap::Pages);
        self.tlb_finish(g);
        let root = self.mm(mm).root;
        for va in (start..end).step_by(PAGE_SIZE as usize) {
            let slot = pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, root, va)
                .ok_or(Errno::ENOMEM)?;
            pgtable::write_pte(&mut self.hw, slot, Pte::Marker(MarkerKind::Guard));
        }
        Ok(())
    }

    /// `madvise_guard_remove`: guard markers in `[start, end)` become none;
    /// everything else stays.
    fn guard_remove(&mut self, mm: MmId, v: &Vma, start: u64, end: u64) -> Result<(), Errno> {
        if !Self::guard_vma_ok(v, true) {
            return Err(Errno::EINVAL);
        }
        let root = self.mm(mm).root;
        for (_, slot, pte) in pgtable::leaves(&self.hw, root, start, end) {
            if pte == Pte::Marker(MarkerKind::Guard) {
                pgtable::write_pte(&mut self.hw, slot, Pte::None);
            }
        }
        Ok(())
    }

    /// `madvise_populate`: fault the range in for reading or writing; the
    /// first failure ends it (no VMA: `ENOMEM`; a VMA that does not allow
    /// the access: `EINVAL`; a fault that fails: `EFAULT`).
    fn madvise_populate(
        &mut self,
        mm: MmId,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<(), Errno> {
        let mut cur = start;
        while cur < end {
            let Some(v) = self.mm(mm).vmas.find(cur).cloned() else {
                return Err(Errno::ENOMEM);
            };
            let allowed = if write {
                v.flags.has(VmFlags::WRITE)
            } else {
                v.flags.has(VmFlags::READ)
            };
            if !allowed {
                return Err(Errno::EINVAL);
            }
            let seg_end = v.end.min(end);
            self.fault_range(mm, cur, seg_end, write)?;
            cur = seg_end;
        }
        Ok(())
    }
}
