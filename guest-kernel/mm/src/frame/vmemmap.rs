//! The frame metadata of one RAM range, stored in chunks of 512 frames
//! (one 2 MiB page's worth), so that the metadata of a pooled huge page can
//! be given back.
//!
//! This is the guest's HVO (HugeTLB Vmemmap Optimization, Linux's
//! `mm/hugetlb_vmemmap.c`): while a huge page sits free in a hugetlb pool
//! nothing reads its tail frames' metadata but as "a tail of that head",
//! so their 512-entry chunk is replaced by one head entry and one shared
//! tail entry (Linux remaps the tail `struct page`s onto one page of
//! them and frees the rest). The chunk is rebuilt before the page is
//! handed out or returned to the buddy allocator. Writing the metadata of
//! an optimised chunk is an MM-core bug and panics.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::folio::{Frame, FrameUse};

/// Frames per chunk (a 2 MiB page).
pub const CHUNK: u64 = 512;

enum Chunk {
    /// Every frame's own entry.
    Full(Box<[Frame]>),
    /// A pooled huge page's chunk: the entry of its first frame (the head,
    /// or a tail for the later chunks of a 1 GiB page) and the one entry
    /// every other frame shares.
    Optimized { first: Frame, rest: Frame },
}

/// The metadata of frames `[base, base + len)`.
pub(super) struct Zone {
    pub base: u64,
    len: u64,
    /// Chunk `i` holds frames from `(base & !511) + i * 512`.
    chunks: Vec<Chunk>,
}

impl Zone {
    /// All frames `use_`.
    pub fn new(base: u64, len: u64, use_: FrameUse) -> Self {
        let first = base & !(CHUNK - 1);
        let n = (base + len).div_ceil(CHUNK) - first / CHUNK;
        let chunks = (0..n)
            .map(|_| Chunk::Full(alloc::vec![Frame::new(use_); CHUNK as usize].into_boxed_slice()))
            .collect();
        Zone { base, len, chunks }
    }

    /// Frames in the zone.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether `pfn` is in the zone.
    pub fn contains(&self, pfn: u64) -> bool {
        pfn >= self.base && pfn - self.base < self.len
    }

    fn at(&self, pfn: u64) -> (usize, usize) {
        let i = pfn / CHUNK - self.base / CHUNK;
        (i as usize, (pfn % CHUNK) as usize)
    }

    /// The entry of `pfn` (in the zone).
    pub fn get(&self, pfn: u64) -> &Frame {
        let (c, o) = self.at(pfn);
        match &self.chunks[c] {
            Chunk::Full(f) => &f[o],
            Chunk::Optimized { first, .. } if o == 0 => first,
            Chunk::Optimized { rest, .. } => rest,
        }
    }

    /// The entry of `pfn` for writing.
    pub fn get_mut(&mut self, pfn: u64) -> &mut Frame {
        let (c, o) = self.at(pfn);
        match &mut self.chunks[c] {
            Chunk::Full(f) => &mut f[o],
            Chunk::Optimized { .. } => {
                panic!("metadata of an optimised pooled huge page {pfn:#x} written")
            }
        }
    }

    /// Replaces the chunks of the huge page `[head, head + 2^order)` (chunk
    /// aligned, in the zone) by their optimised form; returns the bytes of
    /// metadata given back.
    pub fn optimize(&mut self, head: u64, order: u8) -> u64 {
        let mut freed = 0;
        for k in 0..(1u64 << order) / CHUNK {
            let start = head + k * CHUNK;
            let (c, _) = self.at(start);
            if let Chunk::Full(f) = &self.chunks[c] {
                let (first, rest) = (f[0], f[1]);
                freed += core::mem::size_of_val(&**f) as u64;
                self.chunks[c] = Chunk::Optimized { first, rest };
            }
        }
        freed
    }

    /// Rebuilds the chunks of an optimised huge page (`hugetlb_vmemmap_restore`).
    pub fn restore(&mut self, head: u64, order: u8) {
        for k in 0..(1u64 << order) / CHUNK {
            let (c, _) = self.at(head + k * CHUNK);
            if let Chunk::Optimized { first, rest } = self.chunks[c] {
                let mut f = alloc::vec![rest; CHUNK as usize].into_boxed_slice();
                f[0] = first;
                self.chunks[c] = Chunk::Full(f);
            }
        }
    }

    /// Whether the chunk holding `pfn` is optimised.
    pub fn is_optimized(&self, pfn: u64) -> bool {
        let (c, _) = self.at(pfn);
        matches!(self.chunks[c], Chunk::Optimized { .. })
    }

    /// Bytes of metadata the zone holds now.
    pub fn metadata_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| match c {
                Chunk::Full(f) => core::mem::size_of_val(&**f) as u64,
                Chunk::Optimized { .. } => 2 * core::mem::size_of::<Frame>() as u64,
            })
            .sum()
    }

    /// Every frame of the zone with its entry.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Frame)> + '_ {
        (self.base..self.base + self.len).map(move |p| (p, self.get(p)))
    }
}
