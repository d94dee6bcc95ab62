//! Taking recorded writes out of their sources: KVM's dirty bitmap, KVM's
//! dirty rings, and the VMM's own `AtomicBitmap`s. Each harvest hands what it
//! took to a visitor (the tracker fans it out to every watch) and re-arms the
//! source for exactly what it took, so a page is always recorded in its
//! source or in every watch, never in neither.
//!
//! The ordering arguments (docs/WRITE_WATCH.md has them in full):
//! - bitmap: `KVM_GET_DIRTY_LOG` copies the log without touching it; the
//!   copy is handed on; then `KVM_CLEAR_DIRTY_LOG` clears and write-protects
//!   exactly the pages handed on. A write between the two to a page in the
//!   copy lands before the call returns (it is reported with it); a write to
//!   a page not in the copy sets a bit the clear does not touch (next call);
//!   a write after the clear faults and sets its bit again.
//! - ring: entries are read and marked harvested, handed on, then
//!   `KVM_RESET_DIRTY_RINGS` re-protects their pages. A write between the two
//!   to a harvested page is reported with this call; after the reset it
//!   pushes a new entry. Entries pushed after the read stay in the ring.
//! - VMM writes: `AtomicBitmap::get_and_reset` swaps each word with zero, so
//!   a bit is taken exactly once.

use vm_memory::GuestMemoryBackend;

use super::WatchError;
use super::bitmap::PageBitmap;
use super::slots::{SlotRange, Slots};
use crate::memory::GuestMemoryMmap;
use crate::vstate::dirty_log::{DirtyLogExt, DirtyRing, Overrun, PAGES_PER_WORD};
use crate::vstate::vm::Vm;

fn kvm_error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> WatchError {
    move |source| WatchError::Kvm { what, source }
}

/// Harvests KVM's bitmap for the pages of `ranges`: `found(slot, words)`
/// gets each slot's dirty words (KVM's layout, zero outside the range).
/// Returns the number of dirty pages taken.
pub fn harvest_bitmap(
    vm: &Vm,
    slots: &Slots,
    ranges: &[SlotRange],
    mut found: impl FnMut(usize, &[u64]),
) -> Result<u64, WatchError> {
    let mut taken = 0;
    for r in ranges {
        let slot = slots.0[r.slot];
        let words = vm
            .fd
            .get_dirty_log(r.slot as u32, (slot.pages * super::GRANULARITY) as usize)
            .map_err(kvm_error("KVM_GET_DIRTY_LOG"))?;
        // A whole slot needs no masking.
        let masked = if r.first == 0 && r.end == slot.pages {
            words
        } else {
            PageBitmap::masked_words(&words, r.first, r.end)
        };
        let count: u64 = masked.iter().map(|w| u64::from(w.count_ones())).sum();
        if count == 0 {
            continue;
        }
        clear_range(vm, r.slot as u32, slot.pages, &masked, r.first, r.end)?;
        found(r.slot, &masked);
        taken += count;
    }
    Ok(taken)
}

/// `KVM_CLEAR_DIRTY_LOG` for the set bits of `words` within pages
/// `[first, end)` of a slot of `slot_pages` pages. KVM wants the range to
/// start on a 64-page boundary and to be a whole number of words unless it
/// ends at the slot's end, so the range is widened to whole words; the
/// bits outside `[first, end)` are zero in `words`, so nothing outside is
/// cleared: the edges are exact.
pub fn clear_range(
    vm: &Vm,
    slot: u32,
    slot_pages: u64,
    words: &[u64],
    first: u64,
    end: u64,
) -> Result<(), WatchError> {
    let first_word = (first / PAGES_PER_WORD) as usize;
    let end_word = end.div_ceil(PAGES_PER_WORD) as usize;
    let first_page = first_word as u64 * PAGES_PER_WORD;
    let num_pages = ((end_word - first_word) as u64 * PAGES_PER_WORD).min(slot_pages - first_page);
    vm.fd
        .clear_dirty_log(
            slot,
            first_page,
            num_pages as u32,
            &words[first_word..end_word],
        )
        .map_err(kvm_error("KVM_CLEAR_DIRTY_LOG"))
}

/// Harvests every dirty ring: `found(vcpu, slot, page)` for each entry, in
/// ring order, then re-arms the harvested pages. `stopped` is the vCPU (if
/// any) known to be out of the guest, whose ring may be resynchronised
/// after an overrun. Returns the entries taken and whether any ring had
/// lost entries (then every page must be taken as written).
pub fn harvest_rings<'a>(
    vm: &Vm,
    slots: &Slots,
    rings: impl IntoIterator<Item = (usize, &'a mut DirtyRing)>,
    stopped: Option<usize>,
    mut found: impl FnMut(usize, usize, u64),
) -> Result<(u64, Option<Overrun>), WatchError> {
    let (mut taken, mut lost) = (0, None);
    for (vcpu, ring) in rings {
        let got = ring.harvest(stopped == Some(vcpu), |slot_field, offset| {
            // The high 16 bits are the address space (always 0 here).
            let slot = (slot_field & 0xffff) as usize;
            if slot < slots.0.len() && offset < slots.0[slot].pages {
                found(vcpu, slot, offset);
            }
        });
        taken += u64::from(got.taken);
        lost = lost.or(got.lost);
    }
    if taken > 0 || lost.is_some() {
        vm.fd
            .reset_dirty_rings()
            .map_err(kvm_error("KVM_RESET_DIRTY_RINGS"))?;
    }
    Ok((taken, lost))
}

/// Takes the pages the VMM wrote through vm-memory since the last call:
/// `found(slot, words)` for each slot with any. Returns how many.
pub fn harvest_vmm_writes(mem: &GuestMemoryMmap, mut found: impl FnMut(usize, &[u64])) -> u64 {
    let mut taken = 0;
    for (slot, region) in mem.iter().enumerate() {
        // The region's own bitmap (`MmapRegion::bitmap`), not a slice of it.
        if let Some(words) = std::ops::Deref::deref(region).bitmap().take() {
            let count: u64 = words.iter().map(|w| u64::from(w.count_ones())).sum();
            found(slot, &words);
            taken += count;
        }
    }
    taken
}
