//! KVM's dirty-log ioctls that kvm-ioctls 0.25 does not wrap: manual-protect
//! clearing (`KVM_CLEAR_DIRTY_LOG`) and the dirty ring. They are written in
//! kvm-ioctls' own style — thin safe wrappers over kvm-bindings' structs,
//! errors as `kvm_ioctls::Error` — so they could be offered upstream; this is
//! the one place their `unsafe` lives.
//!
//! See Documentation/virt/kvm/api.rst: 4.116 KVM_CLEAR_DIRTY_LOG, 4.117
//! KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2), 8.29
//! KVM_CAP_DIRTY_LOG_RING{,_ACQ_REL} and KVM_RESET_DIRTY_RINGS.

use std::os::fd::AsRawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_bindings::{
    KVM_CAP_DIRTY_LOG_RING_ACQ_REL, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_DIRTY_LOG_INITIALLY_SET,
    KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_DIRTY_LOG_PAGE_OFFSET, KVMIO, kvm_clear_dirty_log,
    kvm_clear_dirty_log__bindgen_ty_1, kvm_dirty_gfn, kvm_enable_cap,
};
use kvm_ioctls::{Error, VcpuFd, VmFd};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iowr_nr};

ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
ioctl_io_nr!(KVM_RESET_DIRTY_RINGS, KVMIO, 0xc7);

/// `kvm_dirty_gfn.flags`: KVM published the entry.
const KVM_DIRTY_GFN_F_DIRTY: u32 = 1 << 0;
/// `kvm_dirty_gfn.flags`: userspace harvested it; `KVM_RESET_DIRTY_RINGS`
/// may recycle it.
const KVM_DIRTY_GFN_F_RESET: u32 = 1 << 1;

/// Pages per bitmap word; `KVM_CLEAR_DIRTY_LOG` ranges start on a multiple.
pub const PAGES_PER_WORD: u64 = 64;

/// The dirty-log ioctls of a VM fd that kvm-ioctls lacks.
pub trait DirtyLogExt {
    /// `KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)`: from now on
    /// `KVM_GET_DIRTY_LOG` neither clears nor write-protects; with
    /// `initially_set`, a slot that starts logging starts all dirty, so
    /// turning logging on costs no write-protection pass.
    fn enable_manual_dirty_log_protect(&self, initially_set: bool) -> Result<(), Error>;

    /// `KVM_CLEAR_DIRTY_LOG`: clears (and write-protects, so later writes are
    /// seen) the pages of `slot` whose bits are set in `bitmap`, bit `i`
    /// standing for page `first_page + i`. `first_page` must be a multiple
    /// of 64 and `num_pages` too, unless the range ends at the slot's end.
    fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u32,
        bitmap: &[u64],
    ) -> Result<(), Error>;

    /// The largest dirty ring, in bytes per vCPU, this KVM offers with
    /// acquire/release ordering; 0 when it has none.
    fn dirty_ring_max_bytes(&self) -> u32;

    /// `KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING_ACQ_REL)` with `bytes` per vCPU
    /// (a power of two, at least a page). Only before any vCPU exists.
    fn enable_dirty_ring(&self, bytes: u32) -> Result<(), Error>;

    /// `KVM_RESET_DIRTY_RINGS`: re-protects the pages of every harvested
    /// entry on every ring and recycles the entries; returns how many.
    fn reset_dirty_rings(&self) -> Result<u32, Error>;
}

