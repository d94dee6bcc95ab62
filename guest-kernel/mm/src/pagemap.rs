//! `/proc/pid/pagemap` entries and the `PAGEMAP_SCAN` ioctl.
//!
//! Mirrors `fs/proc/task_mmu.c` of Linux 6.18: `pte_to_pagemap_entry`,
//! `pagemap_hugetlb_range`, and `do_pagemap_scan` with its walk
//! (`pagemap_scan_test_walk`, `pagemap_scan_pmd_entry` and its two fast
//! paths, `pagemap_scan_hugetlb_entry`, `pagemap_scan_pte_hole`), its
//! bounce buffer of at most 512 regions flushed after every walk, and
//! `walk_end`. The walk visits the address space in 2 MiB steps and tells
//! a missing page table from an empty entry, as Linux's page walk does:
//! 6.18's `PAGE_IS_WRITTEN` fast path counts an empty entry of an existing
//! table as written (docs/CONFORMANCE.md).
//!
//! Entries carry no frame numbers: guest processes are unprivileged, and
//! Linux shows frames only to CAP_SYS_ADMIN.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::frame::FolioFlags;
use crate::hw::{FlushRange, Hw, PAGE_SIZE};
use crate::ids::{MmId, Pid};
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags};
use crate::system::MemSystem;
use crate::vma::{TASK_SIZE, Vma};

/// `PM_SOFT_DIRTY`.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// `PM_MMAP_EXCLUSIVE`: the page is mapped once.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// `PM_UFFD_WP`.
pub const PM_UFFD_WP: u64 = 1 << 57;
/// `PM_GUARD_REGION`.
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// `PM_FILE`: a file page or shared anonymous memory.
pub const PM_FILE: u64 = 1 << 61;
/// `PM_SWAP`: swapped, or a marker.
pub const PM_SWAP: u64 = 1 << 62;
/// `PM_PRESENT`.
pub const PM_PRESENT: u64 = 1 << 63;

/// `PAGE_IS_WPALLOWED`.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// `PAGE_IS_WRITTEN`.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_FILE`.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_PFNZERO`.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGE_IS_HUGE`.
pub const PAGE_IS_HUGE: u64 = 1 << 6;
/// `PAGE_IS_SOFT_DIRTY`.
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;
/// `PAGE_IS_GUARD`.
pub const PAGE_IS_GUARD: u64 = 1 << 8;
/// `PM_SCAN_CATEGORIES`.
pub const PM_SCAN_CATEGORIES: u64 = 0x1ff;
/// `PM_SCAN_WP_MATCHING`: write-protect what is reported written.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail on memory without async write-protect.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// `sizeof(struct pm_scan_arg)`.
pub const PM_SCAN_ARG_SIZE: u64 = 96;
/// `sizeof(struct page_region)`.
pub const PAGE_REGION_SIZE: u64 = 24;
/// `PAGEMAP_WALK_SIZE >> PAGE_SHIFT`: the bounce buffer's most regions.
const BOUNCE_REGIONS: u64 = 512;
const PMD_SPAN: u64 = 2 << 20;

/// `struct pm_scan_arg`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PmScanArg {
    /// `size`: must be [`PM_SCAN_ARG_SIZE`].
    pub size: u64,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// First address.
    pub start: u64,
    /// End address (rounded up to a page).
    pub end: u64,
    /// Out: where the walk stopped.
    pub walk_end: u64,
    /// Address of the `page_region` array (0: none).
    pub vec: u64,
    /// Its length in regions.
    pub vec_len: u64,
    /// Most pages to report (0: no limit).
    pub max_pages: u64,
    /// Categories to invert before matching.
    pub category_inverted: u64,
    /// Categories that must all be set.
    pub category_mask: u64,
    /// Categories of which one must be set (0: no such test).
    pub category_anyof_mask: u64,
    /// Categories to report.
    pub return_mask: u64,
}

