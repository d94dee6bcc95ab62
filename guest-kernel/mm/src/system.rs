//! The MM core's global state: frames, address spaces, anon_vmas, shmem
//! objects, the swap device and the process table.
//!
//! Linux spreads this over `mm_struct`, `anon_vma`, `address_space` and the
//! task list; here it is one owner, [`MemSystem`], so that reverse-map walks
//! (which go from a folio to every address space mapping it) are plain
//! lookups without shared mutable pointers. The kernel wraps it in one lock.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::errno::Errno;
use crate::frame::{FrameTable, FrameUse};
use crate::hw::{CpuSet, Hw, Pfn};
use crate::ids::{AnonVmaId, FileId, MmId, Pid, ShmemId};
use crate::pte::SwapEntry;
use crate::swap::SwapDevice;
use crate::vma::{Backing, Vma, VmaTree};

/// Boot-time configuration.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Frames carved from the top of RAM for the swap device (0: no swap).
    pub swap_frames: u64,
    /// Order of anonymous folios allocated on write faults when the aligned
    /// range is empty (0: always single pages; like mTHP sizes).
    pub anon_folio_order: u8,
    /// `vm.max_map_count`.
    pub max_map_count: usize,
    /// Kernel PML4 whose upper half every new address space copies.
    pub kernel_root: Option<Pfn>,
    /// Run the invariant checker after every syscall (the `mm_check`
    /// command-line flag); a violation panics.
    pub check_every_op: bool,
    /// `vm.mmap_min_addr`: the lowest address a process may map (Linux's
    /// default is 4096; distributions set 65536).
    pub mmap_min_addr: u64,
    /// `hugetlb_free_vmemmap=on` (HVO): the tail metadata of huge pages
    /// free in a hugetlb pool is given back (`frame::vmemmap`).
    pub hugetlb_vmemmap_optimize: bool,
    /// Soft-dirty tracking (`CONFIG_MEM_SOFT_DIRTY`, and whether VMAs
    /// that differ in `VM_SOFTDIRTY` merge).
    pub soft_dirty: SoftDirty,
}

/// How soft-dirty tracking works (the `soft_dirty=` boot option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SoftDirty {
    /// No soft-dirty (`CONFIG_MEM_SOFT_DIRTY=n`, like the host here):
    /// pagemap bit 55 is never set and `clear_refs` 4 changes nothing.
    #[default]
    Off,
    /// Linux's: `VM_SOFTDIRTY` does not keep VMAs from merging, so a new
    /// mapping merged into a cleaned neighbour makes the whole VMA
    /// soft-dirty (over-reporting, never missing a write).
    On,
    /// writewatch's precise mode (the fix discussed on linux-mm,
    /// docs/KERNEL.md): VMAs that differ in `VM_SOFTDIRTY` do not merge,
    /// and `clear_refs` 4 merges what it made equal again.
    Precise,
}

impl SoftDirty {
    /// Whether soft-dirty is tracked at all.
    pub fn enabled(self) -> bool {
        self != SoftDirty::Off
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            swap_frames: 0,
            anon_folio_order: 0,
            max_map_count: 65530,
            kernel_root: None,
            check_every_op: false,
            mmap_min_addr: crate::vma::MMAP_MIN_ADDR,
            hugetlb_vmemmap_optimize: false,
            soft_dirty: SoftDirty::Off,
        }
    }
}

/// One address space (`struct mm_struct`).
#[derive(Debug)]
pub struct AddressSpace {
    /// PML4 frame.
    pub root: Pfn,
    /// The VMAs.
    pub vmas: VmaTree,
    /// CPUs that have run this address space (`mm_cpumask`): where
    /// shootdowns go.
    pub cpus: CpuSet,
}

/// A VMA's identity across the system: its address space and start.
/// Starts change only through split (new upper VMA), merge (absorbed VMA
/// removed), and move (new VMA) — all of which relink.
pub(crate) type VmaKey = (MmId, u64);

/// An anon_vma: the reverse-map root for anonymous folios. `vmas` is every
/// VMA whose chain contains it (Linux's `rb_root` of `anon_vma_chain`s);
/// it dies with its last VMA, when no folio can be mapped through it.
#[derive(Debug, Default)]
pub(crate) struct AnonVma {
    pub vmas: BTreeSet<VmaKey>,
}

/// One page slot of a shmem object (`shmem` page cache / xarray entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShmemPage {
    /// In memory; the object holds one reference.
    Folio(Pfn),
    /// Swapped out; the object holds one swap reference.
    Swap(SwapEntry),
    /// Lost (swap-in error): reads raise SIGBUS.
    Poisoned,
}

