//! memfd and the shmem file operations every tmpfs file has: creation,
//! seals, `ftruncate`, `fallocate` (allocation and hole punching).
//!
//! Mirrors `mm/memfd.c` (`memfd_create`, `memfd_add_seals`), `mm/shmem.c`
//! (`shmem_setattr`, `shmem_fallocate`, `shmem_truncate_range`) and
//! `fs/open.c` (`vfs_fallocate`, `do_sys_ftruncate`) as of Linux 6.18. A
//! memfd is the same shmem object a shared anonymous mapping uses, with a
//! size and descriptor references: it lives while a descriptor or a
//! mapping does. Shrinking or punching a hole unmaps the pages from every
//! mapping first (`unmap_mapping_range`, keeping guard markers) and then
//! drops them from the page cache; partial pages at the edges are zeroed.
//! Private mappings of a memfd read its pages and copy them on write
//! (`Backing::PrivateFile`). Seals are checked where Linux checks them:
//! here, in `write` (`file.rs`) and in `mmap`. Hugetlb memfds
//! (`MFD_HUGETLB`) are `EINVAL` for now.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::gather::{MmuGather, Zap};
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{FileId, MmId, Pid, ShmemId};
use crate::system::{MemSystem, Shmem, ShmemPage};

/// `MFD_CLOEXEC`.
pub const MFD_CLOEXEC: u64 = 0x1;
/// `MFD_ALLOW_SEALING`.
pub const MFD_ALLOW_SEALING: u64 = 0x2;
/// `MFD_HUGETLB`.
pub const MFD_HUGETLB: u64 = 0x4;
/// `MFD_NOEXEC_SEAL`.
pub const MFD_NOEXEC_SEAL: u64 = 0x8;
/// `MFD_EXEC`.
pub const MFD_EXEC: u64 = 0x10;
/// `MFD_NAME_MAX_LEN`.
const NAME_MAX: usize = 249;
/// `FALLOC_FL_KEEP_SIZE`.
pub const FALLOC_FL_KEEP_SIZE: u64 = 0x1;
/// `FALLOC_FL_PUNCH_HOLE`.
pub const FALLOC_FL_PUNCH_HOLE: u64 = 0x2;
/// `FALLOC_FL_COLLAPSE_RANGE`.
const FALLOC_FL_COLLAPSE_RANGE: u64 = 0x08;
/// `FALLOC_FL_ZERO_RANGE`.
const FALLOC_FL_ZERO_RANGE: u64 = 0x10;
/// `FALLOC_FL_INSERT_RANGE`.
const FALLOC_FL_INSERT_RANGE: u64 = 0x20;
/// `FALLOC_FL_UNSHARE_RANGE`.
const FALLOC_FL_UNSHARE_RANGE: u64 = 0x40;
/// `FALLOC_FL_WRITE_ZEROES`.
const FALLOC_FL_WRITE_ZEROES: u64 = 0x80;
/// The bits that select a mode (`FALLOC_FL_MODE_MASK`; no bit is
/// `FALLOC_FL_ALLOCATE_RANGE`).
const FALLOC_FL_MODE_MASK: u64 = FALLOC_FL_PUNCH_HOLE
    | FALLOC_FL_COLLAPSE_RANGE
    | FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_INSERT_RANGE
    | FALLOC_FL_UNSHARE_RANGE
    | FALLOC_FL_WRITE_ZEROES;
/// `F_SEAL_SEAL`: no more seals.
pub const F_SEAL_SEAL: u32 = 0x1;
/// `F_SEAL_SHRINK`.
pub const F_SEAL_SHRINK: u32 = 0x2;
/// `F_SEAL_GROW`.
pub const F_SEAL_GROW: u32 = 0x4;
/// `F_SEAL_WRITE`.
pub const F_SEAL_WRITE: u32 = 0x8;
/// `F_SEAL_FUTURE_WRITE`.
pub const F_SEAL_FUTURE_WRITE: u32 = 0x10;
/// `F_SEAL_EXEC`.
pub const F_SEAL_EXEC: u32 = 0x20;
/// Every seal (`F_ALL_SEALS`).
const F_ALL_SEALS: u32 = 0x3f;