impl PmScanArg {
    /// The structure as its 12 little-endian words.
    pub fn to_words(&self) -> [u64; 12] {
        [
            self.size,
            self.flags,
            self.start,
            self.end,
            self.walk_end,
            self.vec,
            self.vec_len,
            self.max_pages,
            self.category_inverted,
            self.category_mask,
            self.category_anyof_mask,
            self.return_mask,
        ]
    }
    /// The structure from its 12 words.
    pub fn from_words(w: [u64; 12]) -> Self {
        PmScanArg {
            size: w[0],
            flags: w[1],
            start: w[2],
            end: w[3],
            walk_end: w[4],
            vec: w[5],
            vec_len: w[6],
            max_pages: w[7],
            category_inverted: w[8],
            category_mask: w[9],
            category_anyof_mask: w[10],
            return_mask: w[11],
        }
    }
}

/// `struct page_region`: `[start, end)` with `categories`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// The categories (masked by `return_mask`).
    pub categories: u64,
}

/// What a scan found: the regions, for the caller to copy out, and the
/// walk's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanResult {
    /// The regions, in address order.
    pub regions: Vec<PageRegion>,
    /// Where the walk stopped (`walk_end`).
    pub walk_end: u64,
    /// An error that stopped the walk (`-EPERM` of
    /// `PM_SCAN_CHECK_WPASYNC`); the regions found before it and
    /// `walk_end` are still handed back.
    pub error: Option<Errno>,
}

/// Why a walk step stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// `-ENOSPC`: the buffer or `max_pages` is full.
    Full,
    /// Another error.
    Err(Errno),
}

/// `struct pagemap_scan_private`.
struct Scan {
    arg: PmScanArg,
    interest: u64,
    vma_category: u64,
    buf: Vec<PageRegion>,
    buf_len: u64,
    found: u64,
}

impl Scan {
    fn interesting(&self, c: u64) -> bool {
        let c = c ^ self.arg.category_inverted;
        c & self.arg.category_mask == self.arg.category_mask
            && (self.arg.category_anyof_mask == 0 || c & self.arg.category_anyof_mask != 0)
    }

    fn interesting_vma(&self, c: u64) -> bool {
        let required = self.arg.category_mask & PAGE_IS_WPALLOWED;
        (c ^ self.arg.category_inverted) & required == required
    }

    fn has_vec(&self) -> bool {
        self.arg.vec_len != 0
    }

    /// `pagemap_scan_push_range`.
    fn push(&mut self, categories: u64, start: u64, end: u64) -> bool {
        if start == end {
            // Only after max_pages cut the report, which ends the walk:
            // Linux parks the empty region in a slot it never hands out.
            return true;
        }
        if let Some(cur) = self.buf.last_mut() {
            if cur.end == start && cur.categories == categories {
                cur.end = end;
                return true;
            }
            if self.buf.len() as u64 >= self.buf_len {
                return false;
            }
        }
        self.buf.push(PageRegion {
            start,
            end,
            categories,
        });
        true
    }

    /// `pagemap_scan_output`: reports `[addr, *end)`, cut to what fits;
    /// `*end` is where the report stopped.
    fn output(&mut self, categories: u64, addr: u64, end: &mut u64) -> Result<(), Stop> {
        if !self.has_vec() {
            return Ok(());
        }
        let categories = categories & self.arg.return_mask;
        let mut n = (*end - addr) / PAGE_SIZE;
        let mut full = false;
        let total = self.found.checked_add(n);
        if total.is_none_or(|t| t > self.arg.max_pages) {
            let too_much = total.map_or(u64::MAX, |t| t - self.arg.max_pages);
            let too_much = too_much.min(n);
            *end -= too_much * PAGE_SIZE;
            n -= too_much;
            full = true;
        }
        if !self.push(categories, addr, *end) {
            *end = addr;
            n = 0;
            full = true;
        }
        self.found += n;
        if full {
            self.arg.walk_end = *end;
            return Err(Stop::Full);
        }
        Ok(())
    }

