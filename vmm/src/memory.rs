//! Guest RAM: its layout in guest-physical space and its host backing.
//!
//! RAM is mapped once, at start-up, as one region per contiguous guest range
//! (two when the MMIO hole below 4 GiB splits it). Anonymous backing uses
//! `MAP_NORESERVE` so untouched guest pages cost nothing; hugetlb backing maps
//! a `MFD_HUGETLB` memfd *without* `MAP_NORESERVE`, so the kernel reserves the
//! huge pages at `mmap` time and a short pool fails here, with a message,
//! rather than as a `SIGBUS` when the guest first touches a page.

use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

use std::sync::atomic::{AtomicBool, Ordering};

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap};

use crate::config::{Backing, format_size};
use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Guest memory as every other module sees it. Each region carries a
/// bitmap of the pages the VMM itself wrote through vm-memory (loader,
/// devices, migration), which the write-watch layer merges with KVM's log:
/// no write path into guest RAM bypasses it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<VmmWrites>;

/// vm-memory's `AtomicBitmap` of the pages the VMM wrote in one region, and
/// whether it has any set: most harvests find none, and looking at one flag
/// is cheaper than swapping every word of a large region's bitmap.
#[derive(Debug, Default)]
pub struct VmmWrites {
    bits: AtomicBitmap,
    touched: AtomicBool,
}

impl VmmWrites {
    /// Takes the bits set since the last call (as `AtomicBitmap::get_and_reset`),
    /// or `None` when nothing was written. A write that lands while this
    /// runs is taken now or by the next call: the writer sets its bits
    /// before the flag, and the flag is cleared before the bits are taken.
    pub fn take(&self) -> Option<Vec<u64>> {
        self.touched
            .swap(false, Ordering::AcqRel)
            .then(|| self.bits.get_and_reset())
    }
}

impl<'a> WithBitmapSlice<'a> for VmmWrites {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for VmmWrites {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.bits.mark_dirty(offset, len);
        self.touched.store(true, Ordering::Release);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.bits.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for VmmWrites {
    fn with_len(len: usize) -> Self {
        VmmWrites {
            bits: AtomicBitmap::with_len(len),
            touched: AtomicBool::new(false),
        }
    }
}

/// Size of a host huge page for `--backing hugetlb`.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("--mem {0} is not a multiple of 4 KiB")]
    Unaligned(String),
    #[error("--mem {0} is not a multiple of 2 MiB, which --backing hugetlb needs")]
    UnalignedHuge(String),
    #[error(
        "--mem {size} is larger than this VM's guest-physical address space ({bits} bits, RAM would end at {end:#x})"
    )]
    BeyondPhysBits { size: String, bits: u32, end: u64 },
    #[error("cannot map {size} of guest memory on the host: {source}")]
    Map {
        size: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "the host hugetlb pool is too small for {size} of guest memory: {needed} free 2 MiB pages needed, {free} free (raise /proc/sys/vm/nr_hugepages)"
    )]
    HugePool {
        size: String,
        needed: u64,
        free: u64,
    },
    #[error("cannot create a hugetlb memfd (is hugetlbfs available?): {0}")]
    Memfd(#[source] io::Error),
    #[error("cannot set up guest memory: {0}")]
    Regions(String),
}

/// The guest-physical RAM ranges for `mem_bytes` of RAM: below the MMIO hole
/// first, the rest from 4 GiB up.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(0, low)];
    if mem_bytes > low {
        ranges.push((MMIO_HOLE_END, mem_bytes - low));
    }
    ranges
}

