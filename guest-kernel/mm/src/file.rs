//! Open files of shmem inodes and the descriptors that refer to them:
//! installing and closing descriptors, sharing them across `fork`, and
//! `read`, `write`, `pread64`, `pwrite64`, `lseek` and `fcntl` on them.
//!
//! Mirrors `fs/file.c` and `fs/read_write.c` (`vfs_read`, `vfs_write`,
//! `rw_verify_area`, `generic_file_llseek_size`, `vfs_setpos`),
//! `mm/filemap.c` (`generic_write_checks`, `generic_perform_write`,
//! `mapping_seek_hole_data`) and `mm/shmem.c` (`shmem_file_read_iter`,
//! `shmem_write_begin`, `shmem_file_llseek`) as of Linux 6.18. Reads of
//! holes give zeroes without allocating; writes allocate, swap in, and
//! grow the file. A copy to or from user memory that faults ends the call
//! at the fault: the bytes before it count, and only a call that moved
//! nothing is `EFAULT`.

use crate::errno::{Errno, Fault};
use crate::fault::Sgp;
use crate::frame::FolioFlags;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{FileId, Pid, ShmemId};
use crate::memfd::{F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_WRITE};
use crate::system::{FileObj, MemSystem, OpenFile, ShmemPage};
use crate::vma::TASK_SIZE;

/// The first descriptor a process gets (0 to 2 are the console).
const FIRST_FD: i32 = 3;
/// `O_ACCMODE` (3, both bits, is neither readable nor writable).
pub const O_ACCMODE: u32 = 0o3;
/// `O_WRONLY`.
pub const O_WRONLY: u32 = 0o1;
/// `O_RDWR`.
pub const O_RDWR: u32 = 0o2;
/// `O_APPEND`.
pub const O_APPEND: u32 = 0o2000;
/// `O_LARGEFILE`: every open file has it on 64-bit Linux.
pub const O_LARGEFILE: u32 = 0o100000;
/// `SEEK_SET`.
pub const SEEK_SET: u64 = 0;
/// `SEEK_CUR`.
pub const SEEK_CUR: u64 = 1;
/// `SEEK_END`.
pub const SEEK_END: u64 = 2;
/// `SEEK_DATA`.
pub const SEEK_DATA: u64 = 3;
/// `SEEK_HOLE`.
pub const SEEK_HOLE: u64 = 4;
/// `F_ADD_SEALS`.
pub const F_ADD_SEALS: u64 = 1033;
/// `F_GET_SEALS`.
pub const F_GET_SEALS: u64 = 1034;
/// `MAX_RW_COUNT`: the most one read or write moves.
const MAX_RW_COUNT: u64 = (i32::MAX as u64) & !(PAGE_SIZE - 1);
/// `MAX_LFS_FILESIZE`, tmpfs's `s_maxbytes`.
const MAX_LFS_FILESIZE: u64 = i64::MAX as u64;

/// `access_ok`: the whole buffer lies below the top of user space.
fn access_ok(ptr: u64, len: u64) -> bool {
    ptr.checked_add(len).is_some_and(|end| end <= TASK_SIZE)
}

impl<H: Hw> MemSystem<H> {
    /// A new open file of `obj` on the lowest free descriptor of `pid`.
    pub(crate) fn install_fd(&mut self, pid: Pid, obj: ShmemId, flags: u32) -> u64 {
        let id = FileId(self.new_id());
        self.files.insert(
            id,
            OpenFile {
                obj: FileObj::Shmem(obj),
                flags: flags | O_LARGEFILE,
                pos: 0,
                refs: 1,
            },
        );
        self.shmems.get_mut(&obj).expect("live shmem").fd_refs += 1;
        self.install_file(pid, id)
    }

    /// Puts open file `id` on the lowest free descriptor of `pid`.
    pub(crate) fn install_file(&mut self, pid: Pid, id: FileId) -> u64 {
        let fds = &mut self.procs.get_mut(&pid).expect("live process").fds;
        let fd = (FIRST_FD..)
            .find(|f| !fds.contains_key(f))
            .expect("a free descriptor");
        fds.insert(fd, id);
        fd as u64
    }

    /// The open file behind descriptor `fd` of `pid`.
    pub(crate) fn open_file(&self, pid: Pid, fd: u64) -> Result<FileId, Errno> {
        let fd = i32::try_from(fd as i64).map_err(|_| Errno::EBADF)?;
        self.procs
            .get(&pid)
            .and_then(|p| p.fds.get(&fd))
            .copied()
            .ok_or(Errno::EBADF)
    }

