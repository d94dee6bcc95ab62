//! hugetlbfs files: `memfd_create(MFD_HUGETLB)` and what a descriptor of
//! one does (`ftruncate`, `fallocate`, `read`, `lseek`, `mmap`), with the
//! page cache, reservation map and `i_mmap` the anonymous `MAP_HUGETLB`
//! files already have.
//!
//! Mirrors `fs/hugetlbfs/inode.c` (6.18): `hugetlbfs_setattr` (sizes are
//! whole huge pages), `hugetlb_vmtruncate` (mappings past the end lose
//! their pages and markers, every reservation past it goes),
//! `hugetlbfs_punch_hole` (whole huge pages leave the cache and every
//! mapping, markers stay, the partial ones are zeroed), `hugetlbfs_fallocate`
//! (allocation rounded out to huge pages, `ENOSPC` when the pool has no
//! page), `hugetlbfs_read_iter` (holes read as zeroes), and no `write`
//! (`EINVAL`, as for any file without `write_iter`). Seals work as on a
//! shmem memfd (`memfd.rs`): shrink, grow, write (hole punching) and the
//! write-sealed shared mapping.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::errno::Errno;
use crate::file::O_RDWR;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::{FileId, HugeFileId, MmId, Pid};
use crate::memfd::{
    F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE,
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE,
};
use crate::system::{FileObj, MemSystem, OpenFile};

use super::{HSTATE_ORDERS, HugeFile, hstate_of_log, huge_size};

/// `MFD_HUGE_SHIFT` (as `MAP_HUGE_SHIFT`) and its mask.
const MFD_HUGE_SHIFT: u64 = 26;
const MFD_HUGE_MASK: u64 = 0x3f;

impl<H: Hw> MemSystem<H> {
    /// `memfd_create` with `MFD_HUGETLB` (`hugetlb_file_setup`): an empty
    /// hugetlbfs file of the size `flags` names, on a new descriptor.
    pub(crate) fn hugetlb_memfd(
        &mut self,
        pid: Pid,
        flags: u64,
        mode: u32,
        seals: u32,
    ) -> Result<u64, Errno> {
        let log = ((flags >> MFD_HUGE_SHIFT) & MFD_HUGE_MASK) as u32;
        let h = hstate_of_log(log).ok_or(Errno::EINVAL)?;
        let file = HugeFileId(self.new_id());
        let mut f = HugeFile::new(h, 0);
        (f.opens, f.mode, f.seals) = (1, mode, seals);
        self.huge.files.insert(file, f);
        let id = FileId(self.new_id());
        self.files.insert(
            id,
            OpenFile {
                obj: FileObj::Huge(file),
                flags: O_RDWR,
                pos: 0,
                refs: 1,
            },
        );
        Ok(self.install_file(pid, id))
    }

    /// The last open file of `file` closed: it goes when nothing maps it.
    pub(crate) fn hugetlbfs_release(&mut self, file: HugeFileId) {
        let Some(f) = self.huge.files.get_mut(&file) else {
            return;
        };
        f.opens -= 1;
        if f.opens == 0 && f.i_mmap.is_empty() {
            self.hugetlb_evict(file);
        }
    }

    /// `ftruncate` of a hugetlbfs file (`hugetlbfs_setattr`).
    pub(crate) fn hugetlbfs_setattr(&mut self, file: HugeFileId, len: u64) -> Result<(), Errno> {
        let h = self.huge.files[&file].hstate;
        let size = huge_size(h);
        if len % size != 0 {
            return Err(Errno::EINVAL);
        }
        let (old, seals) = (self.huge.files[&file].i_size, self.huge.files[&file].seals);
        if (len < old && seals & F_SEAL_SHRINK != 0) || (len > old && seals & F_SEAL_GROW != 0) {
            return Err(Errno::EPERM);
        }
        self.huge
            .files
            .get_mut(&file)
            .expect("live")
            .set_size(len, size);
        if len < old {
            // hugetlb_vmtruncate: everything past the end goes, markers
            // too, and with it every reservation there.
            let first = len / size;
            self.hugetlb_vmdelete(file, first, u64::MAX >> 21, true);
            let freed = self.remove_huge_pages(file, first, u64::MAX);
            self.hugetlb_unreserve_pages(file, first, u64::MAX, freed);
        }
        Ok(())
    }

