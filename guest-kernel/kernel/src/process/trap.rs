//! Traps from ring 3: `syscall` is a system call (`syscall`), a page
//! fault goes to the MM core (`handle_user_fault`), and anything the MM
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
use guest_mm::FaultFlags;

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
    match frame.vector {
        traps::VEC_SYSCALL => syscall::dispatch(frame),
        traps::VEC_PAGE_FAULT => page_fault(frame, cr2),
        traps::VEC_BREAKPOINT => kill(frame, Signal::Sigtrap, 0, true),
        0 => kill(frame, Signal::Sigfpe, 0, true),
        6 => kill(frame, Signal::Sigill, 0, true),
        _ => kill(frame, Signal::Sigsegv, 0, true),
    }
}

fn page_fault(frame: &TrapFrame, cr2: u64) {
    let pid = task::current_pid();
    let ff = FaultFlags {
        write: frame.error_code & PF_WRITE != 0,
        exec: frame.error_code & PF_INSTR != 0,
        user: true,
        unshare: false,
    };
    let result = mm::with(|s| {
        let r = s.handle_user_fault(pid, cr2, ff);
        if r.is_err() {
            // The core already tore the address space down; leave it
            // before anyone can reuse its page tables (we hold the lock).
            leave_address_space();
        }
        r
    });
    if let Err(report) = result {
        kill(frame, Signal::from_number(report.signal), cr2, false);
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
