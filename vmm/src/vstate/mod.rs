//! Thin KVM state: the system handle, the VM and its vCPUs. Nothing here
//! knows about devices; the run loop hands exits to whoever owns devices.

pub mod dirty_log;
pub mod kvm;
pub mod regs;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
