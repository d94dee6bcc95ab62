//! Trap dispatch: what each exception and interrupt vector does.
//!
//! * From a user process: `syscall` (its own entry, or on kvm_pvm the page
//!   fault its fetch of IA32_LSTAR raises) is a system call; the MM core
//!   resolves page faults; any other exception kills the program with a
//!   signal-like report (`process::trap`). In ring-3 mode exceptions go to
//!   the kernel context before this dispatch (`kctx_from_user`).
//! * From ring 0: a fault at an instruction listed in `extable` resumes at
//!   its fixup; anything else is an unexpected exception: report vector,
//!   RIP, CR2 and error code, end the VM with exit code 4.
//! * Device vectors: LAPIC timer, cross-CPU call, kernel TLB shootdown and
//!   user-TLB flush IPIs.

use super::trap_entry::TrapFrame;
use super::{extable, hooks, kctx, lapic, percpu, smp};

/// Page fault.
pub const VEC_PAGE_FAULT: u64 = 14;
/// Invalid opcode.
pub const VEC_INVALID_OPCODE: u64 = 6;
/// General protection fault.
pub const VEC_GENERAL_PROTECTION: u64 = 13;
/// Breakpoint (`int3`).
pub const VEC_BREAKPOINT: u64 = 3;
/// A `syscall` (not an IDT vector: the frame is built by the `syscall`
/// entry, or from the page fault it raises on kvm_pvm).
pub const VEC_SYSCALL: u64 = 0x100;
/// LAPIC timer.
pub const VEC_TIMER: u64 = 0x20;
/// Cross-CPU call IPI (wakes the target's idle loop).
pub const VEC_CALL: u64 = 0x40;
/// TLB shootdown IPI.
pub const VEC_SHOOTDOWN: u64 = 0x41;
/// User-TLB flush IPI (`smp::flush_user_tlb`).
pub const VEC_USER_FLUSH: u64 = 0x42;
/// LAPIC spurious interrupt.
pub const VEC_SPURIOUS: u64 = 0xff;

/// Called by `trap_common` for every trap.
pub extern "C" fn dispatch(frame: &mut TrapFrame) {
    match frame.vector {
        VEC_TIMER => {
            (hooks::get().timer_tick)();
            lapic::eoi();
        }
        VEC_CALL => lapic::eoi(),
        VEC_SHOOTDOWN => {
            smp::handle_shootdown();
            lapic::eoi();
        }
        VEC_USER_FLUSH => {
            smp::handle_user_flush();
            lapic::eoi();
        }
        VEC_SPURIOUS => {}
        _ if frame.came_from_user() && !kctx::from_context(frame) => {
            (hooks::get().user_trap)(frame)
        }
        _ => {
            if !kctx::handle_trap(frame) && !extable::fixup(frame, read_cr2()) {
                fatal(frame)
            }
        }
    }
}

/// The faulting address of the last page fault on this CPU.
pub fn read_cr2() -> u64 {
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe {
        core::arch::asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags))
    };
    cr2
}

/// Short name of an exception vector.
pub fn vector_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "?", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    if vector == VEC_SYSCALL {
        return "syscall";
    }
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

/// Reports an unexpected kernel exception and ends the VM (through the
/// registered `fatal`: exit code 4).
fn fatal(frame: &TrapFrame) -> ! {
    let f = frame;
    (hooks::get().fatal)(format_args!(
        "\nUNEXPECTED EXCEPTION on cpu {}: vector {} ({}) rip {:#x} cr2 {:#x} error {:#x}\n\
         rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n\
         rsi {:#018x} rdi {:#018x} rbp {:#018x} rsp {:#018x}\n\
         r8  {:#018x} r9  {:#018x} r10 {:#018x} r11 {:#018x}\n\
         r12 {:#018x} r13 {:#018x} r14 {:#018x} r15 {:#018x}\n\
         cs {:#x} ss {:#x} rflags {:#x}\n",
        percpu::cpu_index_or_boot(),
        f.vector,
        vector_name(f.vector),
        f.rip,
        read_cr2(),
        f.error_code,
        f.rax,
        f.rbx,
        f.rcx,
        f.rdx,
        f.rsi,
        f.rdi,
        f.rbp,
        f.rsp,
        f.r8,
        f.r9,
        f.r10,
        f.r11,
        f.r12,
        f.r13,
        f.r14,
        f.r15,
        f.cs,
        f.ss,
        f.rflags,
    ))
}
