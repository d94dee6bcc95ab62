//! x86-64 four-level page tables: walk, populate, collect and prune.
//!
//! Mirrors the walkers of `mm/memory.c` / `mm/pagewalk.c` (`pgd_offset` ...
//! `pte_offset_map`, `__pte_alloc`, `free_pgtables`). Tables are frames from
//! the [`FrameTable`] marked `PageTable`; entries are read and written through
//! [`PhysMem`] only. The upper half of the PML4 (entries 256..512) belongs to
//! the kernel: it is copied from a template at creation and never touched.

use alloc::vec::Vec;

use crate::frame::{FrameTable, FrameUse};
use crate::hw::{PAGE_SIZE, Pfn, PhysMem};
use crate::pte::Pte;

/// First address past the user half (canonical lower half).
pub const USER_TOP: u64 = 0x0000_8000_0000_0000;
const ENTRIES: u64 = 512;

fn index(va: u64, level: u8) -> u64 {
    (va >> (12 + 9 * (level as u32 - 1))) & (ENTRIES - 1)
}

/// Bytes covered by one entry at `level` (1 = 4 KiB).
fn span(level: u8) -> u64 {
    PAGE_SIZE << (9 * (level as u32 - 1))
}

fn entry(hw: &impl PhysMem, table: Pfn, i: u64, level: u8) -> Pte {
    let raw = hw.read_u64(table.addr() + i * 8);
    Pte::decode(raw, level).unwrap_or_else(|e| panic!("corrupt page table entry {e:?}"))
}

/// Reads the PTE at physical address `pa` (a level-1 slot).
pub fn read_pte(hw: &impl PhysMem, pa: u64) -> Pte {
    Pte::decode(hw.read_u64(pa), 1).unwrap_or_else(|e| panic!("corrupt PTE {e:?}"))
}

/// Writes `pte` at physical address `pa` (a level-1 slot).
pub fn write_pte(hw: &mut impl PhysMem, pa: u64, pte: Pte) {
    hw.write_u64(pa, pte.encode());
}

/// Allocates a zeroed table frame.
fn alloc_table(hw: &mut impl PhysMem, frames: &mut FrameTable) -> Option<Pfn> {
    let t = frames.alloc(0, FrameUse::PageTable)?;
    hw.zero_frame(t);
    Some(t)
}

/// A new PML4, with the kernel half copied from `template`.
pub fn new_root(
    hw: &mut impl PhysMem,
    frames: &mut FrameTable,
    template: Option<Pfn>,
) -> Option<Pfn> {
    let root = alloc_table(hw, frames)?;
    if let Some(t) = template {
        for i in ENTRIES / 2..ENTRIES {
            let v = hw.read_u64(t.addr() + i * 8);
            hw.write_u64(root.addr() + i * 8, v);
        }
    }
    Some(root)
}

/// The physical address of the PTE slot for `va`, if every upper table
/// exists (`pte_offset_map`).
pub fn pte_slot(hw: &impl PhysMem, root: Pfn, va: u64) -> Option<u64> {
    huge_slot(hw, root, va, 1)
}

/// The slot of the leaf that translates `va` and its level: the PTE, or
/// a huge PMD/PUD entry (`None` if no table covers it).
pub fn leaf_slot(hw: &impl PhysMem, root: Pfn, va: u64) -> Option<(u64, u8)> {
    let mut table = root;
    for level in (1..=4).rev() {
        let slot = table.addr() + index(va, level) * 8;
        if level == 1 {
            return Some((slot, 1));
        }
        match entry(hw, table, index(va, level), level) {
            Pte::Table(next) => table = next,
            Pte::None => return None,
            _ if level <= 3 => return Some((slot, level)),
            _ => return None,
        }
    }
    None
}

/// What translates the 4 KiB page at `va`, whatever the leaf's size: a
/// huge entry is returned as the `Mapped` entry of the page inside it.
pub fn lookup_page(hw: &impl PhysMem, root: Pfn, va: u64) -> Pte {
    match leaf_slot(hw, root, va) {
        None => Pte::None,
        Some((slot, 1)) => read_pte(hw, slot),
        Some((slot, level)) => match read_huge(hw, slot, level) {
            Pte::Mapped { pfn, flags } => Pte::Mapped {
                pfn: pfn.offset((va & (span(level) - 1)) / PAGE_SIZE),
                flags,
            },
            other => other,
        },
    }
}

/// The PTE for `va` (`None` if no table covers it).
pub fn lookup(hw: &impl PhysMem, root: Pfn, va: u64) -> Pte {
    pte_slot(hw, root, va).map_or(Pte::None, |pa| read_pte(hw, pa))
}

