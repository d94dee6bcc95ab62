//! Per-frame metadata in the spirit of `struct page` / `struct folio`.
//!
//! Mirrors `include/linux/mm_types.h` and `include/linux/page-flags.h`: the
//! head frame of a folio holds the reference count, order, flags and
//! `mapping`/`index`; every frame (head or tail) holds its own mapcount and
//! its `PageAnonExclusive` bit, as in Linux, so a large folio can be partly
//! mapped and partly shared.

use crate::hw::Pfn;
use crate::ids::{AnonVmaId, ShmemId};

/// What a frame is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameUse {
    /// In the buddy allocator.
    Free,
    /// Not managed (outside RAM or reserved at boot).
    Reserved,
    /// A page-table page.
    PageTable,
    /// The shared zero page.
    Zero,
    /// Head frame of a folio (user data).
    Folio,
    /// Tail frame of a large folio.
    Tail(Pfn),
    /// Allocated for the kernel's own use through the MM core.
    Kernel,
}

/// Folio flags (`PG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FolioFlags(u16);

impl FolioFlags {
    /// `PG_anon` (`folio_test_anon`).
    pub const ANON: FolioFlags = FolioFlags(1 << 0);
    /// `PG_dirty`.
    pub const DIRTY: FolioFlags = FolioFlags(1 << 1);
    /// `PG_referenced`.
    pub const REFERENCED: FolioFlags = FolioFlags(1 << 2);
    /// `PG_swapbacked`.
    pub const SWAPBACKED: FolioFlags = FolioFlags(1 << 3);
    /// `PG_locked`.
    pub const LOCKED: FolioFlags = FolioFlags(1 << 4);
    /// `PG_hugetlb`: a huge page of a hugetlb pool.
    pub const HUGETLB: FolioFlags = FolioFlags(1 << 5);
    /// `PG_large` / `PG_head`: order > 0.
    pub const LARGE: FolioFlags = FolioFlags(1 << 6);
    /// `hugetlb_restore_reserve`: freeing this huge folio gives its pool
    /// a reservation back (its owner unmapped it).
    pub const RESTORE_RESERVE: FolioFlags = FolioFlags(1 << 7);
    /// A shmem page `fallocate` made that nothing has written or faulted
    /// in yet (Linux: a folio that is not `PG_uptodate`); `SEEK_DATA`
    /// sees a hole there.
    pub const FALLOCATED: FolioFlags = FolioFlags(1 << 8);

    /// Whether all of `f` is set.
    pub fn contains(self, f: FolioFlags) -> bool {
        self.0 & f.0 == f.0
    }
    /// Sets or clears `f`.
    pub fn set(&mut self, f: FolioFlags, on: bool) {
        if on {
            self.0 |= f.0;
        } else {
            self.0 &= !f.0;
        }
    }
}

/// Who owns a folio's contents (`folio->mapping` + `folio->index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// Not attached.
    None,
    /// Anonymous: reverse map through an anon_vma; `index` is the linear page
    /// index of the head (`vma->vm_pgoff` space).
    Anon {
        /// The anon_vma the folio was created under (or moved to on reuse).
        anon_vma: AnonVmaId,
        /// Page index of the head frame.
        index: u64,
    },
    /// A hugetlb file's page-cache folio.
    HugeFile {
        /// The file.
        file: crate::ids::HugeFileId,
        /// Page index (4 KiB units) of the head frame in the file.
        index: u64,
    },
    /// Shared memory object page at `index`.
    Shmem {
        /// The object.
        obj: ShmemId,
        /// Page index of the head frame in the object.
        index: u64,
    },
}

/// Metadata of one frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Use of the frame.
    pub use_: FrameUse,
    /// Order of the block/folio (head only).
    pub order: u8,
    /// References to the folio (head only): one per mapping PTE, one for a
    /// shmem object's page cache, plus transient ones.
    pub refcount: u32,
    /// Number of PTEs mapping this very frame (`page->_mapcount + 1`).
    pub mapcount: u32,
    /// `PageAnonExclusive` of this frame.
    pub anon_exclusive: bool,
    /// Flags (head only).
    pub flags: FolioFlags,
    /// Owner (head only).
    pub mapping: Mapping,
}

impl Frame {
    pub(crate) const fn new(use_: FrameUse) -> Self {
        Frame {
            use_,
            order: 0,
            refcount: 0,
            mapcount: 0,
            anon_exclusive: false,
            flags: FolioFlags(0),
            mapping: Mapping::None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metadata_stays_small() {
        // The kernel heap holds one of these per frame; keep the documented
        // budget (see the crate docs) honest.
        assert!(
            core::mem::size_of::<super::Frame>() <= 56,
            "{}",
            core::mem::size_of::<super::Frame>()
        );
    }
}
