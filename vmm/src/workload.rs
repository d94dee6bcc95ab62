//! The host side of the guest's write workloads (`mode=workload`,
//! docs/GUEST_ABI.md "Workloads"): the command-line words that choose one,
//! the `workload` record that announces its arena and control page, the
//! control page the VMM drives intervals with, and the check of a
//! write-watch result against what the workload wrote.
//!
//! The truth comes from the pages themselves, as in Linux's KVM
//! `dirty_log_test`: every write stores the current interval number in the
//! first eight bytes of its page. With the vCPUs paused at the end of
//! interval `k`, a page holding `k` was written during `k` and must be in
//! the result (else it was missed); a result page holding `k - 1` was
//! written by a vCPU that read the interval number just before the VMM
//! changed it (an extra, expected); anything else reported is an extra,
//! attributed to where it lies.

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use crate::devices::records::Record;
use crate::dirty::GRANULARITY;
use crate::dirty::bitmap::PageBitmap;
use crate::memory::GuestMemoryMmap;

/// Offsets in the control page.
const CONTROL_INTERVAL: u64 = 0;
const CONTROL_STOP: u64 = 8;
const CONTROL_WRITES: u64 = 32;
/// Most CPUs the control page counts writes for.
const CONTROL_CPUS: u64 = 64;
/// Missed pages listed by address in a check (the count is always exact).
const MISSED_SHOWN: usize = 16;

/// Which workload, as the command line chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Uniform random writes over the working set.
    Uniform,
    /// Hot/cold: Zipf (s = 1) over the working set, hot pages first.
    Zipf,
    /// A sequential sweep (each vCPU its own stride).
    Seq,
    /// No writes at all.
    Idle,
    /// Fork-heavy: a ring-3 process forks children that break copy-on-write
    /// on its arena (`forkwork`), so pages move as well as get written. It
    /// writes no interval numbers: `--verify` does not apply (the virtual
    /// write watch's exactness under COW is tests/write_watch_va.rs).
    Fork,
}

/// How the guest maps its arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Mapping {
    /// The kernel's direct map: 2 MiB and 1 GiB pages.
    #[value(name = "2m")]
    #[serde(rename = "2m")]
    Huge,
    /// 4 KiB pages made for the arena.
    #[value(name = "4k")]
    #[serde(rename = "4k")]
    Small,
}

/// A workload as the command line asks for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    pub kind: Kind,
    /// MiB per second for the whole guest; 0: as fast as it can.
    pub rate_mib: u64,
    /// Working-set size in bytes.
    pub wss: u64,
    pub mapping: Mapping,
    /// Wait for the VMM to set interval 1 before writing.
    pub wait: bool,
    /// The arena starts at the first RAM at or above this address.
    pub first: u64,
}

impl Spec {
    /// The guest command-line words that run this workload.
    pub fn guest_words(&self) -> String {
        let kind = match self.kind {
            Kind::Uniform => "uniform",
            Kind::Zipf => "zipf",
            Kind::Seq => "seq",
            Kind::Idle => "idle",
            Kind::Fork => {
                return format!("mode=run program=forkwork arg={}", self.wss / GRANULARITY);
            }
        };
        let map = match self.mapping {
            Mapping::Huge => "2m",
            Mapping::Small => "4k",
        };
        let wait = if self.wait { " wait" } else { "" };
        format!(
            "mode=workload workload={kind} wss={} rate={} map={map} first={}{wait}",
            self.wss, self.rate_mib, self.first
        )
    }
}

/// What the guest announced about its workload.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Announced {
    pub kind: String,
    pub pages: u64,
    pub map: String,
    pub cpus: u64,
    pub rate_mib: u64,
    /// The workload checks its own memory when stopped (`check`).
    #[serde(default)]
    pub check: bool,
    /// Guest-physical address of the control page.
    pub control: u64,
    /// The arena's physical runs, `[start, len]` in bytes.
    pub arena: Vec<[u64; 2]>,
    /// The kernel image, `[start, len]`.
    pub kernel_image: [u64; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("the guest's workload record is malformed")]
    BadRecord,
    #[error("the guest's workload control page at {0:#x} is not in guest RAM")]
    BadControl(u64),
}