/// The PTE slot for `va`, allocating missing tables (`__pte_alloc`).
/// `None` when out of frames.
pub fn pte_slot_alloc(
    hw: &mut impl PhysMem,
    frames: &mut FrameTable,
    root: Pfn,
    va: u64,
) -> Option<u64> {
    debug_assert!(va < USER_TOP);
    let table = table_alloc(hw, frames, root, va, 1)?;
    Some(table.addr() + index(va, 1) * 8)
}

/// The table at `level` covering `va`, allocating the missing tables above
/// it (`__pte_alloc`, `__pmd_alloc`...). `None` when out of frames.
fn table_alloc(
    hw: &mut impl PhysMem,
    frames: &mut FrameTable,
    root: Pfn,
    va: u64,
    level: u8,
) -> Option<Pfn> {
    let mut table = root;
    for l in ((level + 1)..=4).rev() {
        let i = index(va, l);
        table = match entry(hw, table, i, l) {
            Pte::Table(next) => next,
            Pte::None => {
                let next = alloc_table(hw, frames)?;
                hw.write_u64(table.addr() + i * 8, Pte::Table(next).encode());
                next
            }
            other => panic!("unexpected upper-level entry {other:?}"),
        };
    }
    Some(table)
}

/// Bytes mapped by one huge leaf at `level` (2: 2 MiB, 3: 1 GiB).
pub fn huge_span(level: u8) -> u64 {
    span(level)
}

/// Reads the huge-leaf slot at physical address `pa` (a `level` slot).
pub fn read_huge(hw: &impl PhysMem, pa: u64, level: u8) -> Pte {
    Pte::decode(hw.read_u64(pa), level).unwrap_or_else(|e| panic!("corrupt huge entry {e:?}"))
}

/// Writes a huge leaf (or none, or a marker) at `pa`.
pub fn write_huge(hw: &mut impl PhysMem, pa: u64, pte: Pte) {
    hw.write_u64(pa, pte.encode_huge());
}

/// The slot at `level` (1, or 2 or 3 for a huge entry) for `va`, if the
/// tables above it exist (`huge_pte_offset`).
pub fn huge_slot(hw: &impl PhysMem, root: Pfn, va: u64, level: u8) -> Option<u64> {
    let mut table = root;
    for l in ((level + 1)..=4).rev() {
        match entry(hw, table, index(va, l), l) {
            Pte::Table(next) => table = next,
            _ => return None,
        }
    }
    Some(table.addr() + index(va, level) * 8)
}

/// The slot at `level` for `va`, allocating the tables above it
/// (`huge_pte_alloc`). `None` when out of frames, or when a lower-level
/// table already covers the range (a hugetlb VMA never has one).
pub fn huge_slot_alloc(
    hw: &mut impl PhysMem,
    frames: &mut FrameTable,
    root: Pfn,
    va: u64,
    level: u8,
) -> Option<u64> {
    debug_assert!(va < USER_TOP);
    let table = table_alloc(hw, frames, root, va, level)?;
    let slot = table.addr() + index(va, level) * 8;
    (!matches!(entry(hw, table, index(va, level), level), Pte::Table(_))).then_some(slot)
}

/// Every non-none huge entry at `level` in `[start, end)` as `(va, slot
/// pa, entry)` (`hugetlb_walk` over a range).
pub fn huge_leaves(
    hw: &impl PhysMem,
    root: Pfn,
    start: u64,
    end: u64,
    level: u8,
) -> Vec<(u64, u64, Pte)> {
    let mut out = Vec::new();
    collect(hw, root, 4, 0, start, end.min(USER_TOP), level, &mut out);
    out
}

/// Every non-none leaf in `[start, end)` as `(va, slot pa, pte)`, skipping
/// absent tables.
pub fn leaves(hw: &impl PhysMem, root: Pfn, start: u64, end: u64) -> Vec<(u64, u64, Pte)> {
    let mut out = Vec::new();
    collect(hw, root, 4, 0, start, end.min(USER_TOP), 1, &mut out);
    out
}

#[allow(clippy::too_many_arguments)]
fn collect(
    hw: &impl PhysMem,
    table: Pfn,
    level: u8,
    base: u64,
    start: u64,
    end: u64,
    target: u8,
    out: &mut Vec<(u64, u64, Pte)>,
) {
    let sp = span(level);
    let first = start.saturating_sub(base) / sp;
    let last = (end.saturating_sub(base).div_ceil(sp)).min(ENTRIES);
    for i in first..last {
        let lo = base + i * sp;
        if lo >= USER_TOP {
            continue;
        }
        let e = entry(hw, table, i, level);
        if level == target {
            if !matches!(e, Pte::None | Pte::Table(_)) {
                out.push((lo, table.addr() + i * 8, e));
            }
        } else if let Pte::Table(next) = e {
            collect(hw, next, level - 1, lo, start, end, target, out);
        }
    }
}

