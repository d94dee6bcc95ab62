//! Expected kernel faults (Linux's exception tables, `arch/x86/mm/extable.c`,
//! in miniature): a few probe functions run one instruction that may fault;
//! when it does, the trap handler resumes at that probe's fixup, which makes
//! the call return "faulted" instead of ending the VM.
//!
//! * `probe_read_u64`: a load from a kernel address that may be unmapped (#PF).
//! * `probe_ud2`: an invalid opcode (#UD), to show a kernel exception is
//!   handled and execution resumes. (`int3` in ring 0 cannot be used for
//!   that: kvm_pvm fails to emulate it and stops the VM with an internal
//!   error, see docs/GUEST_ABI.md.)

use super::trap_entry::TrapFrame;
use super::traps::{VEC_GENERAL_PROTECTION, VEC_INVALID_OPCODE, VEC_PAGE_FAULT};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};

global_asm!(
    r#"
    .text
    .globl probe_read_u64_raw
probe_read_u64_raw:
    xor %edx, %edx
probe_read_u64_insn:
    mov (%rdi), %rax
    ret
probe_read_u64_fixup:
    xor %eax, %eax
    mov $1, %edx
    ret

    .globl probe_ud2_raw
probe_ud2_raw:
    xor %eax, %eax
probe_ud2_insn:
    ud2
    ret
probe_ud2_fixup:
    mov $1, %eax
    ret

    .globl probe_rdmsr_raw
probe_rdmsr_raw:
    mov %edi, %ecx
probe_rdmsr_insn:
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    xor %edx, %edx
    ret
probe_rdmsr_fixup:
    xor %eax, %eax
    mov $1, %edx
    ret

    .section .rodata.extable, "a"
    .balign 8
    .globl extable_start
extable_start:
    .quad {pf}, probe_read_u64_insn, probe_read_u64_fixup
    .quad {ud}, probe_ud2_insn, probe_ud2_fixup
    .quad {gp}, probe_rdmsr_insn, probe_rdmsr_fixup
    .globl extable_end
extable_end:
    .text
"#,
    pf = const VEC_PAGE_FAULT,
    ud = const VEC_INVALID_OPCODE,
    gp = const VEC_GENERAL_PROTECTION,
    options(att_syntax)
);

/// One entry: a fault of `vector` at `insn` resumes at `fixup`.
#[repr(C)]
struct Entry {
    vector: u64,
    insn: u64,
    fixup: u64,
}

/// Value and fault flag, returned in `rax:rdx`.
#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

unsafe extern "C" {
    fn probe_read_u64_raw(addr: u64) -> ProbeResult;
    fn probe_ud2_raw() -> u64;
    fn probe_rdmsr_raw(msr: u32) -> ProbeResult;
    static extable_start: Entry;
    static extable_end: Entry;
}

/// CR2 of the last page fault fixed up (for tests).
static LAST_FIXED_CR2: AtomicU64 = AtomicU64::new(0);
/// Faults fixed up so far.
pub static FIXUPS: AtomicU64 = AtomicU64::new(0);

/// A probed read faulted at this address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeFault {
    /// The faulting address (CR2).
    pub addr: u64,
}

/// Reads the `u64` at kernel address `addr`, turning a page fault into `Err`.
pub fn probe_read_u64(addr: u64) -> Result<u64, ProbeFault> {
    // SAFETY: the read is done by the listed instruction, whose faults the
    // #PF handler turns into a return through the fixup; a successful read
    // of any mapped address is harmless.
    let result = unsafe { probe_read_u64_raw(addr) };
    if result.faulted != 0 {
        Err(ProbeFault {
            addr: LAST_FIXED_CR2.load(Ordering::Relaxed),
        })
    } else {
        Ok(result.value)
    }
}

/// Reads MSR `msr`, or `None` when it does not exist here (#GP).
pub fn probe_rdmsr(msr: u32) -> Option<u64> {
    // SAFETY: the listed `rdmsr` either reads (no memory effects) or takes
    // a #GP that resumes at its fixup.
    let result = unsafe { probe_rdmsr_raw(msr) };
    (result.faulted == 0).then_some(result.value)
}

/// Executes `ud2`; returns true when the #UD was taken and resumed.
pub fn probe_ud2() -> bool {
    // SAFETY: the #UD of the listed `ud2` resumes at its fixup.
    unsafe { probe_ud2_raw() == 1 }
}

/// If `frame` faulted with its vector at a listed instruction, redirects it
/// to the fixup and returns true.
pub fn fixup(frame: &mut TrapFrame, cr2: u64) -> bool {
    let start = &raw const extable_start;
    let count = (&raw const extable_end as usize - start as usize) / core::mem::size_of::<Entry>();
    // SAFETY: the table between the two labels is an array of `Entry`.
    let entries = unsafe { core::slice::from_raw_parts(start, count) };
    let Some(entry) = entries
        .iter()
        .find(|e| e.vector == frame.vector && e.insn == frame.rip)
    else {
        return false;
    };
    if frame.vector == VEC_PAGE_FAULT {
        LAST_FIXED_CR2.store(cr2, Ordering::Relaxed);
    }
    FIXUPS.fetch_add(1, Ordering::Relaxed);
    frame.rip = entry.fixup;
    true
}