impl Announced {
    pub fn from_record(record: &Record) -> Result<Self, WorkloadError> {
        let a: Announced = record.fields().ok_or(WorkloadError::BadRecord)?;
        let arena_pages: u64 = a.arena.iter().map(|r| r[1] / GRANULARITY).sum();
        if arena_pages != a.pages || a.arena.iter().any(|r| r[0] % GRANULARITY != 0) {
            return Err(WorkloadError::BadRecord);
        }
        Ok(a)
    }

    /// Starts interval `k`: the workload writes `k` from now on.
    pub fn set_interval(&self, mem: &GuestMemoryMmap, k: u64) -> Result<(), WorkloadError> {
        mem.write_obj(k, GuestAddress(self.control + CONTROL_INTERVAL))
            .map_err(|_| WorkloadError::BadControl(self.control))
    }

    /// Tells the workload to stop; the guest then exits 0.
    pub fn stop(&self, mem: &GuestMemoryMmap) -> Result<(), WorkloadError> {
        mem.write_obj(1u64, GuestAddress(self.control + CONTROL_STOP))
            .map_err(|_| WorkloadError::BadControl(self.control))
    }

    /// Writes made by all CPUs so far (counted every 64 writes).
    pub fn writes(&self, mem: &GuestMemoryMmap) -> u64 {
        (0..self.cpus.min(CONTROL_CPUS))
            .filter_map(|cpu| {
                mem.read_obj::<u64>(GuestAddress(self.control + CONTROL_WRITES + cpu * 8))
                    .ok()
            })
            .sum()
    }

    /// Compares `result` (the pages a write watch reported for interval
    /// `k`, per slot, `slots` giving each slot's start) with what the arena
    /// says was written. The vCPUs must be paused.
    pub fn check(
        &self,
        k: u64,
        result: &[PageBitmap],
        slot_starts: &[u64],
        mem: &GuestMemoryMmap,
    ) -> Check {
        let lookup = |gpa: u64| -> bool {
            slot_starts
                .iter()
                .zip(result)
                .rev()
                .find(|(start, _)| gpa >= **start)
                .is_some_and(|(start, bitmap)| bitmap.get((gpa - start) / GRANULARITY))
        };
        let mut check = Check::default();
        for &[start, len] in &self.arena {
            for gpa in (start..start + len).step_by(GRANULARITY as usize) {
                let value: u64 = mem.read_obj(GuestAddress(gpa)).unwrap_or(0);
                let reported = lookup(gpa);
                match (value == k, reported) {
                    (true, true) => check.truth += 1,
                    (true, false) => {
                        check.truth += 1;
                        check.missed += 1;
                        if check.missed_pages.len() < MISSED_SHOWN {
                            check.missed_pages.push(gpa);
                        }
                    }
                    (false, true) if value + 1 == k => check.extra.arena_stale += 1,
                    (false, true) => check.extra.arena_older += 1,
                    (false, false) => {}
                }
            }
        }
        // Everything else reported lies outside the arena.
        let in_arena = |gpa: u64| self.arena.iter().any(|&[s, l]| (s..s + l).contains(&gpa));
        let [image, image_len] = self.kernel_image;
        for (bitmap, &start) in result.iter().zip(slot_starts) {
            for page in bitmap.set_pages(0, bitmap.pages(), usize::MAX) {
                let gpa = start + page * GRANULARITY;
                if in_arena(gpa) {
                    continue;
                }
                if gpa == self.control {
                    check.extra.control += 1;
                } else if (image..image + image_len).contains(&gpa) {
                    check.extra.kernel_image += 1;
                } else {
                    check.extra.kernel_other += 1;
                }
            }
        }
        check
    }
}

