//! System-call numbers and a dispatcher for the MM-related calls.
//!
//! Numbers are Linux x86-64's (`arch/x86/entry/syscalls/syscall_64.tbl`),
//! plus one writewatch call, [`SYS_MM_STATS`]. Arguments arrive as the
//! kernel's trap frame has them (`rdi, rsi, rdx, r10, r8, r9`); results are
//! Linux-style (`-errno` on failure). Calls that need the scheduler
//! (`fork`'s child registers, `exit`, a blocking `wait`) report that in
//! [`Outcome`] instead of doing it here.

use crate::errno::Errno;
use crate::hw::Hw;
use crate::ids::Pid;
use crate::system::MemSystem;

/// `read`.
pub const SYS_READ: u64 = 0;
/// `write`: files, and the console on 1 and 2.
pub const SYS_WRITE: u64 = 1;
/// `open`.
pub const SYS_OPEN: u64 = 2;
/// `lseek`.
pub const SYS_LSEEK: u64 = 8;
/// `pread64`.
pub const SYS_PREAD64: u64 = 17;
/// `pwrite64`.
pub const SYS_PWRITE64: u64 = 18;
/// `fcntl`: the sealing commands.
pub const SYS_FCNTL: u64 = 72;
/// `unlink`.
pub const SYS_UNLINK: u64 = 87;
/// `openat`.
pub const SYS_OPENAT: u64 = 257;
/// `ioctl`: the userfaultfd calls.
pub const SYS_IOCTL: u64 = 16;
/// `userfaultfd`.
pub const SYS_USERFAULTFD: u64 = 323;
/// `close`.
pub const SYS_CLOSE: u64 = 3;
/// `mmap`.
pub const SYS_MMAP: u64 = 9;
/// `ftruncate`.
pub const SYS_FTRUNCATE: u64 = 77;
/// `fallocate`.
pub const SYS_FALLOCATE: u64 = 285;
/// `memfd_create`.
pub const SYS_MEMFD_CREATE: u64 = 319;
/// `mprotect`.
pub const SYS_MPROTECT: u64 = 10;
/// `munmap`.
pub const SYS_MUNMAP: u64 = 11;
/// `mremap`.
pub const SYS_MREMAP: u64 = 25;
/// `madvise`.
pub const SYS_MADVISE: u64 = 28;
/// `getpid`.
pub const SYS_GETPID: u64 = 39;
/// `fork`.
pub const SYS_FORK: u64 = 57;
/// `exit`.
pub const SYS_EXIT: u64 = 60;
/// `wait4(pid, *status, options, rusage)`; only `options == 0`.
pub const SYS_WAIT4: u64 = 61;
/// `mlock`.
pub const SYS_MLOCK: u64 = 149;
/// `munlock`.
pub const SYS_MUNLOCK: u64 = 150;
/// `mlock2(addr, len, flags)`: `MLOCK_ONFAULT` locks without populating.
pub const SYS_MLOCK2: u64 = 325;
/// writewatch: `mm_maps(*buf, len, pid)` copies the VMA listing of `pid`
/// (0: the caller) in `/proc/pid/maps` form
/// ([`crate::MemSystem::maps_text`], at most `len` bytes) and returns the
/// number of bytes written.
pub const SYS_MM_MAPS: u64 = 1004;
/// writewatch: `mm_peek(start, end, *buf, len, pid)`: the pages of
/// `[start, end)` of `pid` (0: the caller) that are present or swapped,
/// without touching them
/// ([`crate::MemSystem::peek_range`]), as records of a `u64` address, a
/// `u64` kind (1 present, 2 swapped or a marker) and, for present pages,
/// the page's 4096 bytes. Copies the whole records that fit in `len` bytes
/// and returns the number of bytes written.
pub const SYS_MM_PEEK: u64 = 1005;
/// writewatch: `hugetlb_pool(size_log, knob, value)` sets a hugetlb pool
/// knob, as writing its sysfs file does: knob 0 is `nr_hugepages`, 1 is
/// `nr_overcommit_hugepages`, 2 is `vm.hugetlb_optimize_vmemmap` (HVO); `size_log` 21 (or 0) is the 2 MiB pool, 30
/// the 1 GiB one. Returns 0.
pub const SYS_HUGETLB_POOL: u64 = 1006;
/// writewatch: `hugetlb_counters(size_log, *buf, len)` copies the pool's
/// [`crate::HugeCounters::to_words`] (total, free, rsvd, surp, overcommit;
/// at most `len` bytes) and returns the number of bytes written.
pub const SYS_HUGETLB_COUNTERS: u64 = 1007;
/// writewatch: `mm_stats(*buf, len)` copies [`crate::MmStats::to_words`]
/// (at most `len` bytes) and returns the number of bytes written.
pub const SYS_MM_STATS: u64 = 1000;

