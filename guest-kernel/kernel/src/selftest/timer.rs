//! Self-test of the LAPIC timer on the boot CPU.

use super::{TestResult, ensure};
use crate::arch::x86_64::{cpu, msr};

/// TSC cycles to wait for ticks (several seconds at any realistic TSC rate,
/// far more than the few 10 ms ticks needed).
const WAIT_CYCLES: u64 = 10_000_000_000;

pub fn ticks_arrive() -> TestResult {
    ensure!(cpu::interrupts_enabled(), "interrupts are off");
    let before = crate::timer::ticks();
    let start = msr::rdtsc();
    while crate::timer::ticks() < before + 3 {
        if msr::rdtsc().wrapping_sub(start) > WAIT_CYCLES {
            return Err(super::Failure(alloc::format!(
                "only {} ticks in {WAIT_CYCLES} TSC cycles",
                crate::timer::ticks() - before
            )));
        }
        core::hint::spin_loop();
    }
    Ok(())
}
