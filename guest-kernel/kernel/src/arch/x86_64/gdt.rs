//! Per-CPU GDT and TSS.
//!
//! Selectors: 0x08 kernel code, 0x10 kernel data, 0x1b user data, 0x23 user
//! code, 0x28 the TSS. The TSS gives the ring-0 stack for traps from ring 3
//! (`rsp0`, set while a user program runs) and IST stacks for the faults that
//! must work even on a broken kernel stack (#DF, NMI, #MC).

use core::arch::asm;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// User data selector (RPL 3).
pub const USER_DS: u16 = 0x18 | 3;
/// User code selector (RPL 3).
pub const USER_CS: u16 = 0x20 | 3;
/// TSS selector.
const TSS_SEL: u16 = 0x28;

/// IST slot (1-based) for double faults.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot for NMIs.
pub const IST_NMI: u8 = 2;
/// IST slot for machine checks.
pub const IST_MACHINE_CHECK: u8 = 3;

/// The 64-bit task-state segment.
#[repr(C, packed(4))]
pub struct Tss {
    _reserved0: u32,
    /// Stack pointers for CPL 0..2 (only `rsp[0]` is used).
    pub rsp: [u64; 3],
    _reserved1: u64,
    /// Interrupt stack table, IST1..IST7.
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    iomap_base: u16,
}

impl Tss {
    /// An empty TSS without an I/O permission map.
    pub const fn new() -> Self {
        Tss {
            _reserved0: 0,
            rsp: [0; 3],
            _reserved1: 0,
            ist: [0; 7],
            _reserved2: 0,
            _reserved3: 0,
            iomap_base: core::mem::size_of::<Tss>() as u16,
        }
    }

    /// Sets IST slot `slot` (1-based) to the stack ending at `top`.
    pub fn set_ist(&mut self, slot: u8, top: u64) {
        let mut ist = self.ist;
        ist[usize::from(slot) - 1] = top;
        self.ist = ist;
    }
}

/// The descriptor table: null, kernel code, kernel data, user data, user
/// code, TSS (two slots).
#[repr(C, align(16))]
pub struct Gdt([u64; 7]);

impl Gdt {
    /// The fixed descriptors; the TSS slots are filled by [`load`].
    pub const fn new() -> Self {
        Gdt([
            0,
            0x00af_9a00_0000_ffff,
            0x00cf_9200_0000_ffff,
            0x00cf_f200_0000_ffff,
            0x00af_fa00_0000_ffff,
            0,
            0,
        ])
    }
}

/// Fills the TSS descriptor of `gdt` with `tss`, loads the GDT, reloads the
/// segment registers and the task register.
///
/// # Safety
/// `gdt` and `tss` must live forever (they are per-CPU statics) and must not
/// be loaded on another CPU.
pub unsafe fn load(gdt: *mut Gdt, tss: *const Tss) {
    let base = tss as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    let low = limit | ((base & 0xff_ffff) << 16) | (0x89 << 40) | (((base >> 24) & 0xff) << 56);
    // SAFETY: the caller gives us exclusive use of this CPU's GDT.
    unsafe {
        (*gdt).0[5] = low;
        (*gdt).0[6] = base >> 32;
    }
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: gdt as u64,
    };
    // SAFETY: the GDT has valid flat descriptors at the selectors used; the
    // far return reloads CS; FS/GS are nulled before per-CPU setup writes the
    // GS base.
    unsafe {
        asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ss, {ds:x}",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov fs, {zero:x}",
            "mov gs, {zero:x}",
            "ltr {tss:x}",
            ptr = in(reg) &ptr,
            cs = in(reg) u64::from(KERNEL_CS),
            tmp = out(reg) _,
            ds = in(reg) u64::from(KERNEL_DS),
            zero = in(reg) 0u64,
            tss = in(reg) u64::from(TSS_SEL),
        )
    };
}
