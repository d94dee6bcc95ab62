//! One-byte access probes whose faults a signal handler can skip: the
//! access is a single known instruction, and [`fixup`] tells the handler
//! where to resume and that the probe failed. Used by the guest's
//! `conform` and, through `#[path]`, by the Linux oracle of the host's
//! differential tests, so both see faults the same way.

use core::arch::global_asm;

global_asm!(
    ".globl probe_read",
    "probe_read:",
    "xor eax, eax",
    ".globl probe_read_insn",
    "probe_read_insn:",
    "movzx ecx, byte ptr [rdi]",
    "mov byte ptr [rsi], cl",
    ".globl probe_read_fixup",
    "probe_read_fixup:",
    "ret",
    ".globl probe_write",
    "probe_write:",
    "xor eax, eax",
    ".globl probe_write_insn",
    "probe_write_insn:",
    "mov byte ptr [rdi], sil",
    ".globl probe_write_fixup",
    "probe_write_fixup:",
    "ret",
);

unsafe extern "C" {
    /// Reads the byte at `addr` into `*out`; 0, or what the handler put in
    /// RAX (`signal << 8 | si_code`).
    pub fn probe_read(addr: u64, out: *mut u8) -> u64;
    /// Writes `val` at `addr`; 0, or what the handler put in RAX.
    pub fn probe_write(addr: u64, val: u8) -> u64;
    static probe_read_insn: u8;
    static probe_read_fixup: u8;
    static probe_write_insn: u8;
    static probe_write_fixup: u8;
}

/// Where a handler resumes a probe that faulted at `rip` (after setting
/// RAX to `signal << 8 | si_code`), or `None` if `rip` is not a probe's.
pub fn fixup(rip: u64) -> Option<u64> {
    let probes = [
        (&raw const probe_read_insn, &raw const probe_read_fixup),
        (&raw const probe_write_insn, &raw const probe_write_fixup),
    ];
    probes
        .iter()
        .find(|(insn, _)| *insn as u64 == rip)
        .map(|&(_, fixup)| fixup as u64)
}
