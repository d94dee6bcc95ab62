//! Reading a guest process's x86-64 page tables from outside: which 4 KiB
//! guest-physical page each virtual page of a range maps to, through 4 KiB,
//! 2 MiB and 1 GiB pages. The walk reads guest memory only; the guest may be
//! changing its tables meanwhile, which yields some translation that was or
//! is being installed (the write-watch layer treats any change as a write).

use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemoryMmap;

pub const PAGE: u64 = 4096;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
/// Physical-address bits 12..51 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Canonical user/kernel split: bit 47 extends into 48..63.
const CANONICAL_LIMIT: u64 = 1 << 47;

/// Why a range cannot be walked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WalkError {
    #[error("page table at {0:#x} is outside guest RAM")]
    TableOutsideRam(u64),
    #[error("virtual range {start:#x}+{len:#x} is not canonical lower-half")]
    NotCanonical { start: u64, len: u64 },
}

/// The 4 KiB guest-physical page (its address) each virtual page of
/// `[start, start + pages * 4096)` maps to, `None` where nothing is mapped.
/// `cr3` may carry PCID bits; they are ignored.
pub fn translate_range(
    mem: &GuestMemoryMmap,
    cr3: u64,
    start: u64,
    pages: u64,
) -> Result<Vec<Option<u64>>, WalkError> {
    let len = pages.saturating_mul(PAGE);
    if start % PAGE != 0
        || start
            .checked_add(len)
            .is_none_or(|end| end > CANONICAL_LIMIT)
    {
        return Err(WalkError::NotCanonical { start, len });
    }
    let root = cr3 & ADDR_MASK;
    read_entry(mem, root)?;
    let mut out = Vec::with_capacity(pages as usize);
    let mut va = start;
    let end = start + len;
    while va < end {
        let (mapping, span) = walk(mem, root, va)?;
        // Pages of this mapping (or hole) from `va` to its end, within range.
        let span_end = ((va / span) + 1) * span;
        let stop = span_end.min(end);
        match mapping {
            Some(base) => {
                let mut page = base + (va % span);
                while va < stop {
                    out.push(Some(page));
                    page += PAGE;
                    va += PAGE;
                }
            }
            None => {
                let n = (stop - va) / PAGE;
                out.extend(std::iter::repeat_n(None, n as usize));
                va = stop;
            }
        }
    }
    Ok(out)
}

/// The mapping that covers `va`: the physical base of the leaf (aligned to
/// its size) or `None`, with the size of the leaf or hole.
fn walk(mem: &GuestMemoryMmap, root: u64, va: u64) -> Result<(Option<u64>, u64), WalkError> {
    let mut table = root;
    for (level, span) in [(4u32, 1u64 << 39), (3, 1 << 30), (2, 1 << 21), (1, PAGE)] {
        let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
        let entry = read_entry(mem, table + index * 8)?;
        if entry & PRESENT == 0 {
            return Ok((None, span));
        }
        let leaf = level == 1 || (entry & HUGE != 0 && matches!(level, 2 | 3));
        if leaf {
            let base = entry & ADDR_MASK & !(span - 1);
            return Ok((Some(base), span));
        }
        table = entry & ADDR_MASK;
    }
    unreachable!("level 1 always ends the walk")
}

fn read_entry(mem: &GuestMemoryMmap, addr: u64) -> Result<u64, WalkError> {
    mem.read_obj::<u64>(GuestAddress(addr))
        .map_err(|_| WalkError::TableOutsideRam(addr & !(PAGE - 1)))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::memory::create_guest_memory;

    /// Builds page tables in `mem` from a bump allocator starting at `next`.
    pub struct TableBuilder<'a> {
        pub mem: &'a GuestMemoryMmap,
        pub root: u64,
        next: u64,
    }

    impl<'a> TableBuilder<'a> {
        pub fn new(mem: &'a GuestMemoryMmap, first_table: u64) -> Self {
            TableBuilder {
                mem,
                root: first_table,
                next: first_table + PAGE,
            }
        }

        fn table_for(&mut self, table: u64, index: u64) -> u64 {
            let at = table + index * 8;
            let entry: u64 = self.mem.read_obj(GuestAddress(at)).unwrap();
            if entry & PRESENT != 0 {
                return entry & ADDR_MASK;
            }
            let new = self.next;
            self.next += PAGE;
            self.mem.write_obj(new | 0x7, GuestAddress(at)).unwrap();
            new
        }

        /// Maps `va` to `pa` with a leaf of `size` (4 KiB, 2 MiB or 1 GiB).
        pub fn map(&mut self, va: u64, pa: u64, size: u64) {
            let stop_level = match size {
                PAGE => 1,
                0x20_0000 => 2,
                0x4000_0000 => 3,
                _ => panic!("bad size"),
            };
            let mut table = self.root;
            for level in (stop_level + 1..=4).rev() {
                let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
                table = self.table_for(table, index);
            }
            let index = (va >> (12 + 9 * (stop_level - 1))) & 0x1ff;
            let huge = if stop_level > 1 { HUGE } else { 0 };
            self.mem
                .write_obj(pa | 0x7 | huge, GuestAddress(table + index * 8))
                .unwrap();
        }

        pub fn unmap(&mut self, va: u64) {
            let mut table = self.root;
            for level in (1..=4).rev() {
                let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
                let at = table + index * 8;
                let entry: u64 = self.mem.read_obj(GuestAddress(at)).unwrap();
                if level == 1 || entry & HUGE != 0 {
                    self.mem.write_obj(0u64, GuestAddress(at)).unwrap();
                    return;
                }
                table = entry & ADDR_MASK;
            }
        }
    }

    #[test]
    fn translates_4k_2m_and_1g_pages_and_holes() {
        let mem = create_guest_memory(64 << 20, Backing::Anon, 46).unwrap();
        let mut t = TableBuilder::new(&mem, 0x10_0000);
        t.map(0x40_0000, 0x20_0000 + 0x3000, PAGE);
        t.map(0x60_0000, 0x80_0000, 0x20_0000);
        t.map(0x40_0000_0000, 0x4000_0000, 0x4000_0000);
        let got = translate_range(&mem, t.root | 0x5, 0x40_0000, 3).unwrap();
        assert_eq!(got, vec![Some(0x20_3000), None, None]);
        let got = translate_range(&mem, t.root, 0x60_0000 + 0x1f_f000, 2).unwrap();
        assert_eq!(got, vec![Some(0x80_0000 + 0x1f_f000), None]);
        let got = translate_range(&mem, t.root, 0x40_0000_0000 + 0x12_3000, 1).unwrap();
        assert_eq!(got, vec![Some(0x4000_0000 + 0x12_3000)]);
        t.unmap(0x40_0000);
        assert_eq!(
            translate_range(&mem, t.root, 0x40_0000, 1).unwrap(),
            vec![None]
        );
    }

    #[test]
    fn rejects_tables_outside_ram_and_non_canonical_ranges() {
        let mem = create_guest_memory(16 << 20, Backing::Anon, 46).unwrap();
        assert_eq!(
            translate_range(&mem, 0x4000_0000, 0, 1),
            Err(WalkError::TableOutsideRam(0x4000_0000))
        );
        assert!(matches!(
            translate_range(&mem, 0x1000, (1 << 47) - PAGE, 2),
            Err(WalkError::NotCanonical { .. })
        ));
    }
}
