//! The invariant checker: walk every page table, VMA, folio, shmem object
//! and swap slot, and verify they agree.
//!
//! Linux has pieces of this spread over `CONFIG_DEBUG_VM` (`VM_BUG_ON_*`,
//! `validate_mm`, `page_table_check`); here it is one pass, callable from
//! tests after every step and from the kernel's `mm_check` flag. It checks:
//! VMA trees are sorted, aligned and non-overlapping, with live backing;
//! every PTE lies in a VMA and agrees with it (rmap index, anon_vma in the
//! chain, shmem object page, write permission, exclusivity); mapcounts and
//! refcounts equal what the page tables and objects hold; swap slot counts
//! equal their references; the reverse map finds exactly the PTEs that map
//! each page; no frame is both free and used; every used frame
//! is reachable (no leaks); the buddy free lists match the metadata.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::hw::{Hw, PAGE_SIZE, Pfn};
use crate::ids::ShmemId;
use crate::pgtable::{self, USER_TOP};
use crate::pte::{Pte, PteFlags};
use crate::system::{MemSystem, ProcState, ShmemPage};
use crate::vma::{Backing, VmFlags};

/// The violations found by [`MemSystem::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantError {
    /// One line per violation.
    pub violations: Vec<String>,
}

impl<H: Hw> MemSystem<H> {
    /// Verifies every MM invariant; returns all violations found.
    pub fn check(&self) -> Result<(), InvariantError> {
        let mut bad: Vec<String> = Vec::new();
        let mut mapcount: BTreeMap<Pfn, u32> = BTreeMap::new();
        let mut swaprefs: BTreeMap<u64, u32> = BTreeMap::new();
        let mut cache_refs: BTreeMap<Pfn, u32> = BTreeMap::new();
        let mut tables: BTreeSet<Pfn> = BTreeSet::new();

        for (&id, a) in &self.mms {
            if !tables.insert(a.root) {
                bad.push(format!("mm {id:?}: root shared"));
            }
            let mut prev_end = 0;
            for v in a.vmas.iter() {
                if v.start % PAGE_SIZE != 0
                    || v.end % PAGE_SIZE != 0
                    || v.start >= v.end
                    || v.start < prev_end
                    || v.start < self.cfg.mmap_min_addr
                    || v.end > USER_TOP
                {
                    bad.push(format!("mm {id:?}: bad vma {:#x}..{:#x}", v.start, v.end));
                }
                // A registered VMA has modes and a live context of its own
                // address space (the BUG_ON of userfaultfd_register).
                let ctx_ok = match v.uffd {
                    Some(c) => self.uffds.get(&c).is_some_and(|u| u.mm == id),
                    None => true,
                };
                if v.uffd.is_some() != v.flags.has(VmFlags::UFFD_FLAGS) || !ctx_ok {
                    bad.push(format!("mm {id:?}: vma {:#x} userfaultfd state", v.start));
                }
                prev_end = v.end;
                for av in v.backing.anon_chain() {
                    if !self
                        .anon_vmas
                        .get(av)
                        .is_some_and(|x| x.vmas.contains(&(id, v.start)))
                    {
                        bad.push(format!(
                            "mm {id:?}: vma {:#x} chains to {av:?} without membership",
                            v.start
                        ));
                    }
                }
                // check_hugetlb covers hugetlb VMAs' files.
                if let Some(o) = v.file() {
                    if !self
                        .shmems
                        .get(&o)
                        .is_some_and(|s| s.i_mmap.contains(&(id, v.start)))
                    {
                        bad.push(format!(
                            "mm {id:?}: vma {:#x} maps dead or unlisted {o:?}",
                            v.start
                        ));
                    }
                }
            }
            for (t, _) in pgtable::tables(&self.hw, a.root) {
                if !tables.insert(t) {
                    bad.push(format!("table {:#x} linked twice", t.0));
                }
            }
            for (va, _, pte) in pgtable::leaves(&self.hw, a.root, 0, USER_TOP) {
                let Some(v) = a.vmas.find(va) else {
                    bad.push(format!(
                        "mm {id:?}: PTE at {va:#x} outside any VMA: {pte:?}"
                    ));
                    continue;
                };
                match pte {
                    Pte::Mapped { pfn, flags } => {
                        let accessible =
                            v.flags.has(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
                        if flags.contains(PteFlags::PROTNONE) == accessible
                            || !flags.contains(PteFlags::USER)
                        {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} PTE flags {flags:?} disagree with vma {:?}",
                                v.flags
                            ));
                        }
                        if flags.contains(PteFlags::WRITE) && !v.flags.has(VmFlags::WRITE) {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} writable PTE in non-writable vma"
                            ));
                        }
                        if pfn == self.zero {
                            if flags.contains(PteFlags::WRITE) || v.is_shared() {
                                bad.push(format!(
                                    "mm {id:?}: {va:#x} zero page writable or shared"
                                ));
                            }
                            continue;
                        }
                        let Some(f) = self.frames.get(pfn) else {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} maps unmanaged frame {:#x}",
                                pfn.0
                            ));
                            continue;
                        };
                        if !matches!(f.use_, FrameUse::Folio | FrameUse::Tail(_)) {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} maps {:?} frame {:#x}",
                                f.use_, pfn.0
                            ));
                            continue;
                        }
                        *mapcount.entry(pfn).or_default() += 1;
                        let head = self.frames.folio_of(pfn);
                        let h = self.frames.at(head);
                        let sub = pfn.0 - head.0;
                        let idx = v.page_index(va);
                        let ok = match (h.mapping, &v.backing) {
                            (Mapping::Anon { anon_vma, index }, Backing::Anon { chain }) => {
                                chain.contains(&anon_vma) && index + sub == idx
                            }
                            (
                                Mapping::Anon { anon_vma, index },
                                Backing::PrivateFile { chain, .. },
                            ) => chain.contains(&anon_vma) && index + sub == idx,
                            (
                                Mapping::Shmem { obj, index },
                                Backing::Shmem { obj: o, .. } | Backing::PrivateFile { obj: o, .. },
                            ) => {
                                obj == *o
                                    && index + sub == idx
                                    && self.shmems.get(o).and_then(|s| s.pages.get(&idx))
                                        == Some(&ShmemPage::Folio(head))
                            }
                            _ => false,
                        };
                        if !ok {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} -> {:#x}: rmap {:?} disagrees with vma",
                                pfn.0, h.mapping
                            ));
                        }
                        if flags.contains(PteFlags::WRITE) && flags.contains(PteFlags::UFFD_WP) {
                            // A write would go unseen by the tracker.
                            bad.push(format!("mm {id:?}: {va:#x} writable and uffd-wp protected"));
                        }
                        if flags.contains(PteFlags::WRITE) && self.soft_dirty_needs_fault(v, flags)
                        {
                            // The CPU sets only the dirty bit: soft-dirty
                            // would miss the write.
                            bad.push(format!(
                                "mm {id:?}: {va:#x} writable but not soft-dirty in a cleaned vma"
                            ));
                        }
                        if flags.contains(PteFlags::WRITE) && !v.is_shared() && !f.anon_exclusive {
                            bad.push(format!(
                                "mm {id:?}: {va:#x} writable private page not anon-exclusive"
                            ));
                        }
                    }
                    Pte::Swap(e) => {
                        if v.is_shared() {
                            bad.push(format!("mm {id:?}: {va:#x} swap entry in shared vma"));
                        }
                        *swaprefs.entry(e.offset).or_default() += 1;
                    }
                    Pte::Marker(_) | Pte::None => {}
                    Pte::Table(_) => bad.push(format!("table entry at PTE level {va:#x}")),
                }
            }
        }

        self.check_hugetlb(&mut bad, &mut mapcount, &mut cache_refs);

        self.check_files(&mut bad);
        let mut fd_refs: BTreeMap<ShmemId, u32> = BTreeMap::new();
        for f in self.files.values() {
            if let crate::system::FileObj::Shmem(o) = f.obj {
                *fd_refs.entry(o).or_default() += 1;
            }
        }
        for (&o, s) in &self.shmems {
            let files = fd_refs.remove(&o).unwrap_or(0);
            if s.i_mmap.is_empty() && files == 0 && !s.linked {
                bad.push(format!("{o:?}: alive without VMAs, open files or a name"));
            }
            if s.fd_refs != files {
                bad.push(format!(
                    "{o:?}: {} open-file references, {files} open files",
                    s.fd_refs
                ));
            }
            let named = self.names.values().filter(|&&n| n == o).count();
            if named != usize::from(s.linked) {
                bad.push(format!("{o:?}: linked {}, {named} names", s.linked));
            }
            for &(mm, start) in &s.i_mmap {
                let v = self.mms.get(&mm).and_then(|a| a.vmas.get(start));
                if v.is_none_or(|v| v.file() != Some(o)) {
                    bad.push(format!(
                        "{o:?}: i_mmap lists {mm:?}/{start:#x}, not a VMA of it"
                    ));
                }
            }
            for (&idx, p) in &s.pages {
                match *p {
                    ShmemPage::Folio(h) => {
                        *cache_refs.entry(h).or_default() += 1;
                        if self.frames.get(h).map(|f| f.mapping)
                            != Some(Mapping::Shmem { obj: o, index: idx })
                        {
                            bad.push(format!(
                                "{o:?}: page {idx} folio {:#x} has wrong mapping",
                                h.0
                            ));
                        }
                    }
                    ShmemPage::Swap(e) => *swaprefs.entry(e.offset).or_default() += 1,
                    ShmemPage::Poisoned => {}
                }
            }
        }

        for (&id, av) in &self.anon_vmas {
            if av.vmas.is_empty() {
                bad.push(format!("{id:?}: alive without VMAs"));
            }
            for &(mm, start) in &av.vmas {
                let v = self.mms.get(&mm).and_then(|a| a.vmas.get(start));
                let chained = v.is_some_and(|v| v.backing.anon_chain().contains(&id));
                if !chained {
                    bad.push(format!(
                        "{id:?}: lists {mm:?}/{start:#x}, not a VMA chained to it"
                    ));
                }
            }
        }

        for o in fd_refs.keys() {
            bad.push(format!("open file of dead {o:?}"));
        }

        let mut nfree = 0;
        for (pfn, f) in self.frames.iter() {
            let want_map = mapcount.get(&pfn).copied().unwrap_or(0);
            match f.use_ {
                FrameUse::Free | FrameUse::Reserved => {
                    nfree += u64::from(f.use_ == FrameUse::Free);
                    if want_map > 0 || tables.contains(&pfn) {
                        bad.push(format!(
                            "frame {:#x} is {:?} and mapped or a table",
                            pfn.0, f.use_
                        ));
                    }
                }
                FrameUse::PageTable => {
                    if !tables.contains(&pfn) {
                        bad.push(format!("page table {:#x} leaked", pfn.0));
                    }
                }
                FrameUse::Zero => {
                    if pfn != self.zero {
                        bad.push(format!("second zero page {:#x}", pfn.0));
                    }
                }
                FrameUse::Kernel => {}
                FrameUse::Folio | FrameUse::Tail(_) => {
                    if f.mapcount != want_map {
                        bad.push(format!(
                            "frame {:#x}: mapcount {} but {} PTEs",
                            pfn.0, f.mapcount, want_map
                        ));
                    }
                    if want_map > 0 {
                        let found = self.rmap_walk(pfn).len() as u32;
                        if found != want_map {
                            bad.push(format!(
                                "frame {:#x}: rmap walk finds {found} of {want_map} PTEs",
                                pfn.0
                            ));
                        }
                    }
                    if f.anon_exclusive && f.mapcount > 1 {
                        bad.push(format!(
                            "frame {:#x}: anon-exclusive with mapcount {}",
                            pfn.0, f.mapcount
                        ));
                    }
                    if let FrameUse::Tail(h) = f.use_ {
                        let hf = self.frames.get(h);
                        if !hf.is_some_and(|hf| {
                            hf.use_ == FrameUse::Folio && pfn.0 - h.0 < 1 << hf.order
                        }) {
                            bad.push(format!("tail {:#x} has bad head {:#x}", pfn.0, h.0));
                        }
                        continue;
                    }
                    if f.refcount == 0 && self.is_pooled_huge(pfn) {
                        continue;
                    }
                    let maps: u32 = (0..1u64 << f.order)
                        .map(|i| mapcount.get(&pfn.offset(i)).copied().unwrap_or(0))
                        .sum();
                    let want = maps + cache_refs.get(&pfn).copied().unwrap_or(0);
                    if f.refcount != want || f.refcount == 0 {
                        bad.push(format!(
                            "folio {:#x}: refcount {} but {} references ({:?})",
                            pfn.0, f.refcount, want, f.mapping
                        ));
                    }
                    if f.flags.contains(FolioFlags::LOCKED) {
                        bad.push(format!("folio {:#x} left locked", pfn.0));
                    }
                    if f.mapping == Mapping::None {
                        bad.push(format!("folio {:#x} without mapping", pfn.0));
                    }
                }
            }
        }
        let mut in_blocks = 0;
        for (p, o) in self.frames.free_blocks() {
            for i in 0..1u64 << o {
                if self.frames.get(Pfn(p + i)).map(|f| f.use_) != Some(FrameUse::Free) {
                    bad.push(format!(
                        "free block {p:#x}/{o} holds non-free frame {:#x}",
                        p + i
                    ));
                }
            }
            in_blocks += 1u64 << o;
        }
        if in_blocks != nfree || nfree != self.frames.nr_free() {
            bad.push(format!(
                "free count: {} in blocks, {nfree} in metadata, {} in allocator",
                in_blocks,
                self.frames.nr_free()
            ));
        }

        if let Some(d) = &self.swap {
            let mut used = 0;
            for off in 0..d.total() {
                let want = swaprefs.get(&off).copied().unwrap_or(0);
                if d.count(off) != want {
                    bad.push(format!(
                        "swap slot {off}: count {} but {want} references",
                        d.count(off)
                    ));
                }
                used += u64::from(d.count(off) > 0);
            }
            if used != d.used() {
                bad.push(format!("swap used {} but {used} slots counted", d.used()));
            }
        } else if !swaprefs.is_empty() {
            bad.push(String::from("swap entries without a swap device"));
        }

        let mut owned = BTreeSet::new();
        for (pid, p) in &self.procs {
            match (p.state, p.mm) {
                (ProcState::Running, Some(mm)) => {
                    if !self.mms.contains_key(&mm) || !owned.insert(mm) {
                        bad.push(format!("pid {pid}: mm {mm:?} dead or shared"));
                    }
                }
                (ProcState::Zombie(_), None) => {}
                _ => bad.push(format!("pid {pid}: state {:?} with mm {:?}", p.state, p.mm)),
            }
        }
        if owned.len() != self.mms.len() {
            bad.push(format!(
                "{} address spaces but {} owned",
                self.mms.len(),
                owned.len()
            ));
        }

        if bad.is_empty() {
            Ok(())
        } else {
            Err(InvariantError { violations: bad })
        }
    }

    /// Descriptors refer to live open files, each counted exactly once per
    /// descriptor, and names to live inodes.
    fn check_files(&self, bad: &mut Vec<String>) {
        let mut refs: BTreeMap<crate::ids::FileId, u32> = BTreeMap::new();
        for (pid, p) in &self.procs {
            for (&fd, id) in &p.fds {
                if !self.files.contains_key(id) {
                    bad.push(format!(
                        "pid {pid}: descriptor {fd} of a closed file {id:?}"
                    ));
                }
                *refs.entry(*id).or_default() += 1;
            }
        }
        for (id, f) in &self.files {
            let n = refs.get(id).copied().unwrap_or(0);
            if f.refs != n || n == 0 {
                bad.push(format!("{id:?}: {} references, {n} descriptors", f.refs));
            }
        }
        for (name, o) in &self.names {
            if !self.shmems.contains_key(o) {
                bad.push(format!("name {name:?} of dead {o:?}"));
            }
        }
    }
}
