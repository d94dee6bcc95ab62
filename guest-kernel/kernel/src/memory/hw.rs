//! The machine behind the `guest-mm` hardware traits: physical memory
//! through the direct map, TLB maintenance with `invlpg`/CR3 reloads plus
//! the user-TLB flush IPI (`arch::x86_64::smp::flush_user_tlb`), and the
//! current CPU from the per-CPU area.
//!
//! Frame zeroing and copying use `rep stosq` / `rep movsq`: on kvm_pvm ring 0
//! is emulated instruction by instruction, and one string instruction costs
//! about as much as one `mov`, where a loop would cost 512 of them.

use crate::arch::x86_64::paging::phys_to_virt;
use crate::arch::x86_64::smp;
use crate::percpu;
use guest_mm::{CpuId, CurrentCpu, FlushRange, FlushRequest, PAGE_SIZE, Pfn, PhysMem, Tlb};

/// The real x86-64 machine (stateless: all state is in hardware).
pub struct KernelHw;

impl PhysMem for KernelHw {
    fn read_u64(&self, pa: u64) -> u64 {
        // SAFETY: the MM core only passes addresses of frames it manages (or
        // the kernel PML4 template), all of them direct-mapped RAM; volatile
        // because the CPU updates accessed/dirty bits of page tables.
        unsafe { core::ptr::read_volatile(phys_to_virt(pa) as *const u64) }
    }

    fn write_u64(&mut self, pa: u64, val: u64) {
        // SAFETY: as in `read_u64`; the MM core owns the frame it writes.
        unsafe { core::ptr::write_volatile(phys_to_virt(pa) as *mut u64, val) }
    }

    fn zero_frame(&mut self, pfn: Pfn) {
        // SAFETY: `pfn` is a managed RAM frame owned by the MM core; the
        // string store writes exactly its 512 quadwords.
        unsafe {
            core::arch::asm!(
                "rep stosq",
                inout("rdi") phys_to_virt(pfn.addr()) => _,
                inout("rcx") PAGE_SIZE / 8 => _,
                in("rax") 0u64,
                options(nostack, preserves_flags)
            )
        };
    }

    fn copy_frame(&mut self, dst: Pfn, src: Pfn) {
        // SAFETY: both are managed RAM frames; `dst` is owned by the MM core
        // and distinct from `src`; the copy moves exactly one frame.
        unsafe {
            core::arch::asm!(
                "rep movsq",
                inout("rdi") phys_to_virt(dst.addr()) => _,
                inout("rsi") phys_to_virt(src.addr()) => _,
                inout("rcx") PAGE_SIZE / 8 => _,
                options(nostack, preserves_flags)
            )
        };
    }

    fn read_bytes(&self, pa: u64, buf: &mut [u8]) {
        // SAFETY: `[pa, pa + len)` lies in one managed frame (the trait's
        // contract), which is direct-mapped and does not overlap `buf`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                phys_to_virt(pa) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
    }

    fn write_bytes(&mut self, pa: u64, data: &[u8]) {
        // SAFETY: as in `read_bytes`, and the MM core owns the frame.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), phys_to_virt(pa) as *mut u8, data.len())
        };
    }
}

impl Tlb for KernelHw {
    fn flush(&mut self, req: &FlushRequest) {
        let (start, end) = match req.range {
            FlushRange::All => (0, 0),
            FlushRange::Range { start, end } => (start, end),
        };
        if let Err(e) = smp::flush_user_tlb(req.root.addr(), req.cpus.0, start, end) {
            // A CPU that cannot be reached may keep a stale translation to
            // a frame about to be reused: stopping is the only safe answer.
            panic!("user TLB shootdown failed: {e:?}");
        }
    }
}

impl CurrentCpu for KernelHw {
    fn current_cpu(&self) -> CpuId {
        percpu::index() as CpuId
    }
}
