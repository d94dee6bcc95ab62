//! x86 port I/O (`in`/`out`): the serial console, the exit device and the
//! record doorbell all live in I/O space (see docs/GUEST_ABI.md).

use core::arch::asm;

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    if super::kctx::in_context() {
        return super::kctx::out8(port, value);
    }
    // SAFETY: port writes have no memory effects visible to Rust; the ports
    // used by this kernel are the devices the VMM documents.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes `bytes` to an I/O port with `rep outsb` (one instruction, and
/// from the ring-3 kernel context one request per page).
pub fn outsb(port: u16, bytes: &[u8]) {
    if super::kctx::in_context() {
        return super::kctx::out_bytes(port, bytes);
    }
    // SAFETY: reads `bytes.len()` bytes from `bytes`, which is borrowed for
    // the duration; port writes have no other memory effects, and DF is
    // clear (the Rust ABI keeps it so).
    unsafe {
        asm!(
            "rep outsb dx, byte ptr [rsi]",
            in("dx") port,
            inout("rsi") bytes.as_ptr() => _,
            inout("rcx") bytes.len() => _,
            options(nostack, preserves_flags, readonly)
        )
    };
}

/// Writes one 32-bit value to an I/O port.
pub fn outl(port: u16, value: u32) {
    if super::kctx::in_context() {
        return super::kctx::out32(port, value);
    }
    // SAFETY: as for `outb`. The record doorbell reads guest memory, which
    // is why this one is not `nomem`: prior buffer writes must be visible.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    };
}
