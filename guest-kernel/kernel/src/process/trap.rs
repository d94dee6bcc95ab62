//! Traps from ring 3: `syscall` is a system call (`syscall`), a page
//! fault goes to the MM core (`user_fault`; one a userfaultfd handler must
//! resolve puts the task to sleep until it does), and anything the MM
//! core cannot resolve, or any other exception (`int3` included: SIGTRAP),
//! kills the task with a signal report on the console and a `user_fault`
//! record. The kernel goes on (`arch/x86/mm/fault.c`: `do_user_addr_fault`,
//! `bad_area`).

use super::task::{self, TASKS, TaskState};
use super::{Exit, Signal, leave_address_space, stop, syscall};
use crate::arch::x86_64::trap_entry::{self, TrapFrame};
use crate::arch::x86_64::{cpu, kctx, traps};
use crate::memory::mm;
use crate::records::JsonStr;
use guest_mm::{FaultFlags, FaultStop};

/// Page-fault error code: write access.
const PF_WRITE: u64 = 1 << 1;
/// Page-fault error code: instruction fetch.
const PF_INSTR: u64 = 1 << 4;

/// Ring-3 mode: makes [`in_context`] the handler of user exceptions, which
/// ring 0 passes straight to the kernel context.
pub fn register() {
    kctx::register_user_trap(in_context);
}

/// Ring-3 mode: a user exception, in the kernel context.
extern "C" fn in_context(frame: &mut TrapFrame, cr2: u64) {
    handle(frame, cr2);
}

/// Handles a trap from ring 3 that came through ring 0's dispatch (every
/// one in ring-0 mode; in ring-3 mode, `syscall`s where it enters ring 0
/// and stray interrupt vectors): in the kernel context when there is one.
pub fn user_trap(frame: &mut TrapFrame) {
    // CR2 first, in ring 0 (the context cannot read it).
    let cr2 = if frame.vector == traps::VEC_PAGE_FAULT {
        traps::read_cr2()
    } else {
        0
    };
    kctx::call(|| handle(frame, cr2));
}

fn handle(frame: &mut TrapFrame, cr2: u64) {
    // Interrupt gates entered with IF clear; the MM lock must be waited for
    // with interrupts on (TLB flush IPIs), and nothing here runs in
    // interrupt context.
    cpu::enable_interrupts();
    trap_entry::syscall_from_fault(frame, cr2);
    // si_code of the signal each exception raises (SEGV_MAPERR-like
    // "kernel" codes are Linux's SI_KERNEL, 0x80, for #GP-style faults).
    const SI_KERNEL: i32 = 0x80;
    match frame.vector {
        traps::VEC_SYSCALL => syscall::dispatch(frame),
        traps::VEC_PAGE_FAULT => page_fault(frame, cr2),
        // TRAP_BRKPT, FPE_INTDIV, ILL_ILLOPN.
        traps::VEC_BREAKPOINT => fault_signal(frame, Signal::Sigtrap, 1, 0),
        0 => fault_signal(frame, Signal::Sigfpe, 1, frame.rip),
        6 => fault_signal(frame, Signal::Sigill, 2, frame.rip),
        _ => fault_signal(frame, Signal::Sigsegv, SI_KERNEL, 0),
    }
}

/// Delivers `signal` to the task's handler, or kills the task with it.
fn fault_signal(frame: &mut TrapFrame, signal: Signal, code: i32, addr: u64) {
    if !super::signal::deliver(frame, signal as usize, code, addr) {
        kill(frame, signal, addr, true);
    }
}

fn page_fault(frame: &mut TrapFrame, cr2: u64) {
    let pid = task::current_pid();
    let ff = FaultFlags {
        write: frame.error_code & PF_WRITE != 0,
        exec: frame.error_code & PF_INSTR != 0,
        user: true,
        unshare: false,
    };
    let report = match mm::with(|s| s.user_fault(pid, cr2, ff)) {
        Ok(()) => return,
        // A userfaultfd handler resolves it: sleep, then run the access
        // again (unless the wake-up came already).
        Err(FaultStop::Userfault) => {
            if task::uffd_sleep(frame) {
                super::leave();
            }
            return;
        }
        Err(FaultStop::Signal(report)) => report,
    };
    let signal = Signal::from_number(report.signal);
    // SIGKILL (out of memory) cannot be caught.
    // SEGV_MAPERR / SEGV_ACCERR from the core; BUS_ADRERR for a lost page.
    let code = report.code.map_or(2, |c| c as i32);
    if signal == Signal::Sigkill || !super::signal::deliver(frame, signal as usize, code, cr2) {
        kill(frame, signal, cr2, true);
    }
}

/// Reports and ends the current task, killed by `signal`. When `exit_mm`,
/// the MM core has not yet made it a zombie.
pub(super) fn kill(frame: &TrapFrame, signal: Signal, addr: u64, exit_mm: bool) -> ! {
    let pid = task::current_pid();
    if exit_mm {
        mm::with(|s| {
            leave_address_space();
            let _ = s.exit(pid, signal as i32);
        });
    }
    let (name, owned) = TASKS
        .lock()
        .get(&pid)
        .map_or(("?", false), |t| (t.name, t.owned));
    if !owned {
        // Its address space is gone (an owned one goes with its handle).
        super::report::exited(pid);
    }
    crate::println!(
        "[pid {} {}] killed by signal {} ({:?}): {} at rip {:#x}, address {:#x}, error {:#x}",
        pid,
        name,
        signal as u8,
        signal,
        traps::vector_name(frame.vector),
        frame.rip,
        addr,
        frame.error_code
    );
    crate::record!(
        r#"{{"type":"user_fault","pid":{},"program":{},"signal":{},"vector":{},"rip":{},"addr":{},"error":{}}}"#,
        pid,
        JsonStr(name),
        signal as u8,
        frame.vector,
        frame.rip,
        addr,
        frame.error_code
    );
    let exit = Exit::Killed {
        signal,
        vector: frame.vector,
        rip: frame.rip,
        addr,
    };
    stop(frame, owned.then_some(TaskState::Stopped(Some(exit))))
}
