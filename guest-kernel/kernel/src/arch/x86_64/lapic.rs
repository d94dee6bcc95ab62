//! The local APIC: enable, EOI, IPIs (INIT/SIPI for bring-up, fixed vectors
//! for calls) and the timer.
//!
//! x2APIC mode (registers are MSRs `0x800 + offset / 16`) is used whenever
//! the CPU has it: that is the writewatch VMM and KVM in general. QEMU's
//! software emulation (TCG, before QEMU 8) has only the xAPIC, reached
//! through its MMIO page at 0xfee00000; the boot CPU picks the mode once and
//! every AP follows it. docs/GUEST_ABI.md: the timer counts at 1 GHz at
//! divide-by-1 on the writewatch VMM, on KVM's emulated APIC and on QEMU.

use super::msr::{self, IA32_APIC_BASE};
use super::paging::VMAP_BASE;
use core::sync::atomic::{AtomicU64, Ordering};

const REG_ID: u32 = 0x20;
const REG_EOI: u32 = 0xb0;
const REG_SVR: u32 = 0xf0;
const REG_ICR_LOW: u32 = 0x300;
const REG_ICR_HIGH: u32 = 0x310;
const REG_LVT_TIMER: u32 = 0x320;
const REG_LVT_LINT0: u32 = 0x350;
const REG_TIMER_INITIAL: u32 = 0x380;
const REG_TIMER_DIVIDE: u32 = 0x3e0;
/// ICR delivery-status bit (xAPIC: the IPI is still being sent).
const ICR_PENDING: u32 = 1 << 12;

/// Physical address of the xAPIC register page.
const XAPIC_PHYS: u64 = 0xfee0_0000;
/// Where the xAPIC page is mapped (the second `VMAP` page).
const XAPIC_VIRT: u64 = VMAP_BASE + 0x1000;

/// LAPIC timer ticks per microsecond at divide-by-1 (1 GHz bus clock).
pub const TICKS_PER_US: u64 = 1000;

/// CPUID.1:ECX bit for x2APIC support.
const CPUID_X2APIC: u32 = 1 << 21;
/// CPUID.1:EDX bit for an on-chip APIC.
const CPUID_APIC: u32 = 1 << 9;

/// Base of the mapped xAPIC page, or 0 in x2APIC mode (set by the boot CPU
/// before any AP starts).
static XAPIC_BASE: AtomicU64 = AtomicU64::new(0);

/// Why the LAPIC could not be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LapicError {
    /// The CPU has no APIC at all.
    NoApic,
    /// Mapping the xAPIC page failed (no frame for its page table).
    Map,
}

fn read(reg: u32) -> u32 {
    match XAPIC_BASE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on (enable ran), so the MSR exists.
        0 => unsafe { msr::rdmsr(0x800 + reg / 16) as u32 },
        // SAFETY: the xAPIC page is mapped uncached at `base`.
        base => unsafe { core::ptr::read_volatile((base + u64::from(reg)) as *const u32) },
    }
}

fn write(reg: u32, value: u32) {
    match XAPIC_BASE.load(Ordering::Relaxed) {
        // SAFETY: x2APIC mode is on, the MSR exists and takes this value.
        0 => unsafe { msr::wrmsr(0x800 + reg / 16, u64::from(value)) },
        // SAFETY: the xAPIC page is mapped uncached at `base`.
        base => unsafe { core::ptr::write_volatile((base + u64::from(reg)) as *mut u32, value) },
    }
}

/// Picks x2APIC or xAPIC mode for all CPUs (boot CPU, before [`enable`]).
pub fn choose_mode() -> Result<(), LapicError> {
    let leaf1 = msr::cpuid(1, 0);
    if leaf1.ecx & CPUID_X2APIC != 0 {
        return Ok(());
    }
    if leaf1.edx & CPUID_APIC == 0 {
        return Err(LapicError::NoApic);
    }
    if !(super::hooks::get().map_mmio)(XAPIC_VIRT, XAPIC_PHYS) {
        return Err(LapicError::Map);
    }
    XAPIC_BASE.store(XAPIC_VIRT, Ordering::Relaxed);
    Ok(())
}

/// Enables this CPU's LAPIC in the chosen mode with the spurious vector, and
/// masks LINT0 (KVM resets it to ExtINT on the boot CPU: the legacy PIC
/// must not deliver anything).
pub fn enable(spurious_vector: u8) {
    let x2apic = XAPIC_BASE.load(Ordering::Relaxed) == 0;
    // SAFETY: setting EN (and EXTD when the CPU has x2APIC, checked by
    // `choose_mode`) in IA32_APIC_BASE is a valid transition from reset.
    unsafe {
        let base = msr::rdmsr(IA32_APIC_BASE);
        let mode = if x2apic {
            (1 << 11) | (1 << 10)
        } else {
            1 << 11
        };
        msr::wrmsr(IA32_APIC_BASE, base | mode);
    }
    write(REG_SVR, 0x100 | u32::from(spurious_vector));
    write(REG_LVT_LINT0, 1 << 16);
}

/// This CPU's APIC ID.
pub fn id() -> u32 {
    let id = read(REG_ID);
    if XAPIC_BASE.load(Ordering::Relaxed) == 0 {
        id
    } else {
        id >> 24
    }
}

/// Signals end of interrupt.
pub fn eoi() {
    write(REG_EOI, 0);
}

/// Kinds of inter-processor interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipi {
    /// A fixed interrupt with this vector.
    Fixed(u8),
    /// INIT (puts the target into wait-for-SIPI).
    Init,
    /// Start-up with the 4 KiB page number of the real-mode entry point.
    Startup(u8),
}

/// Sends an IPI to the CPU with APIC ID `dest`.
pub fn send_ipi(dest: u32, ipi: Ipi) {
    let low = match ipi {
        Ipi::Fixed(vector) => u32::from(vector),
        Ipi::Init => 0x4500,
        Ipi::Startup(page) => 0x4600 | u32::from(page),
    };
    match XAPIC_BASE.load(Ordering::Relaxed) {
        // SAFETY: in x2APIC mode one 64-bit ICR write sends the IPI.
        0 => unsafe {
            msr::wrmsr(
                0x800 + REG_ICR_LOW / 16,
                (u64::from(dest) << 32) | u64::from(low),
            )
        },
        _ => {
            write(REG_ICR_HIGH, dest << 24);
            write(REG_ICR_LOW, low);
            while read(REG_ICR_LOW) & ICR_PENDING != 0 {
                core::hint::spin_loop();
            }
        }
    }
}

/// Starts the timer: periodic with `vector` every `period_ticks` bus ticks.
pub fn start_periodic_timer(vector: u8, period_ticks: u32) {
    write(REG_TIMER_DIVIDE, 0b1011); // divide by 1
    write(REG_LVT_TIMER, (1 << 17) | u32::from(vector));
    write(REG_TIMER_INITIAL, period_ticks);
}
