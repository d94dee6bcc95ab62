//! The hugetlb part of the invariant checker: huge entries, files, pool
//! counters and the exact reservation count.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::hw::{Hw, Pfn};
use crate::pgtable;
use crate::pte::{Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{Backing, HugeResv, VmFlags};

use super::{HSTATE_ORDERS, huge_level, huge_size};

impl<H: Hw> MemSystem<H> {
    /// Checks huge entries (counting their mappings into `mapcount`), the
    /// files (their page-cache references into `cache_refs`) and the pools.
    pub(crate) fn check_hugetlb(
        &self,
        bad: &mut Vec<String>,
        mapcount: &mut BTreeMap<Pfn, u32>,
        cache_refs: &mut BTreeMap<Pfn, u32>,
    ) {
        let mut outstanding = [0u64; 2];
        for (&id, a) in &self.mms {
            for v in a.vmas.iter() {
                let Backing::Hugetlb { file, chain, resv } = &v.backing else {
                    if v.is_hugetlb() {
                        bad.push(format!(
                            "mm {id:?}: VM_HUGETLB vma {:#x} without file",
                            v.start
                        ));
                    }
                    continue;
                };
                let Some(f) = self.huge.files.get(file) else {
                    bad.push(format!("mm {id:?}: vma {:#x} maps dead {file:?}", v.start));
                    continue;
                };
                let size = huge_size(f.hstate);
                if !f.i_mmap.contains(&(id, v.start))
                    || !v.is_hugetlb()
                    || v.start % size != 0
                    || v.end % size != 0
                {
                    bad.push(format!(
                        "mm {id:?}: hugetlb vma {:#x} unlisted or unaligned",
                        v.start
                    ));
                }
                if let HugeResv::Owner(r) = resv {
                    match self.huge.private.get(r) {
                        Some(m) => {
                            let (from, to) =
                                (self.huge_index(v, v.start), self.huge_index(v, v.end));
                            let used = m.consumed.range(from..to).count() as u64;
                            outstanding[f.hstate] += to - from - used;
                        }
                        None => bad.push(format!("mm {id:?}: vma {:#x} owns dead {r:?}", v.start)),
                    }
                }
                if !pgtable::leaves(&self.hw, a.root, v.start, v.end).is_empty() {
                    bad.push(format!(
                        "mm {id:?}: 4 KiB PTEs in hugetlb vma {:#x}",
                        v.start
                    ));
                }
                let level = huge_level(f.hstate);
                for (va, _, e) in pgtable::huge_leaves(&self.hw, a.root, v.start, v.end, level) {
                    let Pte::Mapped { pfn, flags } = e else {
                        continue;
                    };
                    let Some(fr) = self.frames.get(pfn) else {
                        bad.push(format!("mm {id:?}: {va:#x} maps unmanaged {:#x}", pfn.0));
                        continue;
                    };
                    if fr.use_ != FrameUse::Folio
                        || !fr.flags.contains(FolioFlags::HUGETLB)
                        || fr.order != HSTATE_ORDERS[f.hstate]
                    {
                        bad.push(format!(
                            "mm {id:?}: {va:#x} huge entry to non-huge {:#x}",
                            pfn.0
                        ));
                        continue;
                    }
                    *mapcount.entry(pfn).or_default() += 1;
                    let idx = v.page_index(va);
                    let ok = match fr.mapping {
                        Mapping::Anon { anon_vma, index } => {
                            !v.flags.has(VmFlags::MAYSHARE)
                                && chain.contains(&anon_vma)
                                && index == idx
                        }
                        Mapping::HugeFile { file: ff, index } => {
                            ff == *file
                                && index == idx
                                && f.pages.get(&(idx >> HSTATE_ORDERS[f.hstate])) == Some(&pfn)
                        }
                        _ => false,
                    };
                    if !ok {
                        bad.push(format!(
                            "mm {id:?}: {va:#x} huge rmap {:?} disagrees",
                            fr.mapping
                        ));
                    }
                    if flags.contains(PteFlags::WRITE)
                        && (!v.flags.has(VmFlags::WRITE) || (!v.is_shared() && !fr.anon_exclusive))
                    {
                        bad.push(format!(
                            "mm {id:?}: {va:#x} writable huge entry not allowed"
                        ));
                    }
                }
            }
            for level in [2, 3] {
                for (va, _, _) in
                    pgtable::huge_leaves(&self.hw, a.root, 0, pgtable::USER_TOP, level)
                {
                    if !a.vmas.find(va).is_some_and(|v| {
                        v.is_hugetlb() && huge_level(self.huge_file_of(v).1) == level
                    }) {
                        bad.push(format!("mm {id:?}: huge entry at {va:#x} outside its vma"));
                    }
                }
            }
        }
        for (&fid, f) in &self.huge.files {
            if f.i_mmap.is_empty() && f.opens == 0 {
                bad.push(format!("{fid:?}: alive without VMAs or open files"));
            }
            for (&idx, &head) in &f.pages {
                *cache_refs.entry(head).or_default() += 1;
                let want = Mapping::HugeFile {
                    file: fid,
                    index: idx << HSTATE_ORDERS[f.hstate],
                };
                if self.frames.get(head).map(|x| x.mapping) != Some(want) {
                    bad.push(format!("{fid:?}: page {idx} has the wrong mapping"));
                }
                if !f.resv.contains(&idx) {
                    bad.push(format!("{fid:?}: page {idx} without a reservation region"));
                }
            }
            outstanding[f.hstate] +=
                f.resv.iter().filter(|i| !f.pages.contains_key(i)).count() as u64;
        }
        // Folios whose freeing will restore a reservation (their owner
        // unmapped them while someone else still maps them).
        let mut heads = [0u64; 2];
        let mut pending = [0u64; 2];
        for (_, fr) in self.frames.iter() {
            if fr.use_ != FrameUse::Folio || !fr.flags.contains(FolioFlags::HUGETLB) {
                continue;
            }
            let Some(h) = HSTATE_ORDERS.iter().position(|&o| o == fr.order) else {
                continue;
            };
            heads[h] += 1;
            pending[h] += u64::from(fr.flags.contains(FolioFlags::RESTORE_RESERVE));
        }
        for (h, s) in self.huge.hstates.iter().enumerate() {
            let (heads, pending) = (heads[h], pending[h]);
            let pooled_ok = s.free_list.iter().all(|&p| {
                self.frames.get(p).is_some_and(|fr| {
                    fr.refcount == 0 && fr.mapcount == 0 && fr.mapping == Mapping::None
                })
            });
            if s.free != s.free_list.len() as u64
                || s.nr != heads
                || s.surplus > s.nr
                || (s.resv as i64) > s.free as i64
                || s.resv.wrapping_add(pending) != outstanding[h]
                || !pooled_ok
            {
                bad.push(format!(
                    "hstate {h}: nr {} ({heads} folios) free {} ({} listed) resv {} \
                     (+{pending} to restore, {} outstanding) surplus {}",
                    s.nr,
                    s.free,
                    s.free_list.len(),
                    s.resv,
                    outstanding[h],
                    s.surplus
                ));
            }
        }
    }

    /// Whether `pfn` heads a free huge folio in a pool.
    pub(crate) fn is_pooled_huge(&self, pfn: Pfn) -> bool {
        self.huge.hstates.iter().any(|s| s.free_list.contains(&pfn))
    }
}
