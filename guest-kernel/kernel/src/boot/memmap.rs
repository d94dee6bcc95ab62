//! The PVH memory map (`hvm_memmap_table_entry` list), kept in a fixed-size
//! table so it can be built before the heap exists.

/// Most entries kept; the writewatch VMM produces at most four, and
/// every entry costs boot time (ring-0 code is slow on kvm_pvm, see `arch::x86_64::idt`).
pub const MAX_REGIONS: usize = 8;

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

/// The memory map.
pub struct MemMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
    dropped: usize,
}

impl MemMap {
    /// An empty map.
    pub const fn new() -> Self {
        MemMap {
            regions: [Region {
                start: 0,
                size: 0,
                kind: RegionKind::Reserved,
            }; MAX_REGIONS],
            len: 0,
            dropped: 0,
        }
    }

    /// Appends a region (counted in [`MemMap::dropped`] when full).
    pub fn push(&mut self, region: Region) {
        if self.len < MAX_REGIONS {
            self.regions[self.len] = region;
            self.len += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// All regions, in loader order.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// The RAM regions.
    pub fn ram(&self) -> impl Iterator<Item = &Region> {
        self.regions().iter().filter(|r| r.kind == RegionKind::Ram)
    }

    /// Total bytes of RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.ram().map(|r| r.size).sum()
    }

    /// Regions that did not fit in the table.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}
