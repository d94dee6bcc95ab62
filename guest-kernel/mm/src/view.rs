//! Read-only views of an address space: the `/proc/pid/maps`-like listing
//! of its VMAs and a look at one page that changes nothing.
//!
//! Mirrors `fs/proc/task_mmu.c` (`show_map_vma`: the offset shown is the
//! file offset, 0 for private anonymous memory; shared anonymous memory is
//! a shmem file named `/dev/zero (deleted)`) and the pagemap's
//! present/swapped view. Neither call faults anything in, sets an
//! accessed bit or takes a reference, so tests can look without changing
//! what they look at.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::errno::Errno;
use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::Pid;
use crate::pgtable;
use crate::pte::Pte;
use crate::system::MemSystem;
use crate::vma::{Backing, VmFlags, Vma};

/// One line of the maps listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `VM_READ`.
    pub read: bool,
    /// `VM_WRITE`.
    pub write: bool,
    /// `VM_EXEC`.
    pub exec: bool,
    /// `VM_MAYSHARE` (`s`), else private (`p`).
    pub shared: bool,
    /// Byte offset into the backing object (0 for private anonymous).
    pub offset: u64,
    /// What Linux names the mapping (`/dev/zero (deleted)` for shared
    /// anonymous memory, `/anon_hugepage (deleted)` for `MAP_HUGETLB`,
    /// empty otherwise).
    pub name: &'static str,
}

impl MapEntry {
    fn of(v: &Vma) -> Self {
        let f = v.flags;
        let (offset, name) = match v.backing {
            Backing::Anon { .. } => (0, ""),
            Backing::Shmem { .. } => (v.pgoff * PAGE_SIZE, "/dev/zero (deleted)"),
            Backing::PrivateFile { .. } => (v.pgoff * PAGE_SIZE, "/memfd (deleted)"),
            Backing::Hugetlb { .. } => (v.pgoff * PAGE_SIZE, "/anon_hugepage (deleted)"),
        };
        MapEntry {
            start: v.start,
            end: v.end,
            read: f.has(VmFlags::READ),
            write: f.has(VmFlags::WRITE),
            exec: f.has(VmFlags::EXEC),
            shared: f.has(VmFlags::MAYSHARE),
            offset,
            name,
        }
    }

    /// The `rwxp` column.
    pub fn perms(&self) -> [u8; 4] {
        [
            if self.read { b'r' } else { b'-' },
            if self.write { b'w' } else { b'-' },
            if self.exec { b'x' } else { b'-' },
            if self.shared { b's' } else { b'p' },
        ]
    }

    /// The line as `/proc/pid/maps` prints it, device and inode zero.
    pub fn line(&self) -> String {
        let mut s = String::new();
        let p = self.perms();
        let perms = core::str::from_utf8(&p).unwrap_or("????");
        let _ = write!(
            s,
            "{:08x}-{:08x} {perms} {:08x} 00:00 0",
            self.start, self.end, self.offset
        );
        if !self.name.is_empty() {
            let _ = write!(s, " {}", self.name);
        }
        s
    }
}

/// What one page of an address space holds right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageView {
    /// No page (never touched, or dropped).
    NotPresent,
    /// A page is mapped; its contents.
    Present(alloc::boxed::Box<[u8; PAGE_SIZE as usize]>),
    /// The page is in swap.
    Swapped,
    /// A marker (poison, guard, uffd-wp) and no page.
    Marker,
}

impl<H: Hw> MemSystem<H> {
    /// The VMAs of `pid` in address order (the maps listing).
    pub fn maps(&self, pid: Pid) -> Result<Vec<MapEntry>, Errno> {
        let mm = self.proc_mm(pid)?;
        Ok(self.mm(mm).vmas.iter().map(MapEntry::of).collect())
    }

    /// The maps listing as text, one `/proc/pid/maps` line per VMA.
    pub fn maps_text(&self, pid: Pid) -> Result<String, Errno> {
        let mut s = String::new();
        for e in self.maps(pid)? {
            s.push_str(&e.line());
            s.push('\n');
        }
        Ok(s)
    }

    /// Every page of `[start, end)` of `pid` that is not absent, in address
    /// order, without faulting, touching or referencing any of them.
    pub fn peek_range(
        &self,
        pid: Pid,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, PageView)>, Errno> {
        Ok(self.peek_iter(pid, start, end)?.collect())
    }

