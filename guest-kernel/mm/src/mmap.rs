//! `mmap` and `munmap`, plus VMA split/merge with their reference
//! bookkeeping.
//!
//! Mirrors `arch/x86/kernel/sys_x86_64.c` (`sys_mmap`), `mm/mmap.c`
//! (`ksys_mmap_pgoff`, `do_mmap`, `__get_unmapped_area`) and `mm/vma.c`
//! (`__mmap_region`, `do_vmi_munmap`, `vma_merge_new_range`,
//! `__split_vma`), as of Linux 6.18. The checks run in Linux's order, which
//! decides the errno when several apply: the offset, then the file
//! (`EBADF`: there are no files), `MAP_HUGETLB`'s size, the length, the
//! address (`ENOMEM` past TASK_SIZE before `EINVAL` for misalignment, then
//! `EPERM` below `mmap_min_addr`), `EEXIST` for `MAP_FIXED_NOREPLACE`, and
//! only then the mapping type. Unknown `prot` and flag bits are ignored, as
//! Linux ignores them for anonymous memory.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::gather::{MmuGather, Zap};
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{FileId, MmId, ShmemId};
use crate::system::{MemSystem, Shmem};
use crate::vma::{Backing, TASK_SIZE, VmFlags, Vma};

/// `PROT_READ`.
pub const PROT_READ: u32 = 0x1;
/// `PROT_WRITE`.
pub const PROT_WRITE: u32 = 0x2;
/// `PROT_EXEC`.
pub const PROT_EXEC: u32 = 0x4;
/// `PROT_SEM` (accepted by mprotect, no effect on x86).
pub const PROT_SEM: u32 = 0x8;
/// `PROT_GROWSDOWN` (mprotect: extend the change to the start of a
/// `MAP_GROWSDOWN` mapping).
pub const PROT_GROWSDOWN: u32 = 0x0100_0000;
/// `PROT_GROWSUP` (no such mappings on x86).
pub const PROT_GROWSUP: u32 = 0x0200_0000;
/// `MAP_SHARED`.
pub const MAP_SHARED: u32 = 0x01;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u32 = 0x02;
/// `MAP_SHARED_VALIDATE`: a file-mapping type; not one for anonymous memory.
pub const MAP_SHARED_VALIDATE: u32 = 0x03;
/// `MAP_DROPPABLE` (6.11): private memory the kernel may drop under
/// pressure, wiped on fork.
pub const MAP_DROPPABLE: u32 = 0x08;
/// `MAP_FIXED`.
pub const MAP_FIXED: u32 = 0x10;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u32 = 0x20;
/// `MAP_GROWSDOWN`: a stack that grows down on faults.
pub const MAP_GROWSDOWN: u32 = 0x100;
/// `MAP_LOCKED`: mlock the mapping (populate it).
pub const MAP_LOCKED: u32 = 0x2000;
/// `MAP_NORESERVE`: no commit charge (`VM_NORESERVE`).
pub const MAP_NORESERVE: u32 = 0x4000;
/// `MAP_POPULATE`: fault every page in now (write-faulting private writable
/// mappings, like `populate_vma_page_range`); failures are ignored.
pub const MAP_POPULATE: u32 = 0x8000;
/// `MAP_NONBLOCK`: with `MAP_POPULATE`, do not populate.
pub const MAP_NONBLOCK: u32 = 0x1_0000;
/// `MAP_STACK`: `VM_NOHUGEPAGE`.
pub const MAP_STACK: u32 = 0x2_0000;
/// `MAP_HUGETLB`.
pub const MAP_HUGETLB: u32 = 0x4_0000;
/// `MAP_FIXED_NOREPLACE`.
pub const MAP_FIXED_NOREPLACE: u32 = 0x10_0000;
/// `LEGACY_MAP_MASK`: the flags `MAP_SHARED` silently accepts and
/// `MAP_SHARED_VALIDATE` accepts for a file without its own.
const LEGACY_MAP_MASK: u64 = 0x01
    | 0x02
    | 0x10
    | 0x20
    | 0x800
    | 0x1000
    | 0x4_000_000
    | 0x100
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x1_0000
    | 0x2_0000
    | 0x4_0000;
