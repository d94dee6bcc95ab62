//! Virtual memory areas and the ordered tree that holds them.
//!
//! Mirrors `include/linux/mm_types.h` (`struct vm_area_struct`, `VM_*` flag
//! values), `mm/vma.c` (`__split_vma`, `is_mergeable_vma`,
//! `is_mergeable_anon_vma`) and `mm/mmap.c` (`unmapped_area_topdown`). The
//! tree is a `BTreeMap` keyed by start address (Linux uses a maple tree);
//! VMAs never overlap and are page aligned and non-empty.
//!
//! Reverse-map bookkeeping (anon_vma and shmem `i_mmap` membership) is done by
//! the callers (`vma_link`/`vma_unlink` in `system.rs`); this file is pure
//! data-structure code.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::hw::PAGE_SIZE;
use crate::ids::{AnonVmaId, HugeFileId, ResvId, ShmemId};
use crate::pte::PteFlags;

/// Default lowest mappable address (`vm.mmap_min_addr`, see
/// [`crate::Config::mmap_min_addr`]).
pub const MMAP_MIN_ADDR: u64 = 0x1_0000;
/// x86-64 `TASK_SIZE`: the top user page (below 1 << 47) is never mapped,
/// so that a `sysret` to the last user address cannot return to a
/// non-canonical RIP (`arch/x86/include/asm/page_64_types.h`).
pub const TASK_SIZE: u64 = crate::pgtable::USER_TOP - PAGE_SIZE;
/// Where top-down placement starts (no ASLR: deterministic).
pub const MMAP_BASE: u64 = 0x7f00_0000_0000;

/// `VM_*` flags with Linux's values (`include/linux/mm.h`). Two VMAs merge
/// only if their flags are equal, so every flag Linux keeps on a VMA is
/// kept here too, even those with no other effect in guest-mm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmFlags(pub u64);

impl VmFlags {
    /// `VM_READ`.
    pub const READ: u64 = 0x1;
    /// `VM_WRITE`.
    pub const WRITE: u64 = 0x2;
    /// `VM_EXEC`.
    pub const EXEC: u64 = 0x4;
    /// `VM_SHARED`.
    pub const SHARED: u64 = 0x8;
    /// `VM_MAYREAD`.
    pub const MAYREAD: u64 = 0x10;
    /// `VM_MAYWRITE`.
    pub const MAYWRITE: u64 = 0x20;
    /// `VM_MAYEXEC`.
    pub const MAYEXEC: u64 = 0x40;
    /// `VM_MAYSHARE`.
    pub const MAYSHARE: u64 = 0x80;
    /// `VM_UFFD_MISSING`: a userfaultfd handles missing pages.
    pub const UFFD_MISSING: u64 = 0x200;
    /// `VM_UFFD_WP`: a userfaultfd write-protects pages.
    pub const UFFD_WP: u64 = 0x1000;
    /// `__VM_UFFD_FLAGS` (no minor faults here).
    pub const UFFD_FLAGS: u64 = Self::UFFD_MISSING | Self::UFFD_WP;
    /// `VM_GROWSDOWN`: a stack that grows on faults below it.
    pub const GROWSDOWN: u64 = 0x100;
    /// `VM_DONTEXPAND`: mremap cannot grow it (hugetlb).
    pub const DONTEXPAND: u64 = 0x4_0000;
    /// `VM_LOCKED`: mlocked (populated; DONTNEED refused).
    pub const LOCKED: u64 = 0x2000;
    /// `VM_SEQ_READ` (`MADV_SEQUENTIAL`).
    pub const SEQ_READ: u64 = 0x8000;
    /// `VM_RAND_READ` (`MADV_RANDOM`).
    pub const RAND_READ: u64 = 0x1_0000;
    /// `VM_DONTCOPY` (`MADV_DONTFORK`): not inherited by fork.
    pub const DONTCOPY: u64 = 0x2_0000;
    /// `VM_LOCKONFAULT` (`mlock2(MLOCK_ONFAULT)`).
    pub const LOCKONFAULT: u64 = 0x8_0000;
    /// `VM_ACCOUNT`: a private writable mapping charged to the commit.
    pub const ACCOUNT: u64 = 0x10_0000;
    /// `VM_NORESERVE` (`MAP_NORESERVE`).
    pub const NORESERVE: u64 = 0x20_0000;
    /// `VM_WIPEONFORK` (`MADV_WIPEONFORK`): the child gets it empty.
    pub const WIPEONFORK: u64 = 0x200_0000;
    /// `VM_DONTDUMP` (`MADV_DONTDUMP`).
    pub const DONTDUMP: u64 = 0x400_0000;
    /// `VM_SOFTDIRTY`: every page of the VMA counts as soft-dirty (a new
    /// or grown VMA, until `clear_refs` 4).
    pub const SOFTDIRTY: u64 = 0x800_0000;
    /// `VM_HUGETLB`: hugetlb memory (`MAP_HUGETLB`).
    pub const HUGETLB: u64 = 0x40_0000;
    /// `VM_HUGEPAGE` (`MADV_HUGEPAGE`).
    pub const HUGEPAGE: u64 = 0x2000_0000;
    /// `VM_NOHUGEPAGE` (`MADV_NOHUGEPAGE`, `MAP_STACK`).
    pub const NOHUGEPAGE: u64 = 0x4000_0000;
    /// `VM_MERGEABLE` (`MADV_MERGEABLE`, KSM).
    pub const MERGEABLE: u64 = 0x8000_0000;
    /// `VM_DROPPABLE` (`MAP_DROPPABLE`, 64-bit only).
    pub const DROPPABLE: u64 = 1 << 40;
    /// `VM_LOCKED | VM_LOCKONFAULT`.
    pub const LOCKED_MASK: u64 = Self::LOCKED | Self::LOCKONFAULT;
    /// `VM_READ | VM_WRITE | VM_EXEC`.
    pub const ACCESS: u64 = Self::READ | Self::WRITE | Self::EXEC;

