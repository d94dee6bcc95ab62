//! The VM-wide state KVM holds besides guest memory and the vCPUs: the
//! in-kernel interrupt controllers (the two PICs and the IOAPIC), the PIT,
//! and the KVM clock.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, kvm_clock_data, kvm_irqchip,
    kvm_pit_state2,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct VmStateError {
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn error(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmStateError {
    move |source| VmStateError { what, source }
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, VmStateError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip)
        .map_err(error("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

impl VmState {
    /// Reads the state; the vCPUs must be paused.
    pub fn save(fd: &VmFd) -> Result<Self, VmStateError> {
        let mut clock = fd.get_clock().map_err(error("KVM_GET_CLOCK"))?;
        // Only the clock value carries over; the flags describe this host.
        clock.flags = 0;
        Ok(VmState {
            pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
            pit: fd.get_pit2().map_err(error("KVM_GET_PIT2"))?,
            clock,
        })
    }

    /// Writes the state into a VM created the same way (irqchip and PIT).
    pub fn restore(&self, fd: &VmFd) -> Result<(), VmStateError> {
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            fd.set_irqchip(chip).map_err(error("KVM_SET_IRQCHIP"))?;
        }
        fd.set_pit2(&self.pit).map_err(error("KVM_SET_PIT2"))?;
        fd.set_clock(&self.clock).map_err(error("KVM_SET_CLOCK"))
    }
}