    /// `pagemap_scan_backout_range`: takes back the report of `[addr,
    /// end)`, the last one made.
    fn backout(&mut self, addr: u64, end: u64) {
        if !self.has_vec() {
            return;
        }
        if let Some(cur) = self.buf.last_mut() {
            if cur.start != addr {
                cur.end = addr;
            } else {
                self.buf.pop();
            }
        }
        self.found -= (end - addr) / PAGE_SIZE;
    }

    /// `pagemap_scan_flush_buffer`: moves the buffer out.
    fn flush(&mut self, out: &mut Vec<PageRegion>) {
        let n = self.buf.len() as u64;
        out.append(&mut self.buf);
        self.arg.vec_len -= n;
        self.buf_len = self.buf_len.min(self.arg.vec_len);
    }
}

impl<H: Hw> MemSystem<H> {
    /// Whether the page at `pfn` belongs to a file (or shared memory):
    /// `!folio_test_anon`.
    fn is_file_page(&self, pfn: crate::hw::Pfn) -> bool {
        !self
            .frames
            .at(self.frames.folio_of(pfn))
            .flags
            .contains(FolioFlags::ANON)
    }

    /// The pagemap entry of the page at `va` in `mm` (no frame number):
    /// [`Self::pagemap_bits`], plus `PM_SOFT_DIRTY` when the VMA or the
    /// entry is soft-dirty.
    pub(crate) fn pagemap_entry(&self, mm: MmId, va: u64) -> u64 {
        let Some(v) = self.mm(mm).vmas.find(va) else {
            return 0;
        };
        let root = self.mm(mm).root;
        let pte = if v.is_hugetlb() {
            pgtable::lookup_page(&self.hw, root, va)
        } else {
            pgtable::lookup(&self.hw, root, va)
        };
        let sd = if self.page_soft_dirty(Some(v), pte) {
            PM_SOFT_DIRTY
        } else {
            0
        };
        self.pagemap_bits(v, pte) | sd
    }

    /// The pagemap bits of entry `pte` of `v` but soft-dirty.
    fn pagemap_bits(&self, v: &Vma, pte: Pte) -> u64 {
        if v.is_hugetlb() {
            // pagemap_hugetlb_range: markers show as uffd-wp only.
            return match pte {
                Pte::Mapped { pfn, flags } => {
                    let head = self.frames.folio_of(pfn);
                    let mut e = PM_PRESENT;
                    if self.is_file_page(pfn) {
                        e |= PM_FILE;
                    }
                    if self.frames.at(head).mapcount <= 1 {
                        e |= PM_MMAP_EXCLUSIVE;
                    }
                    if flags.contains(PteFlags::UFFD_WP) {
                        e |= PM_UFFD_WP;
                    }
                    e
                }
                Pte::Marker(MarkerKind::UffdWp) => PM_UFFD_WP,
                _ => 0,
            };
        }
        match pte {
            Pte::Mapped { pfn, flags } => {
                let mut e = PM_PRESENT;
                if flags.contains(PteFlags::UFFD_WP) {
                    e |= PM_UFFD_WP;
                }
                if pfn != self.zero {
                    if self.is_file_page(pfn) {
                        e |= PM_FILE;
                    }
                    if self.frames.at(pfn).mapcount == 1 {
                        e |= PM_MMAP_EXCLUSIVE;
                    }
                }
                e
            }
            Pte::Swap(e) if e.uffd_wp => PM_SWAP | PM_UFFD_WP,
            Pte::Swap(_) => PM_SWAP,
            Pte::Marker(MarkerKind::UffdWp) => PM_SWAP | PM_UFFD_WP,
            Pte::Marker(MarkerKind::Guard) => PM_SWAP | PM_GUARD_REGION,
            Pte::Marker(MarkerKind::Poisoned) => PM_SWAP,
            _ => 0,
        }
    }

