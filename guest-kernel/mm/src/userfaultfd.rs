//! userfaultfd: contexts, feature negotiation, registration and
//! write-protection.
//!
//! Mirrors `fs/userfaultfd.c` (`new_userfaultfd`, `userfaultfd_api`,
//! `userfaultfd_register`, `userfaultfd_unregister`,
//! `userfaultfd_writeprotect`, `userfaultfd_release`, `dup_userfaultfd`)
//! and `mm/userfaultfd.c` (`mwriteprotect_range`, `uffd_wp_range`,
//! `userfaultfd_register_range`, `userfaultfd_clear_vma`), with the PTE
//! work of `change_pte_range` under `MM_CP_UFFD_WP(_RESOLVE)`.
//!
//! A context belongs to the address space that opened it (`ctx->mm`):
//! a descriptor inherited by a fork child still acts on the parent, which
//! is how a handler process serves the faults of the process it forked
//! from. Faults a handler resolves (synchronous write-protect, missing
//! pages) wait for it as `uffd_msg`s (`uffd_wait.rs`), or raise SIGBUS
//! with `UFFD_FEATURE_SIGBUS`. With `UFFD_FEATURE_WP_ASYNC` the MM
//! resolves write-protect faults itself, and that is what GetWriteWatch
//! and `PAGEMAP_SCAN` build on.

use crate::errno::Errno;
use crate::hw::{FlushRange, Hw, PAGE_SIZE};
use crate::ids::{FileId, MmId, Pid, UffdId};
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::{FileObj, MemSystem, OpenFile, ShmemPage};
use crate::vma::{Backing, TASK_SIZE, VmFlags, Vma};

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: only faults from user mode are handled.
pub const UFFD_USER_MODE_ONLY: u64 = 1;
const O_NONBLOCK: u64 = 0o4000;
const O_CLOEXEC: u64 = 0o2000000;

/// `UFFD_FEATURE_EVENT_FORK`.
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_MISSING_SHMEM`.
pub const FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// `UFFD_FEATURE_SIGBUS`: faults raise SIGBUS instead of waiting.
pub const FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`.
pub const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED`: protecting empty PTEs leaves markers.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// The features this MM offers (`UFFD_API_FEATURES` as built here).
/// `EVENT_FORK` is offered but needs CAP_SYS_PTRACE, which no guest
/// process has.
pub const FEATURES: u64 = FEATURE_EVENT_FORK
    | FEATURE_MISSING_SHMEM
    | FEATURE_SIGBUS
    | FEATURE_WP_HUGETLBFS_SHMEM
    | FEATURE_WP_UNPOPULATED
    | FEATURE_WP_ASYNC;

/// `_UFFDIO_REGISTER`, `_UFFDIO_UNREGISTER`, `_UFFDIO_WRITEPROTECT`,
/// `_UFFDIO_API` bit numbers of the `ioctls` masks.
const IOC_REGISTER: u64 = 1 << 0x00;
const IOC_UNREGISTER: u64 = 1 << 0x01;
const IOC_WAKE: u64 = 1 << 0x02;
const IOC_WRITEPROTECT: u64 = 1 << 0x06;
const IOC_API: u64 = 1 << 0x3F;
/// `UFFD_API_IOCTLS`.
pub const API_IOCTLS: u64 = IOC_REGISTER | IOC_UNREGISTER | IOC_API;
/// The range ioctls this MM implements (of `UFFD_API_RANGE_IOCTLS`).
pub const RANGE_IOCTLS: u64 = IOC_WAKE | IOC_WRITEPROTECT;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const MODE_MISSING: u64 = 1;
/// `UFFDIO_REGISTER_MODE_WP`.
pub const MODE_WP: u64 = 2;
/// `UFFDIO_REGISTER_MODE_MINOR` (refused: no minor faults here).
const MODE_MINOR: u64 = 4;
/// `UFFDIO_WRITEPROTECT_MODE_WP`.
pub const WP_MODE_WP: u64 = 1;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE`.
pub const WP_MODE_DONTWAKE: u64 = 2;

/// One userfaultfd context (`struct userfaultfd_ctx`).
#[derive(Debug, Clone)]
pub(crate) struct Userfault {
    /// The address space it serves (`ctx->mm`).
    pub mm: MmId,
    /// Features enabled by `UFFDIO_API`; `None` before it.
    pub features: Option<u64>,
    /// Who waits on it.
    pub queues: crate::uffd_wait::WaitQueues,
}

