//! Self-tests of the ring-3 kernel context (`arch::x86_64::kctx`): calls
//! run in ring 3 and restore the caller's CR3, timer ticks and TLB
//! shootdown IPIs reach CPUs that are in the context, and user processes
//! can neither touch the context's memory nor forge its requests.

use super::user::killed;
use super::{Failure, TestResult, ensure};
use crate::arch::x86_64::kctx::{self, KernelMode};
use crate::arch::x86_64::{msr, paging, smp};
use crate::percpu::{self, MAX_CPUS};
use crate::process::Signal;
use alloc::format;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A call runs in ring 3 exactly in ring-3 mode, returns its value and
/// leaves CR3 as it was (or as the context set it).
pub fn call_runs_in_ring3() -> TestResult {
    let ring3 = kctx::mode() == KernelMode::Ring3;
    let before = paging::read_cr3();
    let (inside, value) = kctx::call(|| (kctx::in_context(), 6 * 7));
    ensure!(
        inside == ring3,
        "call ran in ring {} in {:?} mode",
        if inside { 3 } else { 0 },
        kctx::mode()
    );
    ensure!(value == 42, "call returned {value}");
    let after = paging::read_cr3();
    ensure!(after == before, "CR3 {before:#x} -> {after:#x}");
    Ok(())
}

/// Per CPU: in a call and spinning ([`spin_in_context`]).
static INSIDE: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: timer ticks seen while in the call.
static TICKS_INSIDE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static RELEASE: AtomicBool = AtomicBool::new(false);

/// Cycles any wait here gives up after (a few seconds).
const PATIENCE: u64 = 10_000_000_000;

/// Spins until `done()` and two timer ticks on this CPU (or [`PATIENCE`]);
/// returns the ticks seen.
fn ticks_until(done: impl Fn() -> bool) -> u64 {
    let me = percpu::current();
    let before = me.ticks.load(Ordering::Relaxed);
    let start = msr::rdtsc();
    while (!done() || me.ticks.load(Ordering::Relaxed) < before + 2)
        && msr::rdtsc().wrapping_sub(start) < PATIENCE
    {
        core::hint::spin_loop();
    }
    me.ticks.load(Ordering::Relaxed) - before
}

fn spin_in_context(cpu: usize) {
    kctx::call(|| {
        INSIDE[cpu].store(
            kctx::in_context() || kctx::mode() == KernelMode::Ring0,
            Ordering::Release,
        );
        let ticks = ticks_until(|| RELEASE.load(Ordering::Acquire));
        TICKS_INSIDE[cpu].store(ticks, Ordering::Release);
        INSIDE[cpu].store(false, Ordering::Release);
    });
}

/// Every AP sits in a call while CPU 0 shoots down a kernel mapping and a
/// user root on all of them: each must take the IPIs from inside the
/// context (else the shootdowns time out), and its timer keeps ticking.
pub fn interrupts_reach_the_context() -> TestResult {
    let cpus = percpu::online_count();
    RELEASE.store(false, Ordering::Release);
    for (cpu, ticks) in TICKS_INSIDE.iter().enumerate().take(cpus).skip(1) {
        ticks.store(0, Ordering::Relaxed);
        smp::spawn_on(cpu, spin_in_context, cpu)
            .map_err(|e| Failure(format!("spawn on cpu {cpu}: {e:?}")))?;
    }
    let start = msr::rdtsc();
    let waiting = || {
        (1..cpus)
            .filter(|&c| !INSIDE[c].load(Ordering::Acquire))
            .count()
    };
    while waiting() > 0 && msr::rdtsc().wrapping_sub(start) < PATIENCE {
        core::hint::spin_loop();
    }
    let result = (|| {
        ensure!(
            waiting() == 0,
            "{} CPUs did not enter the context",
            waiting()
        );
        let before: u64 = (1..cpus)
            .map(|c| percpu::cpu(c).shootdowns_done.load(Ordering::Acquire))
            .sum();
        // A kernel-half address: its shootdown goes to every CPU. Done from
        // inside a call too, so the sending side is the context as well.
        kctx::call(|| smp::tlb_shootdown(paging::KERNEL_VMA))
            .map_err(|e| Failure(format!("shootdown: {e:?}")))?;
        let all = if cpus == 64 {
            u64::MAX
        } else {
            (1u64 << cpus) - 1
        };
        smp::flush_user_tlb(paging::read_cr3(), all, 0, 0)
            .map_err(|e| Failure(format!("user flush: {e:?}")))?;
        let after: u64 = (1..cpus)
            .map(|c| percpu::cpu(c).shootdowns_done.load(Ordering::Acquire))
            .sum();
        ensure!(
            after - before == cpus as u64 - 1,
            "{} of {} CPUs in the context took the shootdown",
            after - before,
            cpus - 1
        );
        Ok(())
    })();
    RELEASE.store(true, Ordering::Release);
    let start = msr::rdtsc();
    while (1..cpus).any(|c| INSIDE[c].load(Ordering::Acquire))
        && msr::rdtsc().wrapping_sub(start) < PATIENCE
    {
        core::hint::spin_loop();
    }
    result?;
    // CPU 0 as well (the only one on a 1-CPU guest).
    let ticks = kctx::call(|| ticks_until(|| true));
    ensure!(ticks >= 2, "cpu 0 saw {ticks} timer ticks in the context");
    for (cpu, ticks) in TICKS_INSIDE.iter().enumerate().take(cpus).skip(1) {
        let ticks = ticks.load(Ordering::Acquire);
        ensure!(
            ticks >= 2,
            "cpu {cpu} saw {ticks} timer ticks in the context"
        );
    }
    Ok(())
}

/// User writes to the context's stack and to its PML4 are SIGSEGV.
pub fn user_cannot_reach_the_context() -> TestResult {
    for addr in [kctx::stack_probe_address(), kctx::root_address()] {
        killed(addr, Signal::Sigsegv, 14, Some(addr))?;
    }
    Ok(())
}

/// A user `int3` shaped like the context's Return request is a plain
/// breakpoint (SIGTRAP), and a jump into kernel text (where the context's
/// back-to-user request lives) a page fault (SIGSEGV); the kernel goes on.
pub fn user_cannot_forge_a_return() -> TestResult {
    killed(3, Signal::Sigtrap, 3, None)?;
    killed(4, Signal::Sigsegv, 14, Some(0xffff_ffff_8010_0000))
}
