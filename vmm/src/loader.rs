//! Loading a PVH kernel and writing its boot information.
//!
//! linux-loader does the ELF loading, the PVH note lookup, the start-info
//! layout and the command line; this module adds the checks a VMM owes its
//! user (the file is an ELF, it has a PVH entry, it fits in RAM above 1 MiB)
//! and builds the memory map from the RAM layout.

use std::io::Cursor;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, Error as ElfError, PvhBootCapability};
use linux_loader::loader::{Error as LoaderError, KernelLoader, load_cmdline};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{
    CMDLINE_CAPACITY, CMDLINE_START, EBDA_START, HIGH_RAM_START, INIT_MAX_BYTES,
    KERNEL_MIN_WORKING_SET, PVH_MEMMAP, PVH_MODLIST, PVH_START_INFO,
};
use crate::memory::{GuestMemoryMmap, ram_ranges};

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const MEMMAP_RAM: u32 = 1;
const MEMMAP_RESERVED: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not an ELF file")]
    NotElf(String),
    #[error("{0} is not a 64-bit little-endian x86-64 ELF file")]
    WrongElfKind(String),
    #[error("{0} is a malformed ELF file ({1})")]
    Malformed(String, &'static str),
    #[error(
        "{0} has no PVH entry point (an ELF note \"Xen\" of type 18); writewatch boots PVH kernels only"
    )]
    NoPvhNote(String),
    #[error(
        "{name} does not fit in guest memory: it must load at or above 1 MiB and end below {mem_end:#x}"
    )]
    DoesNotFit { name: String, mem_end: u64 },
    #[error(
        "--mem is too small for {name}: it ends at {kernel_end:#x} and needs {min_mib} MiB of RAM at least"
    )]
    TooSmall {
        name: String,
        kernel_end: u64,
        min_mib: u64,
    },
    #[error("the PVH entry point {entry:#x} of {name} is not in guest RAM below 4 GiB")]
    BadEntry { name: String, entry: u64 },
    #[error("{0} is a position-independent executable; build it with -static -no-pie")]
    InitPie(String),
    #[error("{0} is dynamically linked; build it with -static")]
    InitDynamic(String),
    #[error("{0} is not an executable program (ELF type {1})")]
    InitNotExecutable(String, u16),
    #[error(
        "{name} is too large: {size} bytes; --init takes at most {max} bytes here (at most 256 MiB, and --mem must leave the kernel its working set)"
    )]
    InitTooLarge { name: String, size: u64, max: u64 },
    #[error(
        "{name} is too large: {size} bytes; --stdin takes at most {max} bytes here (at most 256 MiB with --init, and --mem must leave the kernel its working set)"
    )]
    InputTooLarge { name: String, size: u64, max: u64 },
    #[error("{0} {1}; the guest runs static x86-64 Linux executables in user space")]
    InitBadLayout(String, &'static str),
    #[error("the command line is too long or has characters a kernel cannot take: {0}")]
    Cmdline(String),
    #[error("cannot write boot information: {0}")]
    BootInfo(String),
}

/// Where the loaded kernel is and how to enter it.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The PVH 32-bit entry point (guest-physical).
    pub entry: GuestAddress,
    /// The first byte after the highest segment.
    pub end: u64,
}