    /// Whether any of `bits` is set.
    pub fn has(self, bits: u64) -> bool {
        self.0 & bits != 0
    }
}

/// What backs a VMA's pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// Private anonymous memory. `chain` lists the anon_vmas whose folios may
    /// be mapped here, oldest (fork ancestors) first; the last one is this
    /// VMA's own, used for new folios (`anon_vma_chain`). Empty until the
    /// first fault (`anon_vma_prepare`).
    Anon {
        /// The anon_vma chain.
        chain: Vec<AnonVmaId>,
    },
    /// hugetlb memory (`MAP_HUGETLB`): pages of a hugetlbfs file. A
    /// private mapping copies them on write into anonymous huge folios
    /// under `chain`, like `Anon`; a shared one maps the file's pages.
    Hugetlb {
        /// The file.
        file: HugeFileId,
        /// The anon_vma chain (private mappings).
        chain: Vec<AnonVmaId>,
        /// Reservations of this VMA.
        resv: HugeResv,
    },
    /// A private mapping of a shmem file (a memfd): reads map the file's
    /// pages, writes copy them into anonymous folios under `chain`.
    PrivateFile {
        /// The file.
        obj: ShmemId,
        /// The anon_vma chain, as for `Anon`.
        chain: Vec<AnonVmaId>,
    },
    /// Shared anonymous memory: pages of a shmem object.
    Shmem {
        /// The object.
        obj: ShmemId,
        /// Whether the VMA has an anon_vma although no anonymous page can
        /// be mapped in it: `MADV_GUARD_INSTALL` gives it one so that
        /// fork copies its page tables, markers included.
        anon_vma: bool,
    },
}

impl Backing {
    /// The anon_vma chain (shared memory has none).
    pub fn anon_chain(&self) -> &[AnonVmaId] {
        match self {
            Backing::Anon { chain }
            | Backing::Hugetlb { chain, .. }
            | Backing::PrivateFile { chain, .. } => chain,
            Backing::Shmem { .. } => &[],
        }
    }

    /// The anon_vma chain, to change (`None` for shared memory).
    pub fn anon_chain_mut(&mut self) -> Option<&mut Vec<AnonVmaId>> {
        match self {
            Backing::Anon { chain }
            | Backing::Hugetlb { chain, .. }
            | Backing::PrivateFile { chain, .. } => Some(chain),
            Backing::Shmem { .. } => None,
        }
    }
}

/// Which reservations a hugetlb VMA holds (`vm_private_data` and the
/// `HPAGE_RESV_*` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugeResv {
    /// None of its own: shared mappings (the file holds them), private
    /// ones made with `MAP_NORESERVE`, and fork children.
    None,
    /// `HPAGE_RESV_OWNER`: the private mapping's creator, with its map of
    /// consumed reservations (shared by the pieces of a split).
    Owner(ResvId),
    /// `HPAGE_RESV_UNMAPPED`: a fork child whose page the owner took back
    /// when a copy-on-write found no huge page; its next fault on a missing
    /// page is SIGBUS.
    Unmapped,
}