/// A shmem inode and its `address_space`: the object behind a shared
/// anonymous mapping, a memfd or a tmpfs file.
#[derive(Debug)]
pub(crate) struct Shmem {
    pub pages: BTreeMap<u64, ShmemPage>,
    /// Every VMA mapping the object (`i_mmap`).
    pub i_mmap: BTreeSet<VmaKey>,
    /// Open files of it; the object dies when the last open file, the
    /// last mapping and its name are gone.
    pub fd_refs: u32,
    /// `i_size` in bytes; faults at or past it are SIGBUS.
    pub size: u64,
    /// `F_SEAL_*` bits (`shmem_inode_info.seals`).
    pub seals: u32,
    /// Permission bits of `i_mode`.
    pub mode: u32,
    /// Whether a tmpfs name refers to it (`i_nlink`).
    pub linked: bool,
}

impl Shmem {
    /// `i_size` in pages, rounded up.
    pub fn pages_len(&self) -> u64 {
        self.size.div_ceil(crate::hw::PAGE_SIZE)
    }

    /// A new object of `size` bytes with no pages, as `shmem_get_inode`
    /// makes it: sealing sealed, mode `0777`.
    pub fn new(size: u64) -> Self {
        Shmem {
            pages: BTreeMap::new(),
            i_mmap: BTreeSet::new(),
            fd_refs: 0,
            size,
            seals: crate::memfd::F_SEAL_SEAL,
            mode: 0o777,
            linked: false,
        }
    }
}

/// An open file (`struct file`): what descriptors refer to, shared by
/// the descriptors a fork copies.
#[derive(Debug, Clone)]
pub(crate) struct OpenFile {
    pub obj: FileObj,
    /// `f_flags`: the access mode, `O_APPEND`, `O_LARGEFILE`.
    pub flags: u32,
    /// `f_pos`.
    pub pos: u64,
    /// Descriptors referring to it.
    pub refs: u32,
}

/// What an open file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileObj {
    /// A tmpfs file or memfd.
    Shmem(ShmemId),
    /// A userfaultfd (an anonymous inode, `[userfaultfd]`).
    Uffd(crate::ids::UffdId),
    /// `/proc/self/pagemap` of the address space that opened it.
    Pagemap(MmId),
    /// `/proc/self/clear_refs` of the process that opened it.
    ClearRefs(Pid),
    /// A hugetlbfs file (a `MFD_HUGETLB` memfd).
    Huge(crate::ids::HugeFileId),
}

impl OpenFile {
    /// The shmem file, for the calls only files have; `not_file` otherwise.
    pub fn shmem(&self, not_file: Errno) -> Result<ShmemId, Errno> {
        match self.obj {
            FileObj::Shmem(s) => Ok(s),
            FileObj::Uffd(_) | FileObj::Pagemap(_) | FileObj::ClearRefs(_) | FileObj::Huge(_) => {
                Err(not_file)
            }
        }
    }

    /// `FMODE_READ`: `O_RDONLY` or `O_RDWR`.
    pub fn readable(&self) -> bool {
        matches!(self.flags & crate::file::O_ACCMODE, 0 | crate::file::O_RDWR)
    }

    /// `FMODE_WRITE`: `O_WRONLY` or `O_RDWR`.
    pub fn writable(&self) -> bool {
        matches!(
            self.flags & crate::file::O_ACCMODE,
            crate::file::O_WRONLY | crate::file::O_RDWR
        )
    }
}

/// State of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Runnable.
    Running,
    /// Exited, waiting to be reaped, with its wait status.
    Zombie(i32),
}

#[derive(Debug)]
pub(crate) struct Process {
    pub parent: Pid,
    pub mm: Option<MmId>,
    pub state: ProcState,
    /// Open files by descriptor number (0 to 2 are the console).
    pub fds: BTreeMap<i32, FileId>,
}

/// Event counters (`vm_event_item`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Faults resolved.
    pub faults: u64,
    /// Zero-page mappings installed.
    pub zero_maps: u64,
    /// Anonymous folios allocated by faults.
    pub anon_allocs: u64,
    /// COW faults that copied.
    pub cow_copies: u64,
    /// COW faults that reused the page.
    pub cow_reuses: u64,
    /// Unshare faults that did something.
    pub unshares: u64,
    /// Pages written to swap.
    pub swap_outs: u64,
    /// Pages read from swap.
    pub swap_ins: u64,
    /// Swap-in I/O errors.
    pub swap_errors: u64,
    /// TLB flush requests.
    pub tlb_flushes: u64,
}

