//! `WriteWatch`: the write-watch layer of one VM. It owns the tracking state
//! (which source, which watches are open, the dirty rings) behind one lock;
//! every method takes `&self`, so the API, a `watch` loop and the vCPU
//! threads (on `KVM_EXIT_DIRTY_RING_FULL`) share it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::bitmap::PageBitmap;
use super::slots::{self, SlotRange, Slots};
use super::source;
use super::watch::{GRANULARITY, VaWatch, Watch, WatchKind};
use super::{Source, WatchError};
use crate::memory::GuestMemoryMmap;
use crate::vstate::dirty_log::{DirtyLogExt, DirtyRing};
use crate::vstate::vm::Vm;

/// How a watch started by `start` begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    /// Nothing counts as written yet (KVM write-protects all RAM now).
    #[default]
    Clean,
    /// Every page counts as written until reset (`KVM_DIRTY_LOG_INITIALLY_SET`:
    /// turning logging on costs nothing; protection comes with each reset).
    Dirty,
}

/// What `start` did.
#[derive(Clone, Debug, Serialize)]
pub struct StartInfo {
    pub source: Source,
    pub initial: Initial,
    pub start_ms: f64,
}

/// The answer to a `get`: `GetWriteWatch`'s addresses, count and granularity.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WatchResult {
    pub addresses: Vec<u64>,
    pub count: usize,
    pub granularity: u64,
    pub harvest: HarvestStats,
}

/// What one harvest took from the sources.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HarvestStats {
    /// Dirty bits taken from KVM's bitmap.
    pub bitmap_pages: u64,
    /// Entries taken from the dirty rings.
    pub ring_entries: u64,
    /// Pages the VMM itself wrote.
    pub vmm_pages: u64,
    pub micros: f64,
}

/// Counters since the VM started.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrackerStats {
    pub tracking: Option<Source>,
    pub harvests: u64,
    pub harvest_micros_total: f64,
    pub harvest_micros_last: f64,
    pub harvest_micros_max: f64,
    pub bitmap_pages: u64,
    pub ring_entries: u64,
    pub vmm_pages: u64,
    pub ring_full_exits: u64,
    /// Times KVM overran a ring (entries lost, everything marked written).
    pub ring_overruns: u64,
    pub va_watches: usize,
}

/// A guest process as the guest reported it (`process` records).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u64,
    pub cr3: u64,
    pub program: String,
}

/// A dirty-rate measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub source: Source,
    pub period_ms: f64,
    /// Distinct pages written during the period.
    pub pages: u64,
    pub mib_per_s: f64,
    /// Ring source: distinct pages per vCPU and MiB/s (QEMU's dirty-ring
    /// mode counts entries; this counts pages, so duplicates do not inflate it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpus: Vec<VcpuRate>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VcpuRate {
    pub vcpu: usize,
    pub pages: u64,
    pub mib_per_s: f64,
}

/// Keys of open watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum WatchId {
    /// The one guest-physical watch the API serves.
    Gpa,
    /// A virtual-range watch.
    Va(u64),
    /// A consumer inside the VMM (dirty rate, migration).
    Internal(u64),
}

/// Identifies a watch a VMM component opened for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerId(u64);

struct State {
    tracking: Option<Source>,
    watches: BTreeMap<WatchId, Watch>,
    /// Per-vCPU pages for a ring-mode dirty-rate measurement in progress.
    per_vcpu: Option<Vec<Vec<PageBitmap>>>,
    rings: Vec<DirtyRing>,
    next_id: u64,
    processes: BTreeMap<u64, ProcessInfo>,
    stats: TrackerStats,
}

/// The write-watch layer of one VM.
pub struct WriteWatch {
    vm: Arc<Vm>,
    memory: GuestMemoryMmap,
    slots: Slots,
    /// The VM was created with a dirty ring (and then has no bitmap).
    has_ring: bool,
    state: Mutex<State>,
}

