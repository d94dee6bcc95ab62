//! The checked requests the context makes to ring 0 (`int3`, the request
//! in `rax`, arguments in `rdi` and `rsi`, the result in `rax`;
//! docs/KERNEL.md, "The privileged interface"), and ring 0's side of them.

use super::{KCTX_TRAP_HI, KCTX_TRAP_LO};
use crate::arch::x86_64::trap_entry::TrapFrame;
use crate::arch::x86_64::{cpu, hooks, msr, paging, percpu, port, traps};
use core::arch::asm;
use core::sync::atomic::Ordering;

/// The request numbers (`rax` of the `int3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(super) enum Request {
    /// The closure is done: `rdi` is the call's result word.
    Return = 0,
    /// `outb(rdi, rsi)`.
    Out8 = 1,
    /// `outl(rdi, rsi)`.
    Out32 = 2,
    /// `rdmsr(rdi)`.
    ReadMsr = 3,
    /// `wrmsr(rdi, rsi)`.
    WriteMsr = 4,
    /// `invlpg(rdi)`.
    Invlpg = 5,
    /// Halts until the next interrupt.
    Halt = 6,
    /// Halts this CPU for good (after the exit port was written).
    Stop = 7,
    /// Leaves a context entered from a user trap (no `call` to return to)
    /// and runs the `fn() -> !` in `rdi` in ring 0.
    Escape = 8,
    /// `rep outsb` of the `rsi >> 32` bytes (at most [`OUT_BYTES_MAX`]) at
    /// kernel address `rdi` to port `rsi & 0xffff`.
    OutBytes = 9,
}

/// Most bytes of one `OutBytes` request (a page).
const OUT_BYTES_MAX: usize = 4096;

/// Lowest kernel-half address (an `OutBytes` buffer must be kernel memory).
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// Result of a refused request.
const REFUSED: u64 = u64::MAX;

/// Ports the context may write (registered by the layers above: the
/// console, the exit device, the record doorbell; docs/GUEST_ABI.md).
fn port_allowed(port: u16) -> bool {
    hooks::get()
        .context_ports
        .iter()
        .any(|ports| ports.contains(&port))
}

/// MSRs the context may read or write: the x2APIC (IPIs), the GS base
/// (read: the panic path's CPU number) and the FS base (a user address:
/// a user's TLS pointer).
fn msr_allowed(index: u32, write: Option<u64>) -> bool {
    (0x800..=0x8ff).contains(&index)
        || (write.is_none() && index == msr::IA32_GS_BASE)
        || (index == msr::IA32_FS_BASE && write.is_none_or(|v| v < paging::USER_END))
}

pub(super) fn request(req: Request, a: u64, b: u64) -> u64 {
    let result: u64;
    // SAFETY: `int3` from the context reaches `handle_trap` in ring 0,
    // which performs the checked request and returns here with every
    // register restored but `rax`.
    unsafe {
        asm!("int3", inlateout("rax") req as u64 => result, in("rdi") a, in("rsi") b, options(nostack))
    };
    result
}

/// In the context: `out` to a checked port.
pub fn out8(port: u16, value: u8) {
    request(Request::Out8, u64::from(port), u64::from(value));
}

/// In the context: `rep outsb` of `bytes` (kernel memory) to a checked
/// port, a page per request.
pub fn out_bytes(port: u16, bytes: &[u8]) {
    for chunk in bytes.chunks(OUT_BYTES_MAX) {
        let packed = u64::from(port) | ((chunk.len() as u64) << 32);
        request(Request::OutBytes, chunk.as_ptr() as u64, packed);
    }
}

/// In the context: 32-bit `out` to a checked port.
pub fn out32(port: u16, value: u32) {
    request(Request::Out32, u64::from(port), u64::from(value));
}

/// In the context: `rdmsr` of a checked MSR (refused: all ones).
pub fn read_msr(index: u32) -> u64 {
    request(Request::ReadMsr, u64::from(index), 0)
}

