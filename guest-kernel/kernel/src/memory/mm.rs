//! The kernel's one instance of the `guest-mm` core, behind one lock.
//!
//! Built at boot (`init`) over the RAM the boot allocator hands off, with
//! the kernel half of every address space shared from the kernel PML4, a
//! small swap region, and the invariant checker after every operation when
//! the command line has `mm_check`.
//!
//! Boot time: kvm_pvm emulates ring 0 instruction by instruction (a few µs
//! each; one heap allocation costs ~0.1 ms), and the core keeps ~56 bytes of
//! metadata per frame. So the core starts over [`INITIAL_BYTES`] only, and
//! the rest of RAM is added in [`GROW_BYTES`] steps when free memory falls
//! below [`LOW_WATER_FRAMES`] (checked before every operation), like
//! Linux's deferred `struct page` initialisation. No single MM operation
//! allocates more than the low-water mark (faults take one page, fork
//! copies page tables: 1 MiB of them maps 512 MiB) except `mmap` with
//! `MAP_POPULATE`, before which `process::syscall` calls [`reserve`]. Even so, building the core takes a few
//! milliseconds, so `kernel_main` does it right after sending `ready`,
//! before the workload starts.
//!
//! Locking: every caller must have interrupts enabled while it waits for
//! the lock, because the holder may be waiting for this CPU to take a TLB
//! flush IPI (`smp::flush_user_tlb`); waiters halt rather than spin
//! ([`lock`]).

use super::frames;
use super::hw::KernelHw;
use super::kmap;
use crate::arch::x86_64::{cpu, kctx, smp};
use crate::percpu::{self, MAX_CPUS};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering, fence};
use guest_mm::{Config, MemSystem, PAGE_SIZE, Pfn};
use spin::{Mutex, MutexGuard};

/// RAM the core manages from boot.
const INITIAL_BYTES: u64 = 2 << 20;
/// RAM added per step afterwards.
const GROW_BYTES: u64 = 8 << 20;
/// Free frames below which more RAM is added (1 MiB: more than any single
/// operation allocates, except `MAP_POPULATE`, for which the syscall path
/// reserves the length first).
const LOW_WATER_FRAMES: u64 = 256;
/// Boot-allocator memory kept for the kernel after the hand-off (kernel
/// page tables, stacks, self-test frames).
const KERNEL_RESERVE: u64 = 2 << 20;
/// Frames of the swap region (carved from the initial RAM) unless the
/// command line says `swap=N`.
pub const SWAP_FRAMES: u64 = 64;

/// The core plus the RAM not given to it yet.
struct Mm {
    sys: MemSystem<KernelHw>,
    /// RAM ranges `[start, end)` still to be added, lowest first.
    pending: Vec<(u64, u64)>,
    /// Frames handed to the core so far (including the swap region).
    managed: u64,
}

impl Mm {
    /// Adds at least `frames` frames of RAM, or all that is left; whether
    /// anything was added.
    fn grow_by(&mut self, frames: u64) -> bool {
        let want = self.sys.free_frames().saturating_add(frames);
        let before = self.managed;
        self.grow_to(want);
        self.managed > before
    }

    /// Adds RAM until `want` frames are free or nothing is left.
    fn grow_to(&mut self, want: u64) {
        while self.sys.free_frames() < want && !self.pending.is_empty() {
            let (start, end) = self.pending[0];
            let cut = end.min(start + GROW_BYTES);
            if cut == end {
                self.pending.remove(0);
            } else {
                self.pending[0].0 = cut;
            }
            self.managed += self.sys.add_ram(&[(start, cut)]);
        }
    }
}

static MM: Mutex<Option<Mm>> = Mutex::new(None);
/// CPUs sleeping until [`MM`] is released (bit per CPU).
static WAITERS: AtomicU64 = AtomicU64::new(0);

/// Takes the [`MM`] lock. A CPU that finds it held halts until the holder
/// wakes it (or the next timer tick) instead of spinning: on kvm_pvm every
/// spin iteration is emulated and steals host time from the holder, which
/// made 16 CPUs faulting at once about 100 times slower. Interrupts are
/// enabled (see the module header).
fn lock() -> MutexGuard<'static, Option<Mm>> {
    cpu::enable_interrupts();
    loop {
        if let Some(guard) = MM.try_lock() {
            return guard;
        }
        let bit = 1u64 << percpu::index();
        cpu::disable_interrupts();
        WAITERS.fetch_or(bit, Ordering::SeqCst);
        if MM.is_locked() {
            // The holder sees our bit when it unlocks (both sides are
            // SeqCst), and its wake-up IPI stays pending until the `hlt`.
            cpu::enable_and_halt();
        } else {
            cpu::enable_interrupts();
        }
        WAITERS.fetch_and(!bit, Ordering::SeqCst);
    }
}

/// Releases the lock taken by [`lock`] and wakes the CPUs waiting for it.
fn unlock(guard: MutexGuard<'static, Option<Mm>>) {
    drop(guard);
    fence(Ordering::SeqCst);
    let waiters = WAITERS.load(Ordering::SeqCst);
    if waiters == 0 {
        // The common case, without a 64-step loop of emulated ring 0.
        return;
    }
    for cpu in (0..MAX_CPUS).filter(|&c| waiters & (1 << c) != 0) {
        smp::wake(cpu);
    }
}

/// Why the MM core could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmInitError {
    /// Not enough RAM beyond the kernel's own.
    NoMemory,
}