impl<H: Hw> MemSystem<H> {
    /// `memfd_create(name, flags)`: a new empty shmem file on the lowest
    /// free descriptor.
    pub fn memfd_create(&mut self, pid: Pid, name: u64, flags: u64) -> Result<u64, Errno> {
        self.proc_mm(pid)?;
        let all = MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB | MFD_NOEXEC_SEAL | MFD_EXEC;
        let huge_bits = if flags & MFD_HUGETLB != 0 {
            0x3f << 26
        } else {
            0
        };
        if flags & !(all | huge_bits) != 0
            || flags & (MFD_EXEC | MFD_NOEXEC_SEAL) == (MFD_EXEC | MFD_NOEXEC_SEAL)
        {
            return Err(Errno::EINVAL);
        }
        // strnlen_user over at most MFD_NAME_MAX_LEN + 1 bytes.
        let mut len = None;
        for i in 0..=NAME_MAX {
            let mut b = [0u8];
            self.copy_from_user(
                pid,
                name.checked_add(i as u64).ok_or(Errno::EFAULT)?,
                &mut b,
            )?;
            if b[0] == 0 {
                len = Some(i);
                break;
            }
        }
        if len.is_none() {
            return Err(Errno::EINVAL);
        }
        // vm.memfd_noexec 0: no MFD_EXEC nor MFD_NOEXEC_SEAL means MFD_EXEC.
        let (mode, seals) = if flags & MFD_NOEXEC_SEAL != 0 {
            (0o666, F_SEAL_EXEC)
        } else if flags & MFD_ALLOW_SEALING != 0 {
            (0o777, 0)
        } else {
            (0o777, F_SEAL_SEAL)
        };
        if flags & MFD_HUGETLB != 0 {
            return self.hugetlb_memfd(pid, flags, mode, seals);
        }
        let id = ShmemId(self.new_id());
        let mut s = Shmem::new(0);
        s.mode = (s.mode & !0o777) | mode;
        s.seals = seals;
        self.shmems.insert(id, s);
        Ok(self.install_fd(pid, id, crate::file::O_RDWR))
    }

    /// The seals, mode and mappings (`i_mmap`) of the memfd behind open
    /// file `file`: a shmem file's or a hugetlbfs file's.
    fn memfd_inode(&self, file: FileId) -> Result<(u32, u32, Vec<crate::system::VmaKey>), Errno> {
        if let Some(h) = self.huge_file_obj(file) {
            let f = &self.huge.files[&h];
            return Ok((f.seals, f.mode, f.i_mmap.iter().copied().collect()));
        }
        let s = &self.shmems[&self.files[&file].shmem(Errno::EINVAL)?];
        Ok((s.seals, s.mode, s.i_mmap.iter().copied().collect()))
    }

    /// The seals of the memfd behind open file `file` (`F_GET_SEALS`).
    pub(crate) fn get_seals(&self, file: FileId) -> Result<u32, Errno> {
        self.memfd_inode(file).map(|(seals, _, _)| seals)
    }

    /// `memfd_add_seals`: `F_ADD_SEALS` through open file `file`.
    pub(crate) fn add_seals(&mut self, file: FileId, seals: u32) -> Result<(), Errno> {
        let f = &self.files[&file];
        if !f.writable() {
            return Err(Errno::EPERM);
        }
        if seals & !F_ALL_SEALS != 0 {
            return Err(Errno::EINVAL);
        }
        let (have, mode, i_mmap) = self.memfd_inode(file)?;
        if have & F_SEAL_SEAL != 0 {
            return Err(Errno::EPERM);
        }
        // mapping_deny_writable: no shared mapping may still be able to
        // write.
        if seals & F_SEAL_WRITE != 0 && have & F_SEAL_WRITE == 0 {
            let writable = i_mmap.iter().any(|&(mm, start)| {
                self.mm(mm).vmas.get(start).is_some_and(|v| {
                    v.flags.has(crate::vma::VmFlags::SHARED)
                        && v.flags.has(crate::vma::VmFlags::MAYWRITE)
                })
            });
            if writable {
                return Err(Errno::EBUSY);
            }
        }
        // F_SEAL_EXEC on an executable file also seals writing (W^X),
        // without the check above, as Linux does.
        let mut seals = seals;
        if seals & F_SEAL_EXEC != 0 && mode & 0o111 != 0 {
            seals |= F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
        }
        match self.huge_file_obj(file) {
            Some(h) => self.huge.files.get_mut(&h).expect("open file").seals |= seals,
            None => {
                let obj = self.files[&file].shmem(Errno::EINVAL)?;
                self.shmems.get_mut(&obj).expect("live shmem").seals |= seals;
            }
        }
        Ok(())
    }

