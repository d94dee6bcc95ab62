//! Loading a user program: an ELF64 x86-64 executable (`ET_EXEC`) whose
//! `PT_LOAD` segments become private anonymous mappings of the MM core,
//! filled with `copy_to_user` and then given the segment's protection
//! (`fs/binfmt_elf.c` in miniature: `elf_map` + `padzero`).
//!
//! The images are built into the kernel or come from the user (`--init`),
//! so they are parsed defensively: every offset and size is checked before
//! use.

use crate::arch::x86_64::paging::PAGE_SIZE;
use crate::memory::mm;
use alloc::vec::Vec;
use guest_mm::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_EXEC, PROT_READ, PROT_WRITE};
use guest_mm::vma::TASK_SIZE;
use guest_mm::{Errno, Pid};

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const PF_W: u32 = 2;
const PF_R: u32 = 4;
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
    /// Mapping or filling the segment failed.
    Map(Errno),
}

impl From<Errno> for ElfError {
    fn from(e: Errno) -> Self {
        ElfError::Map(e)
    }
}

/// What the process's start-up needs of a loaded image (the ELF auxiliary
/// vector and the program break).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// The entry point.
    pub entry: u64,
    /// Where the program headers are in its memory (0: not loaded).
    pub phdr: u64,
    /// Their count.
    pub phnum: u64,
    /// The end of the highest segment, page-aligned: the program break
    /// starts here.
    pub end: u64,
}

/// One loadable segment.
struct Segment<'a> {
    vaddr: u64,
    end: u64,
    data: &'a [u8],
    prot: u32,
}

impl Segment<'_> {
    fn first_page(&self) -> u64 {
        self.vaddr & !(PAGE_SIZE - 1)
    }
    fn end_page(&self) -> u64 {
        self.end.next_multiple_of(PAGE_SIZE)
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

/// Maps the segments of `image` into process `pid`.
pub fn load(pid: Pid, image: &[u8]) -> Result<Loaded, ElfError> {
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
    let mut segments = Vec::new();
    let mut phdr = 0;
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
            .filter(|&e| vaddr >= USER_MIN && e <= TASK_SIZE);
        let Some(end) = end.filter(|_| filesz as u64 <= memsz) else {
            return Err(ElfError::BadSegment { vaddr });
        };
        let data = image
            .get(offset..offset.checked_add(filesz).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        if (offset..offset + filesz).contains(&phoff) {
            phdr = vaddr + (phoff - offset) as u64;
        }
        let prot = [(PF_R, PROT_READ), (PF_W, PROT_WRITE), (PF_X, PROT_EXEC)]
            .iter()
            .filter(|(pf, _)| flags & pf != 0)
            .fold(0, |p, (_, prot)| p | prot);
        segments.push(Segment {
            vaddr,
            end,
            data,
            prot,
        });
    }
    if !(USER_MIN..TASK_SIZE).contains(&entry) {
        return Err(ElfError::NotExecutable);
    }
    load_segments(pid, &segments)?;
    let end = segments
        .iter()
        .map(Segment::end_page)
        .max()
        .unwrap_or(USER_MIN);
    Ok(Loaded {
        entry,
        phdr,
        phnum: phnum as u64,
        end,
    })
}

/// Maps every segment writable, copies the file bytes (the rest reads as
/// zero), then applies the final protections; a page shared by two
/// segments gets both protections.
fn load_segments(pid: Pid, segments: &[Segment]) -> Result<(), ElfError> {
    mm::with(|s| {
        for seg in segments {
            s.mmap(
                pid,
                seg.first_page(),
                seg.end_page() - seg.first_page(),
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                0,
            )?;
        }
        for seg in segments.iter().filter(|seg| !seg.data.is_empty()) {
            s.copy_to_user(pid, seg.vaddr, seg.data)?;
        }
        for (i, seg) in segments.iter().enumerate() {
            s.mprotect(
                pid,
                seg.first_page(),
                seg.end_page() - seg.first_page(),
                seg.prot,
            )?;
            for other in &segments[..i] {
                let (lo, hi) = (
                    seg.first_page().max(other.first_page()),
                    seg.end_page().min(other.end_page()),
                );
                if lo < hi {
                    s.mprotect(pid, lo, hi - lo, seg.prot | other.prot)?;
                }
            }
        }
        Ok(())
    })
}