    /// `pagemap_read` of `n` entries from the page at `va` of `pid`.
    pub fn pagemap(&self, pid: Pid, va: u64, n: u64) -> Result<Vec<u64>, Errno> {
        let mm = self.proc_mm(pid)?;
        let end = va
            .saturating_add(n.saturating_mul(PAGE_SIZE))
            .min(TASK_SIZE);
        Ok((va..end)
            .step_by(PAGE_SIZE as usize)
            .map(|a| self.pagemap_entry(mm, a))
            .collect())
    }

    /// Opens `/proc/self/pagemap` (mode 0400: read-only).
    pub(crate) fn open_pagemap(&mut self, pid: Pid, flags: u32) -> Result<u64, Errno> {
        let mm = self.proc_mm(pid)?;
        if flags & crate::file::O_ACCMODE != 0 {
            return Err(Errno::EACCES);
        }
        let id = crate::ids::FileId(self.new_id());
        self.files.insert(
            id,
            crate::system::OpenFile {
                obj: crate::system::FileObj::Pagemap(mm),
                flags: 0,
                pos: 0,
                refs: 1,
            },
        );
        Ok(self.install_file(pid, id))
    }

    /// `pagemap_read`: entries of the pages from `pos / 8 * 4096`, into
    /// `buf` of `pid`; returns the bytes copied.
    pub(crate) fn pagemap_read(
        &mut self,
        pid: Pid,
        mm: MmId,
        buf: u64,
        count: u64,
        pos: u64,
    ) -> Result<u64, Errno> {
        if !self.mms.contains_key(&mm) {
            return Ok(0);
        }
        if pos % 8 != 0 || count % 8 != 0 {
            return Err(Errno::EINVAL);
        }
        let start = (pos / 8).saturating_mul(PAGE_SIZE).min(TASK_SIZE);
        let n = (count / 8).min((TASK_SIZE - start) / PAGE_SIZE);
        let words: Vec<u8> = (0..n)
            .flat_map(|i| self.pagemap_entry(mm, start + i * PAGE_SIZE).to_le_bytes())
            .collect();
        self.copy_to_user(pid, buf, &words)?;
        Ok(words.len() as u64)
    }

