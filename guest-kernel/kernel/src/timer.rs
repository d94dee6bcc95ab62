//! The periodic LAPIC timer tick: each CPU counts its timer interrupts; the
//! self-tests check that they arrive.

use crate::arch::x86_64::{lapic, traps};
use core::sync::atomic::{AtomicU64, Ordering};

/// Tick period in microseconds (100 Hz: every tick is a VM exit).
pub const TICK_US: u64 = 10_000;

/// Starts this CPU's periodic tick.
pub fn start() {
    lapic::start_periodic_timer(
        traps::VEC_TIMER as u8,
        (TICK_US * lapic::TICKS_PER_US) as u32,
    );
}

/// Timer interrupt handler body.
pub fn tick() {
    crate::percpu::current()
        .ticks
        .fetch_add(1, Ordering::Relaxed);
}

/// Ticks taken by this CPU.
pub fn ticks() -> u64 {
    crate::percpu::current().ticks.load(Ordering::Relaxed)
}

/// TSC frequency assumed when neither `tsc_khz=` nor CPUID leaf 0x16 tells.
const FALLBACK_TSC_KHZ: u64 = 1_000_000;

/// The TSC frequency in kHz, found once ([`find_tsc_khz`]).
fn tsc_khz() -> u64 {
    static KHZ: spin::Once<u64> = spin::Once::new();
    *KHZ.call_once(find_tsc_khz)
}

/// The command line's `tsc_khz=` (the writewatch VMM passes it), else
/// CPUID leaf 0x16's base frequency, else 1 GHz.
fn find_tsc_khz() -> u64 {
    if let Some(khz) = crate::boot::info().cmdline.tsc_khz {
        return khz;
    }
    let max_leaf = crate::arch::x86_64::msr::cpuid(0, 0).eax;
    let mhz = if max_leaf >= 0x16 {
        u64::from(crate::arch::x86_64::msr::cpuid(0x16, 0).eax & 0xffff)
    } else {
        0
    };
    if mhz > 0 {
        mhz * 1000
    } else {
        FALLBACK_TSC_KHZ
    }
}

/// The TSC when the kernel started (the TSC need not start at 0 with the
/// VM: on kvm_pvm it counts from the host's boot).
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// Records the kernel's start (first thing in `kernel_main`).
pub fn mark_boot() {
    BOOT_TSC.store(crate::arch::x86_64::msr::rdtsc(), Ordering::Relaxed);
}

/// Nanoseconds since the kernel started, from `rdtsc`, which runs natively
/// in both rings.
pub fn nanos_since_boot() -> u64 {
    let now = crate::arch::x86_64::msr::rdtsc();
    let cycles = u128::from(now.wrapping_sub(BOOT_TSC.load(Ordering::Relaxed)));
    (cycles * 1_000_000 / u128::from(tsc_khz())) as u64
}