/// `pte` without its uffd-wp protection: the bit of a mapped entry, or
/// the whole of a uffd-wp marker (which leaves none).
pub(crate) fn without_uffd_wp(pte: Pte) -> Pte {
    match pte {
        Pte::Mapped { pfn, flags } => Pte::Mapped {
            pfn,
            flags: flags.without(PteFlags::UFFD_WP),
        },
        Pte::Swap(e) => Pte::Swap(crate::pte::SwapEntry {
            uffd_wp: false,
            ..e
        }),
        Pte::Marker(MarkerKind::UffdWp) => Pte::None,
        other => other,
    }
}

impl<H: Hw> MemSystem<H> {
    /// `userfaultfd(flags)`. Guest processes are unprivileged and
    /// `vm.unprivileged_userfaultfd` is 0, so only `UFFD_USER_MODE_ONLY`
    /// contexts may be opened.
    pub fn userfaultfd(&mut self, pid: Pid, flags: u64) -> Result<u64, Errno> {
        let flags = flags & 0xffff_ffff;
        if flags & UFFD_USER_MODE_ONLY == 0 {
            return Err(Errno::EPERM);
        }
        if flags & !(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY) != 0 {
            return Err(Errno::EINVAL);
        }
        let mm = self.proc_mm(pid)?;
        let ctx = UffdId(self.new_id());
        self.uffds.insert(
            ctx,
            Userfault {
                mm,
                features: None,
                queues: Default::default(),
            },
        );
        let file = FileId(self.new_id());
        self.files.insert(
            file,
            OpenFile {
                obj: FileObj::Uffd(ctx),
                flags: (flags & O_NONBLOCK) as u32,
                pos: 0,
                refs: 1,
            },
        );
        Ok(self.install_file(pid, file))
    }

    /// The context behind descriptor `fd`; `ENOTTY` for other files, as
    /// an ioctl they do not have.
    fn uffd_of(&self, pid: Pid, fd: u64) -> Result<UffdId, Errno> {
        match self.files[&self.open_file(pid, fd)?].obj {
            FileObj::Uffd(ctx) => Ok(ctx),
            FileObj::Shmem(_) | FileObj::Pagemap(_) | FileObj::ClearRefs(_) | FileObj::Huge(_) => {
                Err(Errno::ENOTTY)
            }
        }
    }

    /// The context for a call other than `UFFDIO_API`, which must have come
    /// first.
    pub(crate) fn uffd_ready(&self, pid: Pid, fd: u64) -> Result<(UffdId, u64), Errno> {
        let ctx = self.uffd_of(pid, fd)?;
        let features = self.uffds[&ctx].features.ok_or(Errno::EINVAL)?;
        Ok((ctx, features))
    }

    /// `UFFDIO_API`: returns the features and ioctls offered. On an error
    /// Linux zeroes the caller's structure.
    pub fn uffdio_api(
        &mut self,
        pid: Pid,
        fd: u64,
        api: u64,
        features: u64,
    ) -> Result<(u64, u64), Errno> {
        let ctx = self.uffd_of(pid, fd)?;
        if api != UFFD_API {
            return Err(Errno::EINVAL);
        }
        if features & FEATURE_EVENT_FORK != 0 {
            return Err(Errno::EPERM);
        }
        let mut features = features;
        if features & FEATURE_WP_ASYNC != 0 {
            features |= FEATURE_WP_UNPOPULATED;
        }
        if features & !FEATURES != 0 {
            return Err(Errno::EINVAL);
        }
        let u = self.uffds.get_mut(&ctx).expect("live context");
        if u.features.is_some() {
            return Err(Errno::EINVAL);
        }
        u.features = Some(features);
        Ok((FEATURES, API_IOCTLS))
    }

    /// `validate_range`.
    fn uffd_validate_range(&self, start: u64, len: u64) -> Result<u64, Errno> {
        if start % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 || len == 0 {
            return Err(Errno::EINVAL);
        }
        if start < self.cfg.mmap_min_addr || start >= TASK_SIZE || len > TASK_SIZE - start {
            return Err(Errno::EINVAL);
        }
        Ok(start + len)
    }

    /// The context's address space, if it still has one (`mmget_not_zero`).
    fn uffd_mm(&self, ctx: UffdId) -> Option<MmId> {
        let mm = self.uffds[&ctx].mm;
        self.mms.contains_key(&mm).then_some(mm)
    }

    /// `vma_kernel_pagesize`.
    fn vma_page_size(&self, v: &Vma) -> u64 {
        if v.is_hugetlb() {
            crate::hugetlb::huge_size(self.huge_file_of(v).1)
        } else {
            PAGE_SIZE
        }
    }

