//! A simulated machine for host tests: `Vec<u8>` physical memory, a
//! hardware-like page walker (MMU) and one TLB per CPU.
//!
//! The TLB model is what makes ordering bugs visible: a translation cached by
//! [`SimMachine::translate`] survives until a [`Tlb::flush`] reaches that CPU,
//! exactly like hardware, and [`PhysMem::frame_released`] records a
//! violation whenever the MM core frees or fully unmaps a frame that some
//! CPU's TLB still translates to. `drop_remote_shootdowns` simulates a lost
//! IPI so tests can show the detector fires.

pub mod user;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::hw::{
    CpuId, CurrentCpu, FlushRange, FlushRequest, PAGE_SIZE, Pfn, PhysMem, Release, Tlb,
};

/// Kind of a simulated CPU access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Data read.
    Read,
    /// Data write.
    Write,
    /// Instruction fetch.
    Exec,
}

#[derive(Debug, Clone, Copy)]
struct TlbEntry {
    pfn: u64,
    write: bool,
    exec: bool,
}

/// The simulated machine.
pub struct SimMachine {
    mem: Vec<u8>,
    tlbs: Vec<BTreeMap<(u64, u64), TlbEntry>>,
    cpu: CpuId,
    /// Fault injection: flush requests do not reach CPUs other than the
    /// current one (a lost shootdown IPI).
    pub drop_remote_shootdowns: bool,
    /// Ordering violations seen by the audit hook.
    pub violations: Vec<String>,
    /// Number of flush requests received.
    pub flushes: u64,
}

const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

impl SimMachine {
    /// A machine with `bytes` of RAM at physical address 0 and `ncpus` CPUs.
    pub fn new(bytes: usize, ncpus: usize) -> Self {
        SimMachine {
            mem: alloc::vec![0; bytes],
            tlbs: (0..ncpus.max(1)).map(|_| BTreeMap::new()).collect(),
            cpu: 0,
            drop_remote_shootdowns: false,
            violations: Vec::new(),
            flushes: 0,
        }
    }

    /// Makes `cpu` the current CPU.
    pub fn set_cpu(&mut self, cpu: CpuId) {
        assert!((cpu as usize) < self.tlbs.len());
        self.cpu = cpu;
    }

    /// A ring-3 access to `va` in the address space rooted at `root`, as the
    /// CPU does it: TLB hit, or a page walk that sets A/D and fills the TLB.
    /// Returns the physical address, or `Err(())` for a page fault.
    #[allow(clippy::result_unit_err)]
    pub fn translate(&mut self, root: Pfn, va: u64, access: Access) -> Result<u64, ()> {
        let key = (root.0, va / PAGE_SIZE);
        let tlb = &mut self.tlbs[self.cpu as usize];
        if let Some(e) = tlb.get(&key) {
            let ok = match access {
                Access::Read => true,
                Access::Write => e.write,
                Access::Exec => e.exec,
            };
            if ok {
                return Ok(e.pfn * PAGE_SIZE + va % PAGE_SIZE);
            }
            // A permission fault drops the entry, as x86 does.
            tlb.remove(&key);
        }
        let mut table = root.0 * PAGE_SIZE;
        let (mut write, mut user, mut exec) = (true, true, true);
        for level in (1..=4u32).rev() {
            let slot = table + ((va >> (12 + 9 * (level - 1))) & 511) * 8;
            let mut raw = self.read_u64(slot);
            if raw & P == 0 {
                return Err(());
            }
            write &= raw & RW != 0;
            user &= raw & US != 0;
            exec &= raw & NX == 0;
            // A PMD or PUD entry with PS set is a 2 MiB / 1 GiB leaf.
            let leaf = level == 1 || (matches!(level, 2 | 3) && raw & PS != 0);
            if leaf {
                let ok = user
                    && match access {
                        Access::Read => true,
                        Access::Write => write,
                        Access::Exec => exec,
                    };
                if !ok {
                    return Err(());
                }
                raw |= A;
                if access == Access::Write {
                    raw |= D;
                }
                self.write_u64(slot, raw);
                let span = PAGE_SIZE << (9 * (level - 1));
                let pfn = ((raw & ADDR & !(span - 1)) + (va & (span - 1))) / PAGE_SIZE;
                // Like x86, a read caches a writable entry only if D is set;
                // otherwise the first write walks again to set D.
                let e = TlbEntry {
                    pfn,
                    write: write && raw & D != 0,
                    exec,
                };
                self.tlbs[self.cpu as usize].insert(key, e);
                return Ok(pfn * PAGE_SIZE + va % PAGE_SIZE);
            }
            table = raw & ADDR;
        }
        unreachable!()
    }