/// Where `MAP_HUGETLB`'s page-size log sits in the flags.
pub const MAP_HUGE_SHIFT: u32 = 26;
const MAP_HUGE_MASK: u32 = 0x3f;
const MAP_TYPE: u32 = 0x0f;

/// Linux's commit limit for `MAP_LOCKED` and `mlock` without
/// CAP_IPC_LOCK: the default `RLIMIT_MEMLOCK` (8 MiB since 5.16).
pub const MEMLOCK_LIMIT: u64 = 8 << 20;
/// `stack_guard_gap`: room kept below a `MAP_GROWSDOWN` mapping (256 pages).
pub const STACK_GUARD_GAP: u64 = 256 * PAGE_SIZE;

/// Rounds `len` up to pages; `None` on overflow.
pub(crate) fn page_align(len: u64) -> Option<u64> {
    len.checked_add(PAGE_SIZE - 1).map(|l| l & !(PAGE_SIZE - 1))
}

/// `calc_vm_prot_bits`.
pub(crate) fn prot_to_vm(prot: u64) -> u64 {
    let mut f = 0;
    if prot & u64::from(PROT_READ) != 0 {
        f |= VmFlags::READ;
    }
    if prot & u64::from(PROT_WRITE) != 0 {
        f |= VmFlags::WRITE;
    }
    if prot & u64::from(PROT_EXEC) != 0 {
        f |= VmFlags::EXEC;
    }
    f
}

/// `accountable_mapping`: private writable memory without `VM_NORESERVE`
/// is charged to the commit and carries `VM_ACCOUNT`.
pub(crate) fn accountable(vf: u64) -> bool {
    vf & (VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE) == VmFlags::WRITE
}

