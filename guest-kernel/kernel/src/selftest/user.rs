//! Self-tests of ring-3 processes and the `int3` user/kernel call.

use super::{Failure, TestResult, ensure};
use crate::memory::mm;
use crate::process::programs::{self, Program};
use crate::process::{Exit, Process, Signal};
use alloc::format;

pub(super) fn spawn(program: &Program) -> Result<Process, Failure> {
    Process::spawn(program).map_err(|e| Failure(format!("spawning {}: {e:?}", program.name)))
}

pub fn init_hello() -> TestResult {
    let mut p = spawn(&programs::INIT)?;
    let exit = p.run(0);
    ensure!(exit == Exit::Exited(0), "init ended with {exit:?}");
    ensure!(
        p.output() == b"hello from ring 3\n",
        "init wrote {:?}",
        core::str::from_utf8(&p.output())
    );
    Ok(())
}

pub fn exit_status() -> TestResult {
    let exit = spawn(&programs::EXIT42)?.run(0);
    ensure!(exit == Exit::Exited(42), "exit42 ended with {exit:?}");
    Ok(())
}

pub fn getpid() -> TestResult {
    let mut p = spawn(&programs::GETPID)?;
    let exit = p.run(0);
    ensure!(
        exit == Exit::Exited(p.pid() as i32),
        "pid {} but getpid program ended with {exit:?}",
        p.pid()
    );
    Ok(())
}

pub fn call_errors() -> TestResult {
    let mut p = spawn(&programs::SYSABI)?;
    let exit = p.run(0);
    ensure!(
        exit == Exit::Exited(0),
        "sysabi ended with {exit:?} (bit mask of failed checks)"
    );
    ensure!(
        p.output() == b"sysabi: checks done\n",
        "sysabi wrote {:?}",
        core::str::from_utf8(&p.output())
    );
    Ok(())
}

/// Runs `badaccess` with `how` and checks it was killed as expected.
pub(super) fn killed(how: u64, signal: Signal, vector: u64, addr: Option<u64>) -> TestResult {
    let exit = spawn(&programs::BADACCESS)?.run(how);
    match exit {
        Exit::Killed {
            signal: s,
            vector: v,
            addr: a,
            ..
        } if s == signal && v == vector && addr.is_none_or(|want| want == a) => {}
        other => return Err(Failure(format!("badaccess {how} ended with {other:?}"))),
    }
    ensure!(
        exit.status() == 128 + signal as i32,
        "status {}",
        exit.status()
    );
    // The kernel lives on: another program still runs normally.
    let after = spawn(&programs::EXIT42)?.run(0);
    ensure!(
        after == Exit::Exited(42),
        "program after the kill ended with {after:?}"
    );
    Ok(())
}

pub fn null_write_killed() -> TestResult {
    killed(0, Signal::Sigsegv, 14, Some(0))
}

pub fn kernel_read_killed() -> TestResult {
    killed(1, Signal::Sigsegv, 14, Some(0xffff_ffff_8010_0000))
}

pub fn ud2_killed() -> TestResult {
    killed(2, Signal::Sigill, 6, None)
}

/// A `syscall` at the very top of the user space returns to TASK_SIZE,
/// which is never mapped: the fetch there is SIGSEGV, the kernel lives.
pub fn return_to_task_size_killed() -> TestResult {
    killed(5, Signal::Sigsegv, 14, Some((1 << 47) - 4096))
}

pub fn separate_spaces() -> TestResult {
    let mut a = spawn(&programs::MEMSLOT)?;
    let mut b = spawn(&programs::MEMSLOT)?;
    ensure!(a.root() != b.root(), "same page table");
    let first = a.run(111);
    ensure!(
        first == Exit::Exited(0),
        "A's first run saw {first:?}, expected 0"
    );
    let other = b.run(222);
    ensure!(
        other == Exit::Exited(0),
        "B saw {other:?}: A's write leaked into B"
    );
    let again = a.run(333);
    ensure!(
        again == Exit::Exited(111),
        "A's second run saw {again:?}, expected its own 111"
    );
    let b_again = b.run(444);
    ensure!(
        b_again == Exit::Exited(222),
        "B's second run saw {b_again:?}, expected 222"
    );
    Ok(())
}

pub fn no_frame_leak() -> TestResult {
    let before = mm::used_frames();
    for _ in 0..3 {
        let mut p = spawn(&programs::INIT)?;
        ensure!(mm::used_frames() > before, "spawn used no frames");
        let _ = p.run(0);
    }
    let after = mm::used_frames();
    ensure!(
        after == before,
        "{} frames leaked by three processes",
        after as i64 - before as i64
    );
    Ok(())
}
