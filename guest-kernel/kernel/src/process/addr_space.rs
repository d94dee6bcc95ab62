//! A user address space: a PML4 whose kernel half is copied from the kernel
//! page table and whose user half maps 4 KiB pages of private frames.
//!
//! Intentionally small: the `guest-mm` crate (VMAs, faults, write tracking)
//! replaces this once it is wired in. Only `process` uses it.

use crate::arch::x86_64::paging::{
    self, KERNEL_PML4_FIRST, PAGE_SIZE, PTE_ADDR_MASK, PTE_HUGE, PTE_PRESENT, PTE_USER,
    PTE_WRITABLE, USER_END,
};
use crate::memory::{frames, kmap};

/// Why a mapping failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// The address is not a page-aligned user address.
    BadAddress(u64),
    /// No free frames.
    OutOfMemory,
}

/// A user address space (owns its page tables and mapped frames).
pub struct AddressSpace {
    root: u64,
}

impl AddressSpace {
    /// An empty user half over the shared kernel half.
    pub fn new() -> Result<Self, MapError> {
        let root = frames::alloc_zeroed().ok_or(MapError::OutOfMemory)?;
        // SAFETY: `root` is a fresh frame; the kernel PML4 is only read.
        unsafe {
            let kernel = paging::table_mut(kmap::kernel_pml4());
            paging::table_mut(root)[KERNEL_PML4_FIRST..]
                .copy_from_slice(&kernel[KERNEL_PML4_FIRST..]);
        }
        Ok(AddressSpace { root })
    }

    /// Physical address of the PML4 (the CR3 value).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The frame mapped at user page `virt`, mapping a zeroed one first if
    /// none is; `writable` adds write permission to the page.
    pub fn map_or_get(&mut self, virt: u64, writable: bool) -> Result<u64, MapError> {
        if !virt.is_multiple_of(PAGE_SIZE) || virt >= USER_END {
            return Err(MapError::BadAddress(virt));
        }
        // SAFETY: this address space's tables are owned by `self` (`&mut`).
        let pte = unsafe {
            paging::walk_create(
                self.root,
                virt,
                PTE_USER | PTE_WRITABLE,
                &mut frames::alloc_zeroed,
            )
        }
        .ok_or(MapError::OutOfMemory)?;
        if *pte & PTE_PRESENT == 0 {
            *pte = frames::alloc_zeroed().ok_or(MapError::OutOfMemory)? | PTE_USER | PTE_PRESENT;
        }
        if writable {
            *pte |= PTE_WRITABLE;
        }
        Ok(*pte & PTE_ADDR_MASK)
    }

    /// The physical address backing user address `virt` if it is mapped
    /// user-accessible (and writable, when `write`).
    pub fn translate(&self, virt: u64, write: bool) -> Option<u64> {
        if virt >= USER_END {
            return None;
        }
        // SAFETY: the tables are owned by `self` and not being modified.
        let (pte, size) = unsafe { paging::translate(self.root, virt) }?;
        let needed = PTE_USER | if write { PTE_WRITABLE } else { 0 };
        (pte & needed == needed).then(|| (pte & PTE_ADDR_MASK) + (virt & (size - 1)))
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        /// Frees the tables below `table` at `level` and the frames they map.
        fn free_level(table: u64, level: u32, entries: core::ops::Range<usize>) {
            for i in entries {
                // SAFETY: the table belongs to the address space being dropped.
                let entry = unsafe { paging::table_mut(table)[i] };
                if entry & PTE_PRESENT == 0 {
                    continue;
                }
                let next = entry & PTE_ADDR_MASK;
                if level > 1 && entry & PTE_HUGE == 0 {
                    free_level(next, level - 1, 0..512);
                }
                // SAFETY: nothing maps `next` once its address space is gone
                // (it is never the current CR3: `Process::run` switches back).
                unsafe { frames::free(next) };
            }
        }
        free_level(self.root, 4, 0..KERNEL_PML4_FIRST);
        // SAFETY: as above, for the PML4 itself.
        unsafe { frames::free(self.root) };
    }
}