    /// The VMAs `[start, end)` meets, for a registration change: at least
    /// one, and a hugetlb first one must start on a huge page.
    fn uffd_vmas(&self, mm: MmId, start: u64, end: u64) -> Result<alloc::vec::Vec<Vma>, Errno> {
        let vmas: alloc::vec::Vec<Vma> = self
            .mm(mm)
            .vmas
            .overlapping(start, end)
            .iter()
            .filter_map(|&s| self.mm(mm).vmas.get(s).cloned())
            .collect();
        let first = vmas.first().ok_or(Errno::EINVAL)?;
        if first.is_hugetlb() && start % self.vma_page_size(first) != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(vmas)
    }

    /// Whether `end` falls inside hugetlb VMA `v` off a huge page.
    fn huge_end_misaligned(&self, v: &Vma, end: u64) -> bool {
        v.is_hugetlb() && end <= v.end && end > v.start && end % self.vma_page_size(v) != 0
    }

    /// `UFFDIO_REGISTER`: returns the ioctls the range supports.
    pub fn uffdio_register(
        &mut self,
        pid: Pid,
        fd: u64,
        start: u64,
        len: u64,
        mode: u64,
    ) -> Result<u64, Errno> {
        let (ctx, _) = self.uffd_ready(pid, fd)?;
        if mode == 0 || mode & !(MODE_MISSING | MODE_WP | MODE_MINOR) != 0 || mode & MODE_MINOR != 0
        {
            return Err(Errno::EINVAL);
        }
        let mut uflags = 0;
        if mode & MODE_MISSING != 0 {
            uflags |= VmFlags::UFFD_MISSING;
        }
        if mode & MODE_WP != 0 {
            uflags |= VmFlags::UFFD_WP;
        }
        let end = self.uffd_validate_range(start, len)?;
        let mm = self.uffd_mm(ctx).ok_or(Errno::ENOMEM)?;
        for cur in &self.uffd_vmas(mm, start, end)? {
            // vma_can_userfault: anonymous, shmem and hugetlb memory, but
            // not droppable memory.
            if cur.flags.has(VmFlags::DROPPABLE) {
                return Err(Errno::EINVAL);
            }
            if !cur.flags.has(VmFlags::MAYWRITE) {
                return Err(Errno::EPERM);
            }
            if self.huge_end_misaligned(cur, end) {
                return Err(Errno::EINVAL);
            }
            if cur.uffd.is_some_and(|c| c != ctx) {
                return Err(Errno::EBUSY);
            }
        }
        // The VMAs split and merge on the way: walk by address.
        let mut at = start;
        while let Some(v) = self.next_vma_in(mm, at, end) {
            let (lo, hi) = (v.start.max(at), v.end.min(end));
            if v.uffd != Some(ctx) || v.flags.0 & uflags != uflags {
                let nflags = (v.flags.0 & !VmFlags::UFFD_FLAGS) | uflags;
                self.modify_vma_uffd(mm, lo, hi, nflags, Some(ctx));
            }
            at = hi;
        }
        let mut ioctls = RANGE_IOCTLS;
        if mode & MODE_WP == 0 {
            ioctls &= !IOC_WRITEPROTECT;
        }
        Ok(ioctls)
    }

    /// `UFFDIO_UNREGISTER`.
    pub fn uffdio_unregister(
        &mut self,
        pid: Pid,
        fd: u64,
        start: u64,
        len: u64,
    ) -> Result<(), Errno> {
        let (ctx, _) = self.uffd_ready(pid, fd)?;
        let end = self.uffd_validate_range(start, len)?;
        let mm = self.uffd_mm(ctx).ok_or(Errno::ENOMEM)?;
        for cur in &self.uffd_vmas(mm, start, end)? {
            if cur.flags.has(VmFlags::DROPPABLE) || self.huge_end_misaligned(cur, end) {
                return Err(Errno::EINVAL);
            }
        }
        let mut at = start;
        while let Some(v) = self.next_vma_in(mm, at, end) {
            let (lo, hi) = (v.start.max(at), v.end.min(end));
            // Only the context's own ranges are undone.
            if v.uffd == Some(ctx) {
                self.userfaultfd_clear_range(mm, lo, hi);
                // Missing faults waiting there would hang: they are woken
                // (write-protect ones are not, as in Linux).
                if v.flags.has(VmFlags::UFFD_MISSING) {
                    self.uffd_wake(ctx, lo, hi - lo);
                }
            }
            at = hi;
        }
        Ok(())
    }

