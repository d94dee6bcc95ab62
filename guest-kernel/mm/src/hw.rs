//! The hardware seam: the only things the MM core needs from the machine.
//!
//! The kernel crate implements these traits for real x86-64 (direct-map
//! access to physical memory, `invlpg`/CR3 reloads plus IPIs for shootdown,
//! the per-CPU id); `testing::SimMachine` implements them over a `Vec<u8>`
//! with a per-CPU TLB model. Nothing else in the crate touches hardware,
//! which is why the crate can `forbid(unsafe_code)`.

/// log2 of the base page size.
pub const PAGE_SHIFT: u32 = 12;
/// The base page size (4 KiB).
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// A physical frame number (physical address >> 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl Pfn {
    /// Physical address of the first byte of the frame.
    pub fn addr(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
    /// The frame containing physical address `pa`.
    pub fn containing(pa: u64) -> Self {
        Pfn(pa >> PAGE_SHIFT)
    }
    /// The frame `n` frames after this one.
    pub fn offset(self, n: u64) -> Self {
        Pfn(self.0 + n)
    }
}

/// Index of a CPU (its APIC id in writewatch).
pub type CpuId = u32;

/// A set of up to 64 CPUs (`mm_cpumask`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuSet(pub u64);

impl CpuSet {
    /// Adds `cpu` (ignored past 63).
    pub fn insert(&mut self, cpu: CpuId) {
        if cpu < 64 {
            self.0 |= 1 << cpu;
        }
    }
    /// Whether `cpu` is in the set.
    pub fn contains(self, cpu: CpuId) -> bool {
        cpu < 64 && self.0 & (1 << cpu) != 0
    }
    /// The CPUs in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = CpuId> {
        (0..64u32).filter(move |c| self.0 & (1u64 << c) != 0)
    }
}

/// What part of an address space to invalidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushRange {
    /// Every user translation of the address space.
    All,
    /// Virtual addresses in `[start, end)` (page aligned).
    Range {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
    },
}

/// One TLB invalidation: `flush_tlb_mm_range()` in Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushRequest {
    /// Root page table (CR3 / PCID identity) of the address space.
    pub root: Pfn,
    /// CPUs that may cache translations of it (local and remote).
    pub cpus: CpuSet,
    /// Which translations.
    pub range: FlushRange,
}

/// Why a frame is reported to [`PhysMem::frame_released`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The last rmap reference (mapcount) of the page was dropped.
    Unmapped,
    /// The frame went back to the page allocator.
    Freed,
}

/// Access to physical memory (the kernel's direct map).
pub trait PhysMem {
    /// Reads the little-endian `u64` at physical address `pa` (8-aligned).
    fn read_u64(&self, pa: u64) -> u64;
    /// Writes the `u64` at physical address `pa` (8-aligned).
    fn write_u64(&mut self, pa: u64, val: u64);
    /// Fills a frame with zeroes.
    fn zero_frame(&mut self, pfn: Pfn);
    /// Copies frame `src` to frame `dst`.
    fn copy_frame(&mut self, dst: Pfn, src: Pfn);
    /// Reads `buf.len()` bytes at `pa` (never crosses a frame for MM callers).
    fn read_bytes(&self, pa: u64, buf: &mut [u8]);
    /// Writes `data` at `pa` (never crosses a frame for MM callers).
    fn write_bytes(&mut self, pa: u64, data: &[u8]);
    /// Audit hook: the MM core calls this when a frame stops being mapped
    /// (mapcount reached zero) or is freed, always *after* the TLB flush that
    /// made it unreachable. The default does nothing; the simulator checks
    /// that no TLB still translates to the frame.
    fn frame_released(&mut self, _pfn: Pfn, _why: Release) {}
}

/// TLB maintenance (`arch/x86/mm/tlb.c`).
pub trait Tlb {
    /// Invalidates `req.range` of `req.root` on every CPU in `req.cpus`: a
    /// local `invlpg` when the current CPU is in the set, and a shootdown IPI
    /// (waited for) to every other. Must not return before all are done.
    fn flush(&mut self, req: &FlushRequest);
}

/// Which CPU the caller runs on.
pub trait CurrentCpu {
    /// The current CPU's id.
    fn current_cpu(&self) -> CpuId;
}

/// Everything the MM core needs from the machine.
pub trait Hw: PhysMem + Tlb + CurrentCpu {}
impl<T: PhysMem + Tlb + CurrentCpu> Hw for T {}