/// What the kernel must do after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Return this value in `rax`.
    Return(i64),
    /// `fork` succeeded: return `child` to the parent, 0 to the child (whose
    /// registers the kernel copies).
    Forked {
        /// The new process.
        child: Pid,
    },
    /// The process exited; never resume it.
    Exited,
    /// `wait` must sleep until a child exits, then retry the call.
    Block,
    /// A `read` of a userfaultfd must sleep until the MM core names the
    /// task in [`MemSystem::take_woken`], then retry the call.
    WaitUffd,
}

/// `UFFDIO_API`: `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API: u64 = 0xC018_AA3F;
/// `UFFDIO_REGISTER`: `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
/// `UFFDIO_UNREGISTER`: `_IOR(0xAA, 0x01, struct uffdio_range)`.
pub const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
/// `UFFDIO_WAKE`: `_IOR(0xAA, 0x02, struct uffdio_range)`.
pub const UFFDIO_WAKE: u64 = 0x8010_AA02;
/// `UFFDIO_WRITEPROTECT`: `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
pub const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = 0xC060_6610;

fn ret(r: Result<u64, Errno>) -> Outcome {
    Outcome::Return(match r {
        Ok(v) => v as i64,
        Err(e) => e.to_ret(),
    })
}

impl<H: Hw> MemSystem<H> {
    /// Runs syscall `nr` for `pid` with `args`. Console output of `write`
    /// goes to `console`. With [`crate::Config::check_every_op`], the
    /// invariant checker runs afterwards and a violation panics.
    pub fn syscall(
        &mut self,
        pid: Pid,
        nr: u64,
        args: [u64; 6],
        console: &mut dyn FnMut(&[u8]),
    ) -> Outcome {
        let [a0, a1, a2, a3, a4, a5] = args;
        let out = match nr {
            SYS_WRITE if self.open_file(pid, a0).is_ok() => {
                ret(self.file_write(pid, a0, a1, a2, None))
            }
            SYS_WRITE => ret(self.write(pid, a0 as i32, a1, a2, &mut *console)),
            SYS_READ if self.is_uffd(pid, a0) => match self.uffd_read(pid, a0, a1, a2) {
                Ok(Some(n)) => Outcome::Return(n as i64),
                Ok(None) => Outcome::WaitUffd,
                Err(e) => Outcome::Return(e.to_ret()),
            },
            SYS_READ => ret(self.file_read(pid, a0, a1, a2, None)),
            SYS_PREAD64 => ret(self.file_read(pid, a0, a1, a2, Some(a3))),
            SYS_PWRITE64 => ret(self.file_write(pid, a0, a1, a2, Some(a3))),
            SYS_LSEEK => ret(self.lseek(pid, a0, a1, a2 & 0xffff_ffff)),
            SYS_FCNTL => ret(self.fcntl(pid, a0, a1, a2)),
            SYS_OPEN => ret(self.openat(pid, crate::tmpfs::AT_FDCWD, a0, a1 as u32, a2 as u32)),
            SYS_OPENAT => ret(self.openat(pid, a0 as i32, a1, a2 as u32, a3 as u32)),
            SYS_UNLINK => ret(self.unlink(pid, a0).map(|()| 0)),
            // fd (a4) is ignored for MAP_ANONYMOUS, like Linux.
            SYS_MMAP => ret(self.mmap_fd(pid, a0, a1, a2, a3, a4, a5)),
            SYS_CLOSE => ret(self.close(pid, a0).map(|()| 0)),
            SYS_FTRUNCATE => ret(self.ftruncate(pid, a0, a1).map(|()| 0)),
            // The mode is an `int`.
            SYS_FALLOCATE => ret(self
                .fallocate(pid, a0, a1 & 0xffff_ffff, a2, a3)
                .map(|()| 0)),
            SYS_MEMFD_CREATE => ret(self.memfd_create(pid, a0, a1 & 0xffff_ffff)),
            SYS_MPROTECT => ret(self.mprotect(pid, a0, a1, a2).map(|()| 0)),
            SYS_MUNMAP => ret(self.munmap(pid, a0, a1).map(|()| 0)),
            SYS_MREMAP => ret(self.mremap(pid, a0, a1, a2, a3, a4)),
            // The advice is an `int`.
            SYS_MADVISE => ret(self.madvise(pid, a0, a1, a2 as u32).map(|()| 0)),
            SYS_MLOCK => ret(self.mlock(pid, a0, a1, 0).map(|()| 0)),
            SYS_MUNLOCK => ret(self.munlock(pid, a0, a1).map(|()| 0)),
            SYS_MLOCK2 => ret(self.mlock(pid, a0, a1, a2).map(|()| 0)),
            SYS_MM_PEEK => {
                let of = if a4 == 0 { pid } else { a4 as Pid };
                let cap = a3 as usize;
                let r = self.peek_iter(of, a0, a1).map(|pages| {
                    let mut out = alloc::vec::Vec::new();
                    for (va, view) in pages {
                        let page = match &view {
                            crate::PageView::Present(page) => Some(&page[..]),
                            _ => None,
                        };
                        let size = 16 + page.map_or(0, <[u8]>::len);
                        if out.len() + size > cap {
                            break;
                        }
                        out.extend_from_slice(&va.to_le_bytes());
                        out.extend_from_slice(&(1 + u64::from(page.is_none())).to_le_bytes());
                        out.extend_from_slice(page.unwrap_or(&[]));
                    }
                    out
                });
                ret(r.and_then(|out: alloc::vec::Vec<u8>| {
                    self.copy_to_user(pid, a2, &out).map(|()| out.len() as u64)
                }))
            }
            SYS_MM_MAPS => {
                let of = if a2 == 0 { pid } else { a2 as Pid };
                let r = self.maps_text(of).and_then(|text| {
                    let n = text.len().min(a1 as usize);
                    self.copy_to_user(pid, a0, &text.as_bytes()[..n])
                        .map(|()| n as u64)
                });
                ret(r)
            }
            SYS_USERFAULTFD => ret(self.userfaultfd(pid, a0)),
            SYS_IOCTL => ret(self.ioctl(pid, a0, a1 & 0xffff_ffff, a2)),
            SYS_GETPID => ret(self.getpid(pid).map(u64::from)),
            SYS_FORK => match self.fork(pid) {
                Ok(child) => Outcome::Forked { child },
                Err(e) => Outcome::Return(e.to_ret()),
            },
            SYS_EXIT => match self.exit(pid, ((a0 & 0xff) << 8) as i32) {
                Ok(()) => Outcome::Exited,
                Err(e) => Outcome::Return(e.to_ret()),
            },
            SYS_WAIT4 if a2 != 0 => Outcome::Return(Errno::EINVAL.to_ret()),
            SYS_WAIT4 => match self.wait(pid, a0 as i64) {
                Ok(Some((child, status))) => {
                    if a1 != 0 {
                        if let Err(e) = self.copy_to_user(pid, a1, &status.to_le_bytes()) {
                            return Outcome::Return(e.to_ret());
                        }
                    }
                    Outcome::Return(i64::from(child))
                }
                Ok(None) => Outcome::Block,
                Err(e) => Outcome::Return(e.to_ret()),
            },
            SYS_MM_STATS => {
                let r = self.mm_stats(pid).and_then(|s| {
                    let bytes: alloc::vec::Vec<u8> =
                        s.to_words().iter().flat_map(|w| w.to_le_bytes()).collect();
                    let n = bytes.len().min(a1 as usize);
                    self.copy_to_user(pid, a0, &bytes[..n]).map(|()| n as u64)
                });
                ret(r)
            }
            SYS_HUGETLB_POOL => {
                let knob = match a1 {
                    0 => Some(crate::PoolKnob::NrHugepages),
                    1 => Some(crate::PoolKnob::NrOvercommit),
                    2 => Some(crate::PoolKnob::OptimizeVmemmap),
                    _ => None,
                };
                let r = match (crate::hugetlb::hstate_of_log(a0 as u32), knob) {
                    (Some(h), Some(k)) => self.hugetlb_set_pool(h, k, a2).map(|()| 0),
                    _ => Err(Errno::EINVAL),
                };
                ret(r)
            }
            SYS_HUGETLB_COUNTERS => {
                let r = crate::hugetlb::hstate_of_log(a0 as u32)
                    .ok_or(Errno::EINVAL)
                    .and_then(|h| {
                        let bytes: alloc::vec::Vec<u8> = self
                            .hugetlb_counters(h)
                            .to_words()
                            .iter()
                            .flat_map(|w| w.to_le_bytes())
                            .collect();
                        let n = bytes.len().min(a2 as usize);
                        self.copy_to_user(pid, a1, &bytes[..n]).map(|()| n as u64)
                    });
                ret(r)
            }
            _ => Outcome::Return(Errno::ENOSYS.to_ret()),
        };
        if self.cfg.check_every_op {
            if let Err(e) = self.check() {
                panic!("mm_check after syscall {nr}: {:?}", e.violations);
            }
        }
        out
    }

