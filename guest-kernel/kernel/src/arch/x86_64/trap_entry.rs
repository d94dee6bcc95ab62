//! Low-level trap entry and exit, and the user-mode enter/leave switch.
//!
//! One 16-byte stub per vector (all 256 in one 4 KiB-aligned page, which
//! `idt::init` relies on) pushes a dummy error code (when the CPU does
//! not push one) and the vector number. `trap_common` first takes the
//! ring-3 kernel context's two hot requests and, in ring-3 mode, passes a
//! user process's exceptions straight to the context (`kctx`); otherwise it
//! saves the general registers into a [`TrapFrame`], swaps GS when the trap
//! came from a user process, and calls `traps::dispatch`. `syscall_entry`
//! (IA32_LSTAR) builds the same frame where `syscall` enters ring 0. `trap_return` undoes it all and `iretq`s
//! (with interrupts off until the `iretq`, which restores the interrupted
//! context's flag: handlers of user traps run with interrupts on).
//!
//! `enter_user` saves the kernel's callee-saved registers, records the
//! stack pointer as the CPU's `TSS.rsp0` and in the per-CPU slot, and
//! "returns" into user mode through `trap_return`. `leave_user` is its
//! counterpart, called from a trap handler when the program exits or is
//! killed: it drops the trap's stack frames and returns from `enter_user`.

use super::gdt::{USER_CS, USER_DS};
use super::percpu::offsets;
use core::arch::global_asm;

/// Saved state of an interrupted context (layout fixed by `trap_common`).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// Vector number (pushed by the stub).
    pub vector: u64,
    /// Error code (pushed by the CPU, or 0).
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

impl TrapFrame {
    /// Whether the trap came from ring 3.
    pub fn came_from_user(&self) -> bool {
        self.cs & 3 == 3
    }
}

global_asm!(
    r#"
    .text
    .balign 4096
    .globl trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
    .else
    pushq $0
    .endif
    pushq $vec
    jmp trap_common
    .set vec, vec + 1
    .endr

    .globl trap_common
trap_common:
    testb $3, 24(%rsp)
    jz 1f
    /* From ring 3: a user process, or the ring-3 kernel context, whose
       traps alone land on the context trap stacks and keep the kernel GS. */
    cmp {trap_lo}(%rip), %rsp
    jb 3f
    cmp {trap_hi}(%rip), %rsp
    jae 3f
    /* The Return of a kctx::call (int3 with rax 0) is taken before any
       register is saved: it resumes the ring-0 caller with the stack
       pointer saved just above this trap's frame. (The context's other hot
       request, back to a user process, never gets here: kctx_bp_entry.) */
    cmpq $3, (%rsp)
    jne 1f
    test %rax, %rax
    jnz 1f
    mov 64(%rsp), %rsp
    mov %rdi, %rax
    jmp kctx_leave_tail
3:
    swapgs
    /* In ring-3 mode, an exception of a user process goes straight to
       the context (kctx_from_user); device interrupts stay here. */
    cmpq $32, (%rsp)
    jae 1f
    cmpq $0, {root}(%rip)
    jne kctx_from_user
1:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    cld
    call {dispatch}

    .globl trap_return
trap_return:
    /* Handlers of traps from ring 3 may enable interrupts; none may arrive
       between the swapgs below and iretq (it would run on the user GS). */
    cli
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    testb $3, 8(%rsp)
    jz 2f
    cmp {trap_lo}(%rip), %rsp
    jb 4f
    cmp {trap_hi}(%rip), %rsp
    jb 2f
4:
    swapgs
2:
    iretq

    /* enter_user(frame: *const TrapFrame, save: *mut u64, rsp0: *mut u64) -> u64 */
    .globl enter_user
enter_user:
    cli
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rsi)
    /* TSS.rsp0 16-byte aligned, as the CPU aligns it anyway: the context
       finds the trap frame just below it (kctx_user_entry). */
    mov %rsp, %rax
    and $-16, %rax
    mov %rax, (%rdx)
    mov %rax, %gs:{user_rsp0}
    mov %rdi, %rsp
    jmp trap_return

    /* IA32_LSTAR, on a supervisor page. Where `syscall` enters ring 0
       (hardware KVM, QEMU), with the user's stack and GS and interrupts
       masked (SFMASK): builds the frame a trap would have (vector
       VEC_SYSCALL, the return RIP from rcx, the flags from r11) on the
       kernel stack and takes the common path. On kvm_pvm the fetch of this
       page from ring 3 page-faults instead (kctx, process::trap). */
    .globl syscall_entry
syscall_entry:
    swapgs
    mov %rsp, %gs:{scratch}
    mov %gs:{tss_rsp0}, %rsp
    pushq ${user_ds}
    pushq %gs:{scratch}
    push %r11
    pushq ${user_cs}
    push %rcx
    pushq $0
    pushq ${vec_syscall}
    swapgs
    jmp trap_common

    /* leave_user(saved_rsp: u64, result: u64) -> ! */
    .globl leave_user
leave_user:
    mov %rdi, %rsp
    mov %rsi, %rax
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    ret
"#,
    dispatch = sym super::traps::dispatch,
    trap_lo = sym super::kctx::KCTX_TRAP_LO,
    trap_hi = sym super::kctx::KCTX_TRAP_HI,
    root = sym super::kctx::ROOT_PHYS,
    user_rsp0 = const offsets::USER_RSP0,
    scratch = const offsets::SYSCALL_SCRATCH,
    tss_rsp0 = const offsets::TSS_RSP0,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    vec_syscall = const super::traps::VEC_SYSCALL,
    options(att_syntax)
);

unsafe extern "C" {
    static trap_stubs: [u8; 256 * 16];
    /// The `syscall` entry point (IA32_LSTAR).
    pub fn syscall_entry();
    /// Enters ring 3 with the registers of `frame`; returns the value passed
    /// to [`leave_user`] when the program exits or is killed.
    pub fn enter_user(frame: *const TrapFrame, save_rsp: *mut u64, tss_rsp0: *mut u64) -> u64;
    /// Abandons the current trap and returns `result` from the
    /// [`enter_user`] call that saved `saved_rsp`.
    pub fn leave_user(saved_rsp: u64, result: u64) -> !;
}

/// The `syscall` entry's address (IA32_LSTAR).
pub fn lstar() -> u64 {
    syscall_entry as *const () as u64
}

/// kvm_pvm runs a ring-3 `syscall` on in ring 3 at IA32_LSTAR, whose fetch
/// page-faults because LSTAR is on a supervisor page (../shared/PLATFORM.md):
/// turns such a fault into the frame `syscall_entry` builds where `syscall`
/// enters ring 0. Anything that looks the same (a user jump to LSTAR) is
/// the same request; the flags from `r11` are masked to a user's.
pub fn syscall_from_fault(frame: &mut TrapFrame, cr2: u64) -> bool {
    let lstar = lstar();
    if frame.vector != super::traps::VEC_PAGE_FAULT || frame.rip != lstar || cr2 != lstar {
        return false;
    }
    frame.vector = super::traps::VEC_SYSCALL;
    frame.error_code = 0;
    frame.rip = frame.rcx;
    frame.rflags = (frame.r11 & super::kctx::USER_RFLAGS) | 0x202;
    frame.cs = u64::from(USER_CS);
    frame.ss = u64::from(USER_DS);
    true
}

/// Address of the entry stub of `vector`.
pub fn stub_address(vector: usize) -> u64 {
    let base = &raw const trap_stubs as u64;
    base + 16 * vector as u64
}
