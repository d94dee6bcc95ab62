//! Guest RAM as a migration sees it: copying pages out of a running guest,
//! writing them into a waiting one, and the hash both ends compare.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use crate::migration::stream::PAGE;

/// Copies `buf.len()` bytes of guest memory at `gpa` into `buf`. The guest
/// may be writing them: the copy is volatile, and whatever it catches
/// mid-write is sent again in a later round (the page is dirty again).
pub fn read(mem: &GuestMemoryMmap, gpa: u64, buf: &mut [u8]) -> Result<(), String> {
    mem.read_slice(buf, GuestAddress(gpa))
        .map_err(|e| format!("reading guest RAM at {gpa:#x}: {e}"))
}

/// Writes `data` into guest memory at `gpa`; false if any of it lies
/// outside guest RAM.
pub fn write(mem: &GuestMemoryMmap, gpa: u64, data: &[u8]) -> bool {
    in_ram(mem, gpa, data.len() as u64) && mem.write_slice(data, GuestAddress(gpa)).is_ok()
}

/// Zeroes `pages` pages at `gpa`; false if any lies outside guest RAM.
pub fn zero(mem: &GuestMemoryMmap, gpa: u64, pages: u64) -> bool {
    let Some(len) = pages.checked_mul(PAGE as u64) else {
        return false;
    };
    if !in_ram(mem, gpa, len) {
        return false;
    }
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut at = gpa;
    let end = gpa + len;
    while at < end {
        let n = (end - at).min(ZEROS.len() as u64);
        if mem
            .write_slice(&ZEROS[..n as usize], GuestAddress(at))
            .is_err()
        {
            return false;
        }
        at += n;
    }
    true
}

/// Which guest pages may hold data, from `/proc/self/pagemap`: a page of
/// private anonymous RAM that is neither present nor swapped out has
/// never been written (or was discarded), so it reads as zeros. Knowing
/// that spares reading it, which would fault in the zero page: on a large
/// idle guest that is most of the cost of a full pass or a hash.
pub struct Populated {
    pagemap: Option<File>,
    entries: Vec<u8>,
}

/// Pagemap bits: present in RAM, or swapped out.
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;

impl Populated {
    pub fn new() -> Self {
        Populated {
            pagemap: File::open("/proc/self/pagemap").ok(),
            entries: Vec::new(),
        }
    }

    /// For the `pages` pages at `gpa` (within one slot), sets `out[i]`
    /// when page `i` may hold data. Where nothing is known (file-backed
    /// RAM such as hugetlb, no pagemap), every page may.
    pub fn fill(&mut self, mem: &GuestMemoryMmap, gpa: u64, pages: usize, out: &mut Vec<bool>) {
        out.clear();
        out.resize(pages, true);
        let Some(file) = &self.pagemap else {
            return;
        };
        let Some(region) = mem.find_region(GuestAddress(gpa)) else {
            return;
        };
        // Only private anonymous memory reads as zeros when not present.
        if region.file_offset().is_some() {
            return;
        }
        let host = region.as_ptr() as u64 + (gpa - region.start_addr().0);
        self.entries.resize(pages * 8, 0);
        if file
            .read_exact_at(&mut self.entries, host / PAGE as u64 * 8)
            .is_err()
        {
            return;
        }
        for (flag, entry) in out.iter_mut().zip(self.entries.chunks_exact(8)) {
            let entry = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            *flag = entry & (PM_PRESENT | PM_SWAPPED) != 0;
        }
    }
}

impl Default for Populated {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies the `data.len() / PAGE` pages at `gpa` into `data`, reading only
/// those that may hold data (the rest are zeroed in `data`); `populated`
/// is left with which ones were read.
pub fn read_populated(
    mem: &GuestMemoryMmap,
    gpa: u64,
    data: &mut [u8],
    pagemap: &mut Populated,
    populated: &mut Vec<bool>,
) -> Result<(), String> {
    let pages = data.len() / PAGE;
    pagemap.fill(mem, gpa, pages, populated);
    let mut i = 0;
    while i < pages {
        let here = populated[i];
        let mut j = i + 1;
        while j < pages && populated[j] == here {
            j += 1;
        }
        let run = &mut data[i * PAGE..j * PAGE];
        if here {
            read(mem, gpa + (i * PAGE) as u64, run)?;
        } else {
            run.fill(0);
        }
        i = j;
    }
    Ok(())
}

/// True if `[gpa, gpa + len)` lies within one RAM slot.
pub fn in_ram(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    mem.iter().any(|r| {
        let start = r.start_addr().0;
        gpa >= start && end <= start + r.len()
    })
}

/// True if every byte of `page` is zero (written to vectorise: OR the
/// bytes of each 64-byte line, stop at the first non-zero line).
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|line| line.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::memory::create_guest_memory;

    #[test]
    fn zero_pages_are_told_apart() {
        let mut page = vec![0u8; PAGE];
        assert!(is_zero(&page));
        page[PAGE - 1] = 1;
        assert!(!is_zero(&page));
    }

    #[test]
    fn writes_stay_inside_one_ram_slot() {
        // RAM split around the MMIO hole: [0, 3G) and [4G, 4G + 64M).
        let mem = create_guest_memory((3u64 << 30) + (64 << 20), Backing::Anon, 46).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(write(&mem, (4u64 << 30) + (64 << 20) - 1, &[1]));
        assert!(
            !write(&mem, (4u64 << 30) + (64 << 20) - 1, &[1, 2]),
            "past the end"
        );
        assert!(!write(&mem, (3u64 << 30) - 1, &[1, 2]), "into the hole");
        assert!(!write(&mem, 3 << 30, &[1]), "the MMIO hole is not RAM");
        assert!(!zero(&mem, !4095, 2));
        assert!(!zero(&mem, 0, u64::MAX));
    }
}
