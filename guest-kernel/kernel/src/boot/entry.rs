//! PVH entry: the 32-bit code that the VMM (or QEMU) jumps to, the ELF note
//! that advertises it, and the boot page tables it switches to.
//!
//! PVH starts the boot CPU in 32-bit protected mode with paging off, `%ebx` =
//! physical address of `hvm_start_info` and no stack (ESP = 0). This code
//! turns on PAE + long mode with page tables that are entirely static data
//! (nothing is computed at run time), jumps to the higher half, sets the boot
//! stack and calls [`crate::kernel_main`].
//!
//! `.bss` is not zeroed here: the ELF loader provides zeroed memory beyond
//! each segment's file size (docs/GUEST_ABI.md). On kvm_pvm the first write
//! to a fresh guest page costs about a millisecond, so zeroing the ~100 KiB
//! of `.bss` would alone take longer than the whole boot budget.
//!
//! Boot page tables (all in `.boot.data`, i.e. at their physical address):
//! * `pd0`: 512 × 2 MiB pages covering physical `[0, 1 GiB)`;
//! * PML4[0] → `pdpt_ident` → `pd0`: identity map, needed for the switch and
//!   by the SMP trampoline; never copied into user address spaces;
//! * PML4[273] → `pdpt_direct` → `pd0`: the direct map at
//!   [`crate::arch::x86_64::paging::DIRECT_MAP`] (extended past 1 GiB later);
//! * PML4[511] → `pdpt_kernel`[510] → `pd0`: the kernel image at
//!   `0xffffffff80000000 + physical`.
//!
//! Entries below the PML4 have the user bit, the PML4 entries do not: user
//! processes (which copy the kernel PML4 entries) get no access, and the
//! ring-3 kernel context's PML4 grants it (`arch::x86_64::kctx`).
//!
//! Only 2 MiB pages and no loops: this keeps boot to a handful of page-table
//! pages, which matters on KVM backends that shadow guest page tables.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .note.Xen, "a"
    .balign 4
    .long 4                      /* namesz: "Xen\0" */
    .long 4                      /* descsz */
    .long 18                     /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4

    .section .boot.text, "ax"
    .code32
    .globl pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi               /* hvm_start_info (physical) */
    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax               /* CR4.PAE */
    mov %eax, %cr4
    mov $0xC0000080, %ecx        /* IA32_EFER */
    rdmsr
    or $0x100, %eax              /* EFER.LME */
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax         /* CR0.PG | CR0.WP | CR0.PE */
    mov %eax, %cr0
    lgdt boot_gdtr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $higher_half_start, %rax
    jmp *%rax

    .section .boot.data, "aw"
    .balign 4096
boot_pml4:
    .quad pdpt_ident + 3
    .fill 272, 8, 0
    .quad pdpt_direct + 3        /* index 273: 0xffff888000000000 */
    .fill 237, 8, 0
    .quad pdpt_kernel + 3        /* index 511 */
pdpt_ident:
    .quad pd0 + 7                /* + user: granted only by a PML4 entry */
    .fill 511, 8, 0
    .globl pdpt_direct
pdpt_direct:
    .quad pd0 + 7
    .fill 511, 8, 0
pdpt_kernel:
    .fill 510, 8, 0
    .quad pd0 + 7                /* index 510: 0xffffffff80000000 */
    .quad 0
pd0:
    .set pde, 0x87               /* present | writable | user | 2 MiB */
    .rept 512
    .quad pde
    .set pde, pde + 0x200000
    .endr
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff     /* 0x08: 64-bit kernel code */
    .quad 0x00cf92000000ffff     /* 0x10: kernel data */
boot_gdtr:
    .word 23
    .long boot_gdt

    .text
higher_half_start:
    lea boot_stack_top(%rip), %rsp
    mov %esi, %edi               /* zero-extends: start_info physical */
    call kernel_main
    ud2

    .section .bss.boot_stack, "aw", @nobits
    .balign 16
boot_stack:
    .skip 65536
boot_stack_top:
"#,
    options(att_syntax)
);