    /// Number of TLB entries (any CPU) translating to `pfn`.
    pub fn tlb_refs(&self, pfn: Pfn) -> usize {
        self.tlbs
            .iter()
            .flat_map(|t| t.values())
            .filter(|e| e.pfn == pfn.0)
            .count()
    }

    /// Whether `cpu` caches a translation for `va` under `root`.
    pub fn tlb_has(&self, cpu: CpuId, root: Pfn, va: u64) -> bool {
        self.tlbs[cpu as usize].contains_key(&(root.0, va / PAGE_SIZE))
    }
}

impl PhysMem for SimMachine {
    fn read_u64(&self, pa: u64) -> u64 {
        let p = pa as usize;
        u64::from_le_bytes(self.mem[p..p + 8].try_into().expect("8 bytes"))
    }
    fn write_u64(&mut self, pa: u64, val: u64) {
        let p = pa as usize;
        self.mem[p..p + 8].copy_from_slice(&val.to_le_bytes());
    }
    fn zero_frame(&mut self, pfn: Pfn) {
        let p = pfn.addr() as usize;
        self.mem[p..p + PAGE_SIZE as usize].fill(0);
    }
    fn copy_frame(&mut self, dst: Pfn, src: Pfn) {
        let s = src.addr() as usize;
        self.mem
            .copy_within(s..s + PAGE_SIZE as usize, dst.addr() as usize);
    }
    fn read_bytes(&self, pa: u64, buf: &mut [u8]) {
        let p = pa as usize;
        buf.copy_from_slice(&self.mem[p..p + buf.len()]);
    }
    fn write_bytes(&mut self, pa: u64, data: &[u8]) {
        let p = pa as usize;
        self.mem[p..p + data.len()].copy_from_slice(data);
    }
    fn frame_released(&mut self, pfn: Pfn, why: Release) {
        let n = self.tlb_refs(pfn);
        if n > 0 {
            self.violations.push(format!(
                "frame {:#x} {why:?} while {n} TLB entries still map it",
                pfn.0
            ));
        }
    }
}

impl Tlb for SimMachine {
    fn flush(&mut self, req: &FlushRequest) {
        self.flushes += 1;
        let cur = self.cpu;
        for cpu in req.cpus.iter() {
            if cpu as usize >= self.tlbs.len() || (self.drop_remote_shootdowns && cpu != cur) {
                continue;
            }
            let tlb = &mut self.tlbs[cpu as usize];
            let root = req.root.0;
            // Entries are keyed (root, vpn): a range flush visits only its
            // own keys, so a benchmark's cost is the MM core's, not a scan
            // of every cached translation.
            let (first, end) = match req.range {
                FlushRange::All => (0, u64::MAX),
                FlushRange::Range { start, end } => (start / PAGE_SIZE, end.div_ceil(PAGE_SIZE)),
            };
            let stale: Vec<(u64, u64)> = tlb
                .range((root, first)..(root, end))
                .map(|(&key, _)| key)
                .collect();
            for key in stale {
                tlb.remove(&key);
            }
        }
    }
}

impl CurrentCpu for SimMachine {
    fn current_cpu(&self) -> CpuId {
        self.cpu
    }
}