/// Loads the PVH ELF `image` (named `name` in errors) into `mem`, which holds
/// `mem_bytes` of RAM laid out by `ram_ranges`, and requires `min_free` bytes
/// of RAM beyond its end.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    name: &str,
    mem_bytes: u64,
    min_free: u64,
) -> Result<LoadedKernel, LoadError> {
    check_elf_identity(image, name)?;
    let result = Elf::load(mem, None, &mut Cursor::new(image), Some(GuestAddress(0))).map_err(
        |e| match e {
            LoaderError::Elf(ElfError::ReadKernelImage) | LoaderError::MemoryOverflow => {
                LoadError::DoesNotFit {
                    name: name.to_string(),
                    mem_end: mem.last_addr().0 + 1,
                }
            }
            LoaderError::Elf(inner) => {
                LoadError::Malformed(name.to_string(), elf_error_text(&inner))
            }
            _ => LoadError::Malformed(name.to_string(), "unreadable"),
        },
    )?;
    let entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => entry,
        _ => return Err(LoadError::NoPvhNote(name.to_string())),
    };
    let low_ram_end = ram_ranges(mem_bytes)[0].1;
    if entry.0 < HIGH_RAM_START || entry.0 >= low_ram_end {
        return Err(LoadError::BadEntry {
            name: name.to_string(),
            entry: entry.0,
        });
    }
    let needed = result.kernel_end.saturating_add(min_free);
    if needed > low_ram_end {
        return Err(LoadError::TooSmall {
            name: name.to_string(),
            kernel_end: result.kernel_end,
            min_mib: needed.div_ceil(1 << 20),
        });
    }
    Ok(LoadedKernel {
        entry,
        end: result.kernel_end,
    })
}

/// Where a PVH module (the `--init` program, the `--stdin` bytes) was
/// placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct BootModule {
    pub paddr: u64,
    pub size: u64,
}

impl BootModule {
    /// The first page after the module.
    pub fn end(&self) -> u64 {
        (self.paddr + self.size).next_multiple_of(4096)
    }
}

/// The module command line that tells the writewatch kernel a module is
/// standard input, not a program (docs/GUEST_ABI.md).
const INPUT_MODULE_CMDLINE: &[u8] = b"stdin\0";
/// Where that command line is written: after the module list's entries,
/// in the same page.
const INPUT_MODULE_CMDLINE_AT: u64 = PVH_MODLIST + 0x100;

/// The most a module starting at `paddr` may hold: it must leave the
/// kernel its working set below the end of low RAM.
fn module_room(paddr: u64, mem_bytes: u64) -> u64 {
    let low_ram_end = ram_ranges(mem_bytes)[0].1;
    low_ram_end
        .saturating_sub(paddr + KERNEL_MIN_WORKING_SET)
        .min(INIT_MAX_BYTES)
}

/// Copies `bytes` (named `name`), which the guest's processes read from
/// standard input, to the first page at or after `after`.
pub fn load_input(
    mem: &GuestMemoryMmap,
    bytes: &[u8],
    name: &str,
    after: u64,
    mem_bytes: u64,
) -> Result<BootModule, LoadError> {
    let paddr = after.next_multiple_of(4096);
    let (size, max) = (bytes.len() as u64, module_room(paddr, mem_bytes));
    if size > max {
        return Err(LoadError::InputTooLarge {
            name: name.to_string(),
            size,
            max,
        });
    }
    mem.write_slice(bytes, GuestAddress(paddr))
        .map_err(|e| LoadError::BootInfo(format!("writing {name}: {e}")))?;
    Ok(BootModule { paddr, size })
}

