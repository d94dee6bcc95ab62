//! The arena a workload writes: guest RAM nobody else uses, as a list of
//! physical runs seen as one array of pages, reached through the direct map
//! (2 MiB / 1 GiB pages) or through 4 KiB mappings made for it.

use crate::arch::x86_64::paging::{PAGE_SIZE, VMAP_BASE, phys_to_virt};
use crate::memory::kmap::{self, OutOfFrames};

/// Where `map=4k` arenas are mapped: the upper half of the `VMAP` area.
const ARENA_VMAP: u64 = VMAP_BASE + (256 << 30);
/// Most runs an arena has (RAM below and above the MMIO hole).
const MAX_RUNS: usize = 8;

#[derive(Clone, Copy)]
struct Run {
    /// Index of the run's first page in the arena.
    first: u64,
    phys: u64,
    pages: u64,
}

pub struct Arena {
    runs: [Run; MAX_RUNS],
    nruns: usize,
    pub pages: u64,
    /// With 4 KiB mappings: the virtual address of page 0.
    mapped: Option<u64>,
}

impl Arena {
    /// An arena of at most `limit` pages from `ranges` (`[start, end)`).
    pub fn new(ranges: &[(u64, u64)], limit: u64) -> Self {
        let empty = Run {
            first: 0,
            phys: 0,
            pages: 0,
        };
        let mut arena = Arena {
            runs: [empty; MAX_RUNS],
            nruns: 0,
            pages: 0,
            mapped: None,
        };
        for &(start, end) in ranges {
            if arena.nruns == MAX_RUNS || arena.pages == limit {
                break;
            }
            let start = start.next_multiple_of(PAGE_SIZE);
            let pages = (end.saturating_sub(start) / PAGE_SIZE).min(limit - arena.pages);
            if pages == 0 {
                continue;
            }
            arena.runs[arena.nruns] = Run {
                first: arena.pages,
                phys: start,
                pages,
            };
            arena.nruns += 1;
            arena.pages += pages;
        }
        arena
    }

    /// Maps the arena with 4 KiB pages at its own virtual range.
    pub fn map_4k(&mut self) -> Result<(), OutOfFrames> {
        for run in &self.runs[..self.nruns] {
            kmap::map_vmap_pages(ARENA_VMAP + run.first * PAGE_SIZE, run.phys, run.pages)?;
        }
        self.mapped = Some(ARENA_VMAP);
        Ok(())
    }

    /// The physical runs as `(start, len)` in bytes.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs[..self.nruns]
            .iter()
            .map(|r| (r.phys, r.pages * PAGE_SIZE))
    }

    /// The virtual address through which page `index` is written.
    #[inline]
    pub fn address(&self, index: u64) -> u64 {
        if let Some(base) = self.mapped {
            return base + index * PAGE_SIZE;
        }
        let mut run = &self.runs[0];
        for r in &self.runs[1..self.nruns] {
            if index >= r.first {
                run = r;
            }
        }
        phys_to_virt(run.phys + (index - run.first) * PAGE_SIZE)
    }
}
