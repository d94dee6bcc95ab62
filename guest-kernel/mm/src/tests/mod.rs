//! Cross-module tests: syscalls, faults, fork, swap and TLB ordering run
//! against the simulated machine, with the invariant checker after each
//! step.

mod faults;
mod files;
mod fork_exit;
mod fuzz;
mod hugetlb;
mod hugetlb_memfd;
mod mapping;
mod markers;
mod memfd;
mod prop;
mod soft_dirty;
mod swap;
mod syscalls;
mod tlb;
mod uffd_hugetlb;
mod uffd_sync;
mod workload;
mod write_tracking;

use crate::errno::Errno;
use crate::ids::Pid;
use crate::mmap::{MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE};
use crate::system::{Config, MemSystem};
use crate::testing::SimMachine;
use crate::testing::user::{sim_system, user_read, user_write};

pub(crate) type Sys = MemSystem<SimMachine>;

pub(crate) const RW: u32 = PROT_READ | PROT_WRITE;
pub(crate) const PRIV: u32 = MAP_PRIVATE | MAP_ANONYMOUS;
pub(crate) const SHARED: u32 = MAP_SHARED | MAP_ANONYMOUS;

/// A 16 MiB, 2-CPU system with 64 swap frames and one process.
pub(crate) fn setup() -> (Sys, Pid) {
    setup_with(Config {
        swap_frames: 64,
        ..Config::default()
    })
}

pub(crate) fn setup_with(cfg: Config) -> (Sys, Pid) {
    let mut sys = sim_system(16, 2, cfg);
    let pid = sys.spawn(0).unwrap();
    ok(&sys);
    (sys, pid)
}

/// Proptest case count: `PROPTEST_CASES` if set (for long soak runs), else
/// `default`.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[track_caller]
pub(crate) fn ok(sys: &Sys) {
    if let Err(e) = sys.check() {
        panic!("invariants violated:\n{}", e.violations.join("\n"));
    }
    assert!(
        sys.hw.violations.is_empty(),
        "TLB ordering: {:?}",
        sys.hw.violations
    );
}

pub(crate) fn mmap(
    sys: &mut Sys,
    pid: Pid,
    addr: u64,
    len: u64,
    prot: u32,
    flags: u32,
) -> Result<u64, Errno> {
    let r = sys.mmap(pid, addr, len, prot, flags, 0);
    ok(sys);
    r
}

pub(crate) fn write(sys: &mut Sys, pid: Pid, va: u64, data: &[u8]) {
    user_write(sys, pid, 0, va, data).unwrap();
    ok(sys);
}

pub(crate) fn read(sys: &mut Sys, pid: Pid, va: u64, len: usize) -> alloc::vec::Vec<u8> {
    let mut b = alloc::vec![0; len];
    user_read(sys, pid, 0, va, &mut b).unwrap();
    ok(sys);
    b
}