/// Checks that `image` (named `name`) is a static x86-64 executable and
/// copies it to the first page after the kernel (`kernel_end`), leaving the
/// kernel its working set below the end of low RAM.
pub fn load_init(
    mem: &GuestMemoryMmap,
    image: &[u8],
    name: &str,
    kernel_end: u64,
    mem_bytes: u64,
) -> Result<BootModule, LoadError> {
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    const PT_LOAD: u32 = 1;
    const PT_INTERP: u32 = 3;
    /// The guest's user space (docs/GUEST_ABI.md): page 0 stays unmapped,
    /// and so does the page below 1 << 47 (Linux's TASK_SIZE).
    const USER_MIN: u64 = 0x1000;
    const USER_END: u64 = 0x7fff_ffff_f000;
    check_elf_identity(image, name)?;
    let u16_at = |at: usize| u16::from_le_bytes([image[at], image[at + 1]]);
    match u16_at(16) {
        ET_EXEC => {}
        ET_DYN => return Err(LoadError::InitPie(name.to_string())),
        other => return Err(LoadError::InitNotExecutable(name.to_string(), other)),
    }
    let phoff = u64::from_le_bytes(image[32..40].try_into().unwrap_or_default());
    let (phentsize, phnum) = (u64::from(u16_at(54)), u64::from(u16_at(56)));
    let headers_fit = phoff
        .checked_add(phentsize.saturating_mul(phnum))
        .is_some_and(|end| phentsize >= 56 && end <= image.len() as u64);
    if !headers_fit {
        return Err(LoadError::Malformed(
            name.to_string(),
            "bad program headers",
        ));
    }
    let mut segments = Vec::new();
    for i in 0..phnum {
        let at = (phoff + i * phentsize) as usize;
        let kind = u32::from_le_bytes(image[at..at + 4].try_into().unwrap_or_default());
        if kind == PT_INTERP {
            return Err(LoadError::InitDynamic(name.to_string()));
        }
        if kind != PT_LOAD {
            continue;
        }
        let word = |off: usize| {
            u64::from_le_bytes(image[at + off..at + off + 8].try_into().unwrap_or_default())
        };
        let (offset, vaddr, filesz, memsz) = (word(8), word(16), word(32), word(40));
        if offset
            .checked_add(filesz)
            .is_none_or(|end| end > image.len() as u64)
        {
            return Err(LoadError::Malformed(
                name.to_string(),
                "a segment lies past the end of the file",
            ));
        }
        let in_user_space = vaddr >= USER_MIN
            && filesz <= memsz
            && vaddr.checked_add(memsz).is_some_and(|end| end <= USER_END);
        if !in_user_space {
            return Err(LoadError::InitBadLayout(
                name.to_string(),
                "has a segment outside user space [0x1000, 0x7ffffffff000) or with more file bytes than memory",
            ));
        }
        segments.push((vaddr, vaddr + memsz));
    }
    let entry = u64::from_le_bytes(image[24..32].try_into().unwrap_or_default());
    if segments.is_empty() {
        return Err(LoadError::InitBadLayout(
            name.to_string(),
            "has no loadable segment",
        ));
    }
    if !segments
        .iter()
        .any(|&(start, end)| (start..end).contains(&entry))
    {
        return Err(LoadError::InitBadLayout(
            name.to_string(),
            "has its entry point outside its segments",
        ));
    }
    let paddr = kernel_end.next_multiple_of(4096);
    let max = module_room(paddr, mem_bytes);
    let size = image.len() as u64;
    if size > max {
        return Err(LoadError::InitTooLarge {
            name: name.to_string(),
            size,
            max,
        });
    }
    mem.write_slice(image, GuestAddress(paddr))
        .map_err(|e| LoadError::BootInfo(format!("writing {name}: {e}")))?;
    Ok(BootModule { paddr, size })
}

/// Writes the command line, the memory map, the ACPI tables for `vcpus`,
/// the module list (the `--init` program, then the `--stdin` bytes) and
/// `hvm_start_info`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    vcpus: u32,
    cmdline: &str,
    init: Option<BootModule>,
    input: Option<BootModule>,
) -> Result<(), LoadError> {
    let mut line = Cmdline::new(CMDLINE_CAPACITY).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    if !cmdline.is_empty() {
        line.insert_str(cmdline)
            .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;

    let acpi = crate::acpi::tables(vcpus);
    for (addr, table) in &acpi {
        mem.write_slice(table, GuestAddress(*addr))
            .map_err(|e| LoadError::BootInfo(format!("writing the ACPI tables: {e}")))?;
    }
    let memmap = memory_map(mem_bytes);
    if input.is_some() {
        mem.write_slice(INPUT_MODULE_CMDLINE, GuestAddress(INPUT_MODULE_CMDLINE_AT))
            .map_err(|e| LoadError::BootInfo(format!("writing the module list: {e}")))?;
    }
    let entry = |m: BootModule, cmdline_paddr| hvm_modlist_entry {
        paddr: m.paddr,
        size: m.size,
        cmdline_paddr,
        ..Default::default()
    };
    let modules: Vec<_> = init
        .map(|m| entry(m, 0))
        .into_iter()
        .chain(input.map(|m| entry(m, INPUT_MODULE_CMDLINE_AT)))
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: acpi[0].0,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST },
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(PVH_START_INFO));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(PVH_MEMMAP));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(|e| LoadError::BootInfo(e.to_string()))
}