    /// `ftruncate(fd, length)`: a smaller file loses its pages beyond the
    /// new end from every mapping and the page cache; the rest of the last
    /// page reads as zeroes.
    pub fn ftruncate(&mut self, pid: Pid, fd: u64, length: u64) -> Result<(), Errno> {
        self.proc_mm(pid)?;
        if (length as i64) < 0 {
            return Err(Errno::EINVAL);
        }
        let f = &self.files[&self.open_file(pid, fd)?];
        if !f.writable() {
            return Err(Errno::EINVAL);
        }
        if let Some(file) = self.huge_file_obj(self.open_file(pid, fd)?) {
            return self.hugetlbfs_setattr(file, length);
        }
        let obj = f.shmem(Errno::EINVAL)?;
        self.shmem_set_size(obj, length)
    }

    /// `shmem_setattr` for `ATTR_SIZE`: what truncation (`ftruncate`,
    /// `O_TRUNC`) does, seals permitting.
    pub(crate) fn shmem_set_size(&mut self, obj: ShmemId, length: u64) -> Result<(), Errno> {
        let s = &self.shmems[&obj];
        let old = s.size;
        if (length < old && s.seals & F_SEAL_SHRINK != 0)
            || (length > old && s.seals & F_SEAL_GROW != 0)
        {
            return Err(Errno::EPERM);
        }
        // A size that does not grow truncates (shmem_truncate_range(newsize,
        // -1)): pages a failed write left past the old end go too.
        let last = s
            .pages
            .keys()
            .next_back()
            .map_or(0, |&i| (i + 1) * PAGE_SIZE);
        let end = last.max(old.div_ceil(PAGE_SIZE) * PAGE_SIZE);
        if length <= old && length < end {
            self.shmem_punch(obj, length, end, true);
        }
        self.shmems.get_mut(&obj).expect("live shmem").size = length;
        Ok(())
    }

    /// `fallocate(fd, mode, offset, len)`: allocate pages (growing the file
    /// unless `FALLOC_FL_KEEP_SIZE`), or punch a hole
    /// (`FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
    pub fn fallocate(
        &mut self,
        pid: Pid,
        fd: u64,
        mode: u64,
        off: u64,
        len: u64,
    ) -> Result<(), Errno> {
        self.proc_mm(pid)?;
        // ksys_fallocate, vfs_fallocate and shmem_fallocate, in their order.
        let file = self.open_file(pid, fd)?;
        if (off as i64) < 0 || (len as i64) <= 0 {
            return Err(Errno::EINVAL);
        }
        let mode = mode & 0xffff_ffff;
        if mode & !(FALLOC_FL_MODE_MASK | FALLOC_FL_KEEP_SIZE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
        match mode & FALLOC_FL_MODE_MASK {
            // 0: allocate.
            0 | FALLOC_FL_UNSHARE_RANGE | FALLOC_FL_ZERO_RANGE => {}
            FALLOC_FL_PUNCH_HOLE if keep => {}
            FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_WRITE_ZEROES if !keep => {
            }
            _ => return Err(Errno::EOPNOTSUPP),
        }
        let f = &self.files[&file];
        if !f.writable() {
            return Err(Errno::EBADF);
        }
        if let Some(h) = self.huge_file_obj(file) {
            return self.hugetlbfs_fallocate(h, mode, off, len);
        }
        let f = &self.files[&file];
        let obj = f.shmem(Errno::ENODEV)?;
        let end = off
            .checked_add(len)
            .filter(|&e| (e as i64) >= 0)
            .ok_or(Errno::EFBIG)?;
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let seals = self.shmems[&obj].seals;
        if mode & FALLOC_FL_PUNCH_HOLE != 0 {
            if seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0 {
                return Err(Errno::EPERM);
            }
            self.shmem_punch(obj, off, end, false);
            return Ok(());
        }
        if seals & F_SEAL_GROW != 0 && end > self.shmems[&obj].size {
            return Err(Errno::EPERM);
        }
        for idx in off / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
            if let Some(page) = self.shmems[&obj].pages.get(&idx).copied() {
                // A second fallocate of a fallocated page initialises it
                // (shmem_get_folio's SGP_FALLOC on an existing folio).
                if let ShmemPage::Folio(p) = page {
                    self.frames
                        .get_mut(p)
                        .flags
                        .set(FolioFlags::FALLOCATED, false);
                }
                continue;
            }
            let new = self.frames.alloc(0, FrameUse::Folio).ok_or(Errno::ENOSPC)?;
            self.hw.zero_frame(new);
            let f = self.frames.get_mut(new);
            f.mapping = Mapping::Shmem { obj, index: idx };
            f.flags.set(FolioFlags::SWAPBACKED, true);
            f.flags.set(FolioFlags::FALLOCATED, true);
            let s = self.shmems.get_mut(&obj).expect("live shmem");
            s.pages.insert(idx, ShmemPage::Folio(new));
        }
        let s = self.shmems.get_mut(&obj).expect("live shmem");
        if !keep {
            s.size = s.size.max(end);
        }
        Ok(())
    }

