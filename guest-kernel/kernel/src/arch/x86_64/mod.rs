//! x86-64 specifics: descriptor tables, traps, paging, the LAPIC and SMP.

pub mod cpu;
pub mod extable;
pub mod gdt;
pub mod hooks;
pub mod idt;
pub mod kctx;
pub mod lapic;
pub mod msr;
pub mod paging;
pub mod percpu;
pub mod pic;
pub mod platform;
pub mod port;
pub mod smp;
pub mod trampoline;
pub mod trap_entry;
pub mod traps;
