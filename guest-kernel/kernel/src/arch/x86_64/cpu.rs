//! Per-CPU bring-up shared by the boot CPU and the APs: IST stacks, GDT/TSS,
//! per-CPU data, IDT, LAPIC and the timer tick.

use super::gdt::{self, IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI};
use super::paging::{PAGE_SIZE, phys_to_virt};
use super::{hooks, percpu};
use super::{idt, lapic, msr, traps};

/// Pages per IST stack.
const IST_PAGES: u64 = 4;

/// Why a CPU could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuInitError {
    /// No frames for its stacks.
    OutOfFrames,
    /// Its APIC ID is not its CPU number (docs/GUEST_ABI.md requires it).
    ApicIdMismatch {
        /// The APIC ID read.
        apic_id: u32,
    },
}

/// Initialises the running CPU as CPU `index`.
pub fn init(index: usize) -> Result<(), CpuInitError> {
    let slot = percpu::cpu(index);
    let tss = slot.tss.get();
    for ist in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let stack = (hooks::get().alloc_frames)(IST_PAGES).ok_or(CpuInitError::OutOfFrames)?;
        // SAFETY: this CPU owns its TSS and has not loaded it yet.
        unsafe { (*tss).set_ist(ist, phys_to_virt(stack) + IST_PAGES * PAGE_SIZE) };
    }
    // SAFETY: the GDT and TSS are this CPU's static per-CPU slots, and GS is
    // installed after the selector reload that `gdt::load` does.
    unsafe {
        gdt::load(slot.gdt.get(), tss);
        percpu::install(index);
    }
    idt::load();
    enable_no_execute_and_syscall();
    super::kctx::init_cpu(index);
    lapic::enable(traps::VEC_SPURIOUS as u8);
    let apic_id = lapic::id();
    if apic_id as usize != index {
        return Err(CpuInitError::ApicIdMismatch { apic_id });
    }
    (hooks::get().timer_start)();
    Ok(())
}

/// CPUID.80000001H:EDX bit for the NX bit.
const CPUID_NX: u32 = 1 << 20;

/// `IA32_STAR`: `syscall` loads kernel CS 0x08 (SS 0x10); the `sysret`
/// base 0x10 would give user CS 0x23 and SS 0x1b (the kernel returns with
/// `iretq`, but the layout is the one `sysret` needs).
const STAR: u64 = (0x10 << 48) | (0x08 << 32);
/// `IA32_FMASK`: TF, DF, IF, IOPL, NT and AC cleared on `syscall` entry,
/// as Linux does (interrupts stay off until the stack switch).
const SYSCALL_FMASK: u64 = 0x4_7700;

/// Sets `EFER.NXE` when the CPU has it (user page tables built by the MM
/// core mark non-executable pages with bit 63, which is reserved, a #PF
/// with the RSVD bit, while NXE is off) and `EFER.SCE` with the `syscall`
/// entry (`trap_entry::syscall_entry`, on a supervisor page).
fn enable_no_execute_and_syscall() {
    let nx = if msr::cpuid(0x8000_0001, 0).edx & CPUID_NX != 0 {
        msr::EFER_NXE
    } else {
        0
    };
    // SAFETY: EFER and the syscall MSRs exist in long mode, NXE is
    // supported when set; the entry point handles every `syscall` from ring 3.
    unsafe {
        msr::wrmsr(
            msr::IA32_EFER,
            msr::rdmsr(msr::IA32_EFER) | nx | msr::EFER_SCE,
        );
        msr::wrmsr(msr::IA32_STAR, STAR);
        msr::wrmsr(msr::IA32_LSTAR, super::trap_entry::lstar());
        msr::wrmsr(msr::IA32_FMASK, SYSCALL_FMASK);
    }
}

/// Sets this CPU's FS base (a user TLS pointer, below `USER_END`).
pub fn set_fs_base(base: u64) {
    debug_assert!(base < super::paging::USER_END);
    // SAFETY: FS_BASE exists in long mode; the kernel does not use FS, and
    // a user-half base is canonical.
    unsafe { msr::wrmsr(msr::IA32_FS_BASE, base) };
}

/// Enables interrupts on this CPU.
pub fn enable_interrupts() {
    if super::kctx::in_context() {
        // Always enabled there.
        return;
    }
    // SAFETY: the IDT is loaded and every vector has a handler.
    unsafe { core::arch::asm!("sti", options(nomem, nostack)) };
}

/// Disables interrupts on this CPU.
///
/// In the ring-3 kernel context this does nothing: ring 3 cannot mask
/// interrupts, and code that runs there never relies on it.
pub fn disable_interrupts() {
    if super::kctx::in_context() {
        return;
    }
    // SAFETY: masking interrupts is always allowed in ring 0.
    unsafe { core::arch::asm!("cli", options(nomem, nostack)) };
}

/// Whether interrupts are enabled on this CPU.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe {
        core::arch::asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags))
    };
    flags & (1 << 9) != 0
}

/// Enables interrupts and halts until one arrives (atomically: `sti` delays
/// interrupts by one instruction, so none is lost between the two).
pub fn enable_and_halt() {
    if super::kctx::in_context() {
        return super::kctx::halt();
    }
    // SAFETY: as for `enable_interrupts`; HLT resumes on the next interrupt.
    unsafe { core::arch::asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Stops this CPU for good (interrupts masked).
pub fn halt_forever() -> ! {
    if super::kctx::in_context() {
        super::kctx::stop();
    }
    loop {
        // SAFETY: masking interrupts and halting only stops this CPU.
        unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
    }
}
