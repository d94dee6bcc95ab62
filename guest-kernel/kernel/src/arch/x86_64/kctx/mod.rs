//! The ring-3 kernel context: kernel code run natively in ring 3, in an
//! address space of the kernel's own.
//!
//! kvm_pvm emulates guest ring 0 at about one instruction per microsecond
//! and runs ring 3 natively, ~5,000 times faster (`../shared/PLATFORM.md`).
//! So in [`KernelMode::Ring3`] the kernel's bulk work (the MM core: faults,
//! fork, munmap, page zeroing and copying) runs here, and ring 0 is a thin
//! privileged layer: it switches in and out and performs the few requests
//! below. The design is Xen x86-64 PV's (its kernel runs in ring 3 with page
//! tables of its own) narrowed to what costs: a user process's exceptions
//! (page faults, and so `syscall` on kvm_pvm) enter the context straight
//! from the trap entry (`kctx_from_user`, `kctx_user_entry`, `kctx_to_user`)
//! and run the handler the process layer registered, and [`call`] runs one
//! closure in the context for ring-0 code and returns its result.
//!
//! The address space: every kernel page-table entry below the PML4 carries
//! the user bit, while the PML4 entries of the kernel half are supervisor.
//! x86 grants user access only when every level allows it, so user
//! processes (whose PML4s copy the kernel's) cannot touch kernel memory,
//! while the context's own PML4 ([`init`]) sets the user bit on the same
//! three kernel-half entries and so reaches the direct map, the kernel image
//! and the `VMAP` area, at the addresses ring 0 uses: the same code and data
//! work in both rings. No user page is mapped in it, and no kernel mapping
//! is global, so nothing of it survives the switch back to a user CR3.
//!
//! Entry and exit of a [`call`]: ring 0 saves its callee-saved registers and flags,
//! points `TSS.rsp0` at this CPU's context trap stack, loads the context's
//! CR3 and `iretq`s to [`kctx_trampoline`] in ring 3 on this CPU's context
//! stack, which calls the closure and then makes the `Return` request.
//! Interrupts stay enabled in the context (ring 3 cannot mask them) and are
//! handled by ring 0 on the trap stack; the trap entry code tells a trap from
//! the context by that stack (a user process never runs with `TSS.rsp0` on
//! it), and leaves GS alone for it, so `gs:` per-CPU data works in the
//! context too.
//!
//! The parts: [`user_entry`] (the direct way in from a user exception),
//! [`requests`] (what the context asks of ring 0), and here the address
//! space, the stacks, [`call`] and [`escape`].
//!
//! Requests (`int3` with the request in `rax`, arguments in `rdi`, `rsi`,
//! the result in `rax`; docs/KERNEL.md): return, port output to the
//! console, exit and record devices, x2APIC MSRs (IPIs), `invlpg`, halt
//! until an interrupt, and stop. Ring 0 checks each one; anything else is
//! refused. CR3 is not a request: the context never runs on a user CR3, so
//! [`write_cr3`](super::paging::write_cr3) there sets the CR3 that ring 0
//! loads when the call ends, which also flushes this CPU's user TLB.

mod requests;
mod user_entry;

pub use requests::{
    from_context, halt, handle_trap, invlpg, out_bytes, out8, out32, read_msr, stop, write_msr,
};
pub use user_entry::{USER_RFLAGS, register_user_trap};

use super::gdt::{USER_CS, USER_DS};
use super::paging::{self, DIRECT_MAP, KERNEL_VMA, PTE_ADDR_MASK, VMAP_BASE};
use super::percpu::{self, MAX_CPUS};
use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use requests::{Request, request};

/// Where the kernel's work runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelMode {
    /// Everything in ring 0 (hardware KVM, QEMU).
    Ring0,
    /// The MM core in the ring-3 kernel context (kvm_pvm).
    Ring3,
}

impl KernelMode {
    /// The word for the banner, the `ready` record and `kernel_mode=`.
    pub fn name(self) -> &'static str {
        match self {
            KernelMode::Ring0 => "ring0",
            KernelMode::Ring3 => "ring3",
        }
    }

    /// Parses a `kernel_mode=` value.
    pub fn parse(word: &str) -> Option<Self> {
        match word {
            "ring0" => Some(KernelMode::Ring0),
            "ring3" => Some(KernelMode::Ring3),
            _ => None,
        }
    }
}

/// Bytes of each CPU's context stack (the MM core's deepest paths use a
/// few KiB; kernel AP stacks are 32 KiB).
const STACK_BYTES: usize = 64 << 10;
/// Bytes of each CPU's trap stack for traps from the context.
const TRAP_STACK_BYTES: usize = 16 << 10;

#[repr(C, align(4096))]
struct Stacks<const N: usize>(UnsafeCell<[[u8; N]; MAX_CPUS]>);

// SAFETY: each CPU uses only its own stack, and only through the stack
// pointer (never as a Rust reference).
unsafe impl<const N: usize> Sync for Stacks<N> {}

