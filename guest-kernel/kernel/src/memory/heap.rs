//! The kernel heap (`alloc`): blocks up to 2 KiB come from per-size-class
//! free lists, larger ones from a linked-list allocator, all over one
//! contiguous run of frames reached through the direct map.
//!
//! Why size classes: kvm_pvm emulates ring 0 at a microsecond or more per
//! instruction, and the MM core allocates tree nodes on every fault. A
//! first-fit walk of the linked list cost ~0.1 ms per allocation; popping a
//! free list costs a handful of instructions. Small blocks are carved from
//! 16 KiB slabs (one per class, so every block is aligned to its size) and
//! never go back to the linked list.
//!
//! Interrupt handlers must not allocate: the heap lock is not interrupt-safe.
//! (Traps from ring 3, such as user/kernel calls, may: the code they
//! interrupted holds no kernel lock.)

use crate::arch::x86_64::paging::{PAGE_SIZE, phys_to_virt};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Mutex;

/// Heap size without the MM core's metadata. The allocator only writes its
/// hole header at init, so the size costs nothing at boot.
pub const BASE_HEAP_SIZE: u64 = 8 << 20;
/// Heap bytes per byte of RAM for the MM core's per-frame metadata (about
/// 56 bytes per 4 KiB frame, see `guest_mm`) and its allocator's trees.
const RAM_PER_HEAP_BYTE: u64 = 48;
/// Size classes: 16, 32, ..., 2048 bytes.
const CLASSES: usize = 8;
/// Smallest class, log2.
const MIN_SHIFT: u32 = 4;
/// Bytes per slab of small blocks.
const SLAB: usize = 16 << 10;

/// Allocator state behind the lock.
struct Inner {
    large: linked_list_allocator::Heap,
    /// Head of each class's free list (0: empty); each free block holds the
    /// address of the next in its first word.
    free: [usize; CLASSES],
    /// Each class's current slab: next unused block and the slab's end.
    bump: [(usize, usize); CLASSES],
}

struct KernelHeap {
    inner: Mutex<Inner>,
    used: AtomicUsize,
}

#[global_allocator]
static HEAP: KernelHeap = KernelHeap {
    inner: Mutex::new(Inner {
        large: linked_list_allocator::Heap::empty(),
        free: [0; CLASSES],
        bump: [(0, 0); CLASSES],
    }),
    used: AtomicUsize::new(0),
};

/// The size class of `layout`, if it is small.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout
        .size()
        .max(layout.align())
        .max(1 << MIN_SHIFT)
        .next_power_of_two();
    let class = (size.trailing_zeros() - MIN_SHIFT) as usize;
    (class < CLASSES).then_some(class)
}

impl Inner {
    fn alloc_small(&mut self, class: usize) -> *mut u8 {
        let head = self.free[class];
        if head != 0 {
            // SAFETY: `head` is a free block of this class; its first word
            // is the free-list link written by `dealloc`.
            self.free[class] = unsafe { (head as *const usize).read() };
            return head as *mut u8;
        }
        let size = 1usize << (class as u32 + MIN_SHIFT);
        let (mut next, mut end) = self.bump[class];
        if next + size > end {
            let Ok(slab) = self
                .large
                .allocate_first_fit(Layout::from_size_align(SLAB, PAGE_SIZE as usize).unwrap())
            else {
                return null_mut();
            };
            next = slab.as_ptr() as usize;
            end = next + SLAB;
        }
        self.bump[class] = (next + size, end);
        next as *mut u8
    }
}

// SAFETY: blocks are handed out at most once until freed (free lists and
// slabs are disjoint, slabs come from the linked-list allocator), every
// block is at least `layout.size()` bytes and aligned to `layout.align()`
// (small blocks are aligned to their power-of-two size), and all state is
// behind one lock.
unsafe impl GlobalAlloc for KernelHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut inner = self.inner.lock();
        let p = match class_of(layout) {
            Some(class) => inner.alloc_small(class),
            None => inner
                .large
                .allocate_first_fit(layout)
                .map_or(null_mut(), NonNull::as_ptr),
        };
        if !p.is_null() {
            self.used.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let mut inner = self.inner.lock();
        match class_of(layout) {
            Some(class) => {
                // SAFETY: `ptr` is a block of this class that the caller
                // gives back; it is at least one word long and aligned.
                unsafe { (ptr as *mut usize).write(inner.free[class]) };
                inner.free[class] = ptr as usize;
            }
            None => {
                if let Some(p) = NonNull::new(ptr) {
                    // SAFETY: `ptr` came from `allocate_first_fit` with the
                    // same layout (the caller's contract).
                    unsafe { inner.large.deallocate(p, layout) };
                }
            }
        }
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

/// The heap could not get its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapInitError;

/// Carves the heap out of physical memory, sized for `ram_bytes` of RAM.
pub fn init(ram_bytes: u64) -> Result<(), HeapInitError> {
    let size = (BASE_HEAP_SIZE + ram_bytes / RAM_PER_HEAP_BYTE).next_multiple_of(PAGE_SIZE);
    let phys = super::frames::alloc_contiguous(size / PAGE_SIZE).ok_or(HeapInitError)?;
    // SAFETY: the frames were just allocated for the heap alone and are
    // direct-mapped; `init` is called once, before any allocation.
    unsafe {
        HEAP.inner
            .lock()
            .large
            .init(phys_to_virt(phys) as *mut u8, size as usize)
    };
    Ok(())
}

/// Bytes currently allocated.
pub fn used() -> usize {
    HEAP.used.load(Ordering::Relaxed)
}
