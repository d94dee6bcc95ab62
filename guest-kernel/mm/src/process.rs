//! The syscall-facing facade: processes, their address spaces, and the MM
//! system calls with Linux semantics and errno results.
//!
//! Mirrors the entry points of `mm/mmap.c`, `mm/mprotect.c`,
//! `mm/madvise.c`, `mm/mremap.c`, `kernel/fork.c`, `kernel/exit.c`
//! (`do_exit`, `do_wait`) and `arch/x86/mm/fault.c`
//! (`do_user_addr_fault`: a bad user access becomes a signal report, a
//! bad kernel access to user memory becomes `EFAULT`; neither panics).
//! The kernel owns scheduling: `wait` never blocks here, it says
//! "nothing yet" and the kernel sleeps.

use alloc::collections::BTreeMap;

use crate::errno::{Errno, Fault, SegvCode};
use crate::fault::FaultFlags;
use crate::hw::{CpuId, Hw, PAGE_SIZE, Pfn};
use crate::ids::{MmId, Pid};
use crate::pgtable;
use crate::pte::{Pte, PteFlags};
use crate::system::{Counters, MemSystem, ProcState, Process};

/// `SIGBUS`.
pub const SIGBUS: i32 = 7;
/// `SIGKILL` (the OOM killer's signal).
pub const SIGKILL: i32 = 9;
/// `SIGSEGV`.
pub const SIGSEGV: i32 = 11;

/// What a fatal user fault reports (the `siginfo` of the kill).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigReport {
    /// The killed process.
    pub pid: Pid,
    /// `SIGSEGV`, `SIGBUS`, or `SIGKILL` (out of memory).
    pub signal: i32,
    /// Faulting address (`si_addr`).
    pub addr: u64,
    /// `si_code` for SIGSEGV.
    pub code: Option<SegvCode>,
}

/// Why a ring-3 fault did not end in a mapped page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStop {
    /// The access earns a signal.
    Signal(SigReport),
    /// A userfaultfd handler must resolve it: the task sleeps until
    /// [`MemSystem::take_woken`] names it, then retries the access.
    Userfault,
}

/// A snapshot for the MM-statistics syscall.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MmStats {
    /// Managed frames.
    pub total_frames: u64,
    /// Free frames.
    pub free_frames: u64,
    /// Frames holding page tables.
    pub pagetable_frames: u64,
    /// Frames of anonymous folios.
    pub anon_frames: u64,
    /// Frames of shmem folios.
    pub shmem_frames: u64,
    /// Swap slots in total.
    pub swap_total: u64,
    /// Swap slots in use.
    pub swap_used: u64,
    /// Live processes (including zombies).
    pub processes: u64,
    /// VMAs of the calling process.
    pub vmas: u64,
    /// Resident (mapped) pages of the calling process.
    pub rss_pages: u64,
    /// Event counters.
    pub counters: Counters,
    /// The hugetlb pools, 2 MiB then 1 GiB (`HugePages_*` of
    /// `/proc/meminfo` per size).
    pub huge: [crate::hugetlb::HugeCounters; 2],
}

impl MmStats {
    /// Number of words in [`MmStats::to_words`].
    pub const WORDS: usize = 30;

    /// The stable user-visible layout of the statistics: little-endian
    /// `u64`s in this order: total_frames, free_frames, pagetable_frames,
    /// anon_frames, shmem_frames, swap_total, swap_used, processes, vmas,
    /// rss_pages, then the counters faults, zero_maps, anon_allocs,
    /// cow_copies, cow_reuses, unshares, swap_outs, swap_ins, swap_errors,
    /// tlb_flushes, then for the 2 MiB and then the 1 GiB hugetlb pool:
    /// total, free, rsvd, surp, overcommit.
    pub fn to_words(&self) -> [u64; Self::WORDS] {
        let c = &self.counters;
        [
            self.total_frames,
            self.free_frames,
            self.pagetable_frames,
            self.anon_frames,
            self.shmem_frames,
            self.swap_total,
            self.swap_used,
            self.processes,
            self.vmas,
            self.rss_pages,
            c.faults,
            c.zero_maps,
            c.anon_allocs,
            c.cow_copies,
            c.cow_reuses,
            c.unshares,
            c.swap_outs,
            c.swap_ins,
            c.swap_errors,
            c.tlb_flushes,
            self.huge[0].total,
            self.huge[0].free,
            self.huge[0].rsvd,
            self.huge[0].surp,
            self.huge[0].overcommit,
            self.huge[1].total,
            self.huge[1].free,
            self.huge[1].rsvd,
            self.huge[1].surp,
            self.huge[1].overcommit,
        ]
    }
}

