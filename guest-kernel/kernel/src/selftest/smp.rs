//! Self-tests of SMP: bring-up, cross-CPU calls, TLB shootdown, AP timers,
//! and a user process on an AP.

use super::{Failure, TestResult, ensure};
use crate::arch::x86_64::paging::{VMAP_BASE, phys_to_virt};
use crate::arch::x86_64::{msr, smp};
use crate::memory::{frames, kmap};
use crate::percpu::{self, MAX_CPUS};
use crate::process::{Exit, Process, programs};
use alloc::format;
use core::sync::atomic::{AtomicU64, Ordering};

/// Number of CPUs the VMM says it created.
fn expected_cpus() -> usize {
    crate::boot::info().cpus() as usize
}

pub fn all_online() -> TestResult {
    let online = percpu::online_count();
    ensure!(
        online == expected_cpus(),
        "{online} cpus online, {} expected",
        expected_cpus()
    );
    for i in 0..expected_cpus() {
        ensure!(
            percpu::cpu(i).online.load(Ordering::Acquire),
            "cpu {i} not online"
        );
    }
    Ok(())
}

/// Bit `i` set by CPU `i` when it ran [`mark_self`].
static RAN: AtomicU64 = AtomicU64::new(0);

fn mark_self(expected: usize) {
    if percpu::index() == expected {
        RAN.fetch_or(1 << expected, Ordering::AcqRel);
    }
}

pub fn call_every_ap() -> TestResult {
    RAN.store(0, Ordering::Release);
    for cpu in 1..expected_cpus() {
        smp::call_on(cpu, mark_self, cpu)
            .map_err(|e| Failure(format!("call on cpu {cpu}: {e:?}")))?;
    }
    let want = ((1u128 << expected_cpus()) - 2) as u64;
    let got = RAN.load(Ordering::Acquire);
    ensure!(
        got == want,
        "CPUs that ran the call: {got:#x}, expected {want:#x}"
    );
    Ok(())
}

/// Where the shootdown test maps its page.
const TLB_TEST_VA: u64 = VMAP_BASE;
/// What each CPU read from [`TLB_TEST_VA`] (indexed by CPU).
static SEEN: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn read_test_page(cpu: usize) {
    // SAFETY: TLB_TEST_VA is mapped by the test before any CPU reads it.
    let value = unsafe { core::ptr::read_volatile(TLB_TEST_VA as *const u64) };
    SEEN[cpu].store(value, Ordering::Release);
}

/// Has every CPU read the test page and checks they saw `want`.
fn everyone_reads(want: u64) -> TestResult {
    read_test_page(0);
    for cpu in 1..expected_cpus() {
        smp::call_on(cpu, read_test_page, cpu)
            .map_err(|e| Failure(format!("call on cpu {cpu}: {e:?}")))?;
    }
    for (cpu, seen) in SEEN.iter().enumerate().take(expected_cpus()) {
        let seen = seen.load(Ordering::Acquire);
        ensure!(seen == want, "cpu {cpu} read {seen:#x}, expected {want:#x}");
    }
    Ok(())
}

pub fn tlb_shootdown() -> TestResult {
    let (Some(a), Some(b)) = (frames::alloc(), frames::alloc()) else {
        return Err(Failure("out of frames".into()));
    };
    // SAFETY: both frames are ours; they are written through the direct map.
    unsafe {
        (phys_to_virt(a) as *mut u64).write(0xaaaa);
        (phys_to_virt(b) as *mut u64).write(0xbbbb);
    }
    let result = (|| {
        kmap::map_vmap_page(TLB_TEST_VA, a).map_err(|e| Failure(format!("map: {e:?}")))?;
        smp::tlb_shootdown(TLB_TEST_VA).map_err(|e| Failure(format!("shootdown: {e:?}")))?;
        everyone_reads(0xaaaa)?;
        // Every CPU now caches VA -> a; remap and shoot down.
        let before: u64 = (0..expected_cpus())
            .map(|c| percpu::cpu(c).shootdowns_done.load(Ordering::Acquire))
            .sum();
        kmap::map_vmap_page(TLB_TEST_VA, b).map_err(|e| Failure(format!("remap: {e:?}")))?;
        smp::tlb_shootdown(TLB_TEST_VA).map_err(|e| Failure(format!("shootdown: {e:?}")))?;
        let after: u64 = (0..expected_cpus())
            .map(|c| percpu::cpu(c).shootdowns_done.load(Ordering::Acquire))
            .sum();
        ensure!(
            after - before == expected_cpus() as u64 - 1,
            "{} CPUs handled the shootdown IPI, expected {}",
            after - before,
            expected_cpus() - 1
        );
        everyone_reads(0xbbbb)
    })();
    // The test page stays mapped to `b`; `a` is free again. `b` is leaked on
    // purpose: the VMAP page keeps pointing at it.
    // SAFETY: nothing maps `a` any more (every CPU flushed it above, or the
    // test failed before anyone could cache the new mapping).
    unsafe { frames::free(a) };
    result
}

/// Ticks an AP saw during [`count_ticks`].
static AP_TICKS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

fn count_ticks(cpu: usize) {
    let before = percpu::current().ticks.load(Ordering::Relaxed);
    let start = msr::rdtsc();
    while percpu::current().ticks.load(Ordering::Relaxed) < before + 2
        && msr::rdtsc().wrapping_sub(start) < 5_000_000_000
    {
        core::hint::spin_loop();
    }
    AP_TICKS[cpu].store(
        percpu::current().ticks.load(Ordering::Relaxed) - before,
        Ordering::Release,
    );
}

pub fn ap_timers() -> TestResult {
    for (cpu, seen) in AP_TICKS.iter().enumerate().take(expected_cpus()).skip(1) {
        smp::call_on(cpu, count_ticks, cpu)
            .map_err(|e| Failure(format!("call on cpu {cpu}: {e:?}")))?;
        let ticks = seen.load(Ordering::Acquire);
        ensure!(ticks >= 2, "cpu {cpu} saw {ticks} timer ticks");
    }
    Ok(())
}

/// Status of the process run by [`run_exit42`], + 1000 (0 = not run).
static AP_STATUS: AtomicU64 = AtomicU64::new(0);

fn run_exit42(_: usize) {
    let status = match Process::spawn(&programs::EXIT42) {
        Ok(mut p) => match p.run(0) {
            Exit::Exited(s) => s as u64,
            killed => 2000 + killed.status() as u64,
        },
        Err(_) => 3000,
    };
    AP_STATUS.store(1000 + status, Ordering::Release);
}

pub fn user_on_ap() -> TestResult {
    let target = expected_cpus() - 1;
    if target == 0 {
        // Only one CPU: the user tests above already ran on it.
        return Ok(());
    }
    AP_STATUS.store(0, Ordering::Release);
    smp::call_on(target, run_exit42, 0)
        .map_err(|e| Failure(format!("call on cpu {target}: {e:?}")))?;
    let status = AP_STATUS.load(Ordering::Acquire);
    ensure!(
        status == 1042,
        "exit42 on cpu {target}: status code {status}"
    );
    Ok(())
}
