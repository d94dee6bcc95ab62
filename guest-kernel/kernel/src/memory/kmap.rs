//! Kernel-half mappings made after boot: the rest of the direct map (the boot
//! tables cover only the first GiB) and 4 KiB pages in the `VMAP` area.
//!
//! Every PML4 entry of the kernel half is created here before the first user
//! address space copies them, so later changes below them are seen by all
//! address spaces.

use super::frames;
use crate::arch::x86_64::msr;
use crate::arch::x86_64::paging::{
    self, DIRECT_MAP, PTE_ADDR_MASK, PTE_CACHE_DISABLE, PTE_HUGE, PTE_PRESENT, PTE_USER,
    PTE_WRITABLE, PTE_WRITE_THROUGH, VMAP_BASE, virt_to_phys,
};
use crate::boot::memmap::MemMap;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Mutex;

/// 2 MiB.
const HUGE: u64 = 2 << 20;
/// 1 GiB.
const GIB: u64 = 1 << 30;
/// CPUID.80000001H:EDX bit for 1 GiB pages.
const CPUID_PDPE1GB: u32 = 1 << 26;
/// Flags of kernel page tables below the PML4: the user bit is granted only
/// through the ring-3 kernel context's PML4 (`arch::x86_64::kctx`).
const KERNEL_TABLE: u64 = PTE_WRITABLE | PTE_USER;
/// Serialises changes to the kernel page tables.
static KMAP_LOCK: Mutex<()> = Mutex::new(());
/// Physical address of the kernel's PML4 (the boot page table).
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

/// The page-directory-pointer table of the `VMAP` area.
#[repr(C, align(4096))]
struct PageTable(UnsafeCell<[u64; 512]>);

// SAFETY: only reached through the page-table walker, under KMAP_LOCK.
unsafe impl Sync for PageTable {}

static VMAP_PDPT: PageTable = PageTable(UnsafeCell::new([0; 512]));

/// Out of frames for page tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfFrames;

/// Physical address of the kernel PML4.
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

/// Records the boot PML4, direct-maps all RAM above 1 GiB and creates the
/// `VMAP` PML4 entry. GiBs that are entirely RAM get one 1 GiB page when the
/// CPU has them (one entry instead of a zeroed page directory of 512 entries:
/// boot time matters, see `arch::x86_64::idt`); the rest get 2 MiB pages, so
/// nothing but RAM is ever mapped.
pub fn init(memmap: &MemMap) -> Result<(), OutOfFrames> {
    let _guard = KMAP_LOCK.lock();
    let pml4 = paging::read_cr3();
    KERNEL_PML4.store(pml4, Ordering::Relaxed);
    // SAFETY: the boot PML4 is ours; the lock serialises kernel table edits.
    let top = unsafe { paging::table_mut(pml4) };
    let pdpt = top[paging::index(DIRECT_MAP, 4)] & PTE_ADDR_MASK;
    let gib_pages = msr::cpuid(0x8000_0001, 0).edx & CPUID_PDPE1GB != 0;
    for region in memmap.ram() {
        let mut addr = region.start.max(GIB) & !(HUGE - 1);
        while addr < region.end() && addr < (512 * GIB) {
            // SAFETY: `pdpt` is the direct map's PDPT from the boot tables.
            let pdpte = unsafe { &mut paging::table_mut(pdpt)[(addr / GIB) as usize] };
            let whole_gib = addr.is_multiple_of(GIB) && addr + GIB <= region.end();
            if whole_gib && gib_pages {
                // A whole GiB of RAM: one 1 GiB page, no page directory.
                *pdpte = addr | PTE_HUGE | PTE_WRITABLE | PTE_USER | PTE_PRESENT;
                addr += GIB;
                continue;
            }
            if whole_gib && *pdpte & PTE_PRESENT == 0 {
                // Every entry is written below, so the PD needs no zeroing.
                let pd = frames::alloc().ok_or(OutOfFrames)?;
                // SAFETY: `pd` is a fresh frame becoming this GiB's PD.
                let entries = unsafe { paging::table_mut(pd) };
                for (i, entry) in entries.iter_mut().enumerate() {
                    *entry =
                        (addr + i as u64 * HUGE) | PTE_HUGE | PTE_WRITABLE | PTE_USER | PTE_PRESENT;
                }
                *pdpte = pd | PTE_WRITABLE | PTE_USER | PTE_PRESENT;
                addr += GIB;
                continue;
            }
            if *pdpte & PTE_PRESENT == 0 {
                *pdpte = frames::alloc_zeroed().ok_or(OutOfFrames)?
                    | PTE_WRITABLE
                    | PTE_USER
                    | PTE_PRESENT;
            }
            // SAFETY: the PD was found or created just above.
            let pd = unsafe { paging::table_mut(*pdpte & PTE_ADDR_MASK) };
            pd[((addr >> 21) & 0x1ff) as usize] =
                addr | PTE_HUGE | PTE_WRITABLE | PTE_USER | PTE_PRESENT;
            addr += HUGE;
        }
    }
    // The VMAP PDPT lives in .bss (zero-filled by the loader): zeroing a
    // fresh frame here would cost a visible part of the boot time on kvm_pvm.
    top[paging::index(VMAP_BASE, 4)] =
        virt_to_phys(VMAP_PDPT.0.get() as u64) | PTE_WRITABLE | PTE_PRESENT;
    Ok(())
}

