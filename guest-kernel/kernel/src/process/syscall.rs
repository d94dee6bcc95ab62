//! User/kernel calls (docs/GUEST_ABI.md, "User/kernel calls"): `int3` with
//! the call number in `rax`, arguments in `rdi, rsi, rdx, r10, r8, r9`, the
//! result (or `-errno`) in `rax`. Numbers follow Linux x86-64.

use super::Process;
use super::errno::Errno;
use crate::arch::x86_64::paging::phys_to_virt;
use crate::arch::x86_64::trap_entry::TrapFrame;

/// `write(fd, buf, len)`.
pub const SYS_WRITE: u64 = 1;
/// `getpid()`.
pub const SYS_GETPID: u64 = 39;
/// `exit(status)`.
pub const SYS_EXIT: u64 = 60;

/// Longest single `write`.
const MAX_WRITE: u64 = 1 << 20;

/// Performs the call in `frame`. Returns `Some(status)` when the program
/// exits; otherwise the result is in `frame.rax`.
pub fn dispatch(process: &mut Process, frame: &mut TrapFrame) -> Option<i32> {
    let result = match frame.rax {
        SYS_WRITE => write(process, frame.rdi, frame.rsi, frame.rdx),
        SYS_GETPID => Ok(u64::from(process.pid)),
        SYS_EXIT => return Some(frame.rdi as i32),
        _ => Err(Errno::Enosys),
    };
    frame.rax = result.unwrap_or_else(Errno::to_return);
    None
}

/// Writes user memory `[buf, buf+len)` to the console (fds 1 and 2).
fn write(process: &mut Process, fd: u64, buf: u64, len: u64) -> Result<u64, Errno> {
    if fd != 1 && fd != 2 {
        return Err(Errno::Ebadf);
    }
    if len > MAX_WRITE {
        return Err(Errno::Einval);
    }
    let end = buf.checked_add(len).ok_or(Errno::Efault)?;
    // Check the whole range first so a bad buffer writes nothing.
    let mut page = buf & !0xfff;
    while page < end {
        process.space.translate(page, false).ok_or(Errno::Efault)?;
        page += 0x1000;
    }
    let start = process.output.len();
    let mut addr = buf;
    while addr < end {
        let chunk = (0x1000 - (addr & 0xfff)).min(end - addr);
        let phys = process.space.translate(addr, false).ok_or(Errno::Efault)?;
        // SAFETY: `phys` backs a user-readable page of this process (checked
        // above), direct-mapped, and `chunk` stays within that page.
        let bytes =
            unsafe { core::slice::from_raw_parts(phys_to_virt(phys) as *const u8, chunk as usize) };
        process.output.extend_from_slice(bytes);
        addr += chunk;
    }
    crate::console::print_bytes(&process.output[start..]);
    Ok(len)
}
