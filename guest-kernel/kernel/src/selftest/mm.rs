//! Self-tests of the MM core in the kernel, driven from ring 3: COW after
//! fork (on several CPUs when there are several), `MAP_FIXED_NOREPLACE`,
//! the zero page, a swap round trip, unshare through a read pin, the
//! mprotect/munmap/mremap/madvise basics, and a final invariant check.

use super::{Failure, TestResult, ensure};
use crate::memory::mm;
use crate::percpu;
use crate::process::programs::{self, Program};
use crate::process::{Exit, Process};
use alloc::format;
use alloc::string::String;

/// Runs `program` with `arg`; fails unless it exits 0 (its status is a
/// bit mask of failed checks).
fn run_ok(program: &Program, arg: u64) -> Result<String, Failure> {
    let mut p = Process::spawn(program)
        .map_err(|e| Failure(format!("spawning {}: {e:?}", program.name)))?;
    let exit = p.run(arg);
    let output = String::from_utf8_lossy(&p.output()).into_owned();
    ensure!(
        exit == Exit::Exited(0),
        "{} {arg:#x} ended with {exit:?} (failed checks mask); output {output:?}",
        program.name
    );
    Ok(output)
}

pub fn cow_after_fork() -> TestResult {
    let cpus = percpu::online_count() as u64;
    // One child per other CPU (at least two), and insist that one ran
    // elsewhere when there are other CPUs.
    let children = (cpus - 1).max(2);
    let multi = if cpus > 1 { 0x100 } else { 0 };
    let before = mm::with(|s| s.counters());
    run_ok(&programs::COWFORK, children | multi)?;
    let after = mm::with(|s| s.counters());
    ensure!(
        after.cow_copies > before.cow_copies,
        "no COW copies counted ({} -> {})",
        before.cow_copies,
        after.cow_copies
    );
    if cpus > 1 {
        ensure!(
            after.tlb_flushes > before.tlb_flushes,
            "no TLB flush requests counted"
        );
    }
    Ok(())
}

pub fn fixed_noreplace() -> TestResult {
    run_ok(&programs::MMTEST, 0).map(drop)
}

pub fn zero_page() -> TestResult {
    run_ok(&programs::MMTEST, 1).map(drop)
}

pub fn swap_round_trip() -> TestResult {
    let before = mm::with(|s| s.counters());
    run_ok(&programs::MMTEST, 2)?;
    let after = mm::with(|s| s.counters());
    ensure!(
        after.swap_outs > before.swap_outs && after.swap_ins > before.swap_ins,
        "swap counters did not move: {before:?} -> {after:?}"
    );
    Ok(())
}

pub fn unshare() -> TestResult {
    run_ok(&programs::MMTEST, 3).map(drop)
}

pub fn call_basics() -> TestResult {
    run_ok(&programs::MMTEST, 4).map(drop)
}

pub fn invariants() -> TestResult {
    mm::with(|s| s.check()).map_err(|e| Failure(format!("{:?}", e.violations)))
}
