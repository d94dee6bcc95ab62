//! The boot frame allocator (Linux's `memblock`): a bump pointer over the
//! RAM of the memory map plus a free list threaded through freed frames.
//!
//! It serves the kernel's own memory (heap, stacks, kernel page tables)
//! before and after the `guest-mm` core exists. [`hand_off`] gives all RAM
//! beyond a small kernel reserve to the MM core, which manages user memory.
//! It never touches a frame until it is handed out, so boot time does not
//! depend on the memory size. The first MiB and the kernel image are never
//! handed out.

use crate::arch::x86_64::paging::{PAGE_SIZE, phys_to_virt};
use crate::boot::memmap::{MAX_REGIONS, MemMap};
use spin::Mutex;

/// Lowest physical address handed out (below: firmware-like data, the SMP
/// trampoline, start_info, the command line).
const LOW_LIMIT: u64 = 0x10_0000;

/// A free physical range `[start, end)`.
#[derive(Clone, Copy)]
struct Range {
    start: u64,
    end: u64,
}

/// The allocator state.
pub struct FrameAllocator {
    ranges: [Range; MAX_REGIONS],
    nranges: usize,
    /// Range the bump pointer is in.
    current: usize,
    /// Next never-used frame in `ranges[current]`.
    next: u64,
    /// Physical address of the first freed frame (0 = none); each freed frame
    /// stores the address of the next one in its first 8 bytes.
    free_head: u64,
    /// Frames handed out and not freed.
    in_use: u64,
}

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator {
    ranges: [Range { start: 0, end: 0 }; MAX_REGIONS],
    nranges: 0,
    current: 0,
    next: 0,
    free_head: 0,
    in_use: 0,
});

/// Hands the RAM of `memmap`, minus `[0, 1 MiB)` and the kernel image
/// `[kernel_start, kernel_end)`, to the allocator.
pub fn init(memmap: &MemMap, kernel_start: u64, kernel_end: u64) {
    let mut frames = FRAMES.lock();
    let mut add = |start: u64, end: u64| {
        let start = start.max(LOW_LIMIT).next_multiple_of(PAGE_SIZE);
        let end = end & !(PAGE_SIZE - 1);
        if start < end && frames.nranges < MAX_REGIONS {
            let n = frames.nranges;
            frames.ranges[n] = Range { start, end };
            frames.nranges += 1;
        }
    };
    for region in memmap.ram() {
        // Split around the kernel image.
        add(region.start, region.end().min(kernel_start));
        add(region.start.max(kernel_end), region.end());
    }
    frames.current = 0;
    frames.next = frames.ranges[0].start;
}

/// Allocates `count` physically contiguous frames (from the bump area only);
/// their contents are undefined.
pub fn alloc_contiguous(count: u64) -> Option<u64> {
    let mut f = FRAMES.lock();
    let bytes = count.checked_mul(PAGE_SIZE)?;
    while f.current < f.nranges {
        let end = f.ranges[f.current].end;
        if let Some(new_next) = f.next.checked_add(bytes).filter(|&n| n <= end) {
            let start = f.next;
            f.next = new_next;
            f.in_use += count;
            return Some(start);
        }
        f.current += 1;
        if f.current < f.nranges {
            f.next = f.ranges[f.current].start;
        }
    }
    None
}

/// Keeps `reserve` bytes after the bump pointer for later kernel allocations
/// and returns every RAM range beyond them as `[start, end)`; the allocator
/// never hands those out again (they belong to the MM core from now on).
pub fn hand_off(reserve: u64) -> alloc::vec::Vec<(u64, u64)> {
    let mut f = FRAMES.lock();
    let mut out = alloc::vec::Vec::new();
    if f.current >= f.nranges {
        return out;
    }
    let cur = f.current;
    let keep_end = f.next.saturating_add(reserve).min(f.ranges[cur].end);
    if keep_end < f.ranges[cur].end {
        out.push((keep_end, f.ranges[cur].end));
    }
    f.ranges[cur].end = keep_end;
    for i in cur + 1..f.nranges {
        out.push((f.ranges[i].start, f.ranges[i].end));
    }
    f.nranges = cur + 1;
    out
}

/// Allocates one frame; its contents are undefined.
pub fn alloc() -> Option<u64> {
    {
        let mut f = FRAMES.lock();
        if f.free_head != 0 {
            let frame = f.free_head;
            // SAFETY: `frame` is a freed, direct-mapped frame owned by the
            // free list; its first word is the link written by `free`.
            f.free_head = unsafe { (phys_to_virt(frame) as *const u64).read() };
            f.in_use += 1;
            return Some(frame);
        }
    }
    alloc_contiguous(1)
}

/// Allocates one zero-filled frame.
pub fn alloc_zeroed() -> Option<u64> {
    let frame = alloc()?;
    // SAFETY: the frame was just allocated, so nothing else refers to it.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame) as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}

/// Returns `frame` to the allocator.
///
/// # Safety
/// `frame` must come from [`alloc`]/[`alloc_zeroed`], and nothing may use it
/// afterwards (no mapping, no pointer).
pub unsafe fn free(frame: u64) {
    let mut f = FRAMES.lock();
    // SAFETY: the caller gives up the frame, so it may hold the list link.
    unsafe { (phys_to_virt(frame) as *mut u64).write(f.free_head) };
    f.free_head = frame;
    f.in_use -= 1;
}

/// Frames currently handed out.
pub fn in_use() -> u64 {
    FRAMES.lock().in_use
}