impl DirtyLogExt for VmFd {
    fn enable_manual_dirty_log_protect(&self, initially_set: bool) -> Result<(), Error> {
        let mut flags = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
        if initially_set {
            flags |= KVM_DIRTY_LOG_INITIALLY_SET;
        }
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            ..Default::default()
        };
        cap.args[0] = u64::from(flags);
        self.enable_cap(&cap)
    }

    fn clear_dirty_log(
        &self,
        slot: u32,
        first_page: u64,
        num_pages: u32,
        bitmap: &[u64],
    ) -> Result<(), Error> {
        // KVM reads num_pages bits, rounded up to whole 64-bit words.
        if (num_pages as usize).div_ceil(64) > bitmap.len() {
            return Err(Error::new(libc::EINVAL));
        }
        let clear = kvm_clear_dirty_log {
            slot,
            num_pages,
            first_page,
            __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_ptr() as *mut libc::c_void,
            },
        };
        // SAFETY: `self` is a VM fd, `clear` is a valid kvm_clear_dirty_log
        // whose bitmap holds at least `num_pages` bits (checked above), and
        // KVM only reads that bitmap.
        let ret = unsafe { ioctl_with_ref(self, KVM_CLEAR_DIRTY_LOG(), &clear) };
        if ret == 0 { Ok(()) } else { Err(Error::last()) }
    }

    fn dirty_ring_max_bytes(&self) -> u32 {
        self.check_extension_raw(u64::from(KVM_CAP_DIRTY_LOG_RING_ACQ_REL))
            .max(0) as u32
    }

    fn enable_dirty_ring(&self, bytes: u32) -> Result<(), Error> {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
            ..Default::default()
        };
        cap.args[0] = u64::from(bytes);
        self.enable_cap(&cap)
    }

    fn reset_dirty_rings(&self) -> Result<u32, Error> {
        // SAFETY: `self` is a VM fd and KVM_RESET_DIRTY_RINGS takes no
        // argument and touches no user memory.
        let ret = unsafe { ioctl(self, KVM_RESET_DIRTY_RINGS()) };
        if ret >= 0 {
            Ok(ret as u32)
        } else {
            Err(Error::last())
        }
    }
}

/// One vCPU's dirty ring, mapped from its fd. KVM pushes an entry when the
/// vCPU dirties a page (or KVM writes one on its behalf); userspace harvests
/// entries in order and marks them for `KVM_RESET_DIRTY_RINGS`.
pub struct DirtyRing {
    entries: NonNull<kvm_dirty_gfn>,
    count: u32,
    /// Index (modulo `count`) of the next entry to harvest.
    next: u32,
    /// Harvests that took entries (by any thread).
    harvests: u64,
    /// `harvests` at the last full-ring exit that found nothing published.
    empty_full_at: Option<u64>,
}

// SAFETY: the ring is a shared mapping that KVM writes concurrently anyway;
// all access to it goes through `harvest`, which takes `&mut self` and uses
// atomic loads and stores on the flags word as the ring protocol requires.
unsafe impl Send for DirtyRing {}