impl WriteWatch {
    /// The write-watch layer for `vm` and its `memory`; `rings` are the
    /// vCPUs' dirty rings, in vCPU order, when the VM was built with one.
    pub fn new(vm: Arc<Vm>, memory: GuestMemoryMmap, rings: Option<Vec<DirtyRing>>) -> Self {
        let slots = Slots::of(&memory);
        WriteWatch {
            vm,
            memory,
            slots,
            has_ring: rings.is_some(),
            state: Mutex::new(State {
                tracking: None,
                watches: BTreeMap::new(),
                per_vcpu: None,
                rings: rings.unwrap_or_default(),
                next_id: 0,
                processes: BTreeMap::new(),
                stats: TrackerStats::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic elsewhere: each method
        // finishes its bitmap updates before it can fail.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The VM: for measurements that compare the write watch with bare
    /// dirty-log ioctls (`benches/dirty.rs`).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Empties the dirty rings (harvest and reset) with nothing done with
    /// the entries: the bare loop `benches/dirty.rs` compares with. Returns
    /// the entries taken.
    pub fn drain_rings_unwatched(&self) -> Result<u64, WatchError> {
        let mut st = self.lock();
        let rings = st.rings.iter_mut().enumerate();
        source::harvest_rings(&self.vm, &self.slots, rings, None, |_, _, _| {}).map(|(n, _)| n)
    }

    /// The source this VM can track with.
    pub fn available_source(&self) -> Source {
        if self.has_ring {
            Source::Ring
        } else {
            Source::Bitmap
        }
    }

    /// Guest RAM size in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.slots.0.iter().map(|s| s.pages * GRANULARITY).sum()
    }

    /// The guest-physical RAM ranges `(start, len)`.
    pub fn ram_ranges(&self) -> Vec<(u64, u64)> {
        self.slots
            .0
            .iter()
            .map(|s| (s.gpa, s.pages * GRANULARITY))
            .collect()
    }

    /// Starts tracking guest writes with `source`, and opens the API's
    /// guest-physical watch.
    pub fn start(&self, source: Source, initial: Initial) -> Result<StartInfo, WatchError> {
        let began = Instant::now();
        let mut st = self.lock();
        if let Some(active) = st.tracking {
            return Err(WatchError::AlreadyTracking(active.name()));
        }
        match (source, self.has_ring) {
            (Source::Ring, false) => return Err(WatchError::NoRing),
            (Source::Bitmap, true) => return Err(WatchError::NoBitmap),
            _ => {}
        }
        if source == Source::Bitmap {
            self.vm
                .fd
                .enable_manual_dirty_log_protect(initial == Initial::Dirty)
                .map_err(|source| WatchError::Kvm {
                    what: "KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)",
                    source,
                })?;
        }
        // What the VMM wrote before now (the loader) is not a guest write.
        source::harvest_vmm_writes(&self.memory, |_, _| {});
        self.set_logging(true)?;
        st.tracking = Some(source);
        st.stats.tracking = Some(source);
        let mut gpa = Watch::new(&self.slots, WatchKind::Gpa);
        if initial == Initial::Dirty && source == Source::Ring {
            // The ring has no "initially set"; say so the same way.
            for bitmap in &mut gpa.pending {
                bitmap.fill();
            }
        }
        st.watches.insert(WatchId::Gpa, gpa);
        Ok(StartInfo {
            source,
            initial,
            start_ms: began.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Stops tracking: every watch is closed and KVM logs nothing more, so
    /// the guest runs at full speed again (large mappings come back).
    pub fn stop(&self) -> Result<(), WatchError> {
        let mut st = self.lock();
        if st.tracking.is_none() {
            return Err(WatchError::NotTracking);
        }
        st.watches.clear();
        st.per_vcpu = None;
        st.tracking = None;
        st.stats.tracking = None;
        st.stats.va_watches = 0;
        self.set_logging(false)?;
        // Ring entries pushed before logging stopped go to no watch now.
        self.harvest(&mut st, &[]).map(|_| ())
    }

    fn set_logging(&self, on: bool) -> Result<(), WatchError> {
        self.vm
            .set_dirty_logging(&self.memory, on)
            .map_err(|e| WatchError::Kvm {
                what: if on {
                    "turning dirty logging on"
                } else {
                    "turning dirty logging off"
                },
                source: match e {
                    crate::vstate::vm::VmError::MemorySlot { source, .. } => source,
                    _ => kvm_ioctls::Error::new(libc::EIO),
                },
            })
    }

    /// `GetWriteWatch` over guest-physical `[start, start + len)`: the
    /// written pages in ascending order, at most `max_count`; with `reset`,
    /// exactly the pages returned become clean.
    pub fn get(
        &self,
        start: u64,
        len: u64,
        reset: bool,
        max_count: Option<usize>,
    ) -> Result<WatchResult, WatchError> {
        let mut addresses = Vec::new();
        let (_, harvest) = self.get_into(start, len, reset, max_count, Some(&mut addresses))?;
        Ok(result(addresses, harvest))
    }

    /// `get` that only counts the pages (GetWriteWatch with the addresses
    /// thrown away): the same harvest and reset, no list built.
    pub fn get_count(
        &self,
        start: u64,
        len: u64,
        reset: bool,
        max_count: Option<usize>,
    ) -> Result<(usize, HarvestStats), WatchError> {
        self.get_into(start, len, reset, max_count, None)
    }

    fn get_into(
        &self,
        start: u64,
        len: u64,
        reset: bool,
        max_count: Option<usize>,
        out: Option<&mut Vec<u64>>,
    ) -> Result<(usize, HarvestStats), WatchError> {
        let limit = check_count(max_count)?;
        let ranges = self.slots.split(start, len)?;
        let mut st = self.lock();
        Self::tracking(&st)?;
        let harvest = self.harvest(&mut st, &ranges)?;
        let watch = st
            .watches
            .get_mut(&WatchId::Gpa)
            .expect("open while tracking");
        let count = watch.take_gpa(&self.slots, &ranges, reset, limit, out);
        Ok((count, harvest))
    }

    /// `ResetWriteWatch` over guest-physical `[start, start + len)`.
    pub fn reset(&self, start: u64, len: u64) -> Result<HarvestStats, WatchError> {
        let ranges = self.slots.split(start, len)?;
        let mut st = self.lock();
        Self::tracking(&st)?;
        // Harvest first: what KVM holds for the range is reset too.
        let harvest = self.harvest(&mut st, &ranges)?;
        st.watches
            .get_mut(&WatchId::Gpa)
            .expect("open while tracking")
            .reset_gpa(&ranges);
        Ok(harvest)
    }

    /// Starts watching `[start, start + len)` of the process whose page
    /// table is `cr3`, clean from now on, as `VirtualAlloc(MEM_WRITE_WATCH)`
    /// starts a region clean.
    pub fn watch_va(&self, cr3: u64, start: u64, len: u64) -> Result<(), WatchError> {
        slots::check_range(start, len)?;
        let mut st = self.lock();
        Self::tracking(&st)?;
        Self::known_cr3(&st, cr3)?;
        let end = start.saturating_add(len);
        let overlapping = st.watches.values().any(|w| match &w.kind {
            WatchKind::Va(va) => va.cr3 == cr3 && va.overlaps(start, end),
            _ => false,
        });
        if overlapping {
            return Err(WatchError::AlreadyWatched { cr3, start, len });
        }
        // Writes so far belong to the watches already open, not to this one.
        self.harvest(&mut st, &self.slots.everything())?;
        let va = VaWatch::new(&self.memory, cr3, start, len / GRANULARITY)?;
        let id = WatchId::Va(st.next_id);
        st.next_id += 1;
        st.watches
            .insert(id, Watch::new(&self.slots, WatchKind::Va(va)));
        st.stats.va_watches += 1;
        Ok(())
    }

    /// `GetWriteWatch` over virtual `[start, start + len)` of the process
    /// whose page table is `cr3`, inside one watched range.
    pub fn get_va(
        &self,
        cr3: u64,
        start: u64,
        len: u64,
        reset: bool,
        max_count: Option<usize>,
    ) -> Result<WatchResult, WatchError> {
        let limit = check_count(max_count)?;
        self.with_va(cr3, start, len, |va, harvest| {
            result(va.take(start, start + len, reset, limit), harvest)
        })
    }

    /// `ResetWriteWatch` over virtual `[start, start + len)` of `cr3`.
    pub fn reset_va(&self, cr3: u64, start: u64, len: u64) -> Result<HarvestStats, WatchError> {
        self.with_va(cr3, start, len, |va, harvest| {
            va.take(start, start + len, true, usize::MAX);
            harvest
        })
    }

    /// Brings the watch covering `[start, start + len)` of `cr3` up to date
    /// (harvest, then the page-table walk) and hands it to `answer`.
    fn with_va<R>(
        &self,
        cr3: u64,
        start: u64,
        len: u64,
        answer: impl FnOnce(&mut VaWatch, HarvestStats) -> R,
    ) -> Result<R, WatchError> {
        slots::check_range(start, len)?;
        let mut st = self.lock();
        Self::tracking(&st)?;
        let id = Self::va_watch_for(&st, cr3, start, len)?;
        let harvest = self.harvest(&mut st, &self.slots.everything())?;
        let watch = st.watches.get_mut(&id).expect("found above");
        let WatchKind::Va(va) = &mut watch.kind else {
            unreachable!("va_watch_for returns virtual watches")
        };
        va.consume(&self.memory, &self.slots, &mut watch.pending)?;
        Ok(answer(va, harvest))
    }

    /// Opens a watch for a VMM component (dirty rate, migration): every page
    /// counts as written when `all_dirty`, none otherwise.
    pub fn open_consumer(&self, all_dirty: bool) -> Result<ConsumerId, WatchError> {
        let mut st = self.lock();
        Self::tracking(&st)?;
        self.harvest(&mut st, &self.slots.everything())?;
        let mut watch = Watch::new(&self.slots, WatchKind::Gpa);
        if all_dirty {
            for bitmap in &mut watch.pending {
                bitmap.fill();
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.watches.insert(WatchId::Internal(id), watch);
        Ok(ConsumerId(id))
    }

    /// Everything a consumer's watch holds, per slot, leaving it clean.
    pub fn take_consumer(
        &self,
        consumer: ConsumerId,
    ) -> Result<(Vec<PageBitmap>, HarvestStats), WatchError> {
        let mut st = self.lock();
        Self::tracking(&st)?;
        let harvest = self.harvest(&mut st, &self.slots.everything())?;
        let watch = st
            .watches
            .get_mut(&WatchId::Internal(consumer.0))
            .ok_or(WatchError::NotTracking)?;
        let taken = watch
            .pending
            .iter_mut()
            .map(|b| {
                let copy = b.clone();
                b.clear_all();
                copy
            })
            .collect();
        Ok((taken, harvest))
    }

    /// What a consumer's watch holds now, per slot, leaving it as it is:
    /// pages written since its last take (migration skips them in a round,
    /// since the next take returns them anyway).
    pub fn peek_consumer(&self, consumer: ConsumerId) -> Result<Vec<PageBitmap>, WatchError> {
        let mut st = self.lock();
        Self::tracking(&st)?;
        self.harvest(&mut st, &self.slots.everything())?;
        let watch = st
            .watches
            .get(&WatchId::Internal(consumer.0))
            .ok_or(WatchError::NotTracking)?;
        Ok(watch.pending.clone())
    }

    pub fn close_consumer(&self, consumer: ConsumerId) {
        self.lock().watches.remove(&WatchId::Internal(consumer.0));
    }

    /// Measures the dirty rate over `period`, like QEMU's calc-dirty-rate:
    /// the distinct pages written during the period over the whole guest,
    /// and with the ring source per vCPU. Tracking must be on.
    pub fn dirty_rate(&self, period: Duration) -> Result<Rate, WatchError> {
        let source = Self::tracking(&self.lock())?;
        let consumer = self.open_consumer(false)?;
        if source == Source::Ring {
            let mut st = self.lock();
            let vcpus = st.rings.len();
            st.per_vcpu = Some(
                (0..vcpus)
                    .map(|_| {
                        self.slots
                            .0
                            .iter()
                            .map(|s| PageBitmap::new(s.pages))
                            .collect()
                    })
                    .collect(),
            );
        }
        let began = Instant::now();
        std::thread::sleep(period);
        let taken = self.take_consumer(consumer);
        let elapsed = began.elapsed().as_secs_f64();
        self.close_consumer(consumer);
        let per_vcpu = self.lock().per_vcpu.take();
        let (bitmaps, _) = taken?;
        let rate = |pages: u64| (pages * GRANULARITY) as f64 / (1 << 20) as f64 / elapsed;
        let pages: u64 = bitmaps.iter().map(PageBitmap::count).sum();
        let vcpus = per_vcpu
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(vcpu, slots)| {
                let pages = slots.iter().map(PageBitmap::count).sum();
                VcpuRate {
                    vcpu,
                    pages,
                    mib_per_s: rate(pages),
                }
            })
            .collect();
        Ok(Rate {
            source,
            period_ms: elapsed * 1e3,
            pages,
            mib_per_s: rate(pages),
            vcpus,
        })
    }

    /// A vCPU's ring filled up (`KVM_EXIT_DIRTY_RING_FULL`): harvest it (and
    /// every other) before the vCPU may run again. Nothing is dropped.
    pub fn ring_full(&self, vcpu: usize) -> Result<(), WatchError> {
        let mut st = self.lock();
        st.stats.ring_full_exits += 1;
        self.harvest_with(&mut st, &[], Some(vcpu)).map(|_| ())
    }

    /// Notes a guest `process` or `process_exit` record.
    pub fn note_process(&self, info: Option<ProcessInfo>, exited_pid: Option<u64>) {
        let mut st = self.lock();
        if let Some(info) = info {
            st.processes.insert(info.pid, info);
        }
        if let Some(pid) = exited_pid {
            if let Some(gone) = st.processes.remove(&pid) {
                // Its page tables are freed: its watches end with it.
                st.watches
                    .retain(|_, w| !matches!(&w.kind, WatchKind::Va(va) if va.cr3 == gone.cr3));
                st.stats.va_watches = st
                    .watches
                    .values()
                    .filter(|w| matches!(w.kind, WatchKind::Va(_)))
                    .count();
            }
        }
    }

    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.lock().processes.values().cloned().collect()
    }

    /// The page table of process `pid`.
    pub fn cr3_of(&self, pid: u64) -> Result<u64, WatchError> {
        self.lock()
            .processes
            .get(&pid)
            .map(|p| p.cr3)
            .ok_or(WatchError::UnknownPid(pid))
    }

    pub fn stats(&self) -> TrackerStats {
        self.lock().stats.clone()
    }

    pub fn tracking_source(&self) -> Option<Source> {
        self.lock().tracking
    }

    fn tracking(st: &State) -> Result<Source, WatchError> {
        st.tracking.ok_or(WatchError::NotTracking)
    }

    fn known_cr3(st: &State, cr3: u64) -> Result<(), WatchError> {
        let table = cr3 & !0xfff;
        if st.processes.values().any(|p| p.cr3 & !0xfff == table) {
            Ok(())
        } else {
            Err(WatchError::UnknownPageTable(cr3))
        }
    }

    fn va_watch_for(st: &State, cr3: u64, start: u64, len: u64) -> Result<WatchId, WatchError> {
        Self::known_cr3(st, cr3)?;
        let end = start.saturating_add(len);
        st.watches
            .iter()
            .find(|(_, w)| matches!(&w.kind, WatchKind::Va(va) if va.cr3 & !0xfff == cr3 & !0xfff && va.covers(start, end)))
            .map(|(&id, _)| id)
            .ok_or(WatchError::NotWatched { cr3, start, len })
    }

    /// Moves what the sources recorded into every open watch: KVM's bitmap
    /// for `ranges` (ring: every ring, whatever the ranges), and the VMM's
    /// own writes.
    fn harvest(&self, st: &mut State, ranges: &[SlotRange]) -> Result<HarvestStats, WatchError> {
        self.harvest_with(st, ranges, None)
    }

    /// `harvest`, knowing that vCPU `stopped` (if any) is out of the guest.
    /// A ring KVM overran lost entries nobody can name: then every page of
    /// every watch counts as written, since nothing may be missed.
    fn harvest_with(
        &self,
        st: &mut State,
        ranges: &[SlotRange],
        stopped: Option<usize>,
    ) -> Result<HarvestStats, WatchError> {
        let began = Instant::now();
        let State {
            tracking,
            watches,
            per_vcpu,
            rings,
            stats,
            ..
        } = st;
        let mut taken = HarvestStats::default();
        if *tracking == Some(Source::Bitmap) {
            taken.bitmap_pages =
                source::harvest_bitmap(&self.vm, &self.slots, ranges, |slot, words| {
                    for w in watches.values_mut() {
                        w.absorb_words(slot, words);
                    }
                })?;
        }
        // Rings are harvested whatever the state: a full ring must be emptied
        // before its vCPU may run again.
        if self.has_ring {
            let rings = rings.iter_mut().enumerate();
            let (entries, lost) = source::harvest_rings(
                &self.vm,
                &self.slots,
                rings,
                stopped,
                |vcpu, slot, page| {
                    for w in watches.values_mut() {
                        w.absorb_page(slot, page);
                    }
                    if let Some(per_vcpu) = per_vcpu.as_mut() {
                        per_vcpu[vcpu][slot].set(page);
                    }
                },
            )?;
            taken.ring_entries = entries;
            if let Some(how) = lost {
                for w in watches.values_mut() {
                    w.pending.iter_mut().for_each(PageBitmap::fill);
                }
                if stats.ring_overruns == 0 {
                    eprintln!(
                        "writewatch: warning: KVM overran a dirty ring and lost entries ({}); every page now counts as written (use a larger --dirty-ring-size)",
                        how.describe()
                    );
                }
                stats.ring_overruns += 1;
            }
        }
        taken.vmm_pages = source::harvest_vmm_writes(&self.memory, |slot, words| {
            for w in watches.values_mut() {
                w.absorb_words(slot, words);
            }
        });
        taken.micros = began.elapsed().as_secs_f64() * 1e6;
        stats.harvests += 1;
        stats.harvest_micros_total += taken.micros;
        stats.harvest_micros_last = taken.micros;
        stats.harvest_micros_max = stats.harvest_micros_max.max(taken.micros);
        stats.bitmap_pages += taken.bitmap_pages;
        stats.ring_entries += taken.ring_entries;
        stats.vmm_pages += taken.vmm_pages;
        Ok(taken)
    }
}

fn check_count(max_count: Option<usize>) -> Result<usize, WatchError> {
    match max_count {
        Some(0) => Err(WatchError::ZeroCount),
        Some(n) => Ok(n),
        None => Ok(usize::MAX),
    }
}

fn result(addresses: Vec<u64>, harvest: HarvestStats) -> WatchResult {
    WatchResult {
        count: addresses.len(),
        addresses,
        granularity: GRANULARITY,
        harvest,
    }
}
