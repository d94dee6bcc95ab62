//! Reading what the loader left in low memory.

use crate::arch::x86_64::paging::phys_to_virt;

/// What the boot page tables direct-map (`boot::entry`): where the loader's
/// structures must lie to be read before the rest of RAM is mapped.
pub const BOOT_DIRECT_MAP: u64 = 1 << 30;

/// Whether `[phys, phys + len)` lies in the boot direct map.
pub fn readable(phys: u64, len: u64) -> bool {
    phys.checked_add(len)
        .is_some_and(|end| end <= BOOT_DIRECT_MAP)
}

/// Reads a `T` at physical `phys` through the direct map.
pub fn read<T: Copy>(phys: u64) -> T {
    debug_assert!(readable(phys, core::mem::size_of::<T>() as u64));
    // SAFETY: callers pass addresses the loader handed over, checked with
    // `readable` to lie in the boot direct map, in memory the kernel never
    // hands out (the first MiB, the memory map's frames);
    // `read_unaligned` takes any alignment.
    unsafe { core::ptr::read_unaligned(phys_to_virt(phys) as *const T) }
}
