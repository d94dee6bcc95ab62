//! Windows' GetWriteWatch and ResetWriteWatch for a process, built on
//! userfaultfd's asynchronous write-protection and `PAGEMAP_SCAN`, the way
//! Wine builds them on Linux (and what `UFFD_FEATURE_WP_ASYNC` and
//! `PAGEMAP_SCAN` were added to Linux for): a `MEM_WRITE_WATCH` allocation
//! is anonymous memory registered for write-protection and protected at
//! once; the kernel unprotects a page on its first write without stopping
//! the writer, so a page that is no longer protected was written, and
//! `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` reports those pages and
//! protects them again in one walk. Nothing is missed: the kernel counts a
//! page written before the write lands, and a scan that protects again
//! only ever protects what it reported.
//!
//! The same code runs in a guest process (real system calls into the
//! guest kernel) and against Linux (the conformance oracle's process),
//! through [`Tracking`]. Semantics follow Wine's `NtGetWriteWatch` /
//! `NtResetWriteWatch`: the range rounds out to whole pages and must lie
//! in one write-watch allocation; a zero count or size, or an unknown
//! flag, is `STATUS_INVALID_PARAMETER`; at most `count` addresses come
//! back, in order, and with `WRITE_WATCH_FLAG_RESET` exactly the reported
//! pages start over.

use core::fmt;

use crate::script::{CallResult, PAGE, ScanArgs, State, UffdCall};

/// `WRITE_WATCH_FLAG_RESET`.
pub const WRITE_WATCH_FLAG_RESET: u64 = 1;
/// Write-watch allocations a process may hold here.
pub const MAX_VIEWS: usize = 8;
/// `PAGE_IS_WRITTEN`.
const WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC`, and the latter alone.
const SCAN_RESET: u64 = 3;
const SCAN_CHECK: u64 = 2;
/// Regions one scan may hand back.
pub const SCAN_REGIONS: usize = 64;

/// Why a call failed: GetWriteWatch then returns `~0` and the last error
/// is set from the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchError {
    /// `STATUS_INVALID_PARAMETER`.
    InvalidParameter,
    /// A system call failed with this result.
    Os(i64),
}

/// The `mmap` flags of an allocation: `MAP_PRIVATE | MAP_ANONYMOUS`, and
/// `MAP_FIXED_NOREPLACE` when it asks for an address.
pub fn alloc_flags(addr: u64) -> u64 {
    0x22 | if addr != 0 { 0x10_0000 } else { 0 }
}

/// What the emulation asks of the system.
pub trait Tracking {
    /// `mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE |
    /// MAP_ANONYMOUS [| MAP_FIXED_NOREPLACE if addr])`.
    fn mmap_anon(&mut self, addr: u64, len: u64) -> i64;
    /// `userfaultfd(UFFD_USER_MODE_ONLY)`.
    fn userfaultfd(&mut self) -> i64;
    /// A userfaultfd ioctl; its result.
    fn uffd(&mut self, fd: u64, call: UffdCall) -> i64;
    /// `PAGEMAP_SCAN` of `[start, start + len)` into `out`: the result
    /// (regions, or `-errno`) and `walk_end`.
    fn scan(&mut self, start: u64, len: u64, args: ScanArgs, out: &mut [[u64; 3]]) -> (i64, u64);
}

/// A process's write-watch state: its userfaultfd and its allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteWatch {
    /// The userfaultfd (0 until the first allocation).
    uffd: i64,
    views: [(u64, u64); MAX_VIEWS],
    n: usize,
}

impl WriteWatch {
    /// `VirtualAlloc(addr, len, MEM_RESERVE | MEM_COMMIT |
    /// MEM_WRITE_WATCH, PAGE_READWRITE)`: the allocation's address, or
    /// `-errno`.
    pub fn alloc(&mut self, t: &mut impl Tracking, addr: u64, len: u64) -> i64 {
        if self.n == MAX_VIEWS {
            return -12;
        }
        if self.uffd <= 0 {
            let fd = t.userfaultfd();
            if fd < 0 {
                return fd;
            }
            let r = t.uffd(fd as u64, UffdCall::Api { features: 1 << 15 });
            if r < 0 {
                return r;
            }
            self.uffd = fd;
        }
        let len = len.div_ceil(PAGE) * PAGE;
        let a = t.mmap_anon(addr, len);
        if a < 0 {
            return a;
        }
        let fd = self.uffd as u64;
        let (start, mode) = (a as u64, 2);
        let r = t.uffd(fd, UffdCall::Register { start, len, mode });
        if r < 0 {
            return r;
        }
        let r = t.uffd(
            fd,
            UffdCall::Writeprotect {
                start,
                len,
                mode: 1,
            },
        );
        if r < 0 {
            return r;
        }
        self.views[self.n] = (start, start + len);
        self.n += 1;
        a
    }