impl<H: Hw> MemSystem<H> {
    pub(crate) fn proc_mm(&self, pid: Pid) -> Result<MmId, Errno> {
        match self.procs.get(&pid) {
            Some(Process {
                mm: Some(mm),
                state: ProcState::Running,
                ..
            }) => Ok(*mm),
            _ => Err(Errno::ESRCH),
        }
    }

    /// Creates a process with an empty address space whose parent is
    /// `parent` (0 for the first process).
    pub fn spawn(&mut self, parent: Pid) -> Result<Pid, Errno> {
        let mm = self.mm_create().ok_or(Errno::ENOMEM)?;
        let pid = self.next_pid;
        self.next_pid += 1;
        self.procs.insert(
            pid,
            Process {
                parent,
                mm: Some(mm),
                state: ProcState::Running,
                fds: BTreeMap::new(),
            },
        );
        Ok(pid)
    }

    /// Records that `pid` runs on `cpu` (`switch_mm`: adds the CPU to the
    /// shootdown set) and returns the root table to load into CR3.
    pub fn activate(&mut self, pid: Pid, cpu: CpuId) -> Result<Pfn, Errno> {
        let mm = self.proc_mm(pid)?;
        let a = self.mm_mut(mm);
        a.cpus.insert(cpu);
        Ok(a.root)
    }

    /// The root page table of `pid`'s address space, without activating it
    /// (what the kernel tells the VMM, so it can read the tables).
    pub fn root_of(&self, pid: Pid) -> Result<Pfn, Errno> {
        let mm = self.proc_mm(pid)?;
        Ok(self.mm(mm).root)
    }

    /// `getpid`.
    pub fn getpid(&self, pid: Pid) -> Result<Pid, Errno> {
        self.proc_mm(pid).map(|_| pid)
    }

    /// `mmap` (anonymous only: without `MAP_ANONYMOUS` it is `EBADF`, as
    /// for a bad descriptor; `off` must be page aligned).
    pub fn mmap(
        &mut self,
        pid: Pid,
        addr: u64,
        len: u64,
        prot: impl Into<u64>,
        flags: impl Into<u64>,
        off: u64,
    ) -> Result<u64, Errno> {
        self.mmap_fd(pid, addr, len, prot, flags, u64::MAX, off)
    }

    /// `mmap` with a descriptor: without `MAP_ANONYMOUS`, `fd` must be a
    /// memfd of `pid` (`EBADF` otherwise).
    #[allow(clippy::too_many_arguments)]
    pub fn mmap_fd(
        &mut self,
        pid: Pid,
        addr: u64,
        len: u64,
        prot: impl Into<u64>,
        flags: impl Into<u64>,
        fd: u64,
        off: u64,
    ) -> Result<u64, Errno> {
        let mm = self.proc_mm(pid)?;
        let flags = flags.into();
        // sys_mmap checks the offset first; ksys_mmap_pgoff then the file.
        let anon = flags & u64::from(crate::mmap::MAP_ANONYMOUS) != 0;
        let file = if anon || off & (crate::PAGE_SIZE - 1) != 0 {
            None
        } else {
            Some(self.open_file(pid, fd)?)
        };
        self.do_mmap(mm, addr, len, prot.into(), flags, off, file)
    }

