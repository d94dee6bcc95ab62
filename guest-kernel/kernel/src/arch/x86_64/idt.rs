//! The interrupt descriptor table, shared by all CPUs.
//!
//! Every vector points at its stub in `trap_entry`. All gates are interrupt
//! gates (IF cleared on entry) with DPL 0, except #BP: `int3` is the user/
//! kernel call instruction (docs/GUEST_ABI.md), so its gate has DPL 3.

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use super::trap_entry;
use super::traps::{VEC_CALL, VEC_SHOOTDOWN, VEC_SPURIOUS, VEC_TIMER, VEC_USER_FLUSH};
use core::arch::asm;
use core::cell::UnsafeCell;

/// One gate (16 bytes) as two little-endian words.
type Gate = [u64; 2];

/// Encodes an interrupt gate to `handler` with the given IST slot and DPL.
fn gate(handler: u64, ist: u8, dpl: u8) -> Gate {
    let low = (handler & 0xffff)
        | (u64::from(KERNEL_CS) << 16)
        | (u64::from(ist) << 32)
        | (u64::from(0x8e | (dpl << 5)) << 40)
        | ((handler >> 16 & 0xffff) << 48);
    [low, handler >> 32]
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by the boot CPU in `init` before any other CPU runs
// or any interrupt is enabled; read-only afterwards.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([[0; 2]; 256]));

/// Device vectors with handlers (exceptions 0..32 always have one).
const DEVICE_VECTORS: [u64; 5] = [
    VEC_TIMER,
    VEC_CALL,
    VEC_SHOOTDOWN,
    VEC_USER_FLUSH,
    VEC_SPURIOUS,
];

/// Fills the IDT. Called once on the boot CPU before [`load`].
///
/// Only the exceptions and the vectors this kernel uses get gates: on
/// kvm_pvm ring-0 code is emulated at about a microsecond per instruction,
/// so filling all 256 gates would cost milliseconds of boot time. Any other
/// vector arrives as #NP and is reported as an unexpected exception.
pub fn init() {
    // SAFETY: single-threaded boot; no CPU has loaded the IDT yet.
    let gates = unsafe { &mut *IDT.0.get() };
    // The stubs fill one 4 KiB-aligned page, 16 bytes each, so the gates
    // differ only in the low 12 address bits: derive them from vector 0's.
    let [low0, high] = gate(trap_entry::stub_address(0), 0, 0);
    for vector in (0..32).chain(DEVICE_VECTORS) {
        gates[vector as usize] = [low0 + 16 * vector, high];
    }
    for (vector, ist, dpl) in [
        (2, IST_NMI, 0),
        (3, 0, 3),
        (8, IST_DOUBLE_FAULT, 0),
        (18, IST_MACHINE_CHECK, 0),
    ] {
        gates[vector] = gate(trap_entry::stub_address(vector), ist, dpl);
    }
}

/// Points `vector`'s gate at `handler` (no IST, privilege `dpl`). Only on
/// the boot CPU before the APs start: a gate is two stores.
pub fn set_handler(vector: usize, handler: u64, dpl: u8) {
    // SAFETY: single-threaded boot (the caller's contract); the gate is
    // valid before and after, and no trap can use it in between.
    let gates = unsafe { &mut *IDT.0.get() };
    gates[vector] = gate(handler, 0, dpl);
}

/// Loads the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a static filled by `init` with valid gates.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}

/// Loads an empty IDT, so that the next exception triple-faults
/// (`mode=triple`).
pub fn load_empty() {
    let ptr: [u16; 5] = [0; 5];
    // SAFETY: deliberately breaks exception delivery; the caller faults next.
    unsafe { asm!("lidt [{}]", in(reg) &ptr, options(readonly, nostack, preserves_flags)) };
}
