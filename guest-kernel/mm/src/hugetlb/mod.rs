//! hugetlb: pools of huge pages per size, reservations, and the mappings
//! that use them (`MAP_HUGETLB`).
//!
//! Mirrors `mm/hugetlb.c` and `fs/hugetlbfs/inode.c` as of Linux 6.18:
//! - [`Hstate`] is `struct hstate`: one pool per huge page size (2 MiB
//!   and 1 GiB), with Linux's counters (`nr_huge_pages`, `free`, `resv`,
//!   `surplus`, `nr_overcommit_huge_pages`); `pool.rs` grows and shrinks
//!   it (`set_max_huge_pages`), allocates and frees huge folios and keeps
//!   the reservation count (`hugetlb_acct_memory`).
//! - Every `MAP_HUGETLB` mapping is backed by a [`HugeFile`], the anonymous
//!   hugetlbfs inode Linux creates for it; its page cache holds a shared
//!   mapping's pages, and its reservation map the pages reserved for it.
//!   A private mapping reserves in a map of its own, owned by the VMA that
//!   created it ([`crate::vma::HugeResv`]); `resv.rs` holds both.
//! - `fault.rs` is `hugetlb_fault`: a fault maps a whole PMD (or PUD)
//!   entry; private memory is copied on write unless the folio is
//!   exclusive; a fault that finds no page is SIGBUS.
//! - `mapping.rs` is the rest of a hugetlb VMA's life: unmap, fork,
//!   mprotect, madvise, mremap, hole punching, and the close that returns
//!   a private mapping's unused reservations.
//! - `file.rs` is a hugetlb memfd (`MFD_HUGETLB`): `ftruncate`,
//!   `fallocate`, hole punching, `read`.
//! - `uffd.rs` write-protects huge entries for userfaultfd (huge uffd-wp
//!   markers where nothing is mapped); `fault.rs` delivers their faults
//!   and the missing-page ones.
//!
//! A hugetlb folio is mapped as one logical entry: its head frame's
//! `mapcount` is Linux's entire mapcount, its tails' are zero, and the
//! reverse map finds it at the huge entry (`rmap.rs`).

mod check;
mod fault;
mod file;
mod mapping;
mod pool;
mod resv;
mod uffd;

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::hw::{PAGE_SIZE, Pfn};
use crate::ids::ResvId;
use crate::system::VmaKey;

pub use pool::{HugeCounters, PoolKnob};

/// Index of the 2 MiB hstate.
pub const HSTATE_2M: usize = 0;
/// Index of the 1 GiB hstate.
pub const HSTATE_1G: usize = 1;
/// Folio order of each hstate (2 MiB, 1 GiB).
pub const HSTATE_ORDERS: [u8; 2] = [9, 18];

/// The hstate of a `MAP_HUGE_*` size log (`hstate_sizelog`); 0 is the
/// default size, 2 MiB.
pub fn hstate_of_log(log: u32) -> Option<usize> {
    match log {
        0 | 21 => Some(HSTATE_2M),
        30 => Some(HSTATE_1G),
        _ => None,
    }
}

/// Bytes per huge page of hstate `h`.
pub fn huge_size(h: usize) -> u64 {
    PAGE_SIZE << HSTATE_ORDERS[h]
}

/// Page-table level of hstate `h`'s entries (2: PMD, 3: PUD).
pub(crate) fn huge_level(h: usize) -> u8 {
    if h == HSTATE_1G { 3 } else { 2 }
}

/// One pool (`struct hstate`).
#[derive(Debug, Clone, Default)]
pub struct Hstate {
    /// `nr_huge_pages`: huge pages the pool owns, free or in use.
    pub nr: u64,
    /// `free_huge_pages`.
    pub free: u64,
    /// `resv_huge_pages`: free pages promised to mappings.
    pub resv: u64,
    /// `surplus_huge_pages`: pages above the persistent size, returned to
    /// the buddy allocator when freed.
    pub surplus: u64,
    /// `nr_overcommit_huge_pages`: how many surplus pages may exist.
    pub overcommit: u64,
    /// The free huge folios (`hugepage_freelists`), most recent last.
    pub(crate) free_list: Vec<Pfn>,
}

/// The anonymous hugetlbfs inode behind a `MAP_HUGETLB` mapping.
#[derive(Debug)]
pub(crate) struct HugeFile {
    /// Its hstate.
    pub hstate: usize,
    /// `i_size` in whole huge pages: faults beyond it are SIGBUS.
    pub size: u64,
    /// `i_size` in bytes (a hugetlb memfd's `fallocate` may leave it off a
    /// huge page boundary).
    pub i_size: u64,
    /// Page cache (shared mappings): huge page index to folio head; the
    /// file holds one reference on each.
    pub pages: BTreeMap<u64, Pfn>,
    /// The inode's reservation map (`inode_resv_map`): huge page indices
    /// reserved for the file, whether or not a page is there yet.
    pub resv: BTreeSet<u64>,
    /// Every VMA mapping the file (`i_mmap`); the file dies with the last
    /// of them and of its open files.
    pub i_mmap: BTreeSet<VmaKey>,
    /// Open files of it (a hugetlb memfd's).
    pub opens: u32,
    /// A memfd's seals (`F_SEAL_*`; an anonymous `MAP_HUGETLB` file is
    /// sealed, as hugetlbfs_get_inode leaves every inode).
    pub seals: u32,
    /// Its mode bits (a memfd made with `MFD_NOEXEC_SEAL` is not
    /// executable).
    pub mode: u32,
}

/// A private mapping's reservation map: the huge page indices whose
/// reservation was consumed. Linux's map for private mappings has this
/// inverted meaning too (`vma_needs_reservation`).
#[derive(Debug, Default)]
pub(crate) struct PrivateResv {
    pub consumed: BTreeSet<u64>,
}

/// The pools and the hugetlb objects, owned by [`crate::MemSystem`].
#[derive(Debug, Default)]
pub(crate) struct Hugetlb {
    pub hstates: [Hstate; 2],
    pub files: BTreeMap<crate::ids::HugeFileId, HugeFile>,
    pub private: BTreeMap<ResvId, PrivateResv>,
}