    /// [`MemSystem::peek_range`] one page at a time: each page's contents
    /// are read only when the iterator gets there.
    pub fn peek_iter(
        &self,
        pid: Pid,
        start: u64,
        end: u64,
    ) -> Result<impl Iterator<Item = (u64, PageView)> + '_, Errno> {
        let mm = self.proc_mm(pid)?;
        let root = self.mm(mm).root;
        let end = end.min(pgtable::USER_TOP);
        let start = start & !(PAGE_SIZE - 1);
        let mut leaves = pgtable::leaves(&self.hw, root, start, end);
        // Huge entries show as the 4 KiB pages they map, as pagemap does.
        for level in [2, 3] {
            for (hva, _, e) in pgtable::huge_leaves(&self.hw, root, start, end, level) {
                if matches!(e, Pte::Marker(_)) {
                    // pagemap_hugetlb_range: a huge marker is not a swap
                    // entry (only its uffd-wp bit shows).
                    continue;
                }
                let span = pgtable::huge_span(level);
                let (lo, hi) = (hva.max(start), (hva + span).min(end));
                for va in (lo..hi).step_by(PAGE_SIZE as usize) {
                    let pte = match e {
                        Pte::Mapped { pfn, flags } => Pte::Mapped {
                            pfn: pfn.offset((va - hva) / PAGE_SIZE),
                            flags,
                        },
                        other => other,
                    };
                    leaves.push((va, 0, pte));
                }
            }
        }
        leaves.sort_by_key(|&(va, _, _)| va);
        Ok(leaves.into_iter().filter_map(|(va, _, pte)| {
            let view = self.view_of(pte);
            (view != PageView::NotPresent).then_some((va, view))
        }))
    }

    fn view_of(&self, pte: Pte) -> PageView {
        match pte {
            Pte::Mapped { pfn, .. } => {
                let mut page = alloc::boxed::Box::new([0u8; PAGE_SIZE as usize]);
                self.hw.read_bytes(pfn.addr(), &mut page[..]);
                PageView::Present(page)
            }
            Pte::Swap(_) => PageView::Swapped,
            Pte::Marker(_) => PageView::Marker,
            Pte::None | Pte::Table(_) => PageView::NotPresent,
        }
    }

    /// What the page at `va` of `pid` holds, without faulting, touching or
    /// referencing it.
    pub fn peek_page(&self, pid: Pid, va: u64) -> Result<PageView, Errno> {
        let mm = self.proc_mm(pid)?;
        if va >= pgtable::USER_TOP {
            return Err(Errno::EFAULT);
        }
        let root = self.mm(mm).root;
        Ok(self.view_of(pgtable::lookup_page(&self.hw, root, va & !(PAGE_SIZE - 1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::mmap::{MAP_ANONYMOUS, MAP_FIXED, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE};
    use crate::testing::user::{sim_system, user_write};

    #[test]
    fn maps_and_peek_show_without_touching() {
        let mut s = sim_system(16, 1, Config::default());
        let p = s.spawn(0).unwrap();
        let a = 0x4000_0000;
        let fixed = MAP_ANONYMOUS | MAP_FIXED;
        s.mmap(p, a, 0x2000, PROT_READ | PROT_WRITE, fixed | MAP_PRIVATE, 0)
            .unwrap();
        s.mmap(p, a + 0x4000, 0x1000, PROT_READ, fixed | MAP_SHARED, 0)
            .unwrap();
        let text = s.maps_text(p).unwrap();
        assert_eq!(
            text,
            "40000000-40002000 rw-p 00000000 00:00 0\n\
             40004000-40005000 r--s 00000000 00:00 0 /dev/zero (deleted)\n"
        );
        assert_eq!(s.peek_page(p, a).unwrap(), PageView::NotPresent);
        let before = s.counters();
        assert_eq!(s.peek_page(p, a).unwrap(), PageView::NotPresent);
        assert_eq!(s.counters(), before, "a peek faults nothing in");
        user_write(&mut s, p, 0, a + 8, b"x").unwrap();
        match s.peek_page(p, a + 0x10).unwrap() {
            PageView::Present(page) => assert_eq!(page[8], b'x'),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.peek_page(p, 1 << 47), Err(Errno::EFAULT));
        let resident = s.peek_range(p, a, a + 0x5000).unwrap();
        assert_eq!(resident.len(), 1);
        assert_eq!(resident[0].0, a);
    }
}