impl DirtyRing {
    /// Maps the dirty ring of `vcpu`, `bytes` long (the size the VM enabled).
    pub fn map(vcpu: &VcpuFd, bytes: u32) -> Result<Self, Error> {
        let entry = std::mem::size_of::<kvm_dirty_gfn>() as u32;
        if bytes == 0 || !bytes.is_power_of_two() || bytes < entry {
            return Err(Error::new(libc::EINVAL));
        }
        // SAFETY: sysconf takes a plain constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as libc::off_t;
        // SAFETY: a fresh shared mapping of the vCPU fd at the offset KVM
        // documents for the ring; nothing else lives at the address the
        // kernel picks, and the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                libc::off_t::from(KVM_DIRTY_LOG_PAGE_OFFSET) * page,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::last());
        }
        let entries = NonNull::new(addr.cast::<kvm_dirty_gfn>()).ok_or(Error::new(libc::EFAULT))?;
        Ok(DirtyRing {
            entries,
            count: bytes / entry,
            next: 0,
            harvests: 0,
            empty_full_at: None,
        })
    }

    /// Entries the ring holds.
    pub fn capacity(&self) -> u32 {
        self.count
    }

    /// Takes every entry KVM has published since the last harvest, in order,
    /// calling `found(slot, page offset in slot)` for each, and marks each
    /// harvested. (The pages stay writable until `reset_dirty_rings`.)
    ///
    /// KVM stops a vCPU with `KVM_EXIT_DIRTY_RING_FULL` well before its ring
    /// fills, so a harvest never sees it full — unless KVM wrote past the
    /// end, overwriting entries it had not handed over (kvm_pvm does, when
    /// the ring-0 code it emulates stores more than the ring holds between
    /// two guest entries). Then entries were lost, and the outcome says so:
    /// a full ring, or, with `resync` (only while the ring's vCPU is out of
    /// the guest, so KVM is not writing the ring), entries published beyond
    /// positions KVM counts as used but holds nothing in. Those positions are
    /// handed back too (one at a time when nothing was published after
    /// them), so KVM's count of used entries comes right again and the vCPU
    /// does not exit for a full ring forever.
    pub fn harvest(&mut self, resync: bool, mut found: impl FnMut(u32, u64)) -> Harvested {
        let mut taken = 0;
        let mut lost = None;
        // A full lap at most: every entry taken is handed back as RESET.
        while taken < self.count {
            let entry = self.entry(self.next);
            // Acquire: the slot and offset KVM wrote before publishing.
            if entry.0.load(Ordering::Acquire) & KVM_DIRTY_GFN_F_DIRTY == 0 {
                if resync && taken == 0 {
                    if self.skip_to_published() {
                        lost = Some(Overrun::Gap);
                        continue;
                    }
                    // A full-ring exit with nothing published: another
                    // thread may have harvested the ring just after KVM
                    // decided to exit (then the vCPU simply runs on), or
                    // KVM counts positions it overwrote as used. Only a
                    // second such exit with no harvest in between proves
                    // the latter: then hand back one position; the vCPU
                    // exits again at once while the count stays above
                    // KVM's limit, and once below, the entries it
                    // publishes show where the gap ends.
                    if self.empty_full_at == Some(self.harvests) {
                        lost = Some(Overrun::EmptyFullExits);
                        self.hand_back(1);
                    }
                    self.empty_full_at = Some(self.harvests);
                }
                break;
            }
            found(entry.1, entry.2);
            // Release: our reads are done before KVM may reuse the entry.
            entry.0.store(KVM_DIRTY_GFN_F_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
            taken += 1;
        }
        if taken > 0 {
            self.harvests += 1;
            self.empty_full_at = None;
        }
        if taken == self.count {
            lost = Some(Overrun::FullLap);
        }
        Harvested { taken, lost }
    }

    /// The flags word and published contents of the entry at `index`.
    fn entry(&self, index: u32) -> (&AtomicU32, u32, u64) {
        let index = (index % self.count) as usize;
        // SAFETY: `index < count`, so the entry lies within the mapping,
        // which lives as long as `self`.
        let entry = unsafe { self.entries.as_ptr().add(index) };
        // SAFETY: `flags` is the first field, a naturally aligned u32 in
        // memory KVM and we share; the protocol accesses it atomically.
        let flags = unsafe { AtomicU32::from_ptr(&raw mut (*entry).flags) };
        // SAFETY: plain reads of the entry; they are only used after the
        // flags said KVM published it (and does not write it until handed
        // back), otherwise discarded.
        let (slot, offset) = unsafe { ((*entry).slot, (*entry).offset) };
        (flags, slot, offset)
    }

    /// After an overrun: finds the first published entry past `next` and
    /// hands back the empty positions before it. False if there is none.
    fn skip_to_published(&mut self) -> bool {
        let ahead = (1..self.count).find(|&d| {
            self.entry(self.next.wrapping_add(d))
                .0
                .load(Ordering::Acquire)
                & KVM_DIRTY_GFN_F_DIRTY
                != 0
        });
        let Some(distance) = ahead else {
            return false;
        };
        self.hand_back(distance);
        true
    }

    /// Marks the next `n` positions harvested without reading them.
    fn hand_back(&mut self, n: u32) {
        for _ in 0..n {
            self.entry(self.next)
                .0
                .store(KVM_DIRTY_GFN_F_RESET, Ordering::Release);
            self.next = self.next.wrapping_add(1);
        }
    }
}

/// What one ring harvest took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Harvested {
    pub taken: u32,
    /// KVM overran the ring: entries were lost before they were taken.
    pub lost: Option<Overrun>,
}

/// How a harvest saw that KVM overran a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overrun {
    /// Every position held a published entry: KVM wrote a whole lap.
    FullLap,
    /// Entries were published beyond positions holding nothing.
    Gap,
    /// Two full-ring exits in a row found nothing published.
    EmptyFullExits,
}

impl Overrun {
    pub fn describe(self) -> &'static str {
        match self {
            Overrun::FullLap => "a harvest found the ring full",
            Overrun::Gap => "entries were published past empty positions",
            Overrun::EmptyFullExits => "two full-ring exits found nothing published",
        }
    }
}

impl Drop for DirtyRing {
    fn drop(&mut self) {
        let bytes = self.count as usize * std::mem::size_of::<kvm_dirty_gfn>();
        // SAFETY: the mapping was created by `map` with this length and
        // nothing refers to it once the ring is dropped.
        unsafe { libc::munmap(self.entries.as_ptr().cast(), bytes) };
    }
}
