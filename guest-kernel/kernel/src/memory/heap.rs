//! The kernel heap (`alloc`): a linked-list allocator over one contiguous
//! run of frames, reached through the direct map.
//!
//! Interrupt handlers must not allocate: the heap lock is not interrupt-safe.
//! (Traps from ring 3, such as user/kernel calls, may: the code they
//! interrupted holds no kernel lock.)

use crate::arch::x86_64::paging::{PAGE_SIZE, phys_to_virt};
use linked_list_allocator::LockedHeap;

/// Heap size. The allocator only writes its hole header at init, so the size
/// costs nothing at boot.
pub const HEAP_SIZE: u64 = 8 << 20;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// The heap could not get its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInitError;

/// Carves the heap out of physical memory.
pub fn init() -> Result<(), HeapInitError> {
    let phys = super::frames::alloc_contiguous(HEAP_SIZE / PAGE_SIZE).ok_or(HeapInitError)?;
    // SAFETY: the frames were just allocated for the heap alone and are
    // direct-mapped; `init` is called once, before any allocation.
    unsafe {
        HEAP.lock()
            .init(phys_to_virt(phys) as *mut u8, HEAP_SIZE as usize)
    };
    Ok(())
}

/// Bytes currently allocated.
pub fn used() -> usize {
    HEAP.lock().used()
}