/// One mapping (`struct vm_area_struct`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `VM_*` flags.
    pub flags: VmFlags,
    /// Page index of `start` (`vm_pgoff`): `start >> 12` at creation for
    /// private anon memory, the object offset for shmem.
    pub pgoff: u64,
    /// Backing.
    pub backing: Backing,
    /// The userfaultfd it is registered with (`vm_userfaultfd_ctx`),
    /// whose modes are [`VmFlags::UFFD_MISSING`] and [`VmFlags::UFFD_WP`].
    pub uffd: Option<crate::ids::UffdId>,
}

impl Vma {
    /// The shmem file the VMA maps, shared or private.
    pub fn file(&self) -> Option<ShmemId> {
        match self.backing {
            Backing::Shmem { obj, .. } | Backing::PrivateFile { obj, .. } => Some(obj),
            _ => None,
        }
    }
    /// Whether this is hugetlb memory (`is_vm_hugetlb_page`).
    pub fn is_hugetlb(&self) -> bool {
        self.flags.has(VmFlags::HUGETLB)
    }
    /// `is_cow_mapping`: private and may become writable.
    pub fn is_cow(&self) -> bool {
        !self.flags.has(VmFlags::SHARED) && self.flags.has(VmFlags::MAYWRITE)
    }
    /// Whether the mapping is shared.
    pub fn is_shared(&self) -> bool {
        self.flags.has(VmFlags::SHARED)
    }
    /// `linear_page_index`.
    pub fn page_index(&self, va: u64) -> u64 {
        self.pgoff + (va - self.start) / PAGE_SIZE
    }
    /// The address mapping page index `idx`, if inside this VMA
    /// (`vma_address`).
    pub fn address_of(&self, idx: u64) -> Option<u64> {
        let pages = (self.end - self.start) / PAGE_SIZE;
        (idx >= self.pgoff && idx - self.pgoff < pages)
            .then(|| self.start + (idx - self.pgoff) * PAGE_SIZE)
    }
    /// PTE flags every mapping in this VMA gets (`vm_get_page_prot`),
    /// without WRITE: writability is decided per page.
    pub fn base_pte_flags(&self) -> PteFlags {
        let f = self.flags;
        let mut p = PteFlags::USER;
        if f.has(VmFlags::EXEC) {
            p = p.with(PteFlags::EXEC);
        }
        if !f.has(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC) {
            p = p.with(PteFlags::PROTNONE);
        }
        p
    }
    /// An existing entry's flags rebuilt from this VMA's permissions: its
    /// status bits (accessed, dirty) stay, write permission is decided per
    /// page by the caller.
    pub fn rebuilt_pte_flags(&self, old: PteFlags) -> PteFlags {
        let keep = old
            .without(PteFlags::PROTNONE)
            .without(PteFlags::EXEC)
            .without(PteFlags::WRITE);
        self.base_pte_flags().with(keep)
    }
    /// The anon_vma new folios go to, if prepared.
    pub fn own_anon_vma(&self) -> Option<AnonVmaId> {
        self.backing.anon_chain().last().copied()
    }
}

/// Whether `a` (ending where `b` starts) can merge with `b`
/// (`can_vma_merge_after`): same flags, contiguous page offsets, same
/// object, and compatible anon_vmas (`is_mergeable_anon_vma`: when only one
/// side has an anon_vma, it must not have been inherited by fork with its
/// parent's still in the chain, `vma_had_uncowed_parents`).
/// Flags in `ignore` may differ (`VM_SOFTDIRTY`, unless in precise mode).
pub fn mergeable(a: &Vma, b: &Vma, ignore: u64) -> bool {
    if a.end != b.start
        || (a.flags.0 ^ b.flags.0) & !ignore != 0
        || a.uffd != b.uffd
        || a.pgoff + (a.end - a.start) / PAGE_SIZE != b.pgoff
    {
        return false;
    }
    match (&a.backing, &b.backing) {
        (Backing::Anon { chain: x }, Backing::Anon { chain: y }) => anon_compatible(x, y),
        (Backing::PrivateFile { obj: f, chain: x }, Backing::PrivateFile { obj: g, chain: y }) => {
            f == g && anon_compatible(x, y)
        }
        (Backing::Shmem { obj: x, .. }, Backing::Shmem { obj: y, .. }) => x == y,
        // hugetlb VMAs have a close operation, so vma_merge never removes
        // one (is_mergeable_vma).
        _ => false,
    }
}

