//! Error values: Linux `errno` numbers and the MM core's domain errors.
//!
//! Mirrors `include/uapi/asm-generic/errno-base.h` / `errno.h` for the values,
//! and `mm/memory.c`'s `VM_FAULT_*` results for [`Fault`]. Domain enums convert
//! into [`Errno`] so that a syscall returns exactly what Linux returns.

/// A Linux errno value. Syscalls return `-(errno as i64)` on failure.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Operation not permitted (e.g. mapping below `mmap_min_addr`).
    EPERM = 1,
    /// No such file or directory.
    ENOENT = 2,
    /// No such process.
    ESRCH = 3,
    /// I/O error.
    EIO = 5,
    /// No such device or address (`SEEK_DATA` past the last data).
    ENXIO = 6,
    /// Bad file descriptor.
    EBADF = 9,
    /// No child processes (wait).
    ECHILD = 10,
    /// Try again.
    EAGAIN = 11,
    /// Out of memory, or address range not mapped.
    ENOMEM = 12,
    /// Permission denied (mprotect beyond `VM_MAY*`).
    EACCES = 13,
    /// Bad address (kernel access to user memory failed).
    EFAULT = 14,
    /// Device or resource busy (`F_SEAL_WRITE` on a writably mapped file).
    EBUSY = 16,
    /// Mapping exists (`MAP_FIXED_NOREPLACE`), or a file does.
    EEXIST = 17,
    /// No such device (a mapping type the file does not support).
    ENODEV = 19,
    /// Not a directory.
    ENOTDIR = 20,
    /// Inappropriate ioctl for device (an ioctl the file does not have).
    ENOTTY = 25,
    /// File too large.
    EFBIG = 27,
    /// No space left on device.
    ENOSPC = 28,
    /// Illegal seek.
    ESPIPE = 29,
    /// Invalid argument.
    EINVAL = 22,
    /// File name too long.
    ENAMETOOLONG = 36,
    /// Function not implemented.
    ENOSYS = 38,
    /// Operation not supported.
    EOPNOTSUPP = 95,
}

impl Errno {
    /// The value a syscall returns in `rax`: `-errno`.
    pub fn to_ret(self) -> i64 {
        -(self as i32 as i64)
    }
}

/// `si_code` of a SIGSEGV, as Linux reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegvCode {
    /// `SEGV_MAPERR`: no mapping at the address.
    MapErr = 1,
    /// `SEGV_ACCERR`: mapping exists, access not permitted.
    AccErr = 2,
}

/// Why a page fault could not be resolved (`VM_FAULT_*` in `mm/memory.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `VM_FAULT_SIGSEGV` / `bad_area`: deliver SIGSEGV.
    Segv(SegvCode),
    /// `VM_FAULT_SIGBUS` / `VM_FAULT_HWPOISON`: the page is gone (swap-in
    /// error, poisoned marker).
    Bus,
    /// `VM_FAULT_OOM`: no memory to resolve the fault.
    Oom,
    /// `VM_FAULT_RETRY`: try the access again.
    Retry,
    /// `handle_userfault` without `UFFD_FEATURE_SIGBUS`: a handler must
    /// resolve the fault; the faulting task waits for it (ring-3 faults
    /// only: a kernel access to user memory gets `EFAULT`).
    Userfault(crate::uffd_wait::FaultMsg),
}

impl From<Fault> for Errno {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Segv(_) | Fault::Bus | Fault::Userfault(_) => Errno::EFAULT,
            Fault::Oom => Errno::ENOMEM,
            Fault::Retry => Errno::EAGAIN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_match_linux() {
        assert_eq!(Errno::EEXIST as i32, 17);
        assert_eq!(Errno::ENOMEM as i32, 12);
        assert_eq!(Errno::EINVAL.to_ret(), -22);
        assert_eq!(Errno::from(Fault::Oom), Errno::ENOMEM);
    }
}
