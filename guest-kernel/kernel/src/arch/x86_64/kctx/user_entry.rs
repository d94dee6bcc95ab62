//! The direct way into the context from a user process's exception
//! (ring-3 mode): the #PF and #BP gates of their own, ring 0's switch in
//! (`kctx_from_user`) and out (`kctx_to_user`), and the context's side
//! (`kctx_user_entry`), which builds the trap frame natively and calls the
//! handler the process layer registered (docs/KERNEL.md, "Entering from a
//! user exception").

use super::ROOT_PHYS;
use crate::arch::x86_64::gdt::{USER_CS, USER_DS};
use crate::arch::x86_64::percpu::offsets;
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::arch::x86_64::{idt, traps};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// RFLAGS bits a user process may hold (CF, PF, AF, ZF, SF, TF, DF, OF, AC,
/// ID); IF is always set on the way back, IOPL, NT and the rest never.
pub const USER_RFLAGS: u64 = 0x24_0dd5;

/// What handles a trap of a user process in the context: set by the layer
/// above (`register_user_trap`), called by `kctx_user_entry` with the
/// frame and CR2.
pub type UserTrapHandler = extern "C" fn(&mut TrapFrame, u64);

/// The registered [`UserTrapHandler`] (read by `kctx_user_entry`).
static USER_TRAP_HANDLER: AtomicU64 = AtomicU64::new(0);

/// Registers the handler of user traps in ring-3 mode. Must happen before
/// the first user process runs.
pub fn register_user_trap(handler: UserTrapHandler) {
    USER_TRAP_HANDLER.store(handler as usize as u64, Ordering::Release);
}

global_asm!(
    r#"
    .text
    /* Ring-3 mode's #PF gate, the hot one (user faults, and syscalls on
       kvm_pvm): a user process's page fault has a user-half RIP, or RIP =
       LSTAR for a syscall; anything else (ring 0, the context, a user jump
       into other kernel text) takes the common path. */
    .globl kctx_pf_entry
kctx_pf_entry:
    pushq $14
    testb $3, 24(%rsp)
    jz trap_common
    cmpq $0, 16(%rsp)
    jge 1f
    cmpq $syscall_entry, 16(%rsp)
    jne trap_common
1:
    swapgs
    /* Falls through. */

    /* Ring 0, GS swapped: an exception of a user process in ring-3 mode.
       The user's registers stay live for the context except rax, which
       goes below the frame with CR2; then CR3 and TSS.rsp0 switch to the
       context's, which is entered at kctx_user_entry on this CPU's context
       stack through the CPU's prebuilt iretq frame. */
    .globl kctx_from_user
kctx_from_user:
    push %rax
    mov %cr2, %rax
    push %rax
    mov %gs:{trap_rsp0}, %rax
    mov %rax, %gs:{tss_rsp0}
    mov {root}(%rip), %rax
    mov %rax, %cr3
    mov %gs:{entry_frame_at}, %rsp
    iretq

    /* Ring-3 mode's #BP gate: the context's back-to-user request is known
       by its return address (only the context executes that int3); every
       other int3 takes the common path. */
    .globl kctx_bp_entry
kctx_bp_entry:
    cmpq $kctx_user_return, (%rsp)
    je kctx_to_user
    pushq $0
    pushq $3
    jmp trap_common

    /* Ring 3: the trap frame is built from the live registers and the words
       ring 0 left below TSS.rsp0 (hardware frame, vector, rax, CR2), the
       registered handler runs, and the frame goes back where ring 0 takes it
       from (rflags masked to what a user may hold, user selectors). */
    .globl kctx_user_entry
kctx_user_entry:
    mov %gs:{user_rsp0}, %rax
    pushq -8(%rax)
    pushq -16(%rax)
    pushq -24(%rax)
    pushq -32(%rax)
    pushq -40(%rax)
    pushq -48(%rax)
    pushq -56(%rax)
    pushq -64(%rax)
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
    mov -72(%rax), %rsi
    mov %rsp, %rdi
    call *{handler}(%rip)
    mov %gs:{user_rsp0}, %rax
    mov 112(%rsp), %rcx
    mov %rcx, -64(%rax)
    mov 136(%rsp), %rcx
    mov %rcx, -40(%rax)
    movq ${user_cs}, -32(%rax)
    mov 152(%rsp), %rcx
    and ${user_flags}, %rcx
    or $0x202, %rcx
    mov %rcx, -24(%rax)
    mov 160(%rsp), %rcx
    mov %rcx, -16(%rax)
    movq ${user_ds}, -8(%rax)
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
    /* The request back to the user process: trap_common knows it by the
       return address of this int3. */
    int3
    .globl kctx_user_return
kctx_user_return:
    ud2

    /* Ring 0, from trap_common: back to the user process. */
    .globl kctx_to_user
kctx_to_user:
    mov %gs:{cr3}, %rax
    mov %rax, %cr3
    mov %gs:{user_rsp0}, %rax
    mov %rax, %gs:{tss_rsp0}
    lea -64(%rax), %rsp
    pop %rax
    add $16, %rsp
    swapgs
    iretq
"#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    user_flags = const USER_RFLAGS,
    trap_rsp0 = const offsets::KCTX_TRAP_RSP0,
    entry_frame_at = const offsets::KCTX_ENTRY_FRAME_AT,
    user_rsp0 = const offsets::USER_RSP0,
    tss_rsp0 = const offsets::TSS_RSP0,
    cr3 = const offsets::KCTX_CR3,
    root = sym ROOT_PHYS,
    handler = sym USER_TRAP_HANDLER,
    options(att_syntax)
);

unsafe extern "C" {
    fn kctx_pf_entry();
    fn kctx_bp_entry();
    fn kctx_user_entry();
}

/// Points the #PF and #BP gates at this path's entries (boot CPU, before
/// the APs start).
pub(super) fn install_gates() {
    idt::set_handler(
        traps::VEC_PAGE_FAULT as usize,
        kctx_pf_entry as *const () as u64,
        0,
    );
    idt::set_handler(
        traps::VEC_BREAKPOINT as usize,
        kctx_bp_entry as *const () as u64,
        3,
    );
}

/// The `iretq` frame (RIP, CS, RFLAGS, RSP, SS) into `kctx_user_entry` on
/// the context stack whose top is `stack_top`, interrupts enabled.
pub(super) fn entry_frame(stack_top: u64) -> [u64; 5] {
    [
        kctx_user_entry as *const () as u64,
        u64::from(USER_CS),
        0x202,
        stack_top,
        u64::from(USER_DS),
    ]
}
