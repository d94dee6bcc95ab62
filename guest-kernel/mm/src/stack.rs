//! Stacks that grow down (`MAP_GROWSDOWN`): a user fault just below such a
//! mapping extends it, as long as the guard gap to the mapping below stays
//! free and the stack stays within its limit.
//!
//! Mirrors `mm/mmap.c` (`expand_downwards`, `acct_stack_growth`) and
//! `mm/memory.c` (`lock_mm_and_find_vma`) as of Linux 6.18: only user
//! faults grow a stack (kernel accesses through get_user_pages do not,
//! since 6.5); an accessible mapping that is not itself a stack must lie
//! at least `stack_guard_gap` (256 pages) below the new start; the stack
//! may span at most `RLIMIT_STACK` (8 MiB, the usual default) and, when
//! locked, stays within `RLIMIT_MEMLOCK`.

use crate::hw::{Hw, PAGE_SIZE};
use crate::ids::MmId;
use crate::mmap::{MEMLOCK_LIMIT, STACK_GUARD_GAP};
use crate::system::MemSystem;
use crate::vma::{VmFlags, Vma};

/// `RLIMIT_STACK`'s usual soft limit.
pub const STACK_LIMIT: u64 = 8 << 20;

impl<H: Hw> MemSystem<H> {
    /// The VMA a user fault at `va` hits: the one containing it, or the
    /// growing-down one just above, extended down to `va`'s page.
    pub(crate) fn find_vma_or_grow(&mut self, mm: MmId, va: u64) -> Option<Vma> {
        if let Some(v) = self.mm(mm).vmas.find(va) {
            return Some(v.clone());
        }
        let addr = va & !(PAGE_SIZE - 1);
        let above = self
            .mm(mm)
            .vmas
            .overlapping(addr, u64::MAX)
            .first()
            .copied()?;
        let v = self.mm(mm).vmas.get(above).cloned()?;
        if !v.flags.has(VmFlags::GROWSDOWN) || addr < self.cfg.mmap_min_addr {
            return None;
        }
        let below = addr.checked_sub(1).and_then(|a| {
            let vmas = &self.mm(mm).vmas;
            vmas.overlapping(0, a + 1)
                .last()
                .and_then(|&s| vmas.get(s))
                .cloned()
        });
        if let Some(p) = below {
            let guarded = !p.flags.has(VmFlags::GROWSDOWN) && p.flags.has(VmFlags::ACCESS);
            if guarded && addr - p.end < STACK_GUARD_GAP {
                return None;
            }
        }
        let grow = v.start - addr;
        if v.end - addr > STACK_LIMIT
            || (v.flags.has(VmFlags::LOCKED) && self.locked_bytes(mm) + grow > MEMLOCK_LIMIT)
        {
            return None;
        }
        // The grown part is anonymous memory of the same anon_vma.
        if !v.is_shared() {
            self.anon_vma_prepare(mm, v.start);
        }
        let old = self.mm_mut(mm).vmas.remove(v.start)?;
        let mut g = old.clone();
        g.start = addr;
        g.pgoff -= grow / PAGE_SIZE;
        // Link the new extent before unlinking the old one, so the reverse
        // maps never see the object without a mapping.
        self.vma_link(mm, &g);
        self.vma_unlink(mm, &old);
        self.mm_mut(mm).vmas.insert(g.clone());
        Some(g)
    }
}