/// In the context: `wrmsr` to a checked MSR.
pub fn write_msr(index: u32, value: u64) {
    request(Request::WriteMsr, u64::from(index), value);
}

/// In the context: `invlpg`.
pub fn invlpg(virt: u64) {
    request(Request::Invlpg, virt, 0);
}

/// In the context: halts until the next interrupt.
pub fn halt() {
    request(Request::Halt, 0, 0);
}

/// In the context: stops this CPU for good.
pub fn stop() -> ! {
    loop {
        request(Request::Stop, 0, 0);
    }
}

/// Ring 0: whether `frame` is that of a trap from the context (only those
/// land on the context trap stacks; a user process never runs with
/// `TSS.rsp0` there).
pub fn from_context(frame: &TrapFrame) -> bool {
    let at = frame as *const TrapFrame as u64;
    frame.came_from_user()
        && (KCTX_TRAP_LO.load(Ordering::Relaxed)..KCTX_TRAP_HI.load(Ordering::Relaxed))
            .contains(&at)
}

/// Ring 0: performs a request (`int3`) from the context; returns false for
/// anything else (a fault in kernel code, for the caller's fix-up table or
/// fatal report).
pub fn handle_trap(frame: &mut TrapFrame) -> bool {
    if !from_context(frame) {
        return false;
    }
    if frame.vector != traps::VEC_BREAKPOINT {
        return false;
    }
    let (a, b) = (frame.rdi, frame.rsi);
    frame.rax = match frame.rax {
        r if r == Request::Out8 as u64 && port_allowed(a as u16) && a <= 0xffff => {
            port::outb(a as u16, b as u8);
            0
        }
        r if r == Request::Out32 as u64 && port_allowed(a as u16) && a <= 0xffff => {
            port::outl(a as u16, b as u32);
            0
        }
        r if r == Request::ReadMsr as u64
            && a <= u64::from(u32::MAX)
            && msr_allowed(a as u32, None) =>
        {
            // SAFETY: an allowed MSR, which exists on every CPU we run on.
            unsafe { msr::rdmsr(a as u32) }
        }
        r if r == Request::WriteMsr as u64
            && a <= u64::from(u32::MAX)
            && msr_allowed(a as u32, Some(b)) =>
        {
            // SAFETY: x2APIC registers (a bad value there affects interrupt
            // delivery, never memory) or a user-half FS base.
            unsafe { msr::wrmsr(a as u32, b) };
            0
        }
        r if r == Request::OutBytes as u64
            && port_allowed(b as u16)
            && (b >> 32) as usize <= OUT_BYTES_MAX
            && a >= KERNEL_HALF =>
        {
            // SAFETY: the context (kernel code) passed a kernel buffer of
            // that length; this CPU runs on the context's CR3, which maps
            // it, and the request is handled before the context goes on.
            let bytes = unsafe { core::slice::from_raw_parts(a as *const u8, (b >> 32) as usize) };
            port::outsb(b as u16, bytes);
            0
        }
        r if r == Request::Invlpg as u64 => {
            paging::invlpg(a);
            0
        }
        r if r == Request::Halt as u64 => {
            // `trap_return` masks interrupts again before the `iretq`.
            cpu::enable_and_halt();
            0
        }
        r if r == Request::Stop as u64 => cpu::halt_forever(),
        r if r == Request::Escape as u64 => {
            let cpu = percpu::current();
            // SAFETY: the context asked to leave for good and run `a`, a
            // `fn() -> !` of the kernel's (only kernel code runs there);
            // the user process's TSS.rsp0 and the CR3 to return to are this
            // CPU's own slots.
            unsafe {
                cpu.tss_rsp0().write_unaligned(*cpu.user_rsp0.get());
                paging::write_cr3(*cpu.kctx_cr3.get());
                let k = core::mem::transmute::<u64, fn() -> !>(a);
                k()
            }
        }
        _ => REFUSED,
    };
    true
}
