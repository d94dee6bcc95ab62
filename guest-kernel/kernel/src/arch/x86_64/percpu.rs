//! Per-CPU data, found through the GS base.
//!
//! Each CPU's `IA32_GS_BASE` points at its [`PerCpu`] slot; user mode runs
//! with the other GS base (swapped by `swapgs` in the trap entry code), so a
//! user program that reloads GS cannot confuse the kernel. The slots live in
//! one static array indexed by CPU number (= APIC ID, docs/GUEST_ABI.md).

use super::gdt::{Gdt, Tss};
use super::msr::{self, IA32_GS_BASE, IA32_KERNEL_GS_BASE};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Most CPUs supported (`--vcpus` allows up to 64).
pub const MAX_CPUS: usize = 64;

/// One CPU's private state.
#[repr(C, align(64))]
pub struct PerCpu {
    /// CPU number; must stay the first field (read as `gs:[0]`).
    pub index: u64,
    /// Set once the CPU finished its own initialisation.
    pub online: AtomicBool,
    /// This CPU's GDT (its TSS descriptor differs per CPU).
    pub gdt: UnsafeCell<Gdt>,
    /// This CPU's TSS (kernel stack for traps from ring 3, IST stacks).
    pub tss: UnsafeCell<Tss>,
    /// Kernel stack pointer saved while a user program runs on this CPU.
    pub user_return_rsp: UnsafeCell<u64>,
    /// `TSS.rsp0` while a user program runs (its traps' frames end there).
    pub user_rsp0: UnsafeCell<u64>,
    /// Ring-3 mode: `TSS.rsp0` while this CPU runs the kernel context.
    pub kctx_trap_rsp0: UnsafeCell<u64>,
    /// Ring-3 mode: the `iretq` frame into the context for a user exception
    /// (RIP, CS, RFLAGS, RSP, SS), and its address for the trap entry.
    pub kctx_entry_frame: UnsafeCell<[u64; 5]>,
    pub kctx_entry_frame_at: UnsafeCell<u64>,
    /// Ring-3 mode: the CR3 ring 0 loads when the kernel context is left
    /// (`arch::x86_64::kctx`).
    pub kctx_cr3: UnsafeCell<u64>,
    /// The user stack pointer during the `syscall` entry's stack switch.
    pub syscall_scratch: UnsafeCell<u64>,
    /// Pid of the user task running on this CPU (0: none).
    pub current: AtomicU32,
    /// LAPIC timer interrupts taken.
    pub ticks: AtomicU64,
    /// Cross-CPU call: function to run (0 = none), see `arch::x86_64::smp`.
    pub call_fn: AtomicUsize,
    /// Cross-CPU call: its argument.
    pub call_arg: AtomicUsize,
    /// Cross-CPU call: completed calls.
    pub calls_done: AtomicU64,
    /// TLB shootdown requests handled.
    pub shootdowns_done: AtomicU64,
    /// User-TLB flush requests handled.
    pub user_flushes_done: AtomicU64,
}

// SAFETY: the `UnsafeCell` fields are only touched by the owning CPU (GDT,
// TSS, saved stack pointer) or during its single-threaded bring-up.
unsafe impl Sync for PerCpu {}

impl PerCpu {
    const fn new(index: u64) -> Self {
        PerCpu {
            index,
            online: AtomicBool::new(false),
            gdt: UnsafeCell::new(Gdt::new()),
            tss: UnsafeCell::new(Tss::new()),
            user_return_rsp: UnsafeCell::new(0),
            user_rsp0: UnsafeCell::new(0),
            kctx_trap_rsp0: UnsafeCell::new(0),
            kctx_entry_frame: UnsafeCell::new([0; 5]),
            kctx_entry_frame_at: UnsafeCell::new(0),
            kctx_cr3: UnsafeCell::new(0),
            syscall_scratch: UnsafeCell::new(0),
            current: AtomicU32::new(0),
            ticks: AtomicU64::new(0),
            call_fn: AtomicUsize::new(0),
            call_arg: AtomicUsize::new(0),
            calls_done: AtomicU64::new(0),
            shootdowns_done: AtomicU64::new(0),
            user_flushes_done: AtomicU64::new(0),
        }
    }
}

/// `gs:` offsets of the fields the trap entry code reads and writes.
pub mod offsets {
    use super::super::gdt::Tss;
    use super::PerCpu;
    use core::mem::offset_of;

    pub const TSS_RSP0: usize = offset_of!(PerCpu, tss) + offset_of!(Tss, rsp);
    pub const USER_RSP0: usize = offset_of!(PerCpu, user_rsp0);
    pub const KCTX_TRAP_RSP0: usize = offset_of!(PerCpu, kctx_trap_rsp0);
    pub const KCTX_ENTRY_FRAME_AT: usize = offset_of!(PerCpu, kctx_entry_frame_at);
    pub const KCTX_CR3: usize = offset_of!(PerCpu, kctx_cr3);
    pub const SYSCALL_SCRATCH: usize = offset_of!(PerCpu, syscall_scratch);
}

impl PerCpu {
    /// This CPU's `TSS.rsp0` (the TSS is packed: write it unaligned).
    pub fn tss_rsp0(&self) -> *mut u64 {
        // SAFETY: a field address inside this slot's TSS; no reference to
        // the packed field is made.
        unsafe { core::ptr::addr_of_mut!((*self.tss.get()).rsp).cast::<u64>() }
    }
}

/// All CPU slots.
static CPUS: [PerCpu; MAX_CPUS] = {
    let mut cpus = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        cpus[i].index = i as u64;
        i += 1;
    }
    cpus
};

/// The slot of CPU `index`.
pub fn cpu(index: usize) -> &'static PerCpu {
    &CPUS[index]
}

/// Points this CPU's GS base at slot `index`.
///
/// # Safety
/// Must run once per CPU during its bring-up, with `index` its own number,
/// and after the GS selector was last loaded (loading it resets the base).
pub unsafe fn install(index: usize) {
    let slot = &CPUS[index] as *const PerCpu as u64;
    // SAFETY: GS_BASE / KERNEL_GS_BASE exist in long mode; user mode gets GS
    // base 0 through swapgs.
    unsafe {
        msr::wrmsr(IA32_GS_BASE, slot);
        msr::wrmsr(IA32_KERNEL_GS_BASE, 0);
    }
}

/// The running CPU's number.
pub fn index() -> usize {
    let index: u64;
    // SAFETY: after `install`, gs:[0] is `PerCpu::index` of this CPU.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index as usize
}

/// The running CPU's slot.
pub fn current() -> &'static PerCpu {
    &CPUS[index()]
}

/// The running CPU's number, or 0 when per-CPU data is not set up yet (for
/// reports from the panic and fatal-exception paths).
pub fn cpu_index_or_boot() -> usize {
    // SAFETY: GS_BASE exists in long mode; reading it has no side effects.
    let base = unsafe { msr::rdmsr(IA32_GS_BASE) };
    let first = CPUS.as_ptr() as u64;
    let size = core::mem::size_of::<PerCpu>() as u64;
    if base >= first && base < first + size * MAX_CPUS as u64 {
        ((base - first) / size) as usize
    } else {
        0
    }
}

/// Number of CPUs that are online.
pub fn online_count() -> usize {
    CPUS.iter()
        .filter(|c| c.online.load(Ordering::Acquire))
        .count()
}
