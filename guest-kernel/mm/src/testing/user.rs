//! Ring-3 accesses for tests: go through the simulated MMU and TLB, and on
//! a page fault call the MM core exactly as the kernel's trap handler does.

use crate::fault::FaultFlags;
use crate::hw::{CpuId, PAGE_SIZE, PhysMem};
use crate::ids::Pid;
use crate::process::{FaultStop, SIGSEGV, SigReport};
use crate::system::{Config, MemSystem};

use super::{Access, SimMachine};

/// A simulated system with `mib` MiB of RAM at 0 and `ncpus` CPUs. The
/// first MiB is left out, like the PVH layout.
pub fn sim_system(mib: usize, ncpus: usize, cfg: Config) -> MemSystem<SimMachine> {
    let bytes = mib << 20;
    let hw = SimMachine::new(bytes, ncpus);
    MemSystem::new(hw, &[(0x10_0000, bytes as u64)], cfg).expect("enough memory")
}

/// The CPU's side of a ring-3 access: translate, and on a page fault let
/// `fault` resolve it (or report the signal), then try again.
fn walk(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    kind: Access,
    fault: fn(&mut MemSystem<SimMachine>, Pid, u64, FaultFlags) -> Result<(), FaultStop>,
) -> Result<u64, FaultStop> {
    sys.hw.set_cpu(cpu);
    let root = sys.activate(pid, cpu).map_err(|_| {
        FaultStop::Signal(SigReport {
            pid,
            signal: SIGSEGV,
            addr: va,
            code: None,
        })
    })?;
    let ff = FaultFlags {
        write: kind == Access::Write,
        exec: kind == Access::Exec,
        user: true,
        unshare: false,
    };
    for _ in 0..4 {
        if let Ok(pa) = sys.hw.translate(root, va, kind) {
            return Ok(pa);
        }
        fault(sys, pid, va, ff)?;
    }
    panic!("fault at {va:#x} resolved but the access keeps faulting");
}

/// A ring-3 access as the kernel's trap handler sees it: a fault that
/// cannot be resolved kills the process.
fn access(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    kind: Access,
) -> Result<u64, SigReport> {
    signal_only(walk(sys, pid, cpu, va, kind, MemSystem::handle_user_fault))
}

/// A fault that waits for a userfaultfd handler never ends in a test that
/// has none: those tests use [`user_try_wait`].
fn signal_only(r: Result<u64, FaultStop>) -> Result<u64, SigReport> {
    r.map_err(|stop| match stop {
        FaultStop::Signal(report) => report,
        FaultStop::Userfault => panic!("the access waits for a userfaultfd handler"),
    })
}

/// Ring-3 write of `data` at `va` by `pid` on `cpu`.
pub fn user_write(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    data: &[u8],
) -> Result<(), SigReport> {
    let mut done = 0;
    while done < data.len() {
        let a = va + done as u64;
        let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(data.len() - done);
        let pa = access(sys, pid, cpu, a, Access::Write)?;
        sys.hw.write_bytes(pa, &data[done..done + n]);
        done += n;
    }
    Ok(())
}

/// Ring-3 read into `buf` from `va` by `pid` on `cpu`.
pub fn user_read(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    buf: &mut [u8],
) -> Result<(), SigReport> {
    let mut done = 0;
    while done < buf.len() {
        let a = va + done as u64;
        let n = ((PAGE_SIZE - a % PAGE_SIZE) as usize).min(buf.len() - done);
        let pa = access(sys, pid, cpu, a, Access::Read)?;
        sys.hw.read_bytes(pa, &mut buf[done..done + n]);
        done += n;
    }
    Ok(())
}

/// Ring-3 instruction fetch at `va`.
pub fn user_exec(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
) -> Result<(), SigReport> {
    access(sys, pid, cpu, va, Access::Exec).map(|_| ())
}

/// A ring-3 access whose fatal fault is reported, not acted on: what a
/// process with a SIGSEGV/SIGBUS handler sees (the handler skips the
/// access). The process keeps running.
pub fn user_try(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    kind: Access,
) -> Result<u64, SigReport> {
    signal_only(user_try_wait(sys, pid, cpu, va, kind))
}

/// [`user_try`] where the access may wait for a userfaultfd handler
/// (`Err(FaultStop::Userfault)`: its message is queued; try again once
/// [`MemSystem::take_woken`] names the process).
pub fn user_try_wait(
    sys: &mut MemSystem<SimMachine>,
    pid: Pid,
    cpu: CpuId,
    va: u64,
    kind: Access,
) -> Result<u64, FaultStop> {
    walk(sys, pid, cpu, va, kind, MemSystem::user_fault)
}