    /// Reads `N` little-endian words from user memory.
    fn user_words<const N: usize>(&mut self, pid: Pid, va: u64) -> Result<[u64; N], Errno> {
        let mut raw = alloc::vec![0u8; N * 8];
        self.copy_from_user(pid, va, &mut raw)?;
        let mut w = [0u64; N];
        for (slot, c) in w.iter_mut().zip(raw.chunks(8)) {
            *slot = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Ok(w)
    }

    /// Writes words to user memory.
    fn put_words(&mut self, pid: Pid, va: u64, w: &[u64]) -> Result<(), Errno> {
        let raw: alloc::vec::Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.copy_to_user(pid, va, &raw)
    }

    /// `ioctl(fd, cmd, arg)`: the userfaultfd calls, their structures
    /// copied in and out as `fs/userfaultfd.c` does.
    fn ioctl(&mut self, pid: Pid, fd: u64, cmd: u64, arg: u64) -> Result<u64, Errno> {
        let file = self.open_file(pid, fd)?;
        if let crate::system::FileObj::Pagemap(mm) = self.files[&file].obj {
            return match cmd {
                PAGEMAP_SCAN => self.pagemap_scan_ioctl(pid, mm, arg),
                _ => Err(Errno::EINVAL),
            };
        }
        match cmd {
            UFFDIO_API => {
                let [api, features, _] = self.user_words::<3>(pid, arg)?;
                match self.uffdio_api(pid, fd, api, features) {
                    Ok((f, io)) => self.put_words(pid, arg, &[api, f, io]).map(|()| 0),
                    Err(e) => {
                        // err_out: the caller's structure is zeroed.
                        self.put_words(pid, arg, &[0, 0, 0])?;
                        Err(e)
                    }
                }
            }
            UFFDIO_REGISTER => {
                let [start, len, mode, _] = self.user_words::<4>(pid, arg)?;
                let io = self.uffdio_register(pid, fd, start, len, mode)?;
                self.put_words(pid, arg + 24, &[io]).map(|()| 0)
            }
            UFFDIO_UNREGISTER => {
                let [start, len] = self.user_words::<2>(pid, arg)?;
                self.uffdio_unregister(pid, fd, start, len).map(|()| 0)
            }
            UFFDIO_WAKE => {
                let [start, len] = self.user_words::<2>(pid, arg)?;
                self.uffdio_wake(pid, fd, start, len).map(|()| 0)
            }
            UFFDIO_WRITEPROTECT => {
                let [start, len, mode] = self.user_words::<3>(pid, arg)?;
                self.uffdio_writeprotect(pid, fd, start, len, mode)
                    .map(|()| 0)
            }
            _ => Err(Errno::ENOTTY),
        }
    }
}