    /// `fallocate` of a hugetlbfs file; the caller checked the mode bits
    /// and the descriptor.
    pub(crate) fn hugetlbfs_fallocate(
        &mut self,
        file: HugeFileId,
        mode: u64,
        off: u64,
        len: u64,
    ) -> Result<(), Errno> {
        if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = off.checked_add(len).ok_or(Errno::EFBIG)?;
        let seals = self.huge.files[&file].seals;
        if mode & FALLOC_FL_PUNCH_HOLE != 0 {
            if seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE) != 0 {
                return Err(Errno::EPERM);
            }
            self.hugetlbfs_punch_hole(file, off, end);
            return Ok(());
        }
        if seals & F_SEAL_GROW != 0 && end > self.huge.files[&file].i_size {
            return Err(Errno::EPERM);
        }
        let h = self.huge.files[&file].hstate;
        let size = huge_size(h);
        for idx in off / size..end.div_ceil(size) {
            let f = &self.huge.files[&file];
            if f.pages.contains_key(&idx) {
                continue;
            }
            // A reserved index uses its reservation; any other needs a
            // free page nobody reserved (alloc_hugetlb_folio: -ENOSPC).
            let reserved = f.resv.contains(&idx);
            let head = self.hugetlb_take_folio(h, reserved).ok_or(Errno::ENOSPC)?;
            for i in 0..1u64 << HSTATE_ORDERS[h] {
                self.hw.zero_frame(head.offset(i));
            }
            self.frames.get_mut(head).mapping = crate::frame::Mapping::HugeFile {
                file,
                index: idx << HSTATE_ORDERS[h],
            };
            let f = self.huge.files.get_mut(&file).expect("live");
            f.pages.insert(idx, head);
            f.resv.insert(idx);
        }
        if mode & FALLOC_FL_KEEP_SIZE == 0 && end > self.huge.files[&file].i_size {
            self.huge
                .files
                .get_mut(&file)
                .expect("live")
                .set_size(end, size);
        }
        Ok(())
    }

    /// `hugetlbfs_punch_hole` over file bytes `[off, end)`.
    pub(crate) fn hugetlbfs_punch_hole(&mut self, file: HugeFileId, off: u64, end: u64) {
        let size = huge_size(self.huge.files[&file].hstate);
        let (hole, hole_end) = (off.div_ceil(size) * size, end / size * size);
        if off < hole {
            self.hugetlb_zero_partial(file, off, end.min(hole), size);
        }
        if end > hole_end && end > hole {
            self.hugetlb_zero_partial(file, hole_end.max(off), end, size);
        }
        if hole_end <= hole {
            return;
        }
        let (first, last) = (hole / size, hole_end / size);
        self.hugetlb_vmdelete(file, first, last, false);
        // remove_inode_hugepages without truncation: each removed page
        // takes its own reservation with it, the holes keep theirs.
        let idx: Vec<u64> = self.huge.files[&file]
            .pages
            .range(first..last)
            .map(|(&i, _)| i)
            .collect();
        for i in idx {
            self.remove_huge_pages(file, i, i + 1);
            self.hugetlb_unreserve_pages(file, i, i + 1, 1);
        }
    }

    /// `hugetlb_vmdelete_list`: huge pages `[first, last)` of the file
    /// leave every VMA that maps them (markers stay unless
    /// `drop_markers`, as `ZAP_FLAG_DROP_MARKER` says).
    fn hugetlb_vmdelete(&mut self, file: HugeFileId, first: u64, last: u64, drop_markers: bool) {
        let order = HSTATE_ORDERS[self.huge.files[&file].hstate];
        let mappers: Vec<(MmId, u64)> = self.huge.files[&file].i_mmap.iter().copied().collect();
        for (m, vstart) in mappers {
            let Some(w) = self.mm(m).vmas.get(vstart).cloned() else {
                continue;
            };
            let lo = first.saturating_mul(1 << order).max(w.pgoff);
            let hi = last
                .saturating_mul(1 << order)
                .min(w.pgoff + (w.end - w.start) / PAGE_SIZE);
            if lo < hi {
                let s = w.start + (lo - w.pgoff) * PAGE_SIZE;
                let e = w.start + (hi - w.pgoff) * PAGE_SIZE;
                self.unmap_hugepage_range(m, &w, s, e, drop_markers);
            }
        }
    }

    /// Drops the page cache's pages `[first, last)`; how many there were.
    fn remove_huge_pages(&mut self, file: HugeFileId, first: u64, last: u64) -> u64 {
        let f = self.huge.files.get_mut(&file).expect("live");
        let gone: Vec<u64> = f.pages.range(first..last).map(|(&i, _)| i).collect();
        for i in &gone {
            let head = self
                .huge
                .files
                .get_mut(&file)
                .expect("live")
                .pages
                .remove(i)
                .expect("cached");
            self.huge_put(head, 1);
        }
        gone.len() as u64
    }

    /// `hugetlbfs_read_iter`: up to `count` bytes from `pos`, to user
    /// memory at `buf`; holes read as zeroes, nothing past the end.
    pub(crate) fn hugetlbfs_read(
        &mut self,
        pid: Pid,
        file: HugeFileId,
        buf: u64,
        count: u64,
        pos: u64,
    ) -> Result<u64, Errno> {
        let f = &self.huge.files[&file];
        let size = huge_size(f.hstate);
        let n = count.min(f.i_size.saturating_sub(pos)).min(1 << 20);
        let mut out = alloc::vec![0u8; n as usize];
        let mut done = 0u64;
        while done < n {
            let at = pos + done;
            let chunk = (PAGE_SIZE - at % PAGE_SIZE).min(n - done);
            if let Some(&head) = self.huge.files[&file].pages.get(&(at / size)) {
                let page = head.offset((at % size) / PAGE_SIZE);
                let range = done as usize..(done + chunk) as usize;
                self.hw
                    .read_bytes(page.addr() + at % PAGE_SIZE, &mut out[range]);
            }
            done += chunk;
        }
        self.copy_to_user(pid, buf, &out)?;
        Ok(n)
    }

    /// The hugetlbfs file behind `file`, if it is one.
    pub(crate) fn huge_file_obj(&self, file: FileId) -> Option<HugeFileId> {
        match self.files[&file].obj {
            FileObj::Huge(f) => Some(f),
            _ => None,
        }
    }
}

impl HugeFile {
    /// A new file of hstate `h` and `i_size` `bytes`, with nothing cached,
    /// reserved or mapped.
    pub(crate) fn new(hstate: usize, bytes: u64) -> Self {
        let mut f = HugeFile {
            hstate,
            size: 0,
            i_size: 0,
            pages: BTreeMap::new(),
            resv: BTreeSet::new(),
            i_mmap: BTreeSet::new(),
            opens: 0,
            seals: F_SEAL_SEAL,
            mode: 0o777,
        };
        f.set_size(bytes, huge_size(hstate));
        f
    }

    /// Sets `i_size` (and the whole huge pages it holds).
    pub(crate) fn set_size(&mut self, bytes: u64, huge: u64) {
        self.i_size = bytes;
        self.size = bytes / huge;
    }
}
