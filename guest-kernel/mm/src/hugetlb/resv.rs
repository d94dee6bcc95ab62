//! hugetlb reservations: made at mmap, consumed by faults, returned at
//! close, truncation and hole punching.
//!
//! Mirrors `mm/hugetlb.c` (6.18): `hugetlb_reserve_pages`,
//! `vma_needs_reservation` / `vma_commit_reservation`, `vma_has_reserves`,
//! `hugetlb_vm_op_close`, `hugetlb_unreserve_pages`. A shared mapping
//! reserves once per file index (the file's map, shared by every mapping
//! of it); a private one reserves for the whole mapping, and its owner's
//! map records which reservations its faults consumed. Children of fork
//! have no reservations and fault from the unreserved pool, as in Linux.
//!
//! The invariant the checker holds to: `resv_huge_pages` equals, over all
//! files, the reserved indices with no page in the cache, plus, over all
//! owner VMAs, their indices whose reservation is not consumed.

use crate::errno::Errno;
use crate::hw::Hw;
use crate::ids::{HugeFileId, MmId, ResvId};
use crate::system::MemSystem;
use crate::vma::{Backing, HugeResv, VmFlags, Vma};

use super::{HSTATE_ORDERS, PrivateResv};

impl<H: Hw> MemSystem<H> {
    /// The hugetlb file and hstate of a hugetlb VMA.
    pub(crate) fn huge_file_of(&self, v: &Vma) -> (HugeFileId, usize) {
        let Backing::Hugetlb { file, .. } = v.backing else {
            unreachable!("hugetlb VMA without a file")
        };
        (file, self.huge.files[&file].hstate)
    }

    /// `vma_hugecache_offset`: the huge page index of `va` in the file.
    pub(crate) fn huge_index(&self, v: &Vma, va: u64) -> u64 {
        let (_, h) = self.huge_file_of(v);
        v.page_index(va) >> HSTATE_ORDERS[h]
    }

    /// `hugetlb_reserve_pages` for file indices `[from, to)` of a new
    /// mapping: nothing with `MAP_NORESERVE`; the indices not yet reserved
    /// for a shared mapping; every index for a private one, which then owns
    /// the returned map. `ENOMEM` when the pool cannot cover it.
    pub(crate) fn hugetlb_reserve_pages(
        &mut self,
        file: HugeFileId,
        from: u64,
        to: u64,
        vf: u64,
    ) -> Result<HugeResv, Errno> {
        if vf & VmFlags::NORESERVE != 0 {
            return Ok(HugeResv::None);
        }
        let h = self.huge.files[&file].hstate;
        if vf & VmFlags::MAYSHARE != 0 {
            let f = &self.huge.files[&file];
            let chg = (from..to).filter(|i| !f.resv.contains(i)).count() as i64;
            self.hugetlb_acct_memory(h, chg)?;
            let f = self.huge.files.get_mut(&file).expect("live file");
            f.resv.extend(from..to);
            return Ok(HugeResv::None);
        }
        self.hugetlb_acct_memory(h, (to - from) as i64)?;
        let id = ResvId(self.new_id());
        self.huge.private.insert(id, PrivateResv::default());
        Ok(HugeResv::Owner(id))
    }

    /// `vma_needs_reservation`: whether a fault at file index `idx` of `v`
    /// has no reservation to consume.
    pub(crate) fn vma_needs_reservation(&self, v: &Vma, idx: u64) -> bool {
        let Backing::Hugetlb { file, resv, .. } = &v.backing else {
            unreachable!("hugetlb VMA")
        };
        if v.flags.has(VmFlags::MAYSHARE) {
            return !self.huge.files[file].resv.contains(&idx);
        }
        match resv {
            HugeResv::Owner(id) => self.huge.private[id].consumed.contains(&idx),
            _ => true,
        }
    }

    /// `vma_commit_reservation`: record that index `idx` has its page.
    pub(crate) fn vma_commit_reservation(&mut self, v: &Vma, idx: u64) {
        let Backing::Hugetlb { file, resv, .. } = &v.backing else {
            unreachable!("hugetlb VMA")
        };
        if v.flags.has(VmFlags::MAYSHARE) {
            if let Some(f) = self.huge.files.get_mut(file) {
                f.resv.insert(idx);
            }
        } else if let HugeResv::Owner(id) = resv {
            if let Some(m) = self.huge.private.get_mut(id) {
                m.consumed.insert(idx);
            }
        }
    }

    /// `hugetlb_vm_op_close` for a VMA leaving `mm`: an owner returns the
    /// reservations of its range that no fault consumed; the map dies with
    /// its last VMA.
    pub(crate) fn hugetlb_vma_close(&mut self, mm: MmId, v: &Vma) {
        let Backing::Hugetlb {
            file,
            resv: HugeResv::Owner(id),
            ..
        } = v.backing
        else {
            return;
        };
        #[cfg(test)]
        if self.bug_huge_resv_leak {
            return;
        }
        let (from, to) = (self.huge_index(v, v.start), self.huge_index(v, v.end));
        let consumed = self.huge.private[&id].consumed.range(from..to).count() as u64;
        let h = self.huge.files[&file].hstate;
        let _ = self.hugetlb_acct_memory(h, -((to - from - consumed) as i64));
        let shared_with_another = self.huge.files[&file].i_mmap.iter().any(|&(m, s)| {
            (m, s) != (mm, v.start)
                && self.mms.get(&m).and_then(|a| a.vmas.get(s)).is_some_and(|w| {
                    matches!(w.backing, Backing::Hugetlb { resv: HugeResv::Owner(x), .. } if x == id)
                })
        });
        if !shared_with_another {
            self.huge.private.remove(&id);
        }
    }

    /// `hugetlb_unreserve_pages`: file indices `[start, end)` lose their
    /// reservations; `freed` of them had pages, whose reservations were
    /// consumed already. The rest are returned to the pool.
    pub(crate) fn hugetlb_unreserve_pages(
        &mut self,
        file: HugeFileId,
        start: u64,
        end: u64,
        freed: u64,
    ) {
        let Some(f) = self.huge.files.get_mut(&file) else {
            return;
        };
        let gone: alloc::vec::Vec<u64> = f.resv.range(start..end).copied().collect();
        for i in &gone {
            f.resv.remove(i);
        }
        let h = f.hstate;
        let unused = (gone.len() as u64).saturating_sub(freed);
        let _ = self.hugetlb_acct_memory(h, -(unused as i64));
    }

    /// The last mapping of an anonymous hugetlb file went: the inode is
    /// evicted (`hugetlbfs_evict_inode` → `remove_inode_hugepages` over
    /// the whole file), freeing its pages and reservations.
    pub(crate) fn hugetlb_evict(&mut self, file: HugeFileId) {
        let Some(f) = self.huge.files.get_mut(&file) else {
            return;
        };
        let pages: alloc::vec::Vec<crate::hw::Pfn> =
            core::mem::take(&mut f.pages).into_values().collect();
        for &head in &pages {
            self.huge_put(head, 1);
        }
        self.hugetlb_unreserve_pages(file, 0, u64::MAX, pages.len() as u64);
        self.huge.files.remove(&file);
    }
}