/// How one interval's write-watch result compares with the truth.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Arena pages written in the interval.
    pub truth: u64,
    /// Of those, not reported: must be 0.
    pub missed: u64,
    /// The first missed pages' guest-physical addresses.
    pub missed_pages: Vec<u64>,
    pub extra: Extra,
}

/// Pages reported that the workload did not write in the interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Extra {
    /// Arena pages holding the previous interval's number: written by a
    /// vCPU that read the number just before it changed.
    pub arena_stale: u64,
    /// Arena pages holding an older number.
    pub arena_older: u64,
    /// The control page (the VMM writes it, the guest counts writes in it).
    pub control: u64,
    /// The kernel image: its data, the record buffer.
    pub kernel_image: u64,
    /// Other kernel memory: stacks, page tables, the heap.
    pub kernel_other: u64,
}

impl Extra {
    pub fn total(&self) -> u64 {
        self.arena_stale + self.arena_older + self.control + self.kernel_image + self.kernel_other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backing;
    use crate::memory::create_guest_memory;

    fn announced() -> Announced {
        Announced {
            kind: "uniform".into(),
            pages: 8,
            map: "2m".into(),
            cpus: 1,
            rate_mib: 0,
            check: false,
            control: 0x1000,
            arena: vec![[0x10_0000, 8 * GRANULARITY]],
            kernel_image: [0x20_0000, 0x1000],
        }
    }

    #[test]
    fn a_page_holding_the_interval_must_be_reported() {
        let mem = create_guest_memory(4 << 20, Backing::Anon, 46).unwrap();
        let a = announced();
        let page = |i: u64| 0x10_0000 + i * GRANULARITY;
        mem.write_obj(5u64, GuestAddress(page(0))).unwrap(); // written in 5
        mem.write_obj(5u64, GuestAddress(page(1))).unwrap(); // written in 5, missed
        mem.write_obj(4u64, GuestAddress(page(2))).unwrap(); // stale
        mem.write_obj(2u64, GuestAddress(page(3))).unwrap(); // older
        let mut result = PageBitmap::new(1024);
        for gpa in [page(0), page(2), page(3), 0x1000, 0x20_0000, 0x30_0000] {
            result.set(gpa / GRANULARITY);
        }
        let check = a.check(5, &[result], &[0], &mem);
        assert_eq!(check.truth, 2);
        assert_eq!(check.missed, 1);
        assert_eq!(check.missed_pages, vec![page(1)]);
        assert_eq!(
            check.extra,
            Extra {
                arena_stale: 1,
                arena_older: 1,
                control: 1,
                kernel_image: 1,
                kernel_other: 1
            }
        );
    }

    #[test]
    fn the_spec_becomes_guest_words_and_the_record_parses() {
        let spec = Spec {
            kind: Kind::Zipf,
            rate_mib: 64,
            wss: 1 << 26,
            mapping: Mapping::Small,
            wait: true,
            first: 0,
        };
        assert_eq!(
            spec.guest_words(),
            "mode=workload workload=zipf wss=67108864 rate=64 map=4k first=0 wait"
        );
        let line = serde_json::to_vec(&serde_json::json!({
            "type": "workload", "kind": "zipf", "pages": 8, "map": "4k", "cpus": 2,
            "rate_mib": 64, "control": 4096, "arena": [[1048576, 32768]],
            "kernel_image": [2097152, 4096]
        }))
        .unwrap();
        let record = crate::devices::records::parse_record(line).unwrap();
        assert_eq!(Announced::from_record(&record).unwrap().pages, 8);
        let bad = crate::devices::records::parse_record(
            br#"{"type":"workload","kind":"x","pages":9,"map":"2m","cpus":1,"rate_mib":0,"control":0,"arena":[[0,4096]],"kernel_image":[0,0]}"#.to_vec(),
        )
        .unwrap();
        assert!(Announced::from_record(&bad).is_err());
    }
}
