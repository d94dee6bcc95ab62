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
use crate::boot::memmap::MemMap;
use spin::Mutex;

/// Lowest physical address handed out (below: firmware-like data, the SMP
/// trampoline, start_info, the command line).
const LOW_LIMIT: u64 = 0x10_0000;

/// The allocator state. The bump pointer walks the memory map's RAM
/// regions in loader order, stepping over the holes; the map is read in
/// place, so it may have any number of regions.
pub struct FrameAllocator {
    map: MemMap,
    /// Never handed out: the kernel image, the memory map's own table and
    /// the init module.
    holes: [(u64, u64); 4],
    /// The memory-map entry the bump pointer is in.
    region: usize,
    /// Its usable `[start, end)`, once read (the map is not re-read for
    /// every frame: each ring-0 instruction counts on kvm_pvm).
    bounds: Option<(u64, u64)>,
    /// Next never-used address (0: the start of `region`).
    next: u64,
    /// After [`hand_off`]: the bump pointer stops at this address of this
    /// entry.
    limit: Option<(usize, u64)>,
    /// Physical address of the first freed frame (0 = none); each freed frame
    /// stores the address of the next one in its first 8 bytes.
    free_head: u64,
    /// Frames handed out and not freed.
    in_use: u64,
}

static FRAMES: Mutex<FrameAllocator> = Mutex::new(FrameAllocator {
    map: MemMap::in_place(0, 0),
    holes: [(0, 0); 4],
    region: 0,
    bounds: None,
    next: 0,
    limit: None,
    free_head: 0,
    in_use: 0,
});

/// Hands the RAM of `memmap`, minus `[0, 1 MiB)`, the kernel image
/// `[kernel_start, kernel_end)` and the map's own table, to the allocator.
pub fn init(memmap: &MemMap, kernel_start: u64, kernel_end: u64, modules: [Option<(u64, u64)>; 2]) {
    let mut frames = FRAMES.lock();
    frames.map = *memmap;
    let hole = |module: Option<(u64, u64)>| {
        module.map_or((0, 0), |(paddr, size)| {
            (
                paddr & !(PAGE_SIZE - 1),
                (paddr + size).next_multiple_of(PAGE_SIZE),
            )
        })
    };
    frames.holes = [
        (kernel_start, kernel_end),
        memmap.table(),
        hole(modules[0]),
        hole(modules[1]),
    ];
    frames.region = 0;
    frames.bounds = None;
    frames.next = 0;
}

impl FrameAllocator {
    /// The usable `[start, end)` of entry `i` (empty unless RAM), clipped
    /// to the low limit, page-aligned, and to the limit after a hand-off.
    fn usable(&self, i: usize) -> Option<(u64, u64)> {
        let r = self.map.get(i)?;
        let mut end = r.end() & !(PAGE_SIZE - 1);
        if r.kind != crate::boot::memmap::RegionKind::Ram {
            end = 0;
        }
        if let Some((at, limit)) = self.limit {
            if i > at {
                end = 0;
            } else if i == at {
                end = end.min(limit);
            }
        }
        Some((r.start.max(LOW_LIMIT).next_multiple_of(PAGE_SIZE), end))
    }

    /// The lowest `start' >= start` where `bytes` bytes miss every hole.
    fn past_holes(&self, mut start: u64, bytes: u64) -> u64 {
        // Each pass moves past at least one hole, so two passes per hole.
        for _ in 0..2 * self.holes.len() {
            let Some(&(_, end)) = self
                .holes
                .iter()
                .find(|&&(hs, he)| start < he && start.saturating_add(bytes) > hs)
            else {
                break;
            };
            start = end.next_multiple_of(PAGE_SIZE);
        }
        start
    }

    /// `[start, end)` minus the holes, in pieces.
    fn pieces(&self, start: u64, end: u64, out: &mut alloc::vec::Vec<(u64, u64)>) {
        let mut at = start;
        while at < end {
            let next = self.past_holes(at, PAGE_SIZE);
            if next > at {
                at = next;
                continue;
            }
            // Up to the next hole that starts after `at`.
            let stop = self
                .holes
                .iter()
                .filter(|&&(hs, he)| hs > at && he > hs)
                .map(|&(hs, _)| hs & !(PAGE_SIZE - 1))
                .min()
                .unwrap_or(end)
                .min(end);
            if stop > at {
                out.push((at, stop));
            }
            at = stop.max(at + PAGE_SIZE);
        }
    }
}

/// Allocates `count` physically contiguous frames (from the bump area only);
/// their contents are undefined.
pub fn alloc_contiguous(count: u64) -> Option<u64> {
    let mut f = FRAMES.lock();
    let bytes = count.checked_mul(PAGE_SIZE)?;
    loop {
        let (start, end) = match f.bounds {
            Some(bounds) => bounds,
            None => {
                let bounds = f.usable(f.region)?;
                f.bounds = Some(bounds);
                bounds
            }
        };
        let at = f.past_holes(f.next.max(start), bytes);
        if at.checked_add(bytes).is_some_and(|e| e <= end) {
            f.next = at + bytes;
            f.in_use += count;
            return Some(at);
        }
        f.region += 1;
        f.bounds = None;
        f.next = 0;
    }
}

/// Keeps `reserve` bytes after the bump pointer for later kernel allocations
/// and returns every RAM range beyond them as `[start, end)`; the allocator
/// never hands those out again (they belong to the MM core from now on).
pub fn hand_off(reserve: u64) -> alloc::vec::Vec<(u64, u64)> {
    let mut f = FRAMES.lock();
    let mut out = alloc::vec::Vec::new();
    let Some((start, end)) = f.usable(f.region) else {
        return out;
    };
    let keep_end = f
        .next
        .max(start)
        .saturating_add(reserve)
        .next_multiple_of(PAGE_SIZE)
        .min(end.max(start));
    f.pieces(keep_end, end, &mut out);
    let mut i = f.region + 1;
    while let Some((s, e)) = f.usable(i) {
        f.pieces(s, e, &mut out);
        i += 1;
    }
    f.limit = Some((f.region, keep_end));
    f.bounds = None;
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