    /// The range rounded out to pages, if it lies in one allocation.
    fn view_range(&self, base: u64, size: u64) -> Result<(u64, u64), WatchError> {
        let end = base
            .checked_add(size)
            .and_then(|e| e.checked_next_multiple_of(PAGE))
            .ok_or(WatchError::InvalidParameter)?;
        let start = base / PAGE * PAGE;
        if start == end {
            return Err(WatchError::InvalidParameter);
        }
        self.views[..self.n]
            .iter()
            .any(|&(s, e)| s <= start && end <= e)
            .then_some((start, end))
            .ok_or(WatchError::InvalidParameter)
    }

    /// `GetWriteWatch(flags, base, size, out, &count, &granularity)`:
    /// the addresses of the pages written since the last reset, at most
    /// `out.len()`, and the granularity.
    pub fn get(
        &mut self,
        t: &mut impl Tracking,
        flags: u64,
        base: u64,
        size: u64,
        out: &mut [u64],
    ) -> Result<(usize, u64), WatchError> {
        if out.is_empty() || size == 0 || flags & !WRITE_WATCH_FLAG_RESET != 0 {
            return Err(WatchError::InvalidParameter);
        }
        let (start, end) = self.view_range(base, size)?;
        let mut regions = [[0u64; 3]; SCAN_REGIONS];
        let mut n = 0;
        let mut at = start;
        while at < end && n < out.len() {
            let args = ScanArgs {
                flags: if flags & WRITE_WATCH_FLAG_RESET != 0 {
                    SCAN_RESET
                } else {
                    SCAN_CHECK
                },
                mask: WRITTEN,
                ret: WRITTEN,
                max_pages: (out.len() - n) as u64,
                vec_len: SCAN_REGIONS as u64,
                ..ScanArgs::default()
            };
            let (r, walk_end) = t.scan(at, end - at, args, &mut regions);
            if r < 0 {
                return Err(WatchError::Os(r));
            }
            for &[s, e, _] in &regions[..(r as usize).min(SCAN_REGIONS)] {
                for page in (s..e).step_by(PAGE as usize) {
                    if n < out.len() {
                        out[n] = page;
                        n += 1;
                    }
                }
            }
            if walk_end <= at {
                break;
            }
            at = walk_end;
        }
        Ok((n, PAGE))
    }

    /// `ResetWriteWatch(base, size)`.
    pub fn reset(&mut self, t: &mut impl Tracking, base: u64, size: u64) -> Result<(), WatchError> {
        if size == 0 {
            return Err(WatchError::InvalidParameter);
        }
        let (start, end) = self.view_range(base, size)?;
        let call = UffdCall::Writeprotect {
            start,
            len: end - start,
            mode: 1,
        };
        match t.uffd(self.uffd as u64, call) {
            r if r < 0 => Err(WatchError::Os(r)),
            _ => Ok(()),
        }
    }
}

/// A GetWriteWatch or ResetWriteWatch result in a transcript: `0`, the
/// count, the granularity and the addresses; or the error.
pub struct WatchText<'a> {
    /// The names of addresses.
    pub state: &'a State,
    /// The calling process.
    pub proc: usize,
    /// The result: the count and granularity (0, 0 for a reset).
    pub result: Result<(usize, u64), WatchError>,
    /// The addresses (the first `count`).
    pub addrs: &'a [u64],
}

impl fmt::Display for WatchText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.result {
            Err(WatchError::InvalidParameter) => write!(f, "STATUS_INVALID_PARAMETER"),
            Err(WatchError::Os(r)) => write!(f, "failed {}", CallResult(r)),
            Ok((_, 0)) => write!(f, "0"),
            Ok((n, g)) => {
                write!(f, "0 count={n} granularity={g}")?;
                for &a in &self.addrs[..n] {
                    write!(f, " {}", self.state.show(self.proc, a))?;
                }
                Ok(())
            }
        }
    }
}