    /// `PAGEMAP_SCAN` through a pagemap descriptor: the structure and the
    /// regions copied in and out as `do_pagemap_scan` does.
    pub(crate) fn pagemap_scan_ioctl(
        &mut self,
        pid: Pid,
        mm: MmId,
        uarg: u64,
    ) -> Result<u64, Errno> {
        let mut raw = [0u8; 96];
        self.copy_from_user(pid, uarg, &mut raw)?;
        let mut w = [0u64; 12];
        for (slot, c) in w.iter_mut().zip(raw.chunks(8)) {
            *slot = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        let arg = PmScanArg::from_words(w);
        let r = self.pagemap_scan_mm(mm, arg)?;
        let bytes: Vec<u8> = r
            .regions
            .iter()
            .flat_map(|g| [g.start, g.end, g.categories])
            .flat_map(u64::to_le_bytes)
            .collect();
        let copied = self.copy_to_user(pid, arg.vec, &bytes);
        self.copy_to_user(pid, uarg + 32, &r.walk_end.to_le_bytes())?;
        copied?;
        match r.error {
            Some(e) => Err(e),
            None => Ok(r.regions.len() as u64),
        }
    }

    /// `do_pagemap_scan` for `pid`, after `pagemap_scan_get_args`' checks.
    pub fn pagemap_scan(&mut self, pid: Pid, arg: PmScanArg) -> Result<ScanResult, Errno> {
        let mm = self.proc_mm(pid)?;
        self.pagemap_scan_mm(mm, arg)
    }

    fn pagemap_scan_mm(&mut self, mm: MmId, arg: PmScanArg) -> Result<ScanResult, Errno> {
        if !self.mms.contains_key(&mm) {
            return Err(Errno::ESRCH);
        }
        let mut arg = arg;
        if arg.size != PM_SCAN_ARG_SIZE {
            return Err(Errno::EINVAL);
        }
        if arg.flags & !(PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC) != 0 {
            return Err(Errno::EINVAL);
        }
        if (arg.category_inverted | arg.category_mask | arg.category_anyof_mask | arg.return_mask)
            & !PM_SCAN_CATEGORIES
            != 0
        {
            return Err(Errno::EINVAL);
        }
        if arg.start % PAGE_SIZE != 0 {
            return Err(Errno::EINVAL);
        }
        let access_ok = |p: u64, len: u64| p.checked_add(len).is_some_and(|e| e <= TASK_SIZE);
        if !access_ok(arg.start, arg.end.wrapping_sub(arg.start)) {
            return Err(Errno::EFAULT);
        }
        if arg.vec == 0 && arg.vec_len != 0 {
            return Err(Errno::EINVAL);
        }
        if arg.vec != 0 && !access_ok(arg.vec, arg.vec_len.saturating_mul(PAGE_REGION_SIZE)) {
            return Err(Errno::EFAULT);
        }
        arg.end = arg.end.next_multiple_of(PAGE_SIZE);
        arg.walk_end = 0;
        if arg.max_pages == 0 {
            arg.max_pages = u64::MAX;
        }
        let mut p = Scan {
            interest: arg.category_mask | arg.category_anyof_mask | arg.return_mask,
            buf_len: BOUNCE_REGIONS.min(arg.vec_len),
            arg,
            vma_category: 0,
            buf: Vec::new(),
            found: 0,
        };
        let mut out = Vec::new();
        let mut walk_start = p.arg.start;
        let mut result = Ok(());
        while walk_start < p.arg.end {
            result = self.scan_walk(mm, &mut p, walk_start);
            p.flush(&mut out);
            if result != Err(Stop::Full) {
                break;
            }
            if p.arg.vec_len == 0 || p.found == p.arg.max_pages {
                break;
            }
            walk_start = p.arg.walk_end;
        }
        if p.arg.walk_end == 0 {
            p.arg.walk_end = p.arg.end;
        }
        Ok(ScanResult {
            regions: out,
            walk_end: p.arg.walk_end,
            error: match result {
                Err(Stop::Err(e)) => Some(e),
                _ => None,
            },
        })
    }

    /// One `walk_page_range` over `[start, p.arg.end)`.
    fn scan_walk(&mut self, mm: MmId, p: &mut Scan, start: u64) -> Result<(), Stop> {
        let end = p.arg.end;
        for s in self.mm(mm).vmas.overlapping(start, end) {
            let v = self.mm(mm).vmas.get(s).cloned().expect("vma");
            // pagemap_scan_test_walk.
            let wp_allowed = self.uffd_wp_async(&v) && self.uffd_wp_use_markers(&v);
            if !wp_allowed {
                if p.arg.flags & PM_SCAN_CHECK_WPASYNC != 0 {
                    return Err(Stop::Err(Errno::EPERM));
                }
                if p.arg.flags & PM_SCAN_WP_MATCHING != 0 {
                    continue;
                }
            }
            let mut vc = if wp_allowed { PAGE_IS_WPALLOWED } else { 0 };
            if self.page_soft_dirty(Some(&v), Pte::None) {
                // The VMA's VM_SOFTDIRTY: every page of it.
                vc |= PAGE_IS_SOFT_DIRTY;
            }
            if !p.interesting_vma(vc) {
                continue;
            }
            p.vma_category = vc;
            let (lo, hi) = (v.start.max(start), v.end.min(end));
            if v.is_hugetlb() {
                self.scan_hugetlb(mm, p, &v, lo, hi)?;
                continue;
            }
            let root = self.mm(mm).root;
            let mut a = lo;
            while a < hi {
                let next = ((a | (PMD_SPAN - 1)) + 1).min(hi);
                if pgtable::pte_slot(&self.hw, root, a).is_some() {
                    self.scan_ptes(mm, p, a, next)?;
                } else {
                    self.scan_hole(mm, p, &v, a, next)?;
                }
                a = next;
            }
        }
        Ok(())
    }

    /// `pagemap_scan_pte_hole`: no page table under `[start, end)`.
    fn scan_hole(
        &mut self,
        mm: MmId,
        p: &mut Scan,
        v: &Vma,
        start: u64,
        end: u64,
    ) -> Result<(), Stop> {
        // Seen on 6.18: in memory registered for async write-protection
        // a range without a page table reports written too, like the
        // empty entries of an existing table.
        let c = if p.vma_category & PAGE_IS_WPALLOWED != 0 {
            p.vma_category | PAGE_IS_WRITTEN
        } else {
            p.vma_category
        };
        if !p.interesting(c) {
            return Ok(());
        }
        let mut e = end;
        let r = p.output(c, start, &mut e);
        if e == start {
            return r;
        }
        if p.arg.flags & PM_SCAN_WP_MATCHING != 0 {
            self.uffd_wp_range(mm, v, start, e, true);
        }
        r
    }

    /// `pagemap_page_category` of one entry.
    fn page_category(&self, p: &Scan, pte: Pte) -> u64 {
        match pte {
            Pte::Mapped { pfn, flags } => {
                let mut c = PAGE_IS_PRESENT;
                if !flags.contains(PteFlags::UFFD_WP) {
                    c |= PAGE_IS_WRITTEN;
                }
                if p.interest & PAGE_IS_FILE != 0 && pfn != self.zero && self.is_file_page(pfn) {
                    c |= PAGE_IS_FILE;
                }
                if pfn == self.zero {
                    c |= PAGE_IS_PFNZERO;
                }
                if self.page_soft_dirty(None, pte) {
                    c |= PAGE_IS_SOFT_DIRTY;
                }
                c
            }
            Pte::Swap(e) if e.soft_dirty && self.cfg.soft_dirty.enabled() => {
                let written = if e.uffd_wp { 0 } else { PAGE_IS_WRITTEN };
                PAGE_IS_SWAPPED | PAGE_IS_SOFT_DIRTY | written
            }
            Pte::Swap(e) if e.uffd_wp => PAGE_IS_SWAPPED,
            Pte::Swap(_) | Pte::Marker(MarkerKind::Poisoned) => PAGE_IS_SWAPPED | PAGE_IS_WRITTEN,
            Pte::Marker(MarkerKind::UffdWp) => PAGE_IS_SWAPPED,
            Pte::Marker(MarkerKind::Guard) => PAGE_IS_SWAPPED | PAGE_IS_WRITTEN | PAGE_IS_GUARD,
            // 6.18: an empty entry of an existing table counts as written.
            _ => PAGE_IS_WRITTEN,
        }
    }

    /// `pagemap_scan_pmd_entry` on an existing page table.
    fn scan_ptes(&mut self, mm: MmId, p: &mut Scan, start: u64, end: u64) -> Result<(), Stop> {
        let root = self.mm(mm).root;
        let wp = p.arg.flags & PM_SCAN_WP_MATCHING != 0;
        let protected = |pte: Pte| match pte {
            Pte::Mapped { flags, .. } => flags.contains(PteFlags::UFFD_WP),
            Pte::Marker(MarkerKind::UffdWp) => true,
            Pte::Swap(e) => e.uffd_wp,
            _ => false,
        };
        let mut changed = false;
        let mut result = Ok(());
        let fast_written = p.arg.category_anyof_mask == 0
            && p.arg.category_inverted == 0
            && p.arg.category_mask == PAGE_IS_WRITTEN
            && p.arg.return_mask == PAGE_IS_WRITTEN;
        let mut a = start;
        while a < end {
            let slot = pgtable::pte_slot(&self.hw, root, a).expect("page table");
            let pte = pgtable::read_pte(&self.hw, slot);
            let mut next = a + PAGE_SIZE;
            let write_protect = if wp && !p.has_vec() {
                // Fast path for performing exclusive WP.
                !protected(pte)
            } else if fast_written {
                // 6.18: any entry not protected, empty ones included, is
                // written.
                if protected(pte) {
                    a = next;
                    continue;
                }
                result = p.output(p.vma_category | PAGE_IS_WRITTEN, a, &mut next);
                if next == a {
                    break;
                }
                wp
            } else {
                let c = p.vma_category | self.page_category(p, pte);
                if !p.interesting(c) {
                    a += PAGE_SIZE;
                    continue;
                }
                result = p.output(c, a, &mut next);
                if next == a {
                    break;
                }
                wp && c & PAGE_IS_WRITTEN != 0
            };
            if write_protect {
                // make_uffd_wp_pte.
                let new = match pte {
                    Pte::Mapped { pfn, flags } => Some(Pte::Mapped {
                        pfn,
                        flags: flags.without(PteFlags::WRITE).with(PteFlags::UFFD_WP),
                    }),
                    Pte::Swap(e) => Some(Pte::Swap(crate::pte::SwapEntry { uffd_wp: true, ..e })),
                    Pte::None => Some(Pte::Marker(MarkerKind::UffdWp)),
                    _ => None,
                };
                if let Some(new) = new {
                    pgtable::write_pte(&mut self.hw, slot, new);
                    changed = true;
                }
            }
            if result.is_err() {
                break;
            }
            a = next;
        }
        if changed {
            self.flush_tlb(mm, FlushRange::Range { start, end });
        }
        result
    }

    /// `pagemap_scan_hugetlb_entry` and the holes between huge entries.
    /// With `PM_SCAN_WP_MATCHING`, a written huge page is write-protected
    /// whole; one reported only in part (the range or `max_pages` cut it)
    /// is not: its report is taken back and `walk_end` points at it, and
    /// the walk goes on, as in Linux.
    fn scan_hugetlb(
        &mut self,
        mm: MmId,
        p: &mut Scan,
        v: &Vma,
        start: u64,
        end: u64,
    ) -> Result<(), Stop> {
        let (_, h) = self.huge_file_of(v);
        let (size, level) = (crate::hugetlb::huge_size(h), crate::hugetlb::huge_level(h));
        let root = self.mm(mm).root;
        let mut a = start;
        while a < end {
            let hend = ((a & !(size - 1)) + size).min(end);
            match pgtable::huge_slot(&self.hw, root, a & !(size - 1), level) {
                Some(slot) => {
                    let pte = pgtable::read_huge(&self.hw, slot, level);
                    let mut c = p.vma_category | PAGE_IS_HUGE;
                    match pte {
                        Pte::Mapped { pfn, flags } => {
                            c |= PAGE_IS_PRESENT;
                            if !flags.contains(PteFlags::UFFD_WP) {
                                c |= PAGE_IS_WRITTEN;
                            }
                            if self.is_file_page(pfn) {
                                c |= PAGE_IS_FILE;
                            }
                            if self.page_soft_dirty(None, pte) {
                                c |= PAGE_IS_SOFT_DIRTY;
                            }
                        }
                        Pte::Marker(MarkerKind::UffdWp) => c |= PAGE_IS_SWAPPED,
                        Pte::Marker(_) | Pte::Swap(_) => c |= PAGE_IS_SWAPPED | PAGE_IS_WRITTEN,
                        _ => {}
                    }
                    if p.interesting(c) {
                        let mut e = hend;
                        let r = p.output(c, a, &mut e);
                        let wp = p.arg.flags & PM_SCAN_WP_MATCHING != 0;
                        if e == a || !wp || c & PAGE_IS_WRITTEN == 0 {
                            r?;
                        } else if e - a != size {
                            // Partial hugetlb WP is not possible.
                            p.backout(a, e);
                            p.arg.walk_end = a;
                        } else {
                            self.make_uffd_wp_huge(mm, v, a);
                            r?;
                        }
                    }
                }
                None => self.scan_hole(mm, p, v, a, hend)?,
            }
            a = hend;
        }
        Ok(())
    }
}