/// The MM core.
pub struct MemSystem<H: Hw> {
    /// The hardware.
    pub hw: H,
    pub(crate) frames: FrameTable,
    pub(crate) zero: Pfn,
    pub(crate) mms: BTreeMap<MmId, AddressSpace>,
    pub(crate) anon_vmas: BTreeMap<AnonVmaId, AnonVma>,
    pub(crate) shmems: BTreeMap<ShmemId, Shmem>,
    pub(crate) files: BTreeMap<FileId, OpenFile>,
    /// userfaultfd contexts, alive while a descriptor refers to them.
    pub(crate) uffds: BTreeMap<crate::ids::UffdId, crate::userfaultfd::Userfault>,
    /// Tasks a userfaultfd woke, for the kernel to run again.
    pub(crate) woken: Vec<Pid>,
    /// The tmpfs directory: names to inodes.
    pub(crate) names: BTreeMap<Vec<u8>, ShmemId>,
    pub(crate) huge: crate::hugetlb::Hugetlb,
    pub(crate) swap: Option<SwapDevice>,
    pub(crate) procs: BTreeMap<Pid, Process>,
    pub(crate) counters: Counters,
    pub(crate) cfg: Config,
    next_id: u64,
    pub(crate) next_pid: Pid,
    /// Test-only fault injection: drop rmaps in `tlb_finish` *before* the
    /// flush (the pre-fix `zap_pte_range` order), to prove the tests see it.
    #[cfg(test)]
    pub(crate) bug_early_rmap: bool,
    /// Test-only fault injection: a closing hugetlb owner VMA keeps its
    /// unused reservations (a leak the checker must see).
    #[cfg(test)]
    pub(crate) bug_huge_resv_leak: bool,
}

/// Why [`MemSystem::new`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// Not enough RAM for the zero page and the swap region.
    NoMemory,
}