/// What the command line chooses for the MM core.
pub struct Settings {
    /// `mm_check`: the invariant checker after every call.
    pub mm_check: bool,
    /// Frames of the swap region.
    pub swap_frames: u64,
    /// `vm.mmap_min_addr`, if not the core's default (65536).
    pub mmap_min_addr: Option<u64>,
    /// HVO for pooled huge pages (`hugetlb_free_vmemmap=on`).
    pub hugetlb_free_vmemmap: bool,
    /// Soft-dirty tracking (`soft_dirty=`).
    pub soft_dirty: guest_mm::SoftDirty,
}

/// Builds the MM core over the RAM the boot allocator does not keep.
pub fn init(settings: Settings) -> Result<(), MmInitError> {
    let mut pending = frames::hand_off(KERNEL_RESERVE);
    let (start, end) = *pending.first().ok_or(MmInitError::NoMemory)?;
    let cut = end.min(start + INITIAL_BYTES);
    if cut == end {
        pending.remove(0);
    } else {
        pending[0].0 = cut;
    }
    let defaults = Config::default();
    let cfg = Config {
        swap_frames: settings.swap_frames,
        kernel_root: Some(Pfn(kmap::kernel_pml4() / PAGE_SIZE)),
        check_every_op: settings.mm_check,
        mmap_min_addr: settings.mmap_min_addr.unwrap_or(defaults.mmap_min_addr),
        hugetlb_vmemmap_optimize: settings.hugetlb_free_vmemmap,
        soft_dirty: settings.soft_dirty,
        ..defaults
    };
    let sys = kctx::call(|| MemSystem::new(KernelHw, &[(start, cut)], cfg))
        .map_err(|_| MmInitError::NoMemory)?;
    *MM.lock() = Some(Mm {
        sys,
        pending,
        managed: (cut - start) / PAGE_SIZE,
    });
    Ok(())
}

/// Who makes the tasks a userfaultfd woke runnable (the scheduler, which
/// sits above this module, registers it at boot).
static WAKE: spin::Once<fn(&[guest_mm::Pid])> = spin::Once::new();

/// Registers what [`with`] calls with the tasks the core woke.
pub fn on_woken(wake: fn(&[guest_mm::Pid])) {
    WAKE.call_once(|| wake);
}

/// Runs `f` on the MM core under its lock, first adding RAM if free memory
/// is low. Enables interrupts (see the module header). Tasks the operation
/// woke (userfaultfd) are handed to the scheduler after the lock is
/// released.
pub fn with<R>(f: impl FnOnce(&mut MemSystem<KernelHw>) -> R) -> R {
    let mut guard = lock();
    let mm = guard.as_mut().expect("MM core initialised at boot");
    let (r, woken) = kctx::call(|| {
        mm.grow_to(LOW_WATER_FRAMES);
        let r = f(&mut mm.sys);
        (r, mm.sys.take_woken())
    });
    unlock(guard);
    if let (false, Some(wake)) = (woken.is_empty(), WAKE.get()) {
        wake(&woken);
    }
    r
}

/// Adds RAM until at least `frames` are free (or all RAM is managed), so
/// that a measurement does not include deferred initialisation.
pub fn reserve(frames: u64) {
    let mut guard = lock();
    if let Some(mm) = guard.as_mut() {
        kctx::call(|| mm.grow_to(frames));
    }
    unlock(guard);
}

/// Fills the hugetlb pools the command line asks for (`hugepages=N`, per
/// size): RAM for them is added first, since deferred initialisation
/// would otherwise leave the buddy allocator too little to allocate from.
/// Each pool it fills is reported in a `hugetlb` record with its counters
/// (a pool RAM cannot fill stays smaller, as on Linux).
pub fn boot_hugepages(pages: [Option<u64>; 2]) {
    for (h, n) in pages.iter().enumerate() {
        if let Some(n) = *n {
            set_nr_hugepages(h, n);
            let c = with(|s| s.hugetlb_counters(h));
            let kb = guest_mm::hugetlb::huge_size(h) >> 10;
            crate::record!(
                r#"{{"type":"hugetlb","size_kb":{kb},"requested":{n},"total":{},"free":{},"rsvd":{},"surp":{}}}"#,
                c.total,
                c.free,
                c.rsvd,
                c.surp
            );
        }
    }
}

/// Sets `nr_hugepages` of hstate `h`, adding RAM not managed yet while the
/// pool comes out short: free frames alone do not make free huge pages, the
/// buddy allocator needs them aligned and contiguous.
pub fn set_nr_hugepages(h: usize, n: u64) {
    reserve_huge(h, n);
    let per_page = guest_mm::hugetlb::huge_size(h) / PAGE_SIZE;
    let mut guard = lock();
    let mm = guard.as_mut().expect("MM core initialised at boot");
    kctx::call(|| {
        loop {
            let _ = mm
                .sys
                .hugetlb_set_pool(h, guest_mm::PoolKnob::NrHugepages, n);
            let missing = n.saturating_sub(mm.sys.hugetlb_counters(h).total);
            if missing == 0 || !mm.grow_by(missing.saturating_mul(per_page)) {
                break;
            }
        }
    });
    unlock(guard);
}

/// Makes RAM available for `n` more huge pages of hstate `h` (a pool
/// resize, or overcommit that faults may allocate from).
pub fn reserve_huge(h: usize, n: u64) {
    let per_page = guest_mm::hugetlb::huge_size(h) / PAGE_SIZE;
    reserve(n.saturating_mul(per_page).saturating_add(LOW_WATER_FRAMES));
}

/// Frames in use by the MM core (managed minus free): page tables, user
/// pages, the zero page and the swap region.
pub fn used_frames() -> u64 {
    let guard = lock();
    let used = guard
        .as_ref()
        .map_or(0, |mm| mm.managed - mm.sys.free_frames());
    unlock(guard);
    used
}
