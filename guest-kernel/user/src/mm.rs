//! Wrappers for the memory-management, process and writewatch calls, with
//! Linux's constants (`include/uapi/asm-generic/mman-common.h`,
//! `errno-base.h`) and the layout of the MM statistics.

use super::{call3, call6};

/// `mmap`.
pub const SYS_MMAP: u64 = 9;
/// `mprotect`.
pub const SYS_MPROTECT: u64 = 10;
/// `munmap`.
pub const SYS_MUNMAP: u64 = 11;
/// `mremap`.
pub const SYS_MREMAP: u64 = 25;
/// `madvise`.
pub const SYS_MADVISE: u64 = 28;
/// `fork`.
pub const SYS_FORK: u64 = 57;
/// `wait4`.
pub const SYS_WAIT4: u64 = 61;
/// writewatch: `mm_stats(buf, len)`.
pub const SYS_MM_STATS: u64 = 1000;
/// writewatch: `record(buf, len)`.
pub const SYS_RECORD: u64 = 1001;
/// writewatch: `pin_read(addr)`.
pub const SYS_PIN_READ: u64 = 1002;
/// writewatch: `getcpu()`.
pub const SYS_GETCPU: u64 = 1003;
/// writewatch: `mm_maps(buf, len, pid)`.
pub const SYS_MM_MAPS: u64 = 1004;
/// writewatch: `mm_peek(start, end, buf, len, pid)`.
pub const SYS_MM_PEEK: u64 = 1005;

/// Page size.
pub const PAGE: u64 = 4096;