impl<H: Hw> MemSystem<H> {
    /// Builds the MM core over the usable RAM `ranges` (bytes, `[start,
    /// end)`), as read from the PVH memory map minus what the kernel uses.
    pub fn new(mut hw: H, ranges: &[(u64, u64)], cfg: Config) -> Result<Self, InitError> {
        let mut frames = FrameTable::new(ranges);
        let zero = frames.alloc(0, FrameUse::Zero).ok_or(InitError::NoMemory)?;
        hw.zero_frame(zero);
        let swap = if cfg.swap_frames > 0 {
            // Carve the highest free frames for the swap region.
            let top: alloc::vec::Vec<Pfn> = frames
                .iter()
                .filter(|(_, f)| f.use_ == FrameUse::Free)
                .map(|(p, _)| p)
                .collect::<alloc::vec::Vec<_>>()
                .into_iter()
                .rev()
                .take(cfg.swap_frames as usize)
                .collect();
            if (top.len() as u64) < cfg.swap_frames {
                return Err(InitError::NoMemory);
            }
            for &p in &top {
                frames.reserve(p);
            }
            Some(SwapDevice::new(top.into_iter().rev().collect()))
        } else {
            None
        };
        Ok(MemSystem {
            hw,
            frames,
            zero,
            mms: BTreeMap::new(),
            anon_vmas: BTreeMap::new(),
            shmems: BTreeMap::new(),
            files: BTreeMap::new(),
            uffds: BTreeMap::new(),
            woken: Vec::new(),
            names: BTreeMap::new(),
            huge: crate::hugetlb::Hugetlb::default(),
            swap,
            procs: BTreeMap::new(),
            counters: Counters::default(),
            cfg,
            next_id: 1,
            next_pid: 1,
            #[cfg(test)]
            bug_early_rmap: false,
            #[cfg(test)]
            bug_huge_resv_leak: false,
        })
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Creates an empty address space (`mm_alloc`).
    pub(crate) fn mm_create(&mut self) -> Option<MmId> {
        let root = crate::pgtable::new_root(&mut self.hw, &mut self.frames, self.cfg.kernel_root)?;
        let id = MmId(self.new_id());
        self.mms.insert(
            id,
            AddressSpace {
                root,
                vmas: VmaTree::default(),
                cpus: CpuSet::default(),
            },
        );
        Some(id)
    }

    pub(crate) fn mm(&self, id: MmId) -> &AddressSpace {
        self.mms.get(&id).expect("live mm")
    }

    pub(crate) fn mm_mut(&mut self, id: MmId) -> &mut AddressSpace {
        self.mms.get_mut(&id).expect("live mm")
    }

    /// Registers a VMA that was just inserted (or created by a split) in the
    /// reverse maps: every anon_vma of its chain, or its object's `i_mmap`
    /// (`anon_vma_chain_link`, `vma_interval_tree_insert`).
    pub(crate) fn vma_link(&mut self, mm: MmId, v: &Vma) {
        match &v.backing {
            Backing::Anon { chain } => self.link_anon_vmas(mm, v.start, chain),
            Backing::PrivateFile { obj, chain } => {
                self.link_anon_vmas(mm, v.start, chain);
                let s = self.shmems.get_mut(obj).expect("live shmem");
                s.i_mmap.insert((mm, v.start));
            }
            Backing::Shmem { obj, .. } => {
                let s = self.shmems.get_mut(obj).expect("live shmem");
                s.i_mmap.insert((mm, v.start));
            }
            Backing::Hugetlb { file, chain, .. } => {
                self.link_anon_vmas(mm, v.start, chain);
                let f = self.huge.files.get_mut(file).expect("live hugetlb file");
                f.i_mmap.insert((mm, v.start));
            }
        }
    }

    /// Undoes [`Self::vma_link`] for a VMA leaving the tree; frees an
    /// anon_vma or shmem object that no VMA refers to any more
    /// (`unlink_anon_vmas`, `vma_interval_tree_remove`). A hugetlb VMA
    /// leaves only when it closes (they never merge): its unused
    /// reservations go back, and its file is evicted with the last one.
    pub(crate) fn vma_unlink(&mut self, mm: MmId, v: &Vma) {
        match &v.backing {
            Backing::Anon { chain } => self.unlink_anon_vmas(mm, v.start, chain),
            Backing::PrivateFile { obj, chain } => {
                self.unlink_anon_vmas(mm, v.start, chain);
                let s = self.shmems.get_mut(obj).expect("live shmem");
                s.i_mmap.remove(&(mm, v.start));
                self.shmem_release_if_unused(*obj);
            }
            Backing::Hugetlb { file, chain, .. } => {
                self.unlink_anon_vmas(mm, v.start, chain);
                self.hugetlb_vma_close(mm, v);
                let f = self.huge.files.get_mut(file).expect("live hugetlb file");
                f.i_mmap.remove(&(mm, v.start));
                if f.i_mmap.is_empty() && f.opens == 0 {
                    self.hugetlb_evict(*file);
                }
            }
            Backing::Shmem { obj, .. } => {
                let s = self.shmems.get_mut(obj).expect("live shmem");
                s.i_mmap.remove(&(mm, v.start));
                self.shmem_release_if_unused(*obj);
            }
        }
    }

    /// Frees a shmem object that no mapping and no descriptor refers to
    /// any more (the inode's eviction), with its pages and swap slots.
    pub(crate) fn shmem_release_if_unused(&mut self, obj: ShmemId) {
        if !self
            .shmems
            .get(&obj)
            .is_some_and(|s| s.i_mmap.is_empty() && s.fd_refs == 0 && !s.linked)
        {
            return;
        }
        let s = self.shmems.remove(&obj).expect("live shmem");
        for (_, p) in s.pages {
            match p {
                ShmemPage::Folio(h) => {
                    self.frames.put_folio(&mut self.hw, h, 1);
                }
                ShmemPage::Swap(e) => self.swap_free(e),
                ShmemPage::Poisoned => {}
            }
        }
    }

    fn link_anon_vmas(&mut self, mm: MmId, start: u64, chain: &[AnonVmaId]) {
        for a in chain {
            self.anon_vmas
                .entry(*a)
                .or_default()
                .vmas
                .insert((mm, start));
        }
    }

    fn unlink_anon_vmas(&mut self, mm: MmId, start: u64, chain: &[AnonVmaId]) {
        for a in chain {
            let av = self.anon_vmas.get_mut(a).expect("live anon_vma");
            av.vmas.remove(&(mm, start));
            if av.vmas.is_empty() {
                self.anon_vmas.remove(a);
            }
        }
    }

    /// `anon_vma_prepare`: gives the VMA at `va` its own anon_vma if it has
    /// none yet; returns it.
    pub(crate) fn anon_vma_prepare(&mut self, mm: MmId, va: u64) -> AnonVmaId {
        let start = self.mm(mm).vmas.find(va).expect("vma").start;
        if let Some(a) = self.mm(mm).vmas.find(va).and_then(Vma::own_anon_vma) {
            return a;
        }
        let a = AnonVmaId(self.new_id());
        self.anon_vmas
            .entry(a)
            .or_default()
            .vmas
            .insert((mm, start));
        if let Some(chain) = self
            .mm_mut(mm)
            .vmas
            .get_mut(start)
            .and_then(|v| v.backing.anon_chain_mut())
        {
            chain.push(a);
        }
        a
    }

    /// Hands more usable RAM `[start, end)` (bytes) to the allocator after
    /// [`MemSystem::new`] (deferred memory initialisation: the kernel builds
    /// the system over a small part of RAM at boot and adds the rest as it
    /// is needed). Ranges must not overlap managed RAM; overlapping or
    /// empty ranges are ignored. Returns the number of frames added.
    pub fn add_ram(&mut self, ranges: &[(u64, u64)]) -> u64 {
        ranges
            .iter()
            .map(|&(s, e)| self.frames.add_range(s, e))
            .sum()
    }

    /// Number of free frames.
    pub fn free_frames(&self) -> u64 {
        self.frames.nr_free()
    }

    /// The event counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
}
