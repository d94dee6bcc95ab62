//! What the layers above register with the arch layer at boot: the arch
//! code is the bottom layer and calls upward only through these (memory for
//! CPU stacks and the xAPIC page, the timer, user traps, an AP's queued
//! work, the fatal-exception report, the ports the ring-3 kernel context may
//! write). `main` registers them once, before the first trap can happen.

use super::trap_entry::TrapFrame;
use core::ops::RangeInclusive;

/// The upward calls.
pub struct Hooks {
    /// `count` physically contiguous free frames (CPU stacks): their
    /// physical address.
    pub alloc_frames: fn(count: u64) -> Option<u64>,
    /// Physical address of the kernel's PML4.
    pub kernel_root: fn() -> u64,
    /// Maps the MMIO page at `phys` uncached at `virt`; false when out of
    /// frames for the page table.
    pub map_mmio: fn(virt: u64, phys: u64) -> bool,
    /// Starts this CPU's periodic tick.
    pub timer_start: fn(),
    /// One tick of this CPU's timer.
    pub timer_tick: fn(),
    /// A trap from a user process that reached ring 0's dispatch.
    pub user_trap: fn(&mut TrapFrame),
    /// Whether user work is queued for CPU `index` (an AP's idle loop).
    pub has_work: fn(index: usize) -> bool,
    /// Runs this CPU's queued user work.
    pub run_work: fn(),
    /// Reports an unexpected kernel exception and ends the VM.
    pub fatal: fn(core::fmt::Arguments) -> !,
    /// The ports the ring-3 kernel context may write.
    pub context_ports: &'static [RangeInclusive<u16>],
}

static HOOKS: spin::Once<Hooks> = spin::Once::new();

/// Registers the upward calls (once, at boot).
pub fn register(hooks: Hooks) {
    HOOKS.call_once(|| hooks);
}

/// The registered calls.
pub(super) fn get() -> &'static Hooks {
    HOOKS
        .get()
        .expect("arch hooks are registered before the first CPU is set up")
}