/// `PROT_READ`.
pub const PROT_READ: u64 = 1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u64 = 2;
/// `MAP_SHARED`.
pub const MAP_SHARED: u64 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u64 = 0x02;
/// `MAP_FIXED`.
pub const MAP_FIXED: u64 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_POPULATE`.
pub const MAP_POPULATE: u64 = 0x8000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u64 = 0x10_0000;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: u64 = 4;
/// `MADV_PAGEOUT`.
pub const MADV_PAGEOUT: u64 = 21;
/// `MREMAP_MAYMOVE`.
pub const MREMAP_MAYMOVE: u64 = 1;

/// `-EFAULT`.
pub const EFAULT: i64 = -14;
/// `-EEXIST`.
pub const EEXIST: i64 = -17;
/// `-EINVAL`.
pub const EINVAL: i64 = -22;
/// `-ENOMEM`.
pub const ENOMEM: i64 = -12;
/// `-ECHILD`.
pub const ECHILD: i64 = -10;

/// Words of [`mm_stats`] (docs/GUEST_ABI.md, "MM statistics").
pub const STATS_WORDS: usize = 20;
/// Index: free frames.
pub const ST_FREE: usize = 1;
/// Index: swap slots in use.
pub const ST_SWAP_USED: usize = 6;
/// Index: resident pages of the caller.
pub const ST_RSS: usize = 9;
/// Index: faults resolved.
pub const ST_FAULTS: usize = 10;
/// Index: zero-page mappings installed.
pub const ST_ZERO_MAPS: usize = 11;
/// Index: anonymous pages allocated by faults.
pub const ST_ANON_ALLOCS: usize = 12;
/// Index: COW faults that copied.
pub const ST_COW_COPIES: usize = 13;
/// Index: COW faults that reused the page.
pub const ST_COW_REUSES: usize = 14;
/// Index: unshare faults that did something.
pub const ST_UNSHARES: usize = 15;
/// Index: pages written to swap.
pub const ST_SWAP_OUTS: usize = 16;
/// Index: pages read from swap.
pub const ST_SWAP_INS: usize = 17;

/// `mmap(addr, len, prot, flags, -1, 0)`: the address or `-errno`.
pub fn mmap(addr: u64, len: u64, prot: u64, flags: u64) -> i64 {
    call6(SYS_MMAP, [addr, len, prot, flags, u64::MAX, 0])
}

/// `munmap(addr, len)`.
pub fn munmap(addr: u64, len: u64) -> i64 {
    call3(SYS_MUNMAP, addr, len, 0)
}

/// `mprotect(addr, len, prot)`.
pub fn mprotect(addr: u64, len: u64, prot: u64) -> i64 {
    call3(SYS_MPROTECT, addr, len, prot)
}

/// `madvise(addr, len, advice)`.
pub fn madvise(addr: u64, len: u64, advice: u64) -> i64 {
    call3(SYS_MADVISE, addr, len, advice)
}

/// `mremap(old, old_len, new_len, flags, new_addr)`.
pub fn mremap(old: u64, old_len: u64, new_len: u64, flags: u64, new_addr: u64) -> i64 {
    call6(SYS_MREMAP, [old, old_len, new_len, flags, new_addr, 0])
}

/// The VMA listing of `pid` (0: this process) in `/proc/pid/maps` form,
/// into `buf`: the bytes written, or `-errno`.
pub fn mm_maps(pid: u64, buf: &mut [u8]) -> i64 {
    call3(SYS_MM_MAPS, buf.as_mut_ptr() as u64, buf.len() as u64, pid)
}

/// The present and swapped pages of `[start, end)` of `pid` (0: this
/// process), without touching them, as records into `buf` (address, kind
/// 1 present / 2 swapped, then 4096 bytes for a present page): the bytes
/// written, or `-errno`.
pub fn mm_peek(pid: u64, start: u64, end: u64, buf: &mut [u8]) -> i64 {
    let args = [
        start,
        end,
        buf.as_mut_ptr() as u64,
        buf.len() as u64,
        pid,
        0,
    ];
    call6(SYS_MM_PEEK, args)
}

/// `fork()`: the child's pid in the parent, 0 in the child.
pub fn fork() -> i64 {
    call3(SYS_FORK, 0, 0, 0)
}

/// `wait4(pid, &status, 0, NULL)` (`pid` -1: any child); the reaped pid.
pub fn wait4(pid: i64, status: &mut i32) -> i64 {
    call3(SYS_WAIT4, pid as u64, status as *mut i32 as u64, 0)
}

/// The MM statistics, or `-errno`.
pub fn mm_stats() -> Result<[u64; STATS_WORDS], i64> {
    let mut words = [0u64; STATS_WORDS];
    let r = call3(
        SYS_MM_STATS,
        words.as_mut_ptr() as u64,
        (STATS_WORDS * 8) as u64,
        0,
    );
    if r < 0 { Err(r) } else { Ok(words) }
}

/// Sends `json` (one object) as a result record.
pub fn record(json: &[u8]) -> i64 {
    call3(SYS_RECORD, json.as_ptr() as u64, json.len() as u64, 0)
}

/// Pins the page at `addr` for reading (the kernel's unshare path).
pub fn pin_read(addr: u64) -> i64 {
    call3(SYS_PIN_READ, addr, 0, 0)
}

/// The CPU this process runs on.
pub fn getcpu() -> i64 {
    call3(SYS_GETCPU, 0, 0, 0)
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC is allowed in ring 3 (the kernel never sets CR4.TSD).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Reads the `u64` at `addr` (volatile: every access is a real one).
pub fn peek(addr: u64) -> u64 {
    // SAFETY: a user program may touch any address; a bad one faults and
    // the kernel kills the program, which is what the tests want to see.
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

/// Writes `val` at `addr` (volatile).
pub fn poke(addr: u64, val: u64) {
    // SAFETY: as for `peek`.
    unsafe { core::ptr::write_volatile(addr as *mut u64, val) }
}

/// Whether a `wait4` status says "killed by `signal`".
pub fn killed_by(status: i32, signal: i32) -> bool {
    status & 0x7f == signal
}

/// The exit code in a `wait4` status of a normal exit.
pub fn exit_code(status: i32) -> i32 {
    (status >> 8) & 0xff
}