    /// Removes file bytes `[start, end)` of a shmem object: whole pages
    /// leave every mapping (`unmap_mapping_range`, markers kept; with
    /// `even_cows`, as truncation does, also the pages private mappings
    /// copied) and then the page cache (`shmem_truncate_range`); the
    /// partial pages at the edges keep their place with those bytes zeroed.
    pub(crate) fn shmem_punch(&mut self, obj: ShmemId, start: u64, end: u64, even_cows: bool) {
        let (first, last) = (start.div_ceil(PAGE_SIZE), end / PAGE_SIZE);
        if first < last {
            let mappers: Vec<(MmId, u64)> = self.shmems[&obj].i_mmap.iter().copied().collect();
            for (m, vstart) in mappers {
                let Some(w) = self.mm(m).vmas.get(vstart).cloned() else {
                    continue;
                };
                let lo = first.max(w.pgoff);
                let hi = last.min(w.pgoff + (w.end - w.start) / PAGE_SIZE);
                if lo < hi {
                    let mut g = MmuGather::new(m);
                    let s = w.start + (lo - w.pgoff) * PAGE_SIZE;
                    let e = w.start + (hi - w.pgoff) * PAGE_SIZE;
                    let how = if even_cows || w.is_shared() {
                        Zap::Pages
                    } else {
                        Zap::FilePages(obj)
                    };
                    self.zap_range(&mut g, s, e, how);
                    self.tlb_finish(g);
                }
            }
            let s = self.shmems.get_mut(&obj).expect("live shmem");
            let idx: Vec<u64> = s.pages.range(first..last).map(|(&i, _)| i).collect();
            let dropped: Vec<ShmemPage> = idx.iter().filter_map(|i| s.pages.remove(i)).collect();
            for p in dropped {
                match p {
                    ShmemPage::Folio(h) => {
                        self.frames.put_folio(&mut self.hw, h, 1);
                    }
                    ShmemPage::Swap(e) => self.swap_free(e),
                    ShmemPage::Poisoned => {}
                }
            }
        }
        // Partial pages: zero the punched bytes where the page is in memory.
        let (start_page, end_page) = (start / PAGE_SIZE, end / PAGE_SIZE);
        if start % PAGE_SIZE != 0 {
            self.shmem_zero(obj, start, end.min((start_page + 1) * PAGE_SIZE));
        }
        if end % PAGE_SIZE != 0 && (end_page != start_page || start % PAGE_SIZE == 0) {
            self.shmem_zero(obj, (end_page * PAGE_SIZE).max(start), end);
        }
    }

    /// Zeroes file bytes `[start, end)` inside one page, if it is in memory.
    fn shmem_zero(&mut self, obj: ShmemId, start: u64, end: u64) {
        let Some(ShmemPage::Folio(page)) =
            self.shmems[&obj].pages.get(&(start / PAGE_SIZE)).copied()
        else {
            return;
        };
        let zeroes = alloc::vec![0u8; (end - start) as usize];
        self.hw
            .write_bytes(page.addr() + start % PAGE_SIZE, &zeroes);
    }
}