    /// The first VMA of `mm` overlapping `[at, end)`.
    fn next_vma_in(&self, mm: MmId, at: u64, end: u64) -> Option<Vma> {
        if at >= end {
            return None;
        }
        let s = *self.mm(mm).vmas.overlapping(at, end).first()?;
        self.mm(mm).vmas.get(s).cloned()
    }

    /// `userfaultfd_clear_vma`: `[start, end)` (inside one registered VMA)
    /// leaves its context, and its write protection is lifted.
    fn userfaultfd_clear_range(&mut self, mm: MmId, start: u64, end: u64) {
        let v = self.mm(mm).vmas.find(start).cloned().expect("vma");
        if v.flags.has(VmFlags::UFFD_WP) {
            self.uffd_wp_range(mm, &v, start, end, false);
        }
        self.modify_vma_uffd(mm, start, end, v.flags.0 & !VmFlags::UFFD_FLAGS, None);
    }

    /// `vma_modify_flags_uffd`: `[start, end)` (inside one VMA) gets
    /// `flags` and context `uffd`, split and merged like an mprotect.
    fn modify_vma_uffd(
        &mut self,
        mm: MmId,
        start: u64,
        end: u64,
        flags: u64,
        uffd: Option<UffdId>,
    ) {
        self.split_vma_at(mm, start);
        self.split_vma_at(mm, end);
        if let Some(v) = self.mm_mut(mm).vmas.get_mut(start) {
            v.flags = VmFlags(flags);
            v.uffd = uffd;
        }
        self.merge_vma_at(mm, end);
        self.merge_vma_at(mm, start);
    }

    /// `UFFDIO_WRITEPROTECT`.
    pub fn uffdio_writeprotect(
        &mut self,
        pid: Pid,
        fd: u64,
        start: u64,
        len: u64,
        mode: u64,
    ) -> Result<(), Errno> {
        let (ctx, _) = self.uffd_ready(pid, fd)?;
        let end = self.uffd_validate_range(start, len)?;
        if mode & !(WP_MODE_WP | WP_MODE_DONTWAKE) != 0 {
            return Err(Errno::EINVAL);
        }
        let enable = mode & WP_MODE_WP != 0;
        if enable && mode & WP_MODE_DONTWAKE != 0 {
            return Err(Errno::EINVAL);
        }
        let mm = self.uffd_mm(ctx).ok_or(Errno::ESRCH)?;
        // mwriteprotect_range: every VMA met must be registered for
        // write-protection; the ones before a failure keep their change.
        let mut result = Err(Errno::ENOENT);
        for s in self.mm(mm).vmas.overlapping(start, end) {
            let v = self.mm(mm).vmas.get(s).cloned().expect("vma");
            if !v.flags.has(VmFlags::UFFD_WP) {
                return Err(Errno::ENOENT);
            }
            if v.is_hugetlb() {
                let mask = self.vma_page_size(&v) - 1;
                if start & mask != 0 || len & mask != 0 {
                    return Err(Errno::EINVAL);
                }
            }
            let (lo, hi) = (v.start.max(start), v.end.min(end));
            self.uffd_wp_range(mm, &v, lo, hi, enable);
            result = Ok(());
        }
        if result.is_ok() && !enable && mode & WP_MODE_DONTWAKE == 0 {
            self.uffd_wake(ctx, start, len);
        }
        result
    }

    /// `UFFDIO_WAKE`: wakes the faults waiting in the range.
    pub fn uffdio_wake(&mut self, pid: Pid, fd: u64, start: u64, len: u64) -> Result<(), Errno> {
        let (ctx, _) = self.uffd_ready(pid, fd)?;
        self.uffd_validate_range(start, len)?;
        self.uffd_wake(ctx, start, len);
        Ok(())
    }