/// `is_mergeable_anon_vma` on two chains.
fn anon_compatible(x: &[AnonVmaId], y: &[AnonVmaId]) -> bool {
    x == y || (x.is_empty() && y.len() == 1) || (y.is_empty() && x.len() == 1)
}

/// The ordered set of VMAs of one address space.
#[derive(Debug, Default, Clone)]
pub struct VmaTree {
    map: BTreeMap<u64, Vma>,
}

impl VmaTree {
    /// The VMA containing `va` (`vma_lookup`).
    pub fn find(&self, va: u64) -> Option<&Vma> {
        self.map
            .range(..=va)
            .next_back()
            .map(|(_, v)| v)
            .filter(|v| va < v.end)
    }
    /// The VMA starting exactly at `start`.
    pub fn get(&self, start: u64) -> Option<&Vma> {
        self.map.get(&start)
    }
    /// Mutable VMA starting exactly at `start`.
    pub fn get_mut(&mut self, start: u64) -> Option<&mut Vma> {
        self.map.get_mut(&start)
    }
    /// Starts of the VMAs overlapping `[start, end)`, ascending.
    pub fn overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        let first = self.find(start).map_or(start, |v| v.start);
        self.map.range(first..end).map(|(&s, _)| s).collect()
    }
    /// Whether anything overlaps `[start, end)`.
    pub fn any_overlap(&self, start: u64, end: u64) -> bool {
        !self.overlapping(start, end).is_empty()
    }
    /// Inserts a VMA; it must not overlap.
    pub fn insert(&mut self, v: Vma) {
        debug_assert!(!self.any_overlap(v.start, v.end), "overlapping VMA insert");
        self.map.insert(v.start, v);
    }
    /// Removes the VMA starting at `start`.
    pub fn remove(&mut self, start: u64) -> Option<Vma> {
        self.map.remove(&start)
    }
    /// Splits the VMA strictly containing `addr` into `[start, addr)` and
    /// `[addr, end)` (`__split_vma`). Returns the new upper half if a split
    /// happened.
    pub fn split_at(&mut self, addr: u64) -> Option<&Vma> {
        let v = self.find(addr)?;
        if v.start == addr {
            return None;
        }
        let lo_start = v.start;
        let mut hi = v.clone();
        hi.pgoff = v.page_index(addr);
        hi.start = addr;
        if let Some(lo) = self.map.get_mut(&lo_start) {
            lo.end = addr;
        }
        let s = hi.start;
        self.map.insert(s, hi);
        self.map.get(&s)
    }
    /// Merges the VMA ending at `addr` with the one starting there if they
    /// are compatible (flags in `ignore` may differ; the merged VMA has
    /// those either had). Returns the absorbed (removed) VMA.
    pub fn merge_at(&mut self, addr: u64, ignore: u64) -> Option<Vma> {
        let prev = self.find(addr.checked_sub(1)?)?.clone();
        let next = self.map.get(&addr)?;
        if prev.end != addr || !mergeable(&prev, next, ignore) {
            return None;
        }
        let next = self.map.remove(&addr)?;
        let p = self.map.get_mut(&prev.start)?;
        p.end = next.end;
        p.flags = VmFlags(p.flags.0 | (next.flags.0 & ignore));
        match (&mut p.backing, &next.backing) {
            (Backing::Anon { chain }, Backing::Anon { chain: nc })
            | (Backing::PrivateFile { chain, .. }, Backing::PrivateFile { chain: nc, .. })
                if chain.is_empty() =>
            {
                chain.clone_from(nc);
            }
            (Backing::Shmem { anon_vma, .. }, Backing::Shmem { anon_vma: na, .. }) => {
                *anon_vma |= *na;
            }
            _ => {}
        }
        Some(next)
    }
    /// All VMAs, ascending.
    pub fn iter(&self) -> impl Iterator<Item = &Vma> + '_ {
        self.map.values()
    }
    /// Number of VMAs.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// Whether there are no VMAs.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Whether `[start, start + len)` is free, with the guard gap below a
    /// growing-down VMA above it kept free too (`vm_start_gap`).
    pub fn fits(&self, start: u64, len: u64) -> bool {
        let end = start + len;
        let next = self.map.range(start..).next().map(|(_, v)| v);
        let below_ok = self.find(start).is_none();
        let above_ok = next.is_none_or(|v| {
            let gap_start = if v.flags.has(VmFlags::GROWSDOWN) {
                v.start.saturating_sub(crate::mmap::STACK_GUARD_GAP)
            } else {
                v.start
            };
            end <= gap_start
        });
        below_ok && above_ok
    }
    /// A free range of `len` bytes: the hint if it fits, else the highest gap
    /// below [`MMAP_BASE`] (`unmapped_area_topdown`).
    pub fn find_gap(&self, len: u64, hint: u64, min: u64, top: u64) -> Option<u64> {
        let hint = hint & !(PAGE_SIZE - 1);
        if hint >= min
            && hint.checked_add(len).is_some_and(|e| e <= top)
            && !self.any_overlap(hint, hint + len)
        {
            return Some(hint);
        }
        let mut hi = MMAP_BASE.min(top);
        for (&s, v) in self.map.range(..hi).rev() {
            if v.end <= hi && hi - v.end >= len {
                return Some(hi - len);
            }
            hi = hi.min(s);
        }
        (min.checked_add(len).is_some_and(|m| hi >= m)).then(|| hi - len)
    }
    /// The highest `align`-aligned free range of `len` bytes below
    /// [`MMAP_BASE`] (`unmapped_area_topdown` with `align_mask`): like
    /// Linux, a gap qualifies only if it holds `len` plus the alignment
    /// slack (`align - PAGE_SIZE`), even where an aligned fit needs less.
    pub fn find_gap_aligned(&self, len: u64, align: u64, min: u64, top: u64) -> Option<u64> {
        let need = len.checked_add(align - PAGE_SIZE)?;
        let mut hi = MMAP_BASE.min(top);
        for (&s, v) in self.map.range(..hi).rev() {
            if v.end <= hi && hi - v.end >= need {
                return Some((hi - len) & !(align - 1));
            }
            hi = hi.min(s);
        }
        (min.checked_add(need).is_some_and(|m| hi >= m)).then(|| (hi - len) & !(align - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> Vma {
        Vma {
            start,
            end,
            flags: VmFlags(VmFlags::READ | VmFlags::WRITE | VmFlags::MAYREAD | VmFlags::MAYWRITE),
            pgoff: start / PAGE_SIZE,
            backing: Backing::Anon { chain: Vec::new() },
            uffd: None,
        }
    }

    #[test]
    fn split_merge_roundtrip() {
        let mut t = VmaTree::default();
        t.insert(anon(0x10000, 0x20000));
        assert!(t.split_at(0x14000).is_some());
        assert!(t.split_at(0x14000).is_none(), "already a boundary");
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(0x14000).unwrap().pgoff, 0x14);
        assert_eq!(t.find(0x13fff).unwrap().end, 0x14000);
        assert!(t.merge_at(0x14000, 0).is_some());
        assert_eq!(
            t.iter().cloned().collect::<Vec<_>>(),
            [anon(0x10000, 0x20000)]
        );
    }

    #[test]
    fn no_merge_across_flags_or_pgoff() {
        let mut t = VmaTree::default();
        t.insert(anon(0x10000, 0x20000));
        let mut b = anon(0x20000, 0x30000);
        b.flags.0 &= !VmFlags::WRITE;
        t.insert(b);
        assert!(t.merge_at(0x20000, 0).is_none());
        let mut c = anon(0x30000, 0x40000);
        c.pgoff = 7;
        assert!(!mergeable(&anon(0x20000, 0x30000), &c, 0));
    }

    #[test]
    fn gaps_top_down_and_hint() {
        let mut t = VmaTree::default();
        assert_eq!(
            t.find_gap(0x2000, 0, MMAP_MIN_ADDR, u64::MAX),
            Some(MMAP_BASE - 0x2000)
        );
        t.insert(anon(MMAP_BASE - 0x2000, MMAP_BASE));
        assert_eq!(
            t.find_gap(0x1000, 0, MMAP_MIN_ADDR, u64::MAX),
            Some(MMAP_BASE - 0x3000)
        );
        assert_eq!(
            t.find_gap(0x1000, 0x40_0123, MMAP_MIN_ADDR, u64::MAX),
            Some(0x40_0000)
        );
        assert_eq!(
            t.find_gap(0x1000, MMAP_BASE - 0x1000, MMAP_MIN_ADDR, u64::MAX),
            Some(MMAP_BASE - 0x3000)
        );
        assert!(t.overlapping(0, u64::MAX).len() == 1);
    }
}