/// Context stacks (`.bss`: zero-filled by the loader, free at boot).
static STACKS: Stacks<STACK_BYTES> = Stacks(UnsafeCell::new([[0; STACK_BYTES]; MAX_CPUS]));
/// Ring-0 stacks for traps taken in the context.
static TRAP_STACKS: Stacks<TRAP_STACK_BYTES> =
    Stacks(UnsafeCell::new([[0; TRAP_STACK_BYTES]; MAX_CPUS]));

/// Bounds of [`TRAP_STACKS`], read by `trap_common` (both 0 in ring-0
/// mode, so no trap is ever taken for one from the context).
pub static KCTX_TRAP_LO: AtomicU64 = AtomicU64::new(0);
pub static KCTX_TRAP_HI: AtomicU64 = AtomicU64::new(0);

/// The context's PML4 (`.bss`; its three entries are set in [`init`]).
#[repr(C, align(4096))]
struct Pml4(UnsafeCell<[u64; 512]>);

// SAFETY: written once by the boot CPU in `init`, read by the MMU only.
unsafe impl Sync for Pml4 {}

static ROOT: Pml4 = Pml4(UnsafeCell::new([0; 512]));
/// Physical address of [`ROOT`]; 0 until [`init`], i.e. in ring-0 mode.
pub(super) static ROOT_PHYS: AtomicU64 = AtomicU64::new(0);

/// Whether each CPU is in a [`call`] (rather than in a context entered
/// from a user trap, or not in the context at all). The ring-0 stack
/// pointer to resume at on `Return` is kept in the top word of the CPU's
/// trap stack, where `trap_common` finds it without touching anything else;
/// the CR3 to load when the context is left is `PerCpu::kctx_cr3`.
static IN_CALL: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

global_asm!(
    r#"
    .text
    /* kctx_enter(slot rdi, run rsi, stack_top rdx, save_rsp rcx, root r8) -> u64:
       0, or the `fn() -> !` to run in ring 0 that the context escaped to. */
    .globl kctx_enter
kctx_enter:
    pushfq
    push %rbp
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, (%rcx)
    mov %r8, %cr3
    pushq ${user_ds}
    push %rdx
    pushq $0x202
    pushq ${user_cs}
    lea kctx_trampoline(%rip), %rax
    push %rax
    iretq

    /* Ring 3: run(slot), then the Return request (no escape). */
    .globl kctx_trampoline
kctx_trampoline:
    call *%rsi
    xor %eax, %eax
    xor %edi, %edi
    int3
    ud2

    /* Returns from kctx_enter: `trap_common` jumps here for a Return
       request (every one of them) with the saved stack pointer in rsp and
       the result in rax. */
    .globl kctx_leave_tail
kctx_leave_tail:
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    pop %rbp
    popfq
    ret

"#,
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    options(att_syntax)
);

unsafe extern "C" {
    fn kctx_enter(slot: u64, run: u64, stack_top: u64, save_rsp: *mut u64, root: u64) -> u64;
}

/// Builds the context's address space, gives user page faults and int3 the
/// context's gates, and turns ring-3 mode on. Runs once on the boot CPU
/// after `kmap::init` (all kernel-half PML4 entries exist) and before the
/// APs start (they share the IDT).
pub fn init(kernel_pml4: u64) {
    // SAFETY: single-threaded boot; the kernel PML4 is not being edited.
    let kernel = unsafe { paging::table_mut(kernel_pml4) };
    // SAFETY: nobody else uses `ROOT` before this function publishes it.
    let root = unsafe { &mut *ROOT.0.get() };
    // Three entries, not a loop over 256: each ring-0 instruction counts.
    for base in [DIRECT_MAP, VMAP_BASE, KERNEL_VMA] {
        let i = paging::index(base, 4);
        root[i] = kernel[i] | paging::PTE_USER;
    }
    // User page faults and the context's int3s get gates of their own.
    user_entry::install_gates();
    let lo = TRAP_STACKS.0.get() as u64;
    KCTX_TRAP_LO.store(lo, Ordering::Relaxed);
    KCTX_TRAP_HI.store(lo + (TRAP_STACK_BYTES * MAX_CPUS) as u64, Ordering::Relaxed);
    // Last: publishing the root turns ring-3 mode on.
    ROOT_PHYS.store(
        paging::virt_to_phys(root.as_ptr() as u64) & PTE_ADDR_MASK,
        Ordering::Release,
    );
}

/// Sets up CPU `index`'s entry words (its context stack and trap stack);
/// part of the CPU's bring-up, in both modes.
pub fn init_cpu(index: usize) {
    let cpu = percpu::cpu(index);
    let stack = stack_top(&STACKS, index);
    // SAFETY: the CPU's own slots, written before it runs any user code.
    unsafe {
        *cpu.kctx_trap_rsp0.get() = stack_top(&TRAP_STACKS, index) - 16;
        let frame = cpu.kctx_entry_frame.get();
        *frame = user_entry::entry_frame(stack);
        *cpu.kctx_entry_frame_at.get() = frame as u64;
    }
}

