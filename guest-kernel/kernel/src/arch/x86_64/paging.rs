//! x86-64 4-level page tables: the hardware entry format, the fixed kernel
//! address-space layout, and a small table walker for the kernel's own
//! mappings (`memory::kmap`; user page tables belong to the MM core).
//!
//! Layout (PML4 index in brackets):
//! * `[0, 0x0000_8000_0000_0000)`: user space (in the boot page table: the
//!   identity map of the first GiB, used only during boot and by the SMP
//!   trampoline; never copied into user address spaces);
//! * `DIRECT_MAP` [273]: all RAM, `virt = DIRECT_MAP + phys`;
//! * `VMAP_BASE` [402]: 4 KiB kernel mappings made at run time;
//! * `KERNEL_VMA` [511]: the kernel image, `virt = KERNEL_VMA + phys`.

use core::arch::asm;

/// Base of the direct map of physical memory.
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// Base of the run-time 4 KiB kernel mapping area (one PML4 slot, 512 GiB).
pub const VMAP_BASE: u64 = 0xffff_c900_0000_0000;
/// Where the kernel image is linked: virtual = `KERNEL_VMA` + physical.
pub const KERNEL_VMA: u64 = 0xffff_ffff_8000_0000;
/// End of the user half (exclusive).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Size of a base page.
pub const PAGE_SIZE: u64 = 4096;

/// Entry bit: present.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit: writable.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Entry bit: user-accessible. Every kernel entry below the PML4 has it;
/// the kernel-half PML4 entries grant it only in the ring-3 kernel
/// context's own PML4 (`kctx`).
pub const PTE_USER: u64 = 1 << 2;
/// Entry bit: write-through caching.
pub const PTE_WRITE_THROUGH: u64 = 1 << 3;
/// Entry bit: caching disabled.
pub const PTE_CACHE_DISABLE: u64 = 1 << 4;
/// Entry bit: large page (2 MiB in a PD, 1 GiB in a PDPT).
pub const PTE_HUGE: u64 = 1 << 7;
/// Physical-address bits of an entry.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Virtual address of physical `phys` in the direct map.
pub fn phys_to_virt(phys: u64) -> u64 {
    DIRECT_MAP + phys
}

/// Physical address of a kernel pointer (direct map or kernel image).
pub fn virt_to_phys(virt: u64) -> u64 {
    if virt >= KERNEL_VMA {
        virt - KERNEL_VMA
    } else {
        virt - DIRECT_MAP
    }
}

/// The page table at physical `phys`, seen through the direct map.
///
/// # Safety
/// `phys` must be a page-table page (or a frame being turned into one) that is
/// direct-mapped and not concurrently accessed through another `&mut`.
pub unsafe fn table_mut(phys: u64) -> &'static mut [u64; 512] {
    // SAFETY: the caller guarantees `phys` is a direct-mapped, 4 KiB aligned
    // page that nobody else holds a reference to.
    unsafe { &mut *(phys_to_virt(phys) as *mut [u64; 512]) }
}

/// Physical address of the active top-level page table.
pub fn read_cr3() -> u64 {
    if super::kctx::in_context() {
        // The context's own CR3 is never the answer callers want: theirs
        // is the one ring 0 restores.
        return super::kctx::return_cr3();
    }
    let cr3: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack, preserves_flags)) };
    cr3 & PTE_ADDR_MASK
}

/// Switches to the page table at physical `pml4`.
///
/// # Safety
/// `pml4` must be a valid PML4 that maps the kernel half exactly like the
/// current one (it is copied from the boot table), or the next instruction
/// fetch faults.
pub unsafe fn write_cr3(pml4: u64) {
    if super::kctx::in_context() {
        return super::kctx::set_return_cr3(pml4);
    }
    // SAFETY: the caller guarantees the new table maps the running kernel.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// Invalidates the TLB entry of `virt` on this CPU.
pub fn invlpg(virt: u64) {
    if super::kctx::in_context() {
        return super::kctx::invlpg(virt);
    }
    // SAFETY: INVLPG only drops a cached translation.
    unsafe { asm!("invlpg [{}]", in(reg) virt, options(nostack, preserves_flags)) };
}

/// Index of `virt` in the table at `level` (4 = PML4 ... 1 = PT).
pub fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// Finds the level-1 entry for `virt` under `pml4`, creating missing tables
/// with `alloc` (which must return zeroed frames). Intermediate entries get
/// `table_flags`, except that a PML4 entry never gets [`PTE_USER`] (user
/// address spaces copy the kernel's PML4 entries). Returns `None` when `alloc` fails or a huge page is in the
/// way.
///
/// # Safety
/// `pml4` must be a page table owned by the caller (no concurrent walkers).
pub unsafe fn walk_create(
    pml4: u64,
    virt: u64,
    table_flags: u64,
    alloc: &mut dyn FnMut() -> Option<u64>,
) -> Option<&'static mut u64> {
    let mut table = pml4;
    for level in (2..=4).rev() {
        // SAFETY: `table` is the caller's PML4 or a table reached from it.
        let entries = unsafe { table_mut(table) };
        let entry = &mut entries[index(virt, level)];
        let flags = if level == 4 {
            table_flags & !PTE_USER
        } else {
            table_flags
        };
        if *entry & PTE_PRESENT == 0 {
            let frame = alloc()?;
            *entry = frame | flags | PTE_PRESENT;
        } else if *entry & PTE_HUGE != 0 {
            return None;
        } else {
            *entry |= flags;
        }
        table = *entry & PTE_ADDR_MASK;
    }
    // SAFETY: as above, `table` is now the level-1 table.
    let entries = unsafe { table_mut(table) };
    Some(&mut entries[index(virt, 1)])
}