    /// `close(fd)`.
    pub fn close(&mut self, pid: Pid, fd: u64) -> Result<(), Errno> {
        let id = self.open_file(pid, fd)?;
        let p = self.procs.get_mut(&pid).expect("live process");
        p.fds.remove(&(fd as i32));
        self.drop_file_ref(id);
        Ok(())
    }

    /// Closes every descriptor of an exiting process.
    pub(crate) fn close_all_files(&mut self, pid: Pid) {
        let fds = self
            .procs
            .get_mut(&pid)
            .map(|p| core::mem::take(&mut p.fds))
            .unwrap_or_default();
        for id in fds.into_values() {
            self.drop_file_ref(id);
        }
    }

    /// `dup_fd` for `fork`: the child's descriptors refer to the same open
    /// files (and so share their positions).
    pub(crate) fn dup_fds(&mut self, pid: Pid) -> alloc::collections::BTreeMap<i32, FileId> {
        let fds = self.procs[&pid].fds.clone();
        for id in fds.values() {
            self.files.get_mut(id).expect("open file").refs += 1;
        }
        fds
    }

    fn drop_file_ref(&mut self, id: FileId) {
        let f = self.files.get_mut(&id).expect("open file");
        f.refs -= 1;
        if f.refs > 0 {
            return;
        }
        let obj = f.obj;
        self.files.remove(&id);
        match obj {
            FileObj::Shmem(obj) => {
                if let Some(s) = self.shmems.get_mut(&obj) {
                    s.fd_refs -= 1;
                }
                self.shmem_release_if_unused(obj);
            }
            FileObj::Uffd(ctx) => self.uffd_release(ctx),
            FileObj::Huge(file) => self.hugetlbfs_release(file),
            FileObj::Pagemap(_) | FileObj::ClearRefs(_) => {}
        }
    }

    /// The checks `ksys_pread64`, `vfs_read`/`vfs_write` and
    /// `rw_verify_area` make, in their order; the open file and the
    /// position to start at.
    fn rw_verify(
        &self,
        pid: Pid,
        fd: u64,
        buf: u64,
        count: u64,
        at: Option<u64>,
        write: bool,
    ) -> Result<(FileId, u64), Errno> {
        self.proc_mm(pid)?;
        if at.is_some_and(|p| (p as i64) < 0) {
            return Err(Errno::EINVAL);
        }
        let id = self.open_file(pid, fd)?;
        let f = &self.files[&id];
        if !(if write { f.writable() } else { f.readable() }) {
            return Err(Errno::EBADF);
        }
        if !access_ok(buf, count) {
            return Err(Errno::EFAULT);
        }
        let pos = at.unwrap_or(f.pos);
        if pos.checked_add(count).is_none_or(|e| (e as i64) < 0) {
            return Err(Errno::EINVAL);
        }
        Ok((id, pos))
    }

