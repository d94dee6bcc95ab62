//! The periodic LAPIC timer tick: each CPU counts its timer interrupts; the
//! self-tests check that they arrive.

use crate::arch::x86_64::{lapic, traps};
use core::sync::atomic::Ordering;

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
