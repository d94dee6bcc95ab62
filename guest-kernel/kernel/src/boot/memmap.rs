//! The PVH memory map: the loader's `hvm_memmap_table_entry` array, read
//! where the loader left it rather than copied, so it may have any number
//! of entries (QEMU's q35 gives nine), exists before the heap does, and
//! costs no boot time to keep (ring-0 code is slow on kvm_pvm, see
//! `arch::x86_64::idt`). `memory::frames` never hands out its frames.

use super::phys::read as read_phys;

/// What a memory-map range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Usable RAM (type 1).
    Ram,
    /// Reserved (type 2).
    Reserved,
    /// Any other E820 type.
    Other(u32),
}

impl RegionKind {
    /// Decodes an E820 type.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            1 => RegionKind::Ram,
            2 => RegionKind::Reserved,
            other => RegionKind::Other(other),
        }
    }
}

/// One memory-map range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First physical address.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: RegionKind,
}

impl Region {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.size)
    }
}

/// The memory map: the loader's table, read in place.
#[derive(Clone, Copy)]
pub struct MemMap {
    /// Physical address of the first `hvm_memmap_table_entry`.
    paddr: u64,
    entries: u32,
}

/// Bytes per `hvm_memmap_table_entry` (addr, size, type, reserved).
const ENTRY: u64 = 24;

impl MemMap {
    /// The table of `entries` entries at physical `paddr`, which must lie in
    /// the boot direct map (the first GiB) and stay intact: the frame
    /// allocator never hands out [`MemMap::table`].
    pub const fn in_place(paddr: u64, entries: u32) -> Self {
        MemMap { paddr, entries }
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.entries as usize
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// `[start, end)` of the table itself.
    pub fn table(&self) -> (u64, u64) {
        (self.paddr, self.paddr + u64::from(self.entries) * ENTRY)
    }

    /// Entry `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<Region> {
        if i >= self.len() {
            return None;
        }
        let at = self.paddr + i as u64 * ENTRY;
        Some(Region {
            start: read_phys(at),
            size: read_phys(at + 8),
            kind: RegionKind::from_raw(read_phys(at + 16)),
        })
    }

    /// All regions, in loader order.
    pub fn regions(&self) -> impl Iterator<Item = Region> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The RAM regions.
    pub fn ram(&self) -> impl Iterator<Item = Region> + '_ {
        self.regions().filter(|r| r.kind == RegionKind::Ram)
    }

    /// Whether `[start, end)` lies inside one RAM region.
    pub fn covers_ram(&self, start: u64, end: u64) -> bool {
        self.ram().any(|r| r.start <= start && end <= r.end())
    }

    /// Total bytes of RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.ram().map(|r| r.size).sum()
    }
}