impl<H: Hw> MemSystem<H> {
    /// `sys_mmap` + `ksys_mmap_pgoff` + `do_mmap` for anonymous memory.
    /// Returns the address.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn do_mmap(
        &mut self,
        mm: MmId,
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
        off: u64,
        file: Option<FileId>,
    ) -> Result<u64, Errno> {
        let has = |bits: u32| flags & u64::from(bits) != 0;
        if off & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if !has(MAP_ANONYMOUS) && file.is_none() {
            return Err(Errno::EBADF);
        }
        let huge_file = file.and_then(|f| self.huge_file_obj(f));
        if file.is_some() && huge_file.is_none() && has(MAP_HUGETLB) {
            // ksys_mmap_pgoff: MAP_HUGETLB of a file that is not hugetlbfs.
            return Err(Errno::EINVAL);
        }
        // ksys_mmap_pgoff: a hugetlbfs file, or MAP_HUGETLB, picks the
        // hstate and rounds the length up to its page size before do_mmap
        // sees it.
        let huge = if let Some(hf) = huge_file {
            Some(self.huge.files[&hf].hstate)
        } else if has(MAP_HUGETLB) {
            let log = (flags >> MAP_HUGE_SHIFT) as u32 & MAP_HUGE_MASK;
            let h = crate::hugetlb::hstate_of_log(log).ok_or(Errno::EINVAL)?;
            Some(h)
        } else {
            None
        };
        let len = match huge {
            Some(h) => {
                let size = crate::hugetlb::huge_size(h);
                len.checked_add(size - 1).map_or(0, |l| l & !(size - 1))
            }
            None => len,
        };
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let fixed = has(MAP_FIXED | MAP_FIXED_NOREPLACE);
        let hint = if fixed {
            addr
        } else {
            self.round_hint_to_min(addr)
        };
        let len = page_align(len).filter(|&l| l != 0).ok_or(Errno::ENOMEM)?;
        if self.mm(mm).vmas.len() > self.cfg.max_map_count {
            return Err(Errno::ENOMEM);
        }
        let mut vf = prot_to_vm(prot) | VmFlags::MAYREAD | VmFlags::MAYWRITE | VmFlags::MAYEXEC;
        if has(MAP_GROWSDOWN) {
            vf |= VmFlags::GROWSDOWN;
        }
        if has(MAP_LOCKED) {
            vf |= VmFlags::LOCKED;
        }
        if has(MAP_STACK) {
            vf |= VmFlags::NOHUGEPAGE;
        }
        let start = match huge {
            Some(h) => self.hugetlb_get_unmapped_area(mm, hint, len, fixed, h)?,
            None => self.get_unmapped_area(mm, hint, len, fixed)?,
        };
        if has(MAP_FIXED_NOREPLACE) && self.mm(mm).vmas.any_overlap(start, start + len) {
            return Err(Errno::EEXIST);
        }
        if vf & VmFlags::LOCKED != 0 && self.locked_bytes(mm) + len > MEMLOCK_LIMIT {
            return Err(Errno::EAGAIN);
        }
        if let (Some(hf), Some(h)) = (huge_file, huge) {
            // hugetlbfs_file_mmap (memfds are opened read-write).
            match flags as u32 & MAP_TYPE {
                MAP_SHARED | MAP_SHARED_VALIDATE => vf |= VmFlags::SHARED | VmFlags::MAYSHARE,
                MAP_PRIVATE => {}
                _ => return Err(Errno::EINVAL),
            }
            if vf & VmFlags::GROWSDOWN != 0 {
                return Err(Errno::EINVAL);
            }
            // memfd_check_seals_mmap, as for a shmem memfd.
            let sealed = crate::memfd::F_SEAL_WRITE | crate::memfd::F_SEAL_FUTURE_WRITE;
            if vf & VmFlags::SHARED != 0 && self.huge.files[&hf].seals & sealed != 0 {
                if vf & VmFlags::WRITE != 0 {
                    return Err(Errno::EPERM);
                }
                vf &= !VmFlags::MAYWRITE;
            }
            if has(MAP_NORESERVE) {
                vf |= VmFlags::NORESERVE;
            }
            vf |= VmFlags::HUGETLB | VmFlags::DONTEXPAND;
            let pgoff = off / PAGE_SIZE;
            return self.mmap_hugetlb(mm, start, len, vf, fixed, pgoff, h, flags, Some(hf));
        }
        if let Some(f) = file {
            return self.mmap_file(mm, start, len, vf, fixed, off, f, flags, prot);
        }
        let shared = match flags as u32 & MAP_TYPE {
            MAP_SHARED => {
                if vf & VmFlags::GROWSDOWN != 0 {
                    return Err(Errno::EINVAL);
                }
                vf |= VmFlags::SHARED | VmFlags::MAYSHARE;
                true
            }
            MAP_DROPPABLE => {
                if has(MAP_LOCKED | MAP_HUGETLB) || vf & VmFlags::GROWSDOWN != 0 {
                    return Err(Errno::EINVAL);
                }
                vf |= VmFlags::DROPPABLE
                    | VmFlags::NORESERVE
                    | VmFlags::WIPEONFORK
                    | VmFlags::DONTDUMP;
                false
            }
            MAP_PRIVATE => false,
            _ => return Err(Errno::EINVAL),
        };
        if has(MAP_NORESERVE) {
            vf |= VmFlags::NORESERVE;
        }
        if let Some(h) = huge {
            // A file mapping: it cannot grow down, is never charged to the
            // commit, and hugetlbfs_file_mmap makes it VM_HUGETLB |
            // VM_DONTEXPAND; mlock does not lock it (but populates it).
            if vf & VmFlags::GROWSDOWN != 0 {
                return Err(Errno::EINVAL);
            }
            vf |= VmFlags::HUGETLB | VmFlags::DONTEXPAND;
            return self.mmap_hugetlb(mm, start, len, vf, fixed, off / PAGE_SIZE, h, flags, None);
        }
        if accountable(vf) {
            vf |= VmFlags::ACCOUNT;
        }
        self.make_room(mm, start, len, fixed)?;
        let (backing, pgoff) = if shared {
            let id = ShmemId(self.new_id());
            self.shmems.insert(id, Shmem::new(len));
            (
                Backing::Shmem {
                    obj: id,
                    anon_vma: false,
                },
                0,
            )
        } else {
            (Backing::Anon { chain: Vec::new() }, start / PAGE_SIZE)
        };
        let v = Vma {
            start,
            end: start + len,
            flags: VmFlags(vf),
            pgoff,
            backing,
            uffd: None,
        };
        self.install_vma(mm, v, flags)
    }

    /// Links and inserts a new VMA, merges it with its neighbours, and
    /// populates it as `do_mmap`'s `*populate` says: for `VM_LOCKED`, or
    /// `MAP_POPULATE` without `MAP_NONBLOCK` (`mm_populate` ignores errors).
    fn install_vma(&mut self, mm: MmId, mut v: Vma, flags: u64) -> Result<u64, Errno> {
        // __mmap_complete: a new VMA is soft-dirty, also where it merges.
        v.flags = VmFlags(self.new_vma_flags(v.flags.0));
        let (start, end, vf) = (v.start, v.end, v.flags.0);
        self.vma_link(mm, &v);
        self.mm_mut(mm).vmas.insert(v);
        self.merge_vma_at(mm, end);
        self.merge_vma_at(mm, start);
        let populate = u64::from(MAP_POPULATE | MAP_NONBLOCK);
        if vf & VmFlags::LOCKED != 0 || flags & populate == u64::from(MAP_POPULATE) {
            let _ = self.populate(mm, start, end, true);
        }
        Ok(start)
    }

    /// `do_mmap` and `mmap_region` for a shmem file: a shared or private
    /// mapping of the file at page offset `off / PAGE_SIZE`.
    #[allow(clippy::too_many_arguments)]
    fn mmap_file(
        &mut self,
        mm: MmId,
        start: u64,
        len: u64,
        mut vf: u64,
        fixed: bool,
        off: u64,
        file: FileId,
        flags: u64,
        prot: u64,
    ) -> Result<u64, Errno> {
        let f = &self.files[&file];
        let (obj, readable, writable) = (f.shmem(Errno::ENODEV), f.readable(), f.writable());
        let shared = match flags as u32 & MAP_TYPE {
            // Only the legacy flags; shmem supports no others.
            MAP_SHARED_VALIDATE if flags & !LEGACY_MAP_MASK != 0 => return Err(Errno::EOPNOTSUPP),
            MAP_SHARED | MAP_SHARED_VALIDATE => {
                if prot & u64::from(PROT_WRITE) != 0 && !writable {
                    return Err(Errno::EACCES);
                }
                if !writable {
                    // Never writable, not even by mprotect later.
                    vf &= !VmFlags::MAYWRITE;
                }
                true
            }
            MAP_PRIVATE => false,
            _ => return Err(Errno::EINVAL),
        };
        if !readable {
            return Err(Errno::EACCES);
        }
        if vf & VmFlags::GROWSDOWN != 0 {
            return Err(Errno::EINVAL);
        }
        let obj = obj?;
        // memfd_check_seals_mmap: a write-sealed file maps shared only
        // read-only, and for good.
        let seals = self.shmems[&obj].seals;
        if shared && seals & (crate::memfd::F_SEAL_WRITE | crate::memfd::F_SEAL_FUTURE_WRITE) != 0 {
            if vf & VmFlags::WRITE != 0 {
                return Err(Errno::EPERM);
            }
            vf &= !VmFlags::MAYWRITE;
        }
        if shared {
            vf |= VmFlags::SHARED | VmFlags::MAYSHARE;
        }
        if flags & u64::from(MAP_NORESERVE) != 0 {
            vf |= VmFlags::NORESERVE;
        }
        if accountable(vf) {
            vf |= VmFlags::ACCOUNT;
        }
        self.make_room(mm, start, len, fixed)?;
        let v = Vma {
            start,
            end: start + len,
            flags: VmFlags(vf),
            pgoff: off / PAGE_SIZE,
            backing: if shared {
                Backing::Shmem {
                    obj,
                    anon_vma: false,
                }
            } else {
                Backing::PrivateFile {
                    obj,
                    chain: Vec::new(),
                }
            },
            uffd: None,
        };
        self.install_vma(mm, v, flags)
    }

    /// `mmap_region` for hugetlb memory. What was mapped under `MAP_FIXED`
    /// goes first; then the file and its reservation are made, and a
    /// reservation the pool cannot meet is `ENOMEM`, with the old mapping
    /// gone, as in Linux (whose page tables were already cleared for the
    /// file's mmap).
    #[allow(clippy::too_many_arguments)]
    fn mmap_hugetlb(
        &mut self,
        mm: MmId,
        start: u64,
        len: u64,
        mut vf: u64,
        fixed: bool,
        pgoff: u64,
        h: usize,
        flags: u64,
        file: Option<crate::ids::HugeFileId>,
    ) -> Result<u64, Errno> {
        let populate = vf & VmFlags::LOCKED != 0
            || flags & u64::from(MAP_POPULATE | MAP_NONBLOCK) == u64::from(MAP_POPULATE);
        vf &= !VmFlags::LOCKED_MASK;
        self.make_room(mm, start, len, fixed)?;
        let backing = self.hugetlb_mmap_setup(h, len, pgoff, vf, file)?;
        let v = Vma {
            start,
            end: start + len,
            flags: VmFlags(self.new_vma_flags(vf)),
            pgoff,
            backing,
            uffd: None,
        };
        self.vma_link(mm, &v);
        self.mm_mut(mm).vmas.insert(v);
        if populate {
            let _ = self.populate(mm, start, start + len, true);
        }
        Ok(start)
    }

    /// `hugetlb_get_unmapped_area`: a fixed address must be huge page
    /// aligned (`EINVAL`); a hint is rounded up to the huge page size; the
    /// search wants an aligned range.
    fn hugetlb_get_unmapped_area(
        &self,
        mm: MmId,
        addr: u64,
        len: u64,
        fixed: bool,
        h: usize,
    ) -> Result<u64, Errno> {
        let size = crate::hugetlb::huge_size(h);
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        let found = if fixed {
            if addr & (size - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            addr
        } else {
            let vmas = &self.mm(mm).vmas;
            let hint = if addr == 0 {
                0
            } else {
                addr.checked_add(size - 1).map_or(0, |a| a & !(size - 1))
            };
            let min = self.cfg.mmap_min_addr.max(PAGE_SIZE);
            if hint != 0 && hint <= TASK_SIZE - len && hint >= min && vmas.fits(hint, len) {
                hint
            } else {
                vmas.find_gap_aligned(len, size, min, TASK_SIZE)
                    .ok_or(Errno::ENOMEM)?
            }
        };
        if found > TASK_SIZE - len {
            return Err(Errno::ENOMEM);
        }
        if found < self.cfg.mmap_min_addr {
            return Err(Errno::EPERM);
        }
        Ok(found)
    }

    /// `mmap_region`'s start: under `MAP_FIXED` whatever is mapped in
    /// `[start, start + len)` goes; then the map count must allow one more.
    fn make_room(&mut self, mm: MmId, start: u64, len: u64, fixed: bool) -> Result<(), Errno> {
        if fixed && self.mm(mm).vmas.any_overlap(start, start + len) {
            self.munmap_checked(mm, start, start + len)?;
        }
        if self.mm(mm).vmas.len() >= self.cfg.max_map_count {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    /// `round_hint_to_min`.
    fn round_hint_to_min(&self, hint: u64) -> u64 {
        let hint = hint & !(PAGE_SIZE - 1);
        let min = self.cfg.mmap_min_addr;
        if hint != 0 && hint < min {
            page_align(min).unwrap_or(min)
        } else {
            hint
        }
    }

    /// `__get_unmapped_area` with x86's `arch_get_unmapped_area_topdown`:
    /// a fixed address is checked, not searched; a hint is used if the
    /// range is free (keeping a growing-down neighbour's guard gap); else
    /// the highest free range below the mmap base.
    pub(crate) fn get_unmapped_area(
        &self,
        mm: MmId,
        addr: u64,
        len: u64,
        fixed: bool,
    ) -> Result<u64, Errno> {
        if len > TASK_SIZE {
            return Err(Errno::ENOMEM);
        }
        let vmas = &self.mm(mm).vmas;
        let found = if fixed {
            addr
        } else {
            let min = self.cfg.mmap_min_addr.max(PAGE_SIZE);
            let hint = addr & !(PAGE_SIZE - 1);
            let hint_ok = hint != 0 && hint <= TASK_SIZE - len && vmas.fits(hint, len);
            if hint_ok {
                hint
            } else {
                vmas.find_gap(len, 0, min, TASK_SIZE).ok_or(Errno::ENOMEM)?
            }
        };
        if found > TASK_SIZE - len {
            return Err(Errno::ENOMEM);
        }
        if found & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        // security_mmap_addr / cap_mmap_addr (no CAP_SYS_RAWIO here).
        if found < self.cfg.mmap_min_addr {
            return Err(Errno::EPERM);
        }
        Ok(found)
    }

    /// Bytes of `mm` in `VM_LOCKED` mappings (`mm->locked_vm`).
    pub(crate) fn locked_bytes(&self, mm: MmId) -> u64 {
        self.mm(mm)
            .vmas
            .iter()
            .filter(|v| v.flags.has(VmFlags::LOCKED))
            .map(|v| v.end - v.start)
            .sum()
    }

    /// `__mm_populate`: fault `[start, end)` in, VMA by VMA, the way
    /// `populate_vma_page_range` does (write faults for private writable
    /// memory, read faults otherwise, where Linux's FOLL_UNSHARE would also
    /// copy a COW-shared page: not done here, see CONFORMANCE.md; nothing for
    /// `VM_LOCKONFAULT`; `PROT_NONE` memory fails). With `ignore_errors`
    /// a failing VMA is skipped; otherwise the first failure is returned.
    pub(crate) fn populate(
        &mut self,
        mm: MmId,
        start: u64,
        end: u64,
        ignore_errors: bool,
    ) -> Result<(), Errno> {
        let mut cur = start;
        while cur < end {
            let Some(v) = self
                .mm(mm)
                .vmas
                .overlapping(cur, end)
                .first()
                .and_then(|&s| self.mm(mm).vmas.get(s))
                .cloned()
            else {
                break;
            };
            let (s, e) = (cur.max(v.start), end.min(v.end));
            cur = e;
            if v.flags.has(VmFlags::LOCKONFAULT) {
                continue;
            }
            let r = if !v.flags.has(VmFlags::ACCESS) {
                Err(Errno::EFAULT)
            } else {
                let write = v.flags.0 & (VmFlags::WRITE | VmFlags::SHARED) == VmFlags::WRITE;
                self.fault_range(mm, s, e, write)
            };
            if let Err(err) = r {
                if !ignore_errors {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Faults `[start, end)` in as GUP does for populate: write faults
    /// (`FOLL_WRITE`) or read faults.
    pub(crate) fn fault_range(
        &mut self,
        mm: MmId,
        start: u64,
        end: u64,
        write: bool,
    ) -> Result<(), Errno> {
        for va in (start..end).step_by(PAGE_SIZE as usize) {
            let ff = crate::fault::FaultFlags {
                write,
                ..Default::default()
            };
            match self.handle_mm_fault(mm, va, ff) {
                Ok(()) | Err(crate::errno::Fault::Retry) => {}
                Err(crate::errno::Fault::Oom) => return Err(Errno::ENOMEM),
                Err(_) => return Err(Errno::EFAULT),
            }
        }
        Ok(())
    }

    /// `munmap` (`do_vmi_munmap`): the length is checked against
    /// TASK_SIZE before it is rounded up; nothing mapped is success.
    pub(crate) fn do_munmap(&mut self, mm: MmId, addr: u64, len: u64) -> Result<(), Errno> {
        if addr & (PAGE_SIZE - 1) != 0 || addr > TASK_SIZE || len > TASK_SIZE - addr {
            return Err(Errno::EINVAL);
        }
        let len = page_align(len).ok_or(Errno::EINVAL)?;
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        self.munmap_checked(mm, addr, addr + len)
    }

    /// Unmaps `[start, end)` unless that would split one VMA in three with
    /// the map count at its limit (`vms_gather_munmap_vmas`: `ENOMEM`).
    pub(crate) fn munmap_checked(&mut self, mm: MmId, start: u64, end: u64) -> Result<(), Errno> {
        if !self.hugetlb_split_ok(mm, start) || !self.hugetlb_split_ok(mm, end) {
            return Err(Errno::EINVAL);
        }
        let inner = self
            .mm(mm)
            .vmas
            .find(start)
            .is_some_and(|v| v.start < start && v.end > end);
        if inner && self.mm(mm).vmas.len() >= self.cfg.max_map_count {
            return Err(Errno::ENOMEM);
        }
        self.unmap_region(mm, start, end);
        Ok(())
    }

    /// Splits the VMA strictly containing `addr` (no-op otherwise).
    pub(crate) fn split_vma_at(&mut self, mm: MmId, addr: u64) {
        if let Some(hi) = self.mm_mut(mm).vmas.split_at(addr).cloned() {
            self.vma_link(mm, &hi);
        }
    }

    /// `vma_modify_flags`: gives `[start, end)` (inside one VMA) the flags
    /// `flags`, splitting the VMA at the edges and merging what can merge
    /// afterwards.
    pub(crate) fn modify_vma_flags(&mut self, mm: MmId, start: u64, end: u64, flags: u64) {
        debug_assert!(self.hugetlb_split_ok(mm, start) && self.hugetlb_split_ok(mm, end));
        self.split_vma_at(mm, start);
        self.split_vma_at(mm, end);
        if let Some(v) = self.mm_mut(mm).vmas.get_mut(start) {
            v.flags = VmFlags(flags);
        }
        self.merge_vma_at(mm, end);
        self.merge_vma_at(mm, start);
    }

    /// Merges the VMAs meeting at `addr` if compatible.
    pub(crate) fn merge_vma_at(&mut self, mm: MmId, addr: u64) {
        let Some(prev) = addr
            .checked_sub(1)
            .and_then(|a| self.mm(mm).vmas.find(a))
            .cloned()
        else {
            return;
        };
        let ignore = self.merge_ignores();
        if let Some(gone) = self.mm_mut(mm).vmas.merge_at(addr, ignore) {
            // The survivor may have adopted the absorbed VMA's anon_vma chain.
            let kept = self
                .mm(mm)
                .vmas
                .get(prev.start)
                .cloned()
                .expect("merged vma");
            if kept.backing != prev.backing {
                self.vma_link(mm, &kept);
                self.vma_unlink(mm, &prev);
            }
            self.vma_unlink(mm, &gone);
        }
    }

    /// Removes every mapping in `[start, end)`: split at the edges, zap and
    /// flush through an mmu_gather, free emptied tables, drop the VMAs.
    pub(crate) fn unmap_region(&mut self, mm: MmId, start: u64, end: u64) {
        self.split_vma_at(mm, start);
        self.split_vma_at(mm, end);
        let starts = self.mm(mm).vmas.overlapping(start, end);
        for &s in &starts {
            let v = self.mm(mm).vmas.get(s).cloned().expect("vma");
            if v.is_hugetlb() {
                self.unmap_hugepage_range(mm, &v, v.start, v.end, true);
            }
        }
        let mut g = MmuGather::new(mm);
        self.zap_range(&mut g, start, end, Zap::Unmap);
        self.tlb_finish(g);
        for s in starts {
            if let Some(v) = self.mm_mut(mm).vmas.remove(s) {
                self.vma_unlink(mm, &v);
            }
        }
    }
}