/// Maps guest RAM on the host. `phys_bits` is the guest's physical address
/// width; RAM must end below `1 << phys_bits`.
pub fn create_guest_memory(
    mem_bytes: u64,
    backing: Backing,
    phys_bits: u32,
) -> Result<GuestMemoryMmap, MemoryError> {
    let size = format_size(mem_bytes);
    if mem_bytes % 4096 != 0 || mem_bytes == 0 {
        return Err(MemoryError::Unaligned(size));
    }
    if backing == Backing::Hugetlb && mem_bytes % HUGE_PAGE_SIZE != 0 {
        return Err(MemoryError::UnalignedHuge(size));
    }
    let ranges = ram_ranges(mem_bytes);
    let end = ranges.last().map(|&(start, len)| start + len).unwrap_or(0);
    if phys_bits < 64 && end > 1u64 << phys_bits {
        return Err(MemoryError::BeyondPhysBits {
            size,
            bits: phys_bits,
            end,
        });
    }
    // The dirty bitmaps are allocated before the mappings (1 bit per page):
    // make sure the host can map this much at all before spending on them.
    reserve_address_space(mem_bytes).map_err(|source| MemoryError::Map {
        size: size.clone(),
        source,
    })?;
    let file = match backing {
        Backing::Anon => None,
        Backing::Hugetlb => Some(hugetlb_memfd(mem_bytes)?),
    };
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for (start, len) in ranges {
        let map_err = |source| MemoryError::Map {
            size: size.clone(),
            source,
        };
        let len_usize =
            usize::try_from(len).map_err(|_| map_err(io::ErrorKind::OutOfMemory.into()))?;
        let builder = MmapRegionBuilder::new_with_bitmap(len_usize, VmmWrites::with_len(len_usize))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let builder = match &file {
            None => builder
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
            Some(f) => builder
                .with_mmap_flags(libc::MAP_SHARED)
                .with_file_offset(FileOffset::new(
                    f.try_clone().map_err(MemoryError::Memfd)?,
                    file_offset,
                ))
                .with_hugetlbfs(true),
        };
        let mapping = builder.build().map_err(|e| match (e, &file) {
            (MmapRegionError::Mmap(err), Some(_)) if err.raw_os_error() == Some(libc::ENOMEM) => {
                MemoryError::HugePool {
                    size: size.clone(),
                    needed: mem_bytes / HUGE_PAGE_SIZE,
                    free: free_huge_pages(),
                }
            }
            (MmapRegionError::Mmap(err), _) => map_err(err),
            (other, _) => MemoryError::Regions(other.to_string()),
        })?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| MemoryError::Regions(format!("region at {start:#x} overflows")))?;
        regions.push(region);
        file_offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Regions(e.to_string()))
}

/// Checks that `len` bytes of address space can be mapped, by mapping and
/// unmapping them (no access, no reservation: this costs no memory).
fn reserve_address_space(len: u64) -> io::Result<()> {
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel
    // picks; it overlaps nothing of ours and is unmapped right away.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `addr` is the mapping of `len` bytes just made.
    unsafe { libc::munmap(addr, len) };
    Ok(())
}

/// Creates a 2 MiB-page hugetlb memfd of `len` bytes.
fn hugetlb_memfd(len: u64) -> Result<File, MemoryError> {
    // MFD_HUGE_2MB is log2(2 MiB) in the MFD_HUGE_SHIFT bits.
    const MFD_HUGE_2MB: libc::c_uint = 21 << 26;
    let name = c"writewatch-guest-ram";
    // SAFETY: `name` is a valid NUL-terminated string and the flags are plain
    // integers; the call returns a new fd or -1 and touches no other memory.
    let fd = unsafe {
        libc::memfd_create(
            name.as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_HUGETLB | MFD_HUGE_2MB,
        )
    };
    if fd < 0 {
        return Err(MemoryError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).map_err(MemoryError::Memfd)?;
    Ok(file)
}

/// `HugePages_Free` from /proc/meminfo, or 0 when it cannot be read.
fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn memory_above_the_hole_moves_to_4g() {
        assert_eq!(
            ram_ranges(4 << 30),
            vec![
                (0, MMIO_HOLE_START),
                (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)
            ]
        );
    }

    #[test]
    fn anon_memory_reads_back() {
        let mem = create_guest_memory(8 << 20, Backing::Anon, 46).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(mem.num_regions(), 1);
    }

    #[test]
    fn rejects_ram_beyond_phys_bits() {
        let err = create_guest_memory(1 << 40, Backing::Anon, 36).unwrap_err();
        assert!(matches!(err, MemoryError::BeyondPhysBits { .. }), "{err}");
    }

    #[test]
    fn rejects_unaligned_sizes() {
        assert!(matches!(
            create_guest_memory(4097, Backing::Anon, 46),
            Err(MemoryError::Unaligned(_))
        ));
        assert!(matches!(
            create_guest_memory(3 << 20, Backing::Hugetlb, 46),
            Err(MemoryError::UnalignedHuge(_))
        ));
    }
}