/// Unlinks tables under `[start, end)` that hold nothing (after a zap)
/// and lie wholly inside `[floor, ceiling)`, the gap between the
/// neighbouring mappings (`free_pgd_range`: a table a neighbour's range
/// shares stays, even empty), and returns them; the caller frees them only
/// after the TLB flush (`free_pgtables` + `tlb_remove_table`). The root is
/// never returned.
pub fn prune(
    hw: &mut impl PhysMem,
    root: Pfn,
    (start, end): (u64, u64),
    (floor, ceiling): (u64, u64),
) -> Vec<Pfn> {
    let mut out = Vec::new();
    let bounds = Bounds {
        start,
        end: end.min(USER_TOP),
        floor,
        ceiling,
    };
    prune_level(hw, root, 4, 0, &bounds, &mut out);
    out
}

/// What [`prune`] may free.
struct Bounds {
    start: u64,
    end: u64,
    floor: u64,
    ceiling: u64,
}

/// Returns whether `table` is now empty.
fn prune_level(
    hw: &mut impl PhysMem,
    table: Pfn,
    level: u8,
    base: u64,
    b: &Bounds,
    out: &mut Vec<Pfn>,
) -> bool {
    let (start, end) = (b.start, b.end);
    let sp = span(level);
    let mut empty = true;
    for i in 0..ENTRIES {
        let lo = base + i * sp;
        let e = entry(hw, table, i, level);
        if e == Pte::None {
            continue;
        }
        if lo + sp <= start || lo >= end || lo >= USER_TOP || level == 1 {
            empty = false;
            continue;
        }
        if let Pte::Table(next) = e {
            let inside = lo >= b.floor && lo + sp <= b.ceiling;
            if prune_level(hw, next, level - 1, lo, b, out) && inside {
                hw.write_u64(table.addr() + i * 8, 0);
                out.push(next);
                continue;
            }
        }
        empty = false;
    }
    empty
}

/// Every user-half table below the root (for teardown and the checker), as
/// `(table, level)`.
pub fn tables(hw: &impl PhysMem, root: Pfn) -> Vec<(Pfn, u8)> {
    let mut out = Vec::new();
    tables_level(hw, root, 4, &mut out);
    out
}

fn tables_level(hw: &impl PhysMem, table: Pfn, level: u8, out: &mut Vec<(Pfn, u8)>) {
    if level == 1 {
        return;
    }
    let n = if level == 4 { ENTRIES / 2 } else { ENTRIES };
    for i in 0..n {
        if let Pte::Table(next) = entry(hw, table, i, level) {
            out.push((next, level - 1));
            tables_level(hw, next, level - 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::Pfn;
    use crate::pte::PteFlags;
    use crate::testing::SimMachine;

    #[test]
    fn map_lookup_prune() {
        let mut hw = SimMachine::new(4 << 20, 1);
        let mut ft = FrameTable::new(&[(0, 4 << 20)]);
        let root = new_root(&mut hw, &mut ft, None).unwrap();
        let used = ft.nr_free();
        let va = 0x7fff_0000_3000;
        assert_eq!(lookup(&hw, root, va), Pte::None);
        let slot = pte_slot_alloc(&mut hw, &mut ft, root, va).unwrap();
        assert_eq!(used - ft.nr_free(), 3, "PDPT, PD and PT allocated");
        let pte = Pte::Mapped {
            pfn: Pfn(9),
            flags: PteFlags::USER,
        };
        write_pte(&mut hw, slot, pte);
        assert_eq!(lookup(&hw, root, va), pte);
        assert_eq!(leaves(&hw, root, 0, USER_TOP), [(va, slot, pte)]);
        assert!(leaves(&hw, root, va + PAGE_SIZE, USER_TOP).is_empty());
        assert_eq!(tables(&hw, root).len(), 3);
        assert!(
            prune(&mut hw, root, (0, USER_TOP), (0, USER_TOP)).is_empty(),
            "not empty yet"
        );
        write_pte(&mut hw, slot, Pte::None);
        assert_eq!(
            prune(&mut hw, root, (va, va + PAGE_SIZE), (0, USER_TOP)).len(),
            3
        );
        assert!(tables(&hw, root).is_empty());
    }
}
