//! Loading a user program: an ELF64 x86-64 executable (`ET_EXEC`) whose
//! `PT_LOAD` segments are copied into private frames of an address space.
//!
//! The images are built into the kernel, but they are parsed defensively
//! anyway: every offset and size is checked before use.

use super::addr_space::{AddressSpace, MapError};
use crate::arch::x86_64::paging::{PAGE_SIZE, USER_END, phys_to_virt};

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
/// Lowest address a segment may use (keeps page 0 unmapped).
const USER_MIN: u64 = 0x1000;

/// Why an image could not be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfError {
    /// Not a little-endian ELF64 x86-64 executable.
    NotExecutable,
    /// A header or segment lies outside the file.
    Truncated,
    /// A segment lies outside user space or has `filesz > memsz`.
    BadSegment {
        /// Its virtual address.
        vaddr: u64,
    },
    /// Mapping the segment failed.
    Map(MapError),
}

impl From<MapError> for ElfError {
    fn from(e: MapError) -> Self {
        ElfError::Map(e)
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Truncated)
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or(ElfError::Truncated)
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    b.get(off..off + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or(ElfError::Truncated)
}

/// Maps the segments of `image` into `space`; returns the entry point.
pub fn load(space: &mut AddressSpace, image: &[u8]) -> Result<u64, ElfError> {
    if image.get(0..4) != Some(b"\x7fELF".as_slice())
        || image.get(4) != Some(&2)
        || image.get(5) != Some(&1)
        || u16_at(image, 16)? != ET_EXEC
        || u16_at(image, 18)? != EM_X86_64
    {
        return Err(ElfError::NotExecutable);
    }
    let entry = u64_at(image, 24)?;
    let phoff = u64_at(image, 32)? as usize;
    let phentsize = usize::from(u16_at(image, 54)?);
    let phnum = usize::from(u16_at(image, 56)?);
    if phentsize < 56 {
        return Err(ElfError::NotExecutable);
    }
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or(ElfError::Truncated)?;
        if u32_at(image, ph)? != PT_LOAD {
            continue;
        }
        let flags = u32_at(image, ph + 4)?;
        let offset = u64_at(image, ph + 8)? as usize;
        let vaddr = u64_at(image, ph + 16)?;
        let filesz = u64_at(image, ph + 32)? as usize;
        let memsz = u64_at(image, ph + 40)?;
        let end = vaddr
            .checked_add(memsz)
            .filter(|&e| vaddr >= USER_MIN && e <= USER_END);
        let Some(end) = end.filter(|_| filesz as u64 <= memsz) else {
            return Err(ElfError::BadSegment { vaddr });
        };
        let data = image
            .get(offset..offset.checked_add(filesz).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        load_segment(space, vaddr, end, data, flags & PF_W != 0)?;
    }
    if !(USER_MIN..USER_END).contains(&entry) {
        return Err(ElfError::NotExecutable);
    }
    Ok(entry)
}

/// Maps `[vaddr, end)` and copies `data` to its start (the rest stays zero).
fn load_segment(
    space: &mut AddressSpace,
    vaddr: u64,
    end: u64,
    data: &[u8],
    writable: bool,
) -> Result<(), ElfError> {
    let mut page = vaddr & !(PAGE_SIZE - 1);
    while page < end {
        let frame = space.map_or_get(page, writable)?;
        // Bytes of `data` that land in this page.
        let lo = page.max(vaddr);
        let hi = (page + PAGE_SIZE).min(vaddr + data.len() as u64);
        if lo < hi {
            let src = &data[(lo - vaddr) as usize..(hi - vaddr) as usize];
            // SAFETY: `frame` is a private, direct-mapped frame of this
            // address space; the copy stays within it (lo..hi is in the page).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    src.as_ptr(),
                    (phys_to_virt(frame) + (lo - page)) as *mut u8,
                    src.len(),
                )
            };
        }
        page += PAGE_SIZE;
    }
    Ok(())
}
