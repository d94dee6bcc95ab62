//! The SMP trampoline: 16-bit real-mode code that an application processor
//! runs after INIT/SIPI, taking it through 32-bit protected mode into long
//! mode on the kernel page table, onto its own stack and into
//! `smp::ap_main`.
//!
//! The code is assembled into `.rodata` and copied to physical
//! [`TRAMPOLINE_PHYS`] at run time (a SIPI vector names a 4 KiB page below
//! 1 MiB). The boot page table identity-maps low memory, so the code keeps
//! running at the same address when paging comes on. Each AP finds its stack
//! by its APIC ID (CPUID leaf 1), so all APs can start at once.

use super::paging::{PAGE_SIZE, phys_to_virt};
use core::arch::global_asm;

/// Physical address the trampoline runs at (SIPI vector 0x08).
pub const TRAMPOLINE_PHYS: u64 = 0x8000;

global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .globl tramp_start
tramp_start:
    .code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (tramp_gdtr - tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $({base} + tramp32 - tramp_start)

    .code32
tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov ({base} + tramp_cr3 - tramp_start), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax
    mov %eax, %cr0
    ljmp $0x18, $({base} + tramp64 - tramp_start)

    .code64
tramp64:
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov ({base} + tramp_stacks - tramp_start), %rax
    mov (%rax,%rbx,8), %rsp
    mov %rbx, %rdi
    mov ({base} + tramp_entry - tramp_start), %rax
    call *%rax
    ud2

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff     /* 0x08: 32-bit code */
    .quad 0x00cf92000000ffff     /* 0x10: data */
    .quad 0x00af9a000000ffff     /* 0x18: 64-bit code */
tramp_gdtr:
    .word 31
    .long {base} + tramp_gdt - tramp_start
    .balign 8
    .globl tramp_cr3
tramp_cr3:
    .quad 0
    .globl tramp_entry
tramp_entry:
    .quad 0
    .globl tramp_stacks
tramp_stacks:
    .quad 0
    .globl tramp_end
tramp_end:
    .text
"#,
    base = const TRAMPOLINE_PHYS,
    options(att_syntax)
);

unsafe extern "C" {
    static tramp_start: u8;
    static tramp_cr3: u8;
    static tramp_entry: u8;
    static tramp_stacks: u8;
    static tramp_end: u8;
}

/// Copies the trampoline to [`TRAMPOLINE_PHYS`] and fills in its parameters:
/// the page table (`cr3`, must be below 4 GiB), the 64-bit entry point
/// (`entry(apic_id)`) and the table of stack tops indexed by APIC ID.
///
/// # Safety
/// No AP may be running the trampoline (the copy overwrites it), and the
/// page at `TRAMPOLINE_PHYS` must be reserved for it.
pub unsafe fn install(cr3: u64, entry: extern "C" fn(u64) -> !, stacks: *const u64) {
    let (start, cr3_at, entry_at, stacks_at, end) = (
        &raw const tramp_start as u64,
        &raw const tramp_cr3 as u64,
        &raw const tramp_entry as u64,
        &raw const tramp_stacks as u64,
        &raw const tramp_end as u64,
    );
    let len = end - start;
    assert!(len <= PAGE_SIZE, "SMP trampoline larger than a page");
    let dest = phys_to_virt(TRAMPOLINE_PHYS);
    // SAFETY: the caller reserves the trampoline page; the source is the
    // blob in .rodata; parameter slots are 8-byte aligned in the blob.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, dest as *mut u8, len as usize);
        ((dest + cr3_at - start) as *mut u64).write(cr3);
        ((dest + entry_at - start) as *mut u64).write(entry as usize as u64);
        ((dest + stacks_at - start) as *mut u64).write(stacks as u64);
    }
}
