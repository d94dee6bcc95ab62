//! Everything about a machine besides its RAM that a migration or a
//! snapshot carries: KVM's vCPU and VM state, the serial port, and what the
//! VMM learnt from the guest's records (its workload's control page, its
//! processes' page tables), so the destination serves the same API.

use serde::{Deserialize, Serialize};

use crate::devices::serial::ConsoleState;
use crate::dirty::ProcessInfo;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm_state::VmState;
use crate::workload::Announced;

#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// One per vCPU, in index order.
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub console: ConsoleState,
    /// The last `workload` record the guest sent, if any.
    #[serde(default)]
    pub workload: Option<Announced>,
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
    /// Records counted so far (the destination's counters continue them).
    #[serde(default)]
    pub records: u64,
}

/// What the VMM knows from the guest's records, carried across.
#[derive(Clone, Debug, Default)]
pub struct GuestFacts {
    pub workload: Option<Announced>,
    pub processes: Vec<ProcessInfo>,
    pub records: u64,
}

impl MachineState {
    /// Checks what a state read from a stream claims against the machine
    /// it is for, before any of it reaches KVM.
    pub fn check(&self, vcpus: u32) -> Result<(), String> {
        if self.vcpus.len() != vcpus as usize {
            return Err(format!(
                "the state has {} vCPUs, the stream's header {vcpus}",
                self.vcpus.len()
            ));
        }
        if let Some((i, v)) = self
            .vcpus
            .iter()
            .enumerate()
            .find(|(i, v)| v.index as usize != *i)
        {
            return Err(format!("vCPU state {i} says it is vCPU {}", v.index));
        }
        Ok(())
    }

    pub fn facts(&self) -> GuestFacts {
        GuestFacts {
            workload: self.workload.clone(),
            processes: self.processes.clone(),
            records: self.records,
        }
    }
}