/// An address in this CPU's context stack (for isolation tests).
pub fn stack_probe_address() -> u64 {
    stack_top(&STACKS, percpu::index()) - 64
}

/// Top (exclusive) of CPU `index`'s stack in `stacks`.
fn stack_top<const N: usize>(stacks: &Stacks<N>, index: usize) -> u64 {
    stacks.0.get() as u64 + ((index + 1) * N) as u64
}

/// The kernel address of the context's PML4 (for isolation tests).
pub fn root_address() -> u64 {
    ROOT.0.get() as u64
}

/// The mode this kernel runs in.
pub fn mode() -> KernelMode {
    if ROOT_PHYS.load(Ordering::Acquire) != 0 {
        KernelMode::Ring3
    } else {
        KernelMode::Ring0
    }
}

/// Whether the running code is the ring-3 kernel context (its CPL is 3:
/// no other ring-3 code runs kernel text).
#[inline]
pub fn in_context() -> bool {
    let cs: u64;
    // SAFETY: reading CS has no effect.
    unsafe { asm!("mov {:r}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 3
}

/// Runs `f` in the ring-3 kernel context in ring-3 mode (in place
/// otherwise, or when already there) and returns its result. `f` runs with
/// interrupts enabled and must not rely on masking them.
pub fn call<F: FnOnce() -> R, R>(f: F) -> R {
    let root = ROOT_PHYS.load(Ordering::Acquire);
    if root == 0 || in_context() {
        return f();
    }
    let mut slot = Slot {
        f: Some(f),
        result: None,
    };
    let index = percpu::index();
    let cpu = percpu::cpu(index);
    // SAFETY: this CPU's TSS, context stacks and per-CPU slots are its own;
    // the context's page table maps the kernel half (so the code, the
    // stacks and `slot` stay reachable in ring 3); `kctx_enter` returns
    // only through `kctx_leave_tail` from the `Return` request of this call,
    // with the callee-saved registers and flags it saved.
    unsafe {
        let rsp0 = cpu.tss_rsp0();
        let saved_rsp0 = rsp0.read_unaligned();
        let trap_rsp0 = *cpu.kctx_trap_rsp0.get();
        rsp0.write_unaligned(trap_rsp0);
        let saved_cr3 = *cpu.kctx_cr3.get();
        *cpu.kctx_cr3.get() = paging::read_cr3();
        IN_CALL[index].store(true, Ordering::Relaxed);
        let escape = kctx_enter(
            &raw mut slot as u64,
            run::<F, R> as *const () as u64,
            stack_top(&STACKS, index),
            (trap_rsp0 + 8) as *mut u64,
            root,
        );
        IN_CALL[index].store(false, Ordering::Relaxed);
        paging::write_cr3(*cpu.kctx_cr3.get());
        *cpu.kctx_cr3.get() = saved_cr3;
        rsp0.write_unaligned(saved_rsp0);
        if escape != 0 {
            // SAFETY: `escape` passed a `fn() -> !` (the only non-zero
            // Return value, see `escape`).
            let k = core::mem::transmute::<u64, fn() -> !>(escape);
            k()
        }
    }
    slot.result.expect("the context ran the call")
}

struct Slot<F, R> {
    f: Option<F>,
    result: Option<R>,
}

/// Ring 3: runs the closure of a [`call`].
extern "C" fn run<F: FnOnce() -> R, R>(slot: *mut Slot<F, R>) {
    // SAFETY: `call` passed its own live `Slot`, which it does not touch
    // until this returns.
    let slot = unsafe { &mut *slot };
    if let Some(f) = slot.f.take() {
        slot.result = Some(f());
    }
}

/// Leaves the context for good and runs `k` in ring 0 (on the stack of the
/// [`call`] that entered it, after the call's state is undone); in ring 0,
/// just runs `k`. For code that abandons the current trap, like the
/// scheduler's return to its loop.
pub fn escape(k: fn() -> !) -> ! {
    if in_context() {
        let req = if IN_CALL[percpu::index()].load(Ordering::Relaxed) {
            Request::Return
        } else {
            Request::Escape
        };
        request(req, k as *const () as u64, 0);
    }
    k()
}

/// In the context: the CR3 ring 0 loads when the call ends.
pub fn return_cr3() -> u64 {
    // SAFETY: this CPU's own slot, set before the context was entered.
    unsafe { *percpu::current().kctx_cr3.get() }
}

/// In the context: sets the CR3 ring 0 loads when the call ends.
pub fn set_return_cr3(pml4: u64) {
    // SAFETY: as in `return_cr3`.
    unsafe { *percpu::current().kctx_cr3.get() = pml4 }
}
