//! memfd: shmem files reached through file descriptors — creation,
//! `ftruncate`, `fallocate` (allocation and hole punching), `close`, and
//! the shared mappings `mmap` makes of them.
//!
//! Mirrors `mm/memfd.c` (`memfd_create`), `mm/shmem.c` (`shmem_setattr`,
//! `shmem_fallocate`, `shmem_truncate_range`) and `fs/open.c`
//! (`vfs_fallocate`, `do_sys_ftruncate`) as of Linux 6.18. A memfd is the
//! same shmem object a shared anonymous mapping uses, with a size and
//! descriptor references: it lives while a descriptor or a mapping does.
//! Shrinking or punching a hole unmaps the pages from every mapping first
//! (`unmap_mapping_range`, keeping guard markers) and then drops them from
//! the page cache; partial pages at the edges are zeroed. Private
//! mappings of a memfd read its pages and copy them on write
//! (`Backing::PrivateFile`). Hugetlb memfds (`MFD_HUGETLB`) are `EINVAL`
//! for now.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::errno::Errno;
use crate::frame::{FolioFlags, FrameUse, Mapping};
use crate::gather::{MmuGather, Zap};
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{MmId, Pid, ShmemId};
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
/// The first descriptor a process gets (0 to 2 are the console).
const FIRST_FD: i32 = 3;

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
        if flags & MFD_HUGETLB != 0 {
            // Not yet: a hugetlb memfd is a hugetlbfs file (docs/CONFORMANCE.md).
            return Err(Errno::EINVAL);
        }
        let id = ShmemId(self.new_id());
        self.shmems.insert(
            id,
            Shmem {
                pages_len: 0,
                pages: BTreeMap::new(),
                i_mmap: BTreeSet::new(),
                fd_refs: 1,
                size: 0,
            },
        );
        let fds = &mut self.procs.get_mut(&pid).expect("live process").fds;
        let fd = (FIRST_FD..)
            .find(|f| !fds.contains_key(f))
            .expect("a free descriptor");
        fds.insert(fd, id);
        Ok(fd as u64)
    }

    /// The shmem object behind descriptor `fd` of `pid`.
    pub(crate) fn file_of(&self, pid: Pid, fd: u64) -> Result<ShmemId, Errno> {
        let fd = i32::try_from(fd as i64).map_err(|_| Errno::EBADF)?;
        self.procs
            .get(&pid)
            .and_then(|p| p.fds.get(&fd))
            .copied()
            .ok_or(Errno::EBADF)
    }

    /// `close(fd)`.
    pub fn close(&mut self, pid: Pid, fd: u64) -> Result<(), Errno> {
        let obj = self.file_of(pid, fd)?;
        let p = self.procs.get_mut(&pid).expect("live process");
        p.fds.remove(&(fd as i32));
        self.drop_file_ref(obj);
        Ok(())
    }

    /// Closes every descriptor of an exiting process.
    pub(crate) fn close_all_files(&mut self, pid: Pid) {
        let fds = self
            .procs
            .get_mut(&pid)
            .map(|p| core::mem::take(&mut p.fds))
            .unwrap_or_default();
        for obj in fds.into_values() {
            self.drop_file_ref(obj);
        }
    }

    fn drop_file_ref(&mut self, obj: ShmemId) {
        if let Some(s) = self.shmems.get_mut(&obj) {
            s.fd_refs -= 1;
        }
        self.shmem_release_if_unused(obj);
    }

    /// `ftruncate(fd, length)`: a smaller file loses its pages beyond the
    /// new end from every mapping and the page cache; the rest of the last
    /// page reads as zeroes.
    pub fn ftruncate(&mut self, pid: Pid, fd: u64, length: u64) -> Result<(), Errno> {
        self.proc_mm(pid)?;
        if (length as i64) < 0 {
            return Err(Errno::EINVAL);
        }
        let obj = self.file_of(pid, fd)?;
        let old = self.shmems[&obj].size;
        if length < old {
            self.shmem_punch(obj, length, old.div_ceil(PAGE_SIZE) * PAGE_SIZE, true);
        }
        let s = self.shmems.get_mut(&obj).expect("live shmem");
        s.size = length;
        s.pages_len = length.div_ceil(PAGE_SIZE);
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
        let obj = self.file_of(pid, fd)?;
        if (off as i64) < 0 || (len as i64) <= 0 {
            return Err(Errno::EINVAL);
        }
        let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0
            || (punch && mode & FALLOC_FL_KEEP_SIZE == 0)
        {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = off
            .checked_add(len)
            .filter(|&e| (e as i64) >= 0)
            .ok_or(Errno::EFBIG)?;
        if punch {
            self.shmem_punch(obj, off, end, false);
            return Ok(());
        }
        for idx in off / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
            if self.shmems[&obj].pages.contains_key(&idx) {
                continue;
            }
            let new = self.frames.alloc(0, FrameUse::Folio).ok_or(Errno::ENOSPC)?;
            self.hw.zero_frame(new);
            let f = self.frames.get_mut(new);
            f.mapping = Mapping::Shmem { obj, index: idx };
            f.flags.set(FolioFlags::SWAPBACKED, true);
            let s = self.shmems.get_mut(&obj).expect("live shmem");
            s.pages.insert(idx, ShmemPage::Folio(new));
        }
        let s = self.shmems.get_mut(&obj).expect("live shmem");
        if mode & FALLOC_FL_KEEP_SIZE == 0 && end > s.size {
            s.size = end;
            s.pages_len = end.div_ceil(PAGE_SIZE);
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
