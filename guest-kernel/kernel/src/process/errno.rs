//! Error numbers returned by user/kernel calls (negated in `rax`), with
//! Linux's values.

/// A user/kernel call error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Errno {
    /// Bad file descriptor.
    Ebadf = 9,
    /// Bad address.
    Efault = 14,
    /// Invalid argument.
    Einval = 22,
    /// No such call.
    Enosys = 38,
}

impl Errno {
    /// The value returned in `rax`: `-errno`.
    pub fn to_return(self) -> u64 {
        (-(self as i64)) as u64
    }
}
