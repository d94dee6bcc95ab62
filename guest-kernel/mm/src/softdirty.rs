//! Soft-dirty tracking (Documentation/admin-guide/mm/soft-dirty.rst,
//! `CONFIG_MEM_SOFT_DIRTY`): a page is soft-dirty when its PTE has the
//! soft-dirty bit (set with the dirty bit, x86's `pte_mkdirty`) or its
//! VMA has `VM_SOFTDIRTY` (new and grown VMAs, until cleared). Writing 4
//! to `/proc/pid/clear_refs` clears both and write-protects every present
//! entry, so that the next write to a page faults and marks it again: a
//! write after the clear is never missed. What Linux over-reports, and
//! precise mode does not, is a new mapping that merges into a cleaned VMA
//! (`Config::soft_dirty`).

use crate::Errno;
use crate::hw::{FlushRange, Hw};

use crate::ids::{MmId, Pid};
use crate::pgtable;
use crate::pte::{Pte, PteFlags, SwapEntry};
use crate::system::{FileObj, MemSystem, OpenFile, SoftDirty};
use crate::vma::{VmFlags, Vma};

/// `CLEAR_REFS_ALL` .. `CLEAR_REFS_MM_HIWATER_RSS`: what `clear_refs`
/// accepts.
const CLEAR_REFS_ALL: i64 = 1;
const CLEAR_REFS_SOFT_DIRTY: i64 = 4;
const CLEAR_REFS_LAST: i64 = 6;
/// What `clear_refs_write` reads of a write (`PROC_NUMBUF - 1`).
const CLEAR_REFS_BUF: u64 = 12;

impl<H: Hw> MemSystem<H> {
    /// The bits a software "make dirty" sets: dirty, and soft-dirty when
    /// it is tracked.
    pub(crate) fn dirty_bits(&self) -> PteFlags {
        PteFlags::DIRTY.with(self.soft_dirty_if(true))
    }

    /// The soft-dirty bit when `write` and soft-dirty is tracked.
    pub(crate) fn soft_dirty_if(&self, write: bool) -> PteFlags {
        if write && self.cfg.soft_dirty.enabled() {
            PteFlags::SOFT_DIRTY
        } else {
            PteFlags::empty()
        }
    }

    /// `vma_soft_dirty_enabled`: writes to `v` must fault to be seen (it
    /// was cleaned), so an entry without the soft-dirty bit may not be made
    /// writable without a write fault.
    pub(crate) fn soft_dirty_tracking(&self, v: &Vma) -> bool {
        self.cfg.soft_dirty.enabled() && !v.flags.has(VmFlags::SOFTDIRTY)
    }

    /// Whether making `flags` writable without a fault would hide a write
    /// from soft-dirty (`can_change_pte_writable`'s soft-dirty test).
    pub(crate) fn soft_dirty_needs_fault(&self, v: &Vma, flags: PteFlags) -> bool {
        self.soft_dirty_tracking(v) && !flags.contains(PteFlags::SOFT_DIRTY)
    }

    /// The flags a new or grown VMA gets: `VM_SOFTDIRTY` when tracked.
    pub(crate) fn new_vma_flags(&self, flags: u64) -> u64 {
        if self.cfg.soft_dirty.enabled() {
            flags | VmFlags::SOFTDIRTY
        } else {
            flags
        }
    }

    /// The `VM_*` bits that do not keep two VMAs from merging
    /// (`is_mergeable_vma` ignores `VM_SOFTDIRTY`; precise mode does not).
    pub(crate) fn merge_ignores(&self) -> u64 {
        match self.cfg.soft_dirty {
            SoftDirty::Precise => 0,
            SoftDirty::Off | SoftDirty::On => VmFlags::SOFTDIRTY,
        }
    }

    /// Opens `/proc/self/clear_refs` (mode 0200: write-only).
    pub(crate) fn open_clear_refs(&mut self, pid: Pid, flags: u32) -> Result<u64, Errno> {
        self.proc_mm(pid)?;
        if flags & crate::file::O_ACCMODE != crate::file::O_WRONLY {
            return Err(Errno::EACCES);
        }
        let id = crate::ids::FileId(self.new_id());
        self.files.insert(
            id,
            OpenFile {
                obj: FileObj::ClearRefs(pid),
                flags: crate::file::O_WRONLY,
                pos: 0,
                refs: 1,
            },
        );
        Ok(self.install_file(pid, id))
    }