    /// `munmap`.
    pub fn munmap(&mut self, pid: Pid, addr: u64, len: u64) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_munmap(mm, addr, len)
    }

    /// `mprotect`.
    pub fn mprotect(
        &mut self,
        pid: Pid,
        addr: u64,
        len: u64,
        prot: impl Into<u64>,
    ) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_mprotect(mm, addr, len, prot.into())
    }

    /// `mlock2(addr, len, flags)` (`mlock` is flags 0).
    pub fn mlock(&mut self, pid: Pid, addr: u64, len: u64, flags: u64) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_mlock(mm, addr, len, flags)
    }

    /// `munlock`.
    pub fn munlock(&mut self, pid: Pid, addr: u64, len: u64) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_munlock(mm, addr, len)
    }

    /// `madvise`.
    pub fn madvise(&mut self, pid: Pid, addr: u64, len: u64, advice: u32) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_madvise(mm, addr, len, advice)
    }

    /// `mremap`.
    pub fn mremap(
        &mut self,
        pid: Pid,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: impl Into<u64>,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        let mm = self.proc_mm(pid)?;
        self.do_mremap(mm, old, old_len, new_len, flags.into(), new_addr)
    }

    /// `fork`: returns the child's pid. The kernel copies the registers.
    pub fn fork(&mut self, pid: Pid) -> Result<Pid, Errno> {
        let mm = self.proc_mm(pid)?;
        let child_mm = self.dup_mmap(mm)?;
        let child = self.next_pid;
        self.next_pid += 1;
        let fds = self.dup_fds(pid);
        self.procs.insert(
            child,
            Process {
                parent: pid,
                mm: Some(child_mm),
                state: ProcState::Running,
                fds,
            },
        );
        Ok(child)
    }

    /// `exit`: tears down the address space and leaves a zombie holding
    /// `wait_status` (Linux encoding: `(code & 0xff) << 8`, or the signal
    /// number). Children are reparented to pid 1.
    pub fn exit(&mut self, pid: Pid, wait_status: i32) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.uffd_forget(pid);
        self.exit_mmap(mm);
        self.close_all_files(pid);
        let p = self.procs.get_mut(&pid).ok_or(Errno::ESRCH)?;
        p.mm = None;
        p.state = ProcState::Zombie(wait_status);
        for (&c, q) in self.procs.iter_mut() {
            if q.parent == pid && c != pid {
                q.parent = 1;
            }
        }
        Ok(())
    }

    /// `wait4` without blocking: `target` -1 for any child, else a pid.
    /// `Ok(Some((child, status)))` reaps a zombie; `Ok(None)` means children
    /// exist but none has exited (the caller sleeps); `ECHILD` if no child
    /// matches.
    pub fn wait(&mut self, pid: Pid, target: i64) -> Result<Option<(Pid, i32)>, Errno> {
        let mut any = false;
        let mut found = None;
        for (&c, q) in &self.procs {
            if q.parent == pid && (target == -1 || target == c as i64) {
                any = true;
                if let ProcState::Zombie(s) = q.state {
                    found = Some((c, s));
                    break;
                }
            }
        }
        if let Some((c, _)) = found {
            self.procs.remove(&c);
        }
        if any { Ok(found) } else { Err(Errno::ECHILD) }
    }

    /// State of a process.
    pub fn proc_state(&self, pid: Pid) -> Option<ProcState> {
        self.procs.get(&pid).map(|p| p.state)
    }

    /// Handles a page fault taken in ring 3 at `va` by `pid`. On failure the
    /// process is killed (exit with the signal as wait status) and the
    /// report says why; the kernel must not resume it.
    pub fn handle_user_fault(
        &mut self,
        pid: Pid,
        va: u64,
        ff: FaultFlags,
    ) -> Result<(), FaultStop> {
        let r = self.user_fault(pid, va, ff);
        if let Err(FaultStop::Signal(report)) = r {
            let _ = self.exit(pid, report.signal);
        }
        r
    }

    /// Resolves a page fault taken in ring 3 at `va` by `pid` without
    /// acting on a failure: the report says which signal the access earns,
    /// and the kernel delivers it (to a handler, or by killing the process
    /// with [`MemSystem::exit`]).
    pub fn user_fault(&mut self, pid: Pid, va: u64, mut ff: FaultFlags) -> Result<(), FaultStop> {
        ff.user = true;
        let Ok(mm) = self.proc_mm(pid) else {
            return Err(FaultStop::Signal(SigReport {
                pid,
                signal: SIGSEGV,
                addr: va,
                code: None,
            }));
        };
        let r = match self.handle_mm_fault(mm, va, ff) {
            Err(Fault::Retry) => self.handle_mm_fault(mm, va, ff),
            r => r,
        };
        let report = match r {
            Ok(()) | Err(Fault::Retry) => return Ok(()),
            Err(Fault::Userfault(msg)) => {
                self.uffd_wait_fault(pid, msg);
                return Err(FaultStop::Userfault);
            }
            Err(Fault::Segv(code)) => SigReport {
                pid,
                signal: SIGSEGV,
                addr: va,
                code: Some(code),
            },
            Err(Fault::Bus) => SigReport {
                pid,
                signal: SIGBUS,
                addr: va,
                code: None,
            },
            // pagefault_out_of_memory: the OOM killer picks the faulting task.
            Err(Fault::Oom) => SigReport {
                pid,
                signal: SIGKILL,
                addr: va,
                code: None,
            },
        };
        Err(FaultStop::Signal(report))
    }

    /// Resolves `va` for a kernel access (`get_user_pages`-like): faults the
    /// page in as needed and returns the physical address.
    fn user_pa(&mut self, mm: MmId, va: u64, write: bool) -> Result<u64, Errno> {
        self.user_pa_may_fault(mm, va, write, true)
    }

    /// [`Self::user_pa`]; without `may_fault`, as with page faults
    /// disabled: `EFAULT` unless the page is mapped for the access now.
    fn user_pa_may_fault(
        &mut self,
        mm: MmId,
        va: u64,
        write: bool,
        may_fault: bool,
    ) -> Result<u64, Errno> {
        if va >= pgtable::USER_TOP {
            return Err(Errno::EFAULT);
        }
        for _ in 0..3 {
            let root = self.mm(mm).root;
            if let Some((slot, level)) = pgtable::leaf_slot(&self.hw, root, va) {
                let pte = if level == 1 {
                    pgtable::read_pte(&self.hw, slot)
                } else {
                    pgtable::read_huge(&self.hw, slot, level)
                };
                if let Pte::Mapped { pfn, flags } = pte {
                    let ok = !flags.contains(PteFlags::PROTNONE)
                        && flags.contains(PteFlags::USER)
                        && (!write || flags.contains(PteFlags::WRITE));
                    if ok {
                        let nf = flags
                            .with(PteFlags::ACCESSED)
                            .set(PteFlags::DIRTY, write || flags.contains(PteFlags::DIRTY))
                            .with(self.soft_dirty_if(write));
                        let new = Pte::Mapped { pfn, flags: nf };
                        let span = if level == 1 {
                            PAGE_SIZE
                        } else {
                            pgtable::write_huge(&mut self.hw, slot, new);
                            pgtable::huge_span(level)
                        };
                        if level == 1 {
                            pgtable::write_pte(&mut self.hw, slot, new);
                        }
                        return Ok(pfn.addr() + va % span);
                    }
                }
            }
            if !may_fault {
                return Err(Errno::EFAULT);
            }
            match self.handle_mm_fault(
                mm,
                va,
                FaultFlags {
                    write,
                    ..FaultFlags::default()
                },
            ) {
                Ok(()) | Err(Fault::Retry) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::EFAULT)
    }

    /// Resolves a fault the kernel itself took on user address `va` (for a
    /// kernel that touches user memory directly, with an exception-table
    /// fixup): `EFAULT` instead of a signal, the process is not killed.
    pub fn fault_in_user(&mut self, pid: Pid, va: u64, write: bool) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        self.user_pa(mm, va, write).map(|_| ())
    }

    /// Makes the page at user address `va` exclusive to `pid` without
    /// making it writable, as a read-only long-term pin does in Linux
    /// (`FOLL_PIN | FOLL_LONGTERM` -> `FAULT_FLAG_UNSHARE`): a COW-shared
    /// anonymous page is copied (or reused), a missing one is allocated.
    /// `EFAULT` on a bad address; the process is not killed.
    pub fn unshare_user(&mut self, pid: Pid, va: u64) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        let ff = FaultFlags {
            unshare: true,
            ..FaultFlags::default()
        };
        match self.handle_mm_fault(mm, va, ff) {
            Ok(()) | Err(Fault::Retry) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies user memory at `va` into `buf` (`copy_from_user`); `EFAULT`
    /// on a bad address. The process is not killed.
    pub fn copy_from_user(&mut self, pid: Pid, va: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        let mut done = 0;
        while done < buf.len() {
            let a = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(buf.len() - done);
            let pa = self.user_pa(mm, a, false)?;
            self.hw.read_bytes(pa, &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// [`Self::copy_from_user`] with page faults disabled
    /// (`copy_from_user_nofault`): `EFAULT` unless every page is mapped
    /// readable now.
    pub(crate) fn copy_from_user_nofault(
        &mut self,
        pid: Pid,
        va: u64,
        buf: &mut [u8],
    ) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        let mut done = 0;
        while done < buf.len() {
            let a = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(buf.len() - done);
            let pa = self.user_pa_may_fault(mm, a, false, false)?;
            self.hw.read_bytes(pa, &mut buf[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// Copies `data` to user memory at `va` (`copy_to_user`), breaking COW
    /// as a user write would; `EFAULT` on a bad address.
    pub fn copy_to_user(&mut self, pid: Pid, va: u64, data: &[u8]) -> Result<(), Errno> {
        let mm = self.proc_mm(pid)?;
        let mut done = 0;
        while done < data.len() {
            let a = va.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(data.len() - done);
            let pa = self.user_pa(mm, a, true)?;
            self.hw.write_bytes(pa, &data[done..done + n]);
            done += n;
        }
        Ok(())
    }

    /// `write(fd, buf, len)` for the console (fd 1 and 2): hands the user
    /// bytes to `sink` in page-sized pieces. Returns bytes written.
    pub fn write(
        &mut self,
        pid: Pid,
        fd: i32,
        va: u64,
        len: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<u64, Errno> {
        if fd != 1 && fd != 2 {
            return Err(Errno::EBADF);
        }
        let mut buf = [0u8; 256];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            self.copy_from_user(
                pid,
                va.checked_add(done).ok_or(Errno::EFAULT)?,
                &mut buf[..n],
            )?;
            sink(&buf[..n]);
            done += n as u64;
        }
        Ok(done)
    }

    /// MM statistics, as seen by `pid`.
    pub fn mm_stats(&self, pid: Pid) -> Result<MmStats, Errno> {
        let mm = self.proc_mm(pid)?;
        let mut s = MmStats {
            total_frames: self.frames.nr_total(),
            free_frames: self.frames.nr_free(),
            processes: self.procs.len() as u64,
            counters: self.counters,
            vmas: self.mm(mm).vmas.len() as u64,
            ..MmStats::default()
        };
        for (_, f) in self.frames.iter() {
            match f.use_ {
                crate::frame::FrameUse::PageTable => s.pagetable_frames += 1,
                crate::frame::FrameUse::Folio
                    if !f.flags.contains(crate::frame::FolioFlags::HUGETLB) =>
                {
                    let n = 1u64 << f.order;
                    if f.flags.contains(crate::frame::FolioFlags::ANON) {
                        s.anon_frames += n;
                    } else {
                        s.shmem_frames += n;
                    }
                }
                _ => {}
            }
        }
        s.huge = [self.hugetlb_counters(0), self.hugetlb_counters(1)];
        if let Some(d) = &self.swap {
            s.swap_total = d.total();
            s.swap_used = d.used();
        }
        let root = self.mm(mm).root;
        s.rss_pages = pgtable::leaves(&self.hw, root, 0, pgtable::USER_TOP)
            .iter()
            .filter(|(_, _, p)| matches!(p, Pte::Mapped { .. }))
            .count() as u64;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use crate::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, PROT_READ, PROT_WRITE};
    use crate::testing::SimMachine;
    use crate::testing::user::{user_read, user_write};
    use crate::{Config, Errno, MemSystem};

    const A: u64 = 0x4000_0000;
    const RW: u32 = PROT_READ | PROT_WRITE;

    #[test]
    fn add_ram_extends_a_small_system() {
        let hw = SimMachine::new(8 << 20, 1);
        let mut s = MemSystem::new(hw, &[(0x10_0000, 0x20_0000)], Config::default()).unwrap();
        let p = s.spawn(0).unwrap();
        let free = s.free_frames();
        assert_eq!(s.add_ram(&[(0x20_0000, 0x80_0000)]), 0x600);
        assert_eq!(s.free_frames(), free + 0x600);
        assert_eq!(s.add_ram(&[(0x40_0000, 0x50_0000)]), 0, "overlap ignored");
        // More pages than the first range had, all usable.
        let len = 0x400_000;
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
        s.mmap(p, A, len, RW, flags, 0).unwrap();
        for va in (A..A + len).step_by(4096) {
            user_write(&mut s, p, 0, va, &[1]).unwrap();
        }
        s.check().unwrap();
    }

    #[test]
    fn unshare_user_copies_a_cow_page_and_keeps_it_read_only() {
        let hw = SimMachine::new(16 << 20, 1);
        let mut s = MemSystem::new(hw, &[(0x10_0000, 16 << 20)], Config::default()).unwrap();
        let p = s.spawn(0).unwrap();
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
        s.mmap(p, A, 4096, RW, flags, 0).unwrap();
        user_write(&mut s, p, 0, A, b"data").unwrap();
        let c = s.fork(p).unwrap();
        let before = s.counters();
        s.unshare_user(c, A).unwrap();
        assert_eq!(s.counters().unshares, before.unshares + 1);
        s.check().unwrap();
        let mut b = [0; 4];
        user_read(&mut s, c, 0, A, &mut b).unwrap();
        assert_eq!(&b, b"data");
        // Exclusive now: the child's write reuses the page.
        user_write(&mut s, c, 0, A, b"kid!").unwrap();
        assert_eq!(s.counters().cow_copies, before.cow_copies);
        user_read(&mut s, p, 0, A, &mut b).unwrap();
        assert_eq!(&b, b"data");
        assert_eq!(s.unshare_user(c, 0x10), Err(Errno::EFAULT));
        s.check().unwrap();
    }
}