/// Maps the 4 KiB page at `virt` (in the `VMAP` area) to `phys`, writable,
/// and drops this CPU's stale translation. Other CPUs must be shot down by
/// the caller ([`crate::arch::x86_64::smp::tlb_shootdown`]).
pub fn map_vmap_page(virt: u64, phys: u64) -> Result<(), OutOfFrames> {
    map_vmap(virt, phys, 0)
}

/// Like [`map_vmap_page`], uncached, for device registers.
pub fn map_vmap_mmio(virt: u64, phys: u64) -> Result<(), OutOfFrames> {
    map_vmap(virt, phys, PTE_CACHE_DISABLE | PTE_WRITE_THROUGH)
}

/// Maps `pages` 4 KiB pages at `virt` (in the `VMAP` area, never mapped
/// before, so no CPU holds a stale translation) to the physically contiguous
/// frames from `phys`. One table walk per page table, then its entries in a
/// row: on kvm_pvm every ring-0 instruction counts.
pub fn map_vmap_pages(virt: u64, phys: u64, pages: u64) -> Result<(), OutOfFrames> {
    debug_assert!(virt.is_multiple_of(PAGE) && phys.is_multiple_of(PAGE));
    debug_assert!(virt >= VMAP_BASE && virt + pages * PAGE <= VMAP_BASE + (512 << 30));
    let _guard = KMAP_LOCK.lock();
    let mut done = 0;
    while done < pages {
        let at = virt + done * PAGE;
        // SAFETY: the kernel PML4 is edited only under KMAP_LOCK.
        let first = unsafe {
            paging::walk_create(kernel_pml4(), at, KERNEL_TABLE, &mut frames::alloc_zeroed)
        }
        .ok_or(OutOfFrames)?;
        let index = (at >> 12) & 0x1ff;
        let run = (512 - index).min(pages - done);
        let first: *mut u64 = first;
        for i in 0..run {
            // SAFETY: `first` is entry `index` of a page table (512 entries),
            // and `index + i < 512`, so every entry written is in that table.
            unsafe {
                first
                    .add(i as usize)
                    .write((phys + (done + i) * PAGE) | PTE_WRITABLE | PTE_USER | PTE_PRESENT)
            };
        }
        done += run;
    }
    Ok(())
}

/// 4 KiB.
const PAGE: u64 = 4096;

fn map_vmap(virt: u64, phys: u64, extra: u64) -> Result<(), OutOfFrames> {
    debug_assert!((VMAP_BASE..VMAP_BASE + (512 << 30)).contains(&virt));
    let _guard = KMAP_LOCK.lock();
    // SAFETY: the kernel PML4 is edited only under KMAP_LOCK.
    let pte = unsafe {
        paging::walk_create(kernel_pml4(), virt, KERNEL_TABLE, &mut frames::alloc_zeroed)
    }
    .ok_or(OutOfFrames)?;
    *pte = (phys & PTE_ADDR_MASK) | extra | PTE_WRITABLE | PTE_USER | PTE_PRESENT;
    paging::invlpg(virt);
    Ok(())
}
