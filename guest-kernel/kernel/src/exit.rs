//! Ending the VM through the exit device at port 0xf4 (docs/GUEST_ABI.md):
//! writewatch exits with the value written, QEMU's `isa-debug-exit` with
//! `(value << 1) | 1`.

use crate::arch::x86_64::port::outb;

/// Exit device port.
pub const EXIT_PORT: u16 = 0xf4;

/// Exit codes the guest uses (docs/GUEST_ABI.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Success = 0,
    /// Self-tests ran and at least one failed.
    TestsFailed = 1,
    /// Kernel panic.
    Panic = 3,
    /// Unexpected exception in the kernel.
    Exception = 4,
    /// A checking workload found memory that differs from what it wrote.
    CheckFailed = 5,
}

/// Ends the VM with `code`.
pub fn exit(code: ExitCode) -> ! {
    exit_raw(code as u8)
}

/// Ends the VM with an arbitrary byte (the `init` program's exit status).
pub fn exit_raw(value: u8) -> ! {
    outb(EXIT_PORT, value);
    // Without an exit device (e.g. QEMU without isa-debug-exit), stop here.
    crate::arch::x86_64::cpu::halt_forever()
}