    /// `read(fd, buf, count)` (`at` is `None`) and `pread64(fd, buf,
    /// count, pos)`.
    pub fn file_read(
        &mut self,
        pid: Pid,
        fd: u64,
        buf: u64,
        count: u64,
        at: Option<u64>,
    ) -> Result<u64, Errno> {
        let (id, mut pos) = self.rw_verify(pid, fd, buf, count, at, false)?;
        if let FileObj::Pagemap(mm) = self.files[&id].obj {
            let n = self.pagemap_read(pid, mm, buf, count, pos)?;
            if at.is_none() {
                self.files.get_mut(&id).expect("open file").pos = pos + n;
            }
            return Ok(n);
        }
        if let Some(h) = self.huge_file_obj(id) {
            let n = self.hugetlbfs_read(pid, h, buf, count, pos)?;
            if at.is_none() {
                self.files.get_mut(&id).expect("open file").pos = pos + n;
            }
            return Ok(n);
        }
        // A userfaultfd has messages only for faults a handler waits on,
        // which this MM never queues (userfaultfd.rs).
        let obj = self.files[&id].shmem(Errno::EAGAIN)?;
        let count = count.min(MAX_RW_COUNT);
        let (mut done, mut error) = (0u64, None);
        let mut page = alloc::vec![0u8; PAGE_SIZE as usize];
        while done < count {
            let size = self.shmems[&obj].size;
            if pos >= size {
                break;
            }
            let (idx, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
            let n = (PAGE_SIZE - off).min(size - pos).min(count - done);
            match self.shmems[&obj].pages.get(&idx).copied() {
                Some(ShmemPage::Poisoned) => {
                    error = Some(Errno::EIO);
                    break;
                }
                Some(ShmemPage::Swap(_)) => match self.shmem_get_page(obj, idx, Sgp::Cache) {
                    Ok(p) => self.hw.read_bytes(p.addr(), &mut page),
                    Err(_) => {
                        error = Some(Errno::EIO);
                        break;
                    }
                },
                Some(ShmemPage::Folio(p)) => self.hw.read_bytes(p.addr(), &mut page),
                None => page.fill(0),
            }
            let piece = &page[off as usize..(off + n) as usize];
            let copied = self.copy_to_user_prefix(pid, buf + done, piece);
            done += copied;
            pos += copied;
            if copied < n {
                error = Some(Errno::EFAULT);
                break;
            }
        }
        if at.is_none() {
            self.files.get_mut(&id).expect("open file").pos = pos;
        }
        match error {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// `write(fd, buf, count)` (`at` is `None`) and `pwrite64(fd, buf,
    /// count, pos)` on a file (the console's descriptors are the
    /// caller's).
    pub fn file_write(
        &mut self,
        pid: Pid,
        fd: u64,
        buf: u64,
        count: u64,
        at: Option<u64>,
    ) -> Result<u64, Errno> {
        let (id, mut pos) = self.rw_verify(pid, fd, buf, count, at, true)?;
        if let FileObj::ClearRefs(owner) = self.files[&id].obj {
            return self.clear_refs_write(pid, owner, buf, count);
        }
        let f = &self.files[&id];
        let (obj, append) = (f.shmem(Errno::EINVAL)?, f.flags & O_APPEND != 0);
        let mut count = count.min(MAX_RW_COUNT);
        // generic_write_checks: nothing to write is no write at all; an
        // appending file writes at its end, even for pwrite64.
        if count == 0 {
            return Ok(0);
        }
        if append {
            pos = self.shmems[&obj].size;
        }
        if pos >= MAX_LFS_FILESIZE {
            return Err(Errno::EFBIG);
        }
        count = count.min(MAX_LFS_FILESIZE - pos);
        let (mut done, mut error) = (0u64, None);
        let mut chunk = alloc::vec![0u8; PAGE_SIZE as usize];
        // Each round: shmem_write_begin (seals, then the page), a copy with
        // page faults disabled, shmem_write_end; a copy that moved nothing
        // faults the source in and tries again, or ends with EFAULT.
        let mut faulted_in = false;
        while done < count {
            let (idx, off) = (pos / PAGE_SIZE, pos % PAGE_SIZE);
            let n = (PAGE_SIZE - off).min(count - done);
            let s = &self.shmems[&obj];
            if s.seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0
                || (s.seals & F_SEAL_GROW != 0 && pos + n > s.size)
            {
                error = Some(Errno::EPERM);
                break;
            }
            // The page may lie past the end (it stays there, zeroed, if
            // nothing is copied into it, as in Linux).
            let page = match self.shmem_get_page(obj, idx, Sgp::Write) {
                Ok(p) => p,
                Err(e) => {
                    error = Some(match e {
                        Fault::Oom => Errno::ENOSPC,
                        _ => Errno::EIO,
                    });
                    break;
                }
            };
            let copied =
                self.copy_from_user_prefix(pid, buf + done, &mut chunk[..n as usize], false);
            if copied == 0 {
                // Forward progress: fault the source in, or give up.
                if faulted_in
                    || self.copy_from_user_prefix(pid, buf + done, &mut chunk[..n as usize], true)
                        == 0
                {
                    error = Some(Errno::EFAULT);
                    break;
                }
                faulted_in = true;
                continue;
            }
            faulted_in = false;
            self.hw
                .write_bytes(page.addr() + off, &chunk[..copied as usize]);
            self.frames.get_mut(page).flags.set(FolioFlags::DIRTY, true);
            done += copied;
            pos += copied;
            let s = self.shmems.get_mut(&obj).expect("live shmem");
            s.size = s.size.max(pos);
        }
        if at.is_none() && done > 0 {
            self.files.get_mut(&id).expect("open file").pos = pos;
        }
        match error {
            Some(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Copies as much of `data` to user memory at `va` as can be before
    /// the first address that faults; returns how much.
    fn copy_to_user_prefix(&mut self, pid: Pid, va: u64, data: &[u8]) -> u64 {
        let mut done = 0usize;
        while done < data.len() {
            let a = va + done as u64;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(data.len() - done);
            if self.copy_to_user(pid, a, &data[done..done + n]).is_err() {
                break;
            }
            done += n;
        }
        done as u64
    }

    /// Copies user memory at `va` into `buf` up to the first address that
    /// faults (or, without `may_fault`, that is not mapped readable now);
    /// returns how much.
    fn copy_from_user_prefix(&mut self, pid: Pid, va: u64, buf: &mut [u8], may_fault: bool) -> u64 {
        let mut done = 0usize;
        while done < buf.len() {
            let a = va + done as u64;
            let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            let r = if may_fault {
                self.copy_from_user(pid, a, piece)
            } else {
                self.copy_from_user_nofault(pid, a, piece)
            };
            if r.is_err() {
                break;
            }
            done += n;
        }
        done as u64
    }

    /// `lseek(fd, offset, whence)`.
    pub fn lseek(&mut self, pid: Pid, fd: u64, offset: u64, whence: u64) -> Result<u64, Errno> {
        self.proc_mm(pid)?;
        let id = self.open_file(pid, fd)?;
        let cur = self.files[&id].pos as i64;
        let offset = offset as i64;
        // A hugetlbfs file: default_llseek, all data up to the end.
        if let Some(h) = self.huge_file_obj(id) {
            let size = self.huge.files[&h].i_size as i64;
            let new = match whence {
                SEEK_SET => offset,
                SEEK_CUR => cur.wrapping_add(offset),
                SEEK_END => size.wrapping_add(offset),
                SEEK_DATA if offset >= 0 && offset < size => offset,
                SEEK_HOLE if offset >= 0 && offset < size => size,
                SEEK_DATA | SEEK_HOLE => return Err(Errno::ENXIO),
                _ => return Err(Errno::EINVAL),
            };
            if new < 0 {
                return Err(Errno::EINVAL);
            }
            self.files.get_mut(&id).expect("open file").pos = new as u64;
            return Ok(new as u64);
        }
        // A userfaultfd seeks nowhere (noop_llseek).
        let Ok(obj) = self.files[&id].shmem(Errno::ESPIPE) else {
            return Ok(cur as u64);
        };
        let size = self.shmems[&obj].size as i64;
        let new = match whence {
            SEEK_SET => offset,
            SEEK_CUR if offset == 0 => return Ok(cur as u64),
            SEEK_CUR => cur.wrapping_add(offset),
            SEEK_END => size.wrapping_add(offset),
            SEEK_DATA | SEEK_HOLE => {
                if offset < 0 {
                    return Err(Errno::ENXIO);
                }
                self.seek_hole_data(obj, offset as u64, whence == SEEK_DATA)? as i64
            }
            _ => return Err(Errno::EINVAL),
        };
        // vfs_setpos.
        if new < 0 {
            return Err(Errno::EINVAL);
        }
        self.files.get_mut(&id).expect("open file").pos = new as u64;
        Ok(new as u64)
    }

    /// `mapping_seek_hole_data`: the first data (or hole) offset at or
    /// after `start`. Pages in memory that were written or faulted, and
    /// swapped pages, are data; the end of the file is a hole.
    fn seek_hole_data(&self, obj: ShmemId, start: u64, data: bool) -> Result<u64, Errno> {
        let s = &self.shmems[&obj];
        let end = s.size;
        if end <= start {
            return Err(Errno::ENXIO);
        }
        let is_data = |p: &ShmemPage| match p {
            ShmemPage::Folio(p) => !self
                .frames
                .get(*p)
                .is_some_and(|f| f.flags.contains(FolioFlags::FALLOCATED)),
            // Value entries: swapped or lost pages.
            ShmemPage::Swap(_) | ShmemPage::Poisoned => true,
        };
        // Only the pages the file has are visited, however sparse it is.
        let mut data_pages = s
            .pages
            .range(start / PAGE_SIZE..)
            .filter(|(_, p)| is_data(p))
            .map(|(&i, _)| i);
        let at = if data {
            data_pages.next().ok_or(Errno::ENXIO)? * PAGE_SIZE
        } else {
            // The first page from `start` on that is not data.
            let mut hole = start / PAGE_SIZE;
            for i in data_pages {
                if i != hole {
                    break;
                }
                hole += 1;
            }
            hole.saturating_mul(PAGE_SIZE)
        };
        match at.max(start) {
            at if at < end => Ok(at),
            _ if data => Err(Errno::ENXIO),
            _ => Ok(end),
        }
    }

    /// `fcntl(fd, cmd, arg)`: the sealing commands.
    pub fn fcntl(&mut self, pid: Pid, fd: u64, cmd: u64, arg: u64) -> Result<u64, Errno> {
        self.proc_mm(pid)?;
        let id = self.open_file(pid, fd)?;
        match cmd & 0xffff_ffff {
            F_ADD_SEALS if arg > u64::from(u32::MAX) => Err(Errno::EINVAL),
            F_ADD_SEALS => self.add_seals(id, arg as u32).map(|()| 0),
            F_GET_SEALS => self.get_seals(id).map(u64::from),
            _ => Err(Errno::EINVAL),
        }
    }
}
