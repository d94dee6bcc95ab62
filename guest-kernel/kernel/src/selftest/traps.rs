//! Self-tests of the kernel exception paths.

use super::{TestResult, ensure};
use crate::arch::x86_64::extable::{FIXUPS, ProbeFault, probe_read_u64, probe_ud2};
use core::sync::atomic::Ordering;

pub fn kernel_invalid_opcode() -> TestResult {
    let before = FIXUPS.load(Ordering::Relaxed);
    ensure!(probe_ud2(), "ud2 did not resume at its fixup");
    let after = FIXUPS.load(Ordering::Relaxed);
    ensure!(after == before + 1, "fixup count {before} -> {after}");
    Ok(())
}

pub fn kernel_page_fault() -> TestResult {
    /// A kernel-half address nothing maps (PML4 slot 384).
    const UNMAPPED: u64 = 0xffff_c000_0000_1000;
    let r = probe_read_u64(UNMAPPED);
    ensure!(
        r == Err(ProbeFault { addr: UNMAPPED }),
        "read of unmapped {UNMAPPED:#x} gave {r:x?}"
    );
    let word: u64 = 0x1234_5678_9abc_def0;
    let ok = probe_read_u64(&word as *const u64 as u64);
    ensure!(ok == Ok(word), "read of a mapped word gave {ok:x?}");
    Ok(())
}