    /// `clear_refs_write` of `count` bytes at `buf` of `pid` to the
    /// clear_refs file of `owner`: at most [`CLEAR_REFS_BUF`] bytes are
    /// read, a decimal type 1..=5 with surrounding whitespace; 4 clears
    /// soft-dirty, the others (referenced bits, the RSS high-water mark)
    /// change nothing this MM reports. Returns the bytes taken.
    pub(crate) fn clear_refs_write(
        &mut self,
        pid: Pid,
        owner: Pid,
        buf: u64,
        count: u64,
    ) -> Result<u64, Errno> {
        let count = count.min(CLEAR_REFS_BUF);
        let mut bytes = [0u8; CLEAR_REFS_BUF as usize];
        let bytes = &mut bytes[..count as usize];
        self.copy_from_user(pid, buf, bytes)?;
        let ty = core::str::from_utf8(bytes)
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .ok_or(Errno::EINVAL)?;
        if !(CLEAR_REFS_ALL..CLEAR_REFS_LAST).contains(&ty) {
            return Err(Errno::EINVAL);
        }
        let mm = self.proc_mm(owner)?;
        if ty == CLEAR_REFS_SOFT_DIRTY && self.cfg.soft_dirty.enabled() {
            self.clear_soft_dirty(mm);
        }
        Ok(count)
    }

    /// `CLEAR_REFS_SOFT_DIRTY`: every VMA loses `VM_SOFTDIRTY`; every
    /// present entry is write-protected and loses its soft-dirty bit, and
    /// so does every swap entry; then one flush. hugetlb entries are not
    /// walked (Linux's walk has no hugetlb callback). In precise mode the
    /// VMAs that are now equal merge.
    fn clear_soft_dirty(&mut self, mm: MmId) {
        let root = self.mm(mm).root;
        let vmas: alloc::vec::Vec<Vma> = self.mm(mm).vmas.iter().cloned().collect();
        for v in &vmas {
            if let Some(vm) = self.mm_mut(mm).vmas.get_mut(v.start) {
                vm.flags = VmFlags(vm.flags.0 & !VmFlags::SOFTDIRTY);
            }
            if v.is_hugetlb() {
                continue;
            }
            for (_, slot, pte) in pgtable::leaves(&self.hw, root, v.start, v.end) {
                let clean = match pte {
                    Pte::Mapped { pfn, flags } => Pte::Mapped {
                        pfn,
                        flags: flags.without(PteFlags::WRITE).without(PteFlags::SOFT_DIRTY),
                    },
                    Pte::Swap(e) => Pte::Swap(SwapEntry {
                        soft_dirty: false,
                        ..e
                    }),
                    other => other,
                };
                if clean != pte {
                    pgtable::write_pte(&mut self.hw, slot, clean);
                }
            }
        }
        self.flush_tlb(mm, FlushRange::All);
        if self.cfg.soft_dirty == SoftDirty::Precise {
            for v in vmas.iter().skip(1) {
                self.merge_vma_at(mm, v.start);
            }
        }
    }

    /// `move_soft_dirty_pte`: an entry mremap moves is soft-dirty at its
    /// new address, so a tracker sees the data arrive there.
    pub(crate) fn move_soft_dirty_pte(&self, pte: Pte) -> Pte {
        if !self.cfg.soft_dirty.enabled() {
            return pte;
        }
        match pte {
            Pte::Mapped { pfn, flags } => Pte::Mapped {
                pfn,
                flags: flags.with(PteFlags::SOFT_DIRTY),
            },
            Pte::Swap(e) => Pte::Swap(SwapEntry {
                soft_dirty: true,
                ..e
            }),
            other => other,
        }
    }

    /// Whether a page of `v` (if given) whose entry is `pte` is
    /// soft-dirty (pagemap bit 55, `PAGE_IS_SOFT_DIRTY`).
    pub(crate) fn page_soft_dirty(&self, v: Option<&Vma>, pte: Pte) -> bool {
        if !self.cfg.soft_dirty.enabled() {
            return false;
        }
        let vma_dirty = v.is_some_and(|v| v.flags.has(VmFlags::SOFTDIRTY));
        vma_dirty
            || match pte {
                Pte::Mapped { flags, .. } => flags.contains(PteFlags::SOFT_DIRTY),
                Pte::Swap(e) => e.soft_dirty,
                _ => false,
            }
    }
}