/// The PVH memory map for `mem_bytes` of RAM: low RAM, the legacy hole,
/// then RAM from 1 MiB (split around the MMIO hole).
pub fn memory_map(mem_bytes: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr, size, type_| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, MEMMAP_RAM),
        entry(EBDA_START, HIGH_RAM_START - EBDA_START, MEMMAP_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        let start_above_1m = start.max(HIGH_RAM_START);
        if start + len > start_above_1m {
            map.push(entry(
                start_above_1m,
                start + len - start_above_1m,
                MEMMAP_RAM,
            ));
        }
    }
    map
}

/// Rejects files that are not 64-bit little-endian x86-64 ELF before
/// handing them to the loader, so the user learns what is wrong.
fn check_elf_identity(image: &[u8], name: &str) -> Result<(), LoadError> {
    const EM_X86_64: u16 = 62;
    if image.len() < 64 || &image[..4] != b"\x7fELF" {
        return Err(LoadError::NotElf(name.to_string()));
    }
    let machine = u16::from_le_bytes([image[18], image[19]]);
    if image[4] != 2 || image[5] != 1 || machine != EM_X86_64 {
        return Err(LoadError::WrongElfKind(name.to_string()));
    }
    Ok(())
}

fn elf_error_text(e: &ElfError) -> &'static str {
    match e {
        ElfError::InvalidElfMagicNumber => "bad magic number",
        ElfError::BigEndianElfOnLittle => "big-endian",
        ElfError::InvalidProgramHeaderSize => "bad program header size",
        ElfError::InvalidProgramHeaderOffset => "bad program header offset",
        ElfError::InvalidProgramHeaderAddress => "bad program header address",
        ElfError::InvalidEntryAddress => "bad entry address",
        ElfError::ReadElfHeader => "truncated ELF header",
        ElfError::ReadProgramHeader => "truncated program headers",
        ElfError::SeekKernelStart | ElfError::SeekElfStart | ElfError::SeekProgramHeader => {
            "offset past the end of the file"
        }
        ElfError::SeekNoteHeader | ElfError::ReadNoteHeader => "truncated PVH note",
        ElfError::InvalidPvhNote => "invalid PVH note",
        _ => "unreadable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::guest_image::GUEST_KERNEL;
    use crate::memory::create_guest_memory;

    const MEM: u64 = 64 << 20;

    fn memory() -> GuestMemoryMmap {
        create_guest_memory(MEM, Backing::Anon, 46).unwrap()
    }

    #[test]
    fn loads_the_built_in_kernel() {
        let kernel = load_kernel(&memory(), GUEST_KERNEL, "k", MEM, 0).unwrap();
        assert!(kernel.entry.0 >= HIGH_RAM_START && kernel.end > kernel.entry.0);
    }

    #[test]
    fn memory_map_covers_ram_and_skips_the_legacy_hole() {
        let map = memory_map(4 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == MEMMAP_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - (HIGH_RAM_START - EBDA_START));
        assert!(map.iter().any(|e| e.addr == 1 << 32));
    }

    /// Corrupted and truncated kernels are errors, never panics.
    #[test]
    fn corrupted_kernels_never_panic() {
        let mem = memory();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let header_span = GUEST_KERNEL.len().min(4096);
        for round in 0..3000 {
            let mut image = GUEST_KERNEL.to_vec();
            if round % 5 == 0 {
                image.truncate((next() as usize) % header_span);
            } else {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % header_span;
                    image[at] = next() as u8;
                }
            }
            let _ = load_kernel(&mem, &image, "fuzzed", MEM, 0);
        }
    }
}
