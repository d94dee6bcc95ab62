//! writewatch guest memory-management core.
//!
//! A Linux-like MM — buddy allocator and folio metadata, x86-64 page tables
//! with a typed PTE and PTE markers (poison, guard regions, uffd-wp),
//! VMAs with mmap/munmap/mprotect/madvise/mremap, faults with COW and
//! unshare, fork/exit, anon and shmem reverse maps, memfds, hugetlb pools
//! with Linux's reservations and PMD/PUD mappings (and HVO), an
//! mmu_gather that frees only after the TLB flush, swap, and an invariant
//! checker — written as a `no_std` library so that `cargo test` runs it on
//! the host against a simulated machine (`testing`, feature `sim`), while the
//! kernel links it with real hardware behind the traits in [`hw`].
//!
//! The kernel's entry point is [`MemSystem`]: build it with
//! [`MemSystem::new`] over the RAM ranges it does not use itself, then call
//! the syscall methods (`mmap`, `munmap`, `mprotect`, `madvise`, `mremap`,
//! `mlock`, `munlock`, `fork`, `exit`, `wait`, `getpid`, `write`,
//! `memfd_create`, `ftruncate`, `fallocate`, `close`, `mm_stats`,
//! `hugetlb_set_pool`), `activate` on
//! every context switch, and `handle_user_fault` from the #PF handler.
//! The core is single-threaded: the kernel serialises calls with one lock.
//!
//! # Integrating (kernel side)
//! - Implement [`PhysMem`] (direct-map reads/writes of physical memory),
//!   [`Tlb`] (`invlpg`/CR3 reload locally, IPI + wait for the other CPUs in
//!   the request's set) and [`CurrentCpu`]; [`Hw`] is then automatic.
//! - Build the RAM list with [`frame::memmap::usable_ranges`] from the PVH
//!   memory map minus the first MiB, the kernel image and the heap, then
//!   [`MemSystem::new`]. Metadata costs about 56 bytes of heap per frame.
//!   Set [`Config::kernel_root`] so new address spaces share the kernel half,
//!   [`Config::swap_frames`] for a swap region carved from the top of RAM,
//!   and [`Config::check_every_op`] for the `mm_check` flag.
//! - Context switch: `activate(pid, cpu)` returns the PML4 to load and adds
//!   the CPU to the shootdown set. Switch CR3 away from a process before
//!   its `exit`, which frees its tables.
//! - #PF from ring 3: [`MemSystem::handle_user_fault`]; on `Err` the process
//!   is already a zombie killed by the reported signal. Syscalls:
//!   [`MemSystem::syscall`] (Linux x86-64 numbers, see [`syscall`]).
//!   Kernel access to user memory: `copy_from_user` / `copy_to_user`
//!   (software walk, `EFAULT` on failure) or `fault_in_user`.
//!
//! Results, the VMA layout and page contents match Linux 6.18 for the
//! same calls; `tests/linux_diff` checks that against the host's kernel
//! (docs/CONFORMANCE.md). [`MemSystem::maps`] lists a process's VMAs as
//! `/proc/pid/maps` does and [`MemSystem::peek_range`] shows its resident
//! pages without touching them.
//!
//! # Testing (host side)
//! `testing::SimMachine` (`cfg(test)` or feature `sim`) is physical memory
//! in a `Vec<u8>` plus a page walker and per-CPU TLBs; `testing::user`
//! performs ring-3 reads/writes through it, taking faults like the CPU.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

mod check;
pub mod errno;
mod fault;
pub mod file;
mod fork;
pub mod frame;
mod gather;
pub mod hugetlb;
pub mod hw;
pub mod ids;
pub mod madvise;
pub mod memfd;
pub mod mlock;
pub mod mmap;
pub mod mprotect;
pub mod mremap;
pub mod pagemap;
pub mod pgtable;
mod process;
pub mod pte;
mod rmap;
mod softdirty;
mod stack;
pub mod swap;
pub mod syscall;
mod system;
pub mod tmpfs;
pub mod uffd_wait;
pub mod userfaultfd;
pub mod view;
pub mod vma;

#[cfg(any(test, feature = "sim"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use check::InvariantError;
pub use errno::{Errno, Fault, SegvCode};
pub use fault::FaultFlags;
pub use hugetlb::{HugeCounters, PoolKnob};
pub use hw::{
    CpuId, CpuSet, CurrentCpu, FlushRange, FlushRequest, Hw, PAGE_SIZE, Pfn, PhysMem, Release, Tlb,
};
pub use ids::Pid;
pub use process::{FaultStop, MmStats, SIGBUS, SIGKILL, SIGSEGV, SigReport};
pub use syscall::Outcome;
pub use system::{Config, Counters, InitError, MemSystem, ProcState, SoftDirty};
pub use view::{MapEntry, PageView};
