//! `fork` (duplicate an address space copy-on-write) and `exit_mmap`
//! (tear one down).
//!
//! Mirrors `kernel/fork.c` (`dup_mmap`), `mm/rmap.c` (`anon_vma_fork`),
//! `mm/memory.c` (`copy_page_range`, `copy_present_pte` with
//! `folio_try_dup_anon_rmap_pte`, `copy_nonpresent_pte`) and `mm/mmap.c`
//! (`exit_mmap`). Private pages are write-protected in both parent and
//! child and lose `PageAnonExclusive`, so the first write on either side
//! goes through `do_wp_page`. The parent's TLB is flushed before fork
//! returns, because its cached writable translations are now wrong.
//! As in Linux 6.18, `MADV_DONTFORK` VMAs stay behind, `MADV_WIPEONFORK`
//! ones arrive empty, mlocks are not inherited, and only memory with an
//! anon_vma has its PTEs copied (`vma_needs_copy`): the child faults
//! shared and never-written memory in again.

use alloc::vec::Vec;

use crate::errno::Errno;
use crate::gather::{MmuGather, Zap};
use crate::hw::{FlushRange, Hw};
use crate::ids::{AnonVmaId, MmId};
use crate::pgtable;
use crate::pte::{MarkerKind, Pte, PteFlags, SwapEntry};
use crate::system::MemSystem;
use crate::vma::{Backing, VmFlags, Vma};

impl<H: Hw> MemSystem<H> {
    /// `dup_mmap`: a copy-on-write duplicate of `parent`.
    pub(crate) fn dup_mmap(&mut self, parent: MmId) -> Result<MmId, Errno> {
        let child = self.mm_create().ok_or(Errno::ENOMEM)?;
        let vmas: Vec<Vma> = self.mm(parent).vmas.iter().cloned().collect();
        let mut result = Ok(());
        for v in vmas.iter().filter(|v| !v.flags.has(VmFlags::DONTCOPY)) {
            let mut cv = v.clone();
            cv.flags.0 &= !VmFlags::LOCKED_MASK;
            // dup_userfaultfd: without UFFD_EVENT_FORK (which needs
            // CAP_SYS_PTRACE) the child's memory is not registered.
            Self::uffd_fork_reset(&mut cv);
            let wipe = v.flags.has(VmFlags::WIPEONFORK);
            if let Some(chain) = cv.backing.anon_chain_mut() {
                if wipe {
                    chain.clear();
                } else if !chain.is_empty() {
                    // anon_vma_fork: the child's new folios get their own root.
                    chain.push(AnonVmaId(self.new_id()));
                }
            }
            // hugetlb_dup_vma_private: a child owns no reservations.
            if let Backing::Hugetlb { resv, .. } = &mut cv.backing {
                *resv = crate::vma::HugeResv::None;
            }
            self.vma_link(child, &cv);
            self.mm_mut(child).vmas.insert(cv);
            // vma_needs_copy: only memory with an anon_vma has PTEs a fault
            // could not rebuild; shared and never-written private memory is
            // faulted in again by the child.
            let needs_copy = match &v.backing {
                Backing::Shmem { anon_vma, .. } => *anon_vma,
                b => !b.anon_chain().is_empty(),
            };
            if needs_copy && !wipe {
                result = if v.is_hugetlb() {
                    self.copy_hugetlb_page_range(parent, child, v)
                } else {
                    self.copy_page_range(parent, child, v)
                };
                if result.is_err() {
                    break;
                }
            }
        }
        // Parent PTEs were write-protected: flush before anyone writes.
        self.flush_tlb(parent, FlushRange::All);
        match result {
            Ok(()) => Ok(child),
            Err(e) => {
                self.exit_mmap(child);
                Err(e)
            }
        }
    }

    fn copy_page_range(&mut self, parent: MmId, child: MmId, v: &Vma) -> Result<(), Errno> {
        let (proot, croot) = (self.mm(parent).root, self.mm(child).root);
        for (va, slot, pte) in pgtable::leaves(&self.hw, proot, v.start, v.end) {
            // copy_present_pte: the child's VMA is not registered, so its
            // entries lose the uffd-wp bit (and stay write-protected).
            let pte = match pte {
                Pte::Mapped { pfn, flags } => Pte::Mapped {
                    pfn,
                    flags: flags.without(PteFlags::UFFD_WP),
                },
                Pte::Swap(e) => Pte::Swap(SwapEntry {
                    uffd_wp: false,
                    ..e
                }),
                other => other,
            };
            let cpte = match pte {
                Pte::Mapped { pfn, flags } if pfn == self.zero => Pte::Mapped { pfn, flags },
                Pte::Mapped { pfn, flags } => {
                    let cflags = if v.is_cow() {
                        self.frames.get_mut(pfn).anon_exclusive = false;
                        let wp = flags.without(PteFlags::WRITE);
                        if wp != flags {
                            pgtable::write_pte(&mut self.hw, slot, Pte::Mapped { pfn, flags: wp });
                        }
                        wp
                    } else {
                        flags.without(PteFlags::DIRTY)
                    };
                    self.map_ptes(pfn, 1);
                    Pte::Mapped {
                        pfn,
                        flags: cflags.without(PteFlags::ACCESSED),
                    }
                }
                Pte::Swap(e) => {
                    self.swap_dup(e);
                    pte
                }
                // copy_pte_marker: guard and poison markers always, uffd-wp
                // only into a VMA registered for it, which a child's never is.
                Pte::Marker(MarkerKind::UffdWp) | Pte::None => continue,
                Pte::Marker(MarkerKind::Guard | MarkerKind::Poisoned) => pte,
                Pte::Table(_) => unreachable!("table at PTE level"),
            };
            let Some(cslot) = pgtable::pte_slot_alloc(&mut self.hw, &mut self.frames, croot, va)
            else {
                // Undo the reference taken above; the child is torn down.
                match cpte {
                    Pte::Swap(e) => self.swap_free(e),
                    Pte::Mapped { pfn, .. } if pfn != self.zero => {
                        let flushed = self.flush_nothing();
                        self.unmap_ptes(&flushed, pfn, 1);
                    }
                    _ => {}
                }
                return Err(Errno::ENOMEM);
            };
            pgtable::write_pte(&mut self.hw, cslot, cpte);
        }
        Ok(())
    }

    /// `exit_mmap`: unmap everything, flush, free pages and tables, drop the
    /// address space.
    pub(crate) fn exit_mmap(&mut self, mm: MmId) {
        let vmas: Vec<Vma> = self.mm(mm).vmas.iter().cloned().collect();
        let root = self.mm(mm).root;
        let mut g = MmuGather::new(mm);
        for v in &vmas {
            if v.is_hugetlb() {
                self.unmap_hugepage_range(mm, v, v.start, v.end, true);
            } else {
                self.zap_range(&mut g, v.start, v.end, Zap::Exit);
            }
        }
        for (t, _) in pgtable::tables(&self.hw, root) {
            self.gather_table(&mut g, t);
        }
        self.tlb_finish(g);
        self.frames.free(&mut self.hw, root);
        for v in &vmas {
            self.vma_unlink(mm, v);
        }
        self.mms.remove(&mm);
    }
}