    /// `uffd_wp_range`: write-protects (or unprotects) `[start, end)` of
    /// `v`. Mapped entries get (or lose) the uffd-wp bit; where the VMA
    /// uses markers (`userfaultfd_wp_use_markers`: file memory, or
    /// anonymous memory with `WP_UNPOPULATED`), empty entries get a marker
    /// and unprotecting removes markers. Poison and guard markers stay.
    pub(crate) fn uffd_wp_range(&mut self, mm: MmId, v: &Vma, start: u64, end: u64, enable: bool) {
        if v.is_hugetlb() {
            return self.hugetlb_uffd_wp_range(mm, v, start, end, enable);
        }
        let root = self.mm(mm).root;
        let markers = enable && self.uffd_wp_use_markers(v);
        let mut changed = false;
        let mut va = start;
        while va < end {
            let slot = if markers {
                pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, root, va)
            } else {
                pgtable::pte_slot(&self.hw, root, va)
            };
            let Some(slot) = slot else {
                // No table: nothing to change up to the next one.
                va = (va | (pgtable::huge_span(2) - 1)) + 1;
                continue;
            };
            let pte = pgtable::read_pte(&self.hw, slot);
            let new = match pte {
                Pte::Mapped { pfn, flags } if enable => Pte::Mapped {
                    pfn,
                    flags: flags.without(PteFlags::WRITE).with(PteFlags::UFFD_WP),
                },
                Pte::Mapped { pfn, flags } => {
                    let f = flags.without(PteFlags::UFFD_WP);
                    // MM_CP_TRY_CHANGE_WRITABLE (can_change_pte_writable):
                    // an exclusive anonymous page of a private mapping, or
                    // a dirty page of a shared one, is writable again at
                    // once; the others wait for their write fault.
                    let anon_exclusive = pfn != self.zero
                        && self
                            .frames
                            .at(self.frames.folio_of(pfn))
                            .flags
                            .contains(crate::frame::FolioFlags::ANON)
                        && self.frames.at(pfn).anon_exclusive;
                    let writable = v.flags.has(VmFlags::WRITE)
                        && !f.contains(PteFlags::PROTNONE)
                        && !self.soft_dirty_needs_fault(v, f)
                        && if v.is_shared() {
                            f.contains(PteFlags::DIRTY)
                        } else {
                            anon_exclusive
                        };
                    Pte::Mapped {
                        pfn,
                        flags: f.set(PteFlags::WRITE, writable || f.contains(PteFlags::WRITE)),
                    }
                }
                Pte::Swap(e) => Pte::Swap(crate::pte::SwapEntry {
                    uffd_wp: enable,
                    ..e
                }),
                Pte::None if markers => Pte::Marker(MarkerKind::UffdWp),
                Pte::Marker(MarkerKind::UffdWp) if !enable => Pte::None,
                other => other,
            };
            if new != pte {
                pgtable::write_pte(&mut self.hw, slot, new);
                changed = true;
            }
            va += PAGE_SIZE;
        }
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
    }

    /// `userfaultfd_wp_use_markers`.
    pub(crate) fn uffd_wp_use_markers(&self, v: &Vma) -> bool {
        if !v.flags.has(VmFlags::UFFD_WP) {
            return false;
        }
        if !matches!(v.backing, Backing::Anon { .. }) {
            return true;
        }
        self.uffd_features(v) & FEATURE_WP_UNPOPULATED != 0
    }

    /// The features of the context `v` is registered with (0 for none).
    fn uffd_features(&self, v: &Vma) -> u64 {
        v.uffd
            .and_then(|c| self.uffds.get(&c))
            .and_then(|u| u.features)
            .unwrap_or(0)
    }

    /// `userfaultfd_wp_async`.
    pub(crate) fn uffd_wp_async(&self, v: &Vma) -> bool {
        self.uffd_features(v) & FEATURE_WP_ASYNC != 0
    }

    /// Whether the page at `va` is missing for `VM_UFFD_MISSING`: no
    /// page in an anonymous VMA, none in the page cache for a file.
    pub(crate) fn is_missing(&self, v: &Vma, va: u64) -> bool {
        match v.file() {
            Some(obj) => !matches!(
                self.shmems[&obj].pages.get(&v.page_index(va)),
                Some(ShmemPage::Folio(_))
            ),
            None => true,
        }
    }

    /// `userfaultfd_release`: the last descriptor of `ctx` is gone; every
    /// range registered with it is unregistered.
    pub(crate) fn uffd_release(&mut self, ctx: UffdId) {
        let Some(mm) = self.uffds.get(&ctx).map(|u| u.mm) else {
            return;
        };
        if self.mms.contains_key(&mm) {
            let regs: alloc::vec::Vec<(u64, u64)> = self
                .mm(mm)
                .vmas
                .iter()
                .filter(|v| v.uffd == Some(ctx))
                .map(|v| (v.start, v.end))
                .collect();
            for (s, e) in regs {
                self.userfaultfd_clear_range(mm, s, e);
            }
        }
        self.uffd_wake_all(ctx);
        self.uffds.remove(&ctx);
    }

    /// `dup_userfaultfd` without `UFFD_EVENT_FORK`: the child's VMAs are
    /// not registered, and `copy_page_range` drops their protection.
    pub(crate) fn uffd_fork_reset(v: &mut Vma) {
        v.flags = VmFlags(v.flags.0 & !VmFlags::UFFD_FLAGS);
        v.uffd = None;
    }
}
