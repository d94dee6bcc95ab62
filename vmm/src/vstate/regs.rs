//! Register dumps for reports of a guest that hung or crashed.

use std::fmt;

use kvm_bindings::{kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// A snapshot of one vCPU's state, taken on its own thread after it left
/// `KVM_RUN`.
#[derive(Clone, Debug)]
pub struct RegisterDump {
    pub index: u32,
    pub regs: Option<kvm_regs>,
    pub sregs: Option<kvm_sregs>,
    /// Not entered yet (an AP still waiting for SIPI), which explains zeros.
    pub mp_state: Option<u32>,
}

impl RegisterDump {
    pub fn capture(index: u32, fd: &VcpuFd) -> Self {
        RegisterDump {
            index,
            regs: fd.get_regs().ok(),
            sregs: fd.get_sregs().ok(),
            mp_state: fd.get_mp_state().ok().map(|s| s.mp_state),
        }
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.mp_state {
            Some(0) => "runnable",
            Some(1) => "uninitialized (waiting for INIT/SIPI)",
            Some(2) => "init-received",
            Some(3) => "halted",
            Some(4) => "sipi-received",
            Some(_) => "other",
            None => "unknown",
        };
        writeln!(f, "vCPU {} ({state}):", self.index)?;
        if let Some(r) = &self.regs {
            writeln!(
                f,
                "  rip={:016x} rsp={:016x} rflags={:08x}",
                r.rip, r.rsp, r.rflags
            )?;
            writeln!(
                f,
                "  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}",
                r.rax, r.rbx, r.rcx, r.rdx
            )?;
            writeln!(
                f,
                "  rsi={:016x} rdi={:016x} rbp={:016x} r8 ={:016x}",
                r.rsi, r.rdi, r.rbp, r.r8
            )?;
            writeln!(
                f,
                "  r9 ={:016x} r10={:016x} r11={:016x} r12={:016x}",
                r.r9, r.r10, r.r11, r.r12
            )?;
            writeln!(
                f,
                "  r13={:016x} r14={:016x} r15={:016x}",
                r.r13, r.r14, r.r15
            )?;
        }
        if let Some(s) = &self.sregs {
            writeln!(
                f,
                "  cs={:04x} (cpl {}) ss={:04x} cr0={:08x} cr2={:016x} cr3={:016x} cr4={:08x} efer={:x}",
                s.cs.selector, s.cs.dpl, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer
            )?;
        }
        Ok(())
    }
}
