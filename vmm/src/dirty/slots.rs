//! Guest RAM as KVM's memory slots: where each slot lies in guest-physical
//! space, and how a guest-physical range splits into per-slot page ranges.
//! RAM above 3 GiB lives in a second slot from 4 GiB up, and a range must not
//! be split wrongly at that seam (Firecracker's users lost pages there).

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::WatchError;
use super::watch::GRANULARITY;
use crate::memory::GuestMemoryMmap;

/// One memslot: KVM slot id `index`, `pages` pages from `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub gpa: u64,
    pub pages: u64,
}

impl Slot {
    pub fn end(&self) -> u64 {
        self.gpa + self.pages * GRANULARITY
    }
}

/// The slots of a VM, in guest-physical order (slot id = index).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots(pub Vec<Slot>);

/// Part of a range that falls in one slot: pages `[first, end)` of slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub slot: usize,
    pub first: u64,
    pub end: u64,
}

impl Slots {
    pub fn of(mem: &GuestMemoryMmap) -> Self {
        Slots(
            mem.iter()
                .map(|r| Slot {
                    gpa: r.start_addr().0,
                    pages: r.len() / GRANULARITY,
                })
                .collect(),
        )
    }

    /// All of RAM, slot by slot.
    pub fn everything(&self) -> Vec<SlotRange> {
        self.0
            .iter()
            .enumerate()
            .map(|(slot, s)| SlotRange {
                slot,
                first: 0,
                end: s.pages,
            })
            .collect()
    }

    /// The slot and page of guest-physical `gpa`, if it is RAM.
    pub fn locate(&self, gpa: u64) -> Option<(usize, u64)> {
        self.0
            .iter()
            .position(|s| (s.gpa..s.end()).contains(&gpa))
            .map(|i| (i, (gpa - self.0[i].gpa) / GRANULARITY))
    }

    /// The guest-physical address of page `page` of slot `slot`.
    pub fn address(&self, slot: usize, page: u64) -> u64 {
        self.0[slot].gpa + page * GRANULARITY
    }

    /// Splits `[start, start + len)` into per-slot page ranges, checking that
    /// it is whole pages, not empty, and RAM throughout (a range crossing
    /// the MMIO hole is not, and nothing is truncated to fit). Windows leaves
    /// unaligned ranges undocumented and Wine rounds them; refusing them
    /// catches a caller's off-by-one instead.
    pub fn split(&self, start: u64, len: u64) -> Result<Vec<SlotRange>, WatchError> {
        check_range(start, len)?;
        let outside = || WatchError::OutsideRam { start, len };
        let end = start.checked_add(len).ok_or_else(outside)?;
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let (slot, first) = self.locate(at).ok_or_else(outside)?;
            let slot_end = self.0[slot].end().min(end);
            out.push(SlotRange {
                slot,
                first,
                end: first + (slot_end - at) / GRANULARITY,
            });
            at = slot_end;
        }
        Ok(out)
    }
}

/// Checks that `[start, start + len)` is whole pages and not empty.
pub fn check_range(start: u64, len: u64) -> Result<(), WatchError> {
    if start % GRANULARITY != 0 {
        return Err(WatchError::Unaligned(start));
    }
    if len == 0 {
        return Err(WatchError::EmptyRange);
    }
    if len % GRANULARITY != 0 {
        return Err(WatchError::UnalignedLength(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ram() -> Slots {
        Slots(vec![
            Slot {
                gpa: 0,
                pages: 0xc000_0000 / GRANULARITY,
            },
            Slot {
                gpa: 0x1_0000_0000,
                pages: 0x4000_0000 / GRANULARITY,
            },
        ])
    }

    #[test]
    fn ranges_split_per_slot_and_never_cross_the_hole() {
        let slots = split_ram();
        assert_eq!(
            slots.split(0x1000, 0x2000).unwrap(),
            vec![SlotRange {
                slot: 0,
                first: 1,
                end: 3
            }]
        );
        assert_eq!(
            slots.split(0x1_0000_0000 + 0x3fff_f000, 0x1000).unwrap(),
            vec![SlotRange {
                slot: 1,
                first: 0x3ffff,
                end: 0x40000
            }]
        );
        assert!(matches!(
            slots.split(0xbfff_f000, 0x2000),
            Err(WatchError::OutsideRam { .. })
        ));
        assert!(matches!(
            slots.split(0x1_4000_0000, 0x1000),
            Err(WatchError::OutsideRam { .. })
        ));
        assert!(matches!(
            slots.split(u64::MAX - 0xfff, 0x2000),
            Err(WatchError::OutsideRam { .. })
        ));
        assert_eq!(
            slots.split(0x1001, 0x1000),
            Err(WatchError::Unaligned(0x1001))
        );
        assert_eq!(slots.split(0x1000, 0), Err(WatchError::EmptyRange));
    }

    #[test]
    fn a_length_that_is_not_whole_pages_is_refused() {
        let slots = split_ram();
        assert_eq!(slots.split(0, 1), Err(WatchError::UnalignedLength(1)));
        assert_eq!(slots.locate(0x1_0000_0000 + 0x5000), Some((1, 5)));
        assert_eq!(slots.locate(0xc000_0000), None);
    }
}
