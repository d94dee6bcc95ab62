//! Model-specific registers and CPUID: the x2APIC, EFER and the GS bases are
//! all programmed through MSRs.

use core::arch::asm;

/// `IA32_APIC_BASE`.
pub const IA32_APIC_BASE: u32 = 0x1b;
/// `IA32_EFER`.
pub const IA32_EFER: u32 = 0xc000_0080;
/// `EFER.NXE`: the no-execute bit (63) of page-table entries is honoured.
pub const EFER_NXE: u64 = 1 << 11;
/// `EFER.SCE`: `syscall`/`sysret` enabled.
pub const EFER_SCE: u64 = 1;
/// `IA32_STAR`: the `syscall`/`sysret` segment selectors.
pub const IA32_STAR: u32 = 0xc000_0081;
/// `IA32_LSTAR`: where `syscall` jumps.
pub const IA32_LSTAR: u32 = 0xc000_0082;
/// `IA32_FMASK`: RFLAGS bits `syscall` clears.
pub const IA32_FMASK: u32 = 0xc000_0084;
/// `IA32_FS_BASE` (user TLS: `arch_prctl(ARCH_SET_FS)`).
pub const IA32_FS_BASE: u32 = 0xc000_0100;
/// `IA32_GS_BASE`: the active GS base (per-CPU data in the kernel).
pub const IA32_GS_BASE: u32 = 0xc000_0101;
/// `IA32_KERNEL_GS_BASE`: the GS base `swapgs` exchanges with.
pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (a missing MSR raises #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    if super::kctx::in_context() {
        return super::kctx::read_msr(msr);
    }
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists; reading has no memory effects.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; the effects of the
/// write (e.g. on GS or the APIC) are the caller's responsibility.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    if super::kctx::in_context() {
        return super::kctx::write_msr(msr, value);
    }
    // SAFETY: the caller guarantees the MSR and value are valid.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// Executes CPUID for `leaf`/`subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> core::arch::x86_64::CpuidResult {
    core::arch::x86_64::__cpuid_count(leaf, subleaf)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is unprivileged unless CR4.TSD is set, which we never do.
    unsafe { core::arch::x86_64::_rdtsc() }
}
