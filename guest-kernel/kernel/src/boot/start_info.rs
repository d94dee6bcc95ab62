//! `hvm_start_info`: what the PVH loader tells the kernel (command line and
//! memory map), as in Xen's `public/arch-x86/hvm/start_info.h`.

use super::acpi;
use super::cmdline::Cmdline;
use super::memmap::MemMap;
use super::phys::{read as read_phys, readable};
use crate::arch::x86_64::paging::phys_to_virt;

/// `hvm_start_info.magic`.
const MAGIC: u32 = 0x336e_c578;
/// Longest command line read (the VMM allows 4095 bytes).
const CMDLINE_MAX: usize = 4096;

/// Why the start info could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartInfoError {
    /// The magic number was wrong (not a PVH boot).
    BadMagic(u32),
    /// Version 0 has no memory map.
    NoMemoryMap,
    /// The memory map lies outside the first GiB (the boot direct map).
    MemoryMapTooHigh(u64),
}

/// Boot facts parsed from `hvm_start_info`.
pub struct BootInfo {
    /// The parsed command line.
    pub cmdline: Cmdline,
    /// The memory map.
    pub memmap: MemMap,
    /// CPUs the ACPI MADT lists, if the loader gave an RSDP and the MADT
    /// names them as this kernel starts them (APIC IDs 0..n).
    pub acpi_cpus: Option<u32>,
    /// The first PVH module `(paddr, size)` of another command line: the
    /// program `mode=run` runs instead of the built-in `init` (`writewatch
    /// run --init FILE`).
    pub init_module: Option<(u64, u64)>,
    /// The first PVH module whose command line is [`INPUT_MODULE`]: bytes
    /// the processes read from standard input (`writewatch run --stdin`).
    pub input_module: Option<(u64, u64)>,
}

/// The command line that makes a module standard input, not a program.
const INPUT_MODULE: &str = "stdin";
/// Modules looked at (a program and an input).
const MAX_MODULES: u32 = 2;

impl BootInfo {
    /// The CPUs to start: `cpus=N` if given (an override), else what the
    /// ACPI MADT lists, else one.
    pub fn cpus(&self) -> u32 {
        self.cmdline.cpus.or(self.acpi_cpus).unwrap_or(1)
    }
}

/// Parses the start info at physical address `phys`.
pub fn parse(phys: u64) -> Result<BootInfo, StartInfoError> {
    let magic: u32 = read_phys(phys);
    if magic != MAGIC {
        return Err(StartInfoError::BadMagic(magic));
    }
    let version: u32 = read_phys(phys + 4);
    let cmdline_paddr: u64 = read_phys(phys + 24);
    if version < 1 {
        return Err(StartInfoError::NoMemoryMap);
    }
    let memmap_paddr: u64 = read_phys(phys + 40);
    let memmap_entries: u32 = read_phys(phys + 48);

    let memmap = MemMap::in_place(memmap_paddr, memmap_entries);
    let (table, end) = memmap.table();
    if !readable(table, end - table) {
        return Err(StartInfoError::MemoryMapTooHigh(memmap_paddr));
    }
    let rsdp_paddr: u64 = read_phys(phys + 32);
    let nr_modules: u32 = read_phys(phys + 12);
    let modlist_paddr: u64 = read_phys(phys + 16);
    let (mut init_module, mut input_module) = (None, None);
    for i in 0..nr_modules.min(MAX_MODULES) {
        // `hvm_modlist_entry`: paddr, size, cmdline_paddr, reserved.
        let entry = modlist_paddr + 32 * u64::from(i);
        if modlist_paddr == 0 || !readable(entry, 32) {
            break;
        }
        let (paddr, size): (u64, u64) = (read_phys(entry), read_phys(entry + 8));
        let in_ram = size > 0
            && paddr
                .checked_add(size)
                .is_some_and(|end| memmap.covers_ram(paddr, end));
        if !in_ram {
            continue;
        }
        let slot = if read_cmdline(read_phys(entry + 16)) == INPUT_MODULE {
            &mut input_module
        } else {
            &mut init_module
        };
        slot.get_or_insert((paddr, size));
    }
    Ok(BootInfo {
        cmdline: Cmdline::parse(read_cmdline(cmdline_paddr)),
        memmap,
        acpi_cpus: acpi::cpus(rsdp_paddr),
        init_module,
        input_module,
    })
}

/// The NUL-terminated command line at `paddr` (empty when absent or not UTF-8).
fn read_cmdline(paddr: u64) -> &'static str {
    if paddr == 0 || !readable(paddr, CMDLINE_MAX as u64) {
        return "";
    }
    let base = phys_to_virt(paddr) as *const u8;
    let mut len = 0;
    // SAFETY: the command line lies in low memory (direct-mapped) and is
    // NUL-terminated within CMDLINE_MAX bytes per the ABI; we stop at the cap.
    while len < CMDLINE_MAX && unsafe { base.add(len).read() } != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes from `base` were just read; the first MiB is never
    // reused by this kernel, so the slice lives forever.
    let bytes = unsafe { core::slice::from_raw_parts(base, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}

/// The bytes of a PVH module `(paddr, size)` from [`BootInfo`].
pub fn module_bytes((paddr, size): (u64, u64)) -> &'static [u8] {
    let base = phys_to_virt(paddr) as *const u8;
    // The loader placed the module in RAM (checked against the memory map
    // in `parse`) and the frame allocator never hands it out, so the bytes
    // stay as they are for the kernel's lifetime.
    // SAFETY: `[paddr, paddr + size)` is RAM in the direct map, never written.
    unsafe { core::slice::from_raw_parts(base, size as usize) }
}
