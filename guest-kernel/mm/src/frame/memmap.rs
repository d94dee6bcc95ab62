//! From the firmware memory map to the RAM ranges the buddy allocator gets.
//!
//! The PVH `hvm_memmap_table_entry` list (type 1 = RAM) minus what the
//! kernel keeps for itself (the first MiB, its image, boot page tables,
//! heap), page aligned inwards. Mirrors what `memblock` does in Linux before
//! `memblock_free_all` hands memory to the page allocator.

use alloc::vec::Vec;

use crate::hw::PAGE_SIZE;

/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const MEMMAP_RAM: u32 = 1;

/// One memory-map entry (`struct hvm_memmap_table_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemMapEntry {
    /// Base physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Type: [`MEMMAP_RAM`] or another (reserved, ACPI...).
    pub kind: u32,
}

/// RAM ranges `[start, end)` of `map` with every `reserved` range removed,
/// page aligned inwards, sorted, without empty ranges.
pub fn usable_ranges(map: &[MemMapEntry], reserved: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.kind == MEMMAP_RAM && e.size > 0)
        .map(|e| (e.addr, e.addr.saturating_add(e.size)))
        .collect();
    for &(rs, re) in reserved {
        out = out
            .into_iter()
            .flat_map(|(s, e)| {
                let lo = (s, e.min(rs));
                let hi = (s.max(re), e);
                [lo, hi]
            })
            .filter(|&(s, e)| s < e)
            .collect();
    }
    let mut out: Vec<(u64, u64)> = out
        .into_iter()
        .map(|(s, e)| (s.div_ceil(PAGE_SIZE) * PAGE_SIZE, e / PAGE_SIZE * PAGE_SIZE))
        .filter(|&(s, e)| s < e)
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_layout_minus_kernel() {
        let map = [
            MemMapEntry {
                addr: 0,
                size: 0x9fc00,
                kind: 1,
            },
            MemMapEntry {
                addr: 0x9fc00,
                size: 0x60400,
                kind: 2,
            },
            MemMapEntry {
                addr: 0x10_0000,
                size: 0xbff0_0000,
                kind: 1,
            },
            MemMapEntry {
                addr: 0x1_0000_0000,
                size: 0x4000_0800,
                kind: 1,
            },
        ];
        let r = usable_ranges(&map, &[(0, 0x10_0000), (0x10_0000, 0x40_0123)]);
        assert_eq!(
            r,
            [(0x40_1000, 0xc000_0000), (0x1_0000_0000, 0x1_4000_0000)]
        );
        assert!(usable_ranges(&map, &[(0, u64::MAX)]).is_empty());
    }
}
