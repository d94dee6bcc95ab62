//! The VM file descriptor: interrupt controllers and guest memory slots.

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{Cap, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use crate::vstate::kvm::KvmSystem;

/// Where KVM may put the three pages VMX needs for real-mode emulation; it
/// sits at the top of the MMIO hole, clear of RAM and the LAPIC/IOAPIC.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    TssAddress(#[source] kvm_ioctls::Error),
    #[error("creating the in-kernel interrupt controllers failed: {0}")]
    Irqchip(#[source] kvm_ioctls::Error),
    #[error("creating the in-kernel PIT failed: {0}")]
    Pit(#[source] kvm_ioctls::Error),
    #[error("KVM refused guest memory slot {slot} at {guest_addr:#x}: {source}")]
    MemorySlot {
        slot: u32,
        guest_addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its interrupt controllers and RAM registered.
pub struct Vm {
    pub fd: VmFd,
}

impl Vm {
    /// Creates the VM, its in-kernel LAPIC/IOAPIC/PIC and PIT, and one memory
    /// slot per RAM region of `mem`.
    pub fn new(kvm: &KvmSystem, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.kvm.create_vm().map_err(VmError::Create)?;
        let vm = Vm { fd };
        vm.register_memory(mem)?;
        let fd = &vm.fd;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(vm)
    }

    /// Bytes of a vCPU's XSAVE area: what `KVM_CAP_XSAVE2` reports, or the
    /// legacy 4 KiB where KVM has no such capability.
    pub fn xsave_size(&self) -> usize {
        match self.fd.check_extension_int(Cap::Xsave2) {
            size if size > 0 => size as usize,
            _ => std::mem::size_of::<kvm_bindings::kvm_xsave>(),
        }
    }

    /// Turns KVM's dirty logging on or off for every RAM slot (a flags-only
    /// change of each memslot, which KVM allows while the VM runs).
    pub fn set_dirty_logging(&self, mem: &GuestMemoryMmap, on: bool) -> Result<(), VmError> {
        self.register_slots(mem, if on { KVM_MEM_LOG_DIRTY_PAGES } else { 0 })
    }

    fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        self.register_slots(mem, 0)
    }

    fn register_slots(&self, mem: &GuestMemoryMmap, flags: u32) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let guest_addr = region.start_addr().0;
            let region_desc = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: guest_addr,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range belongs to a mapping owned by `mem`, which
            // the caller keeps alive for as long as the VM runs (the builder
            // drops the VM before the memory), so KVM never sees a dangling
            // userspace address.
            unsafe { self.fd.set_user_memory_region(region_desc) }.map_err(|source| {
                VmError::MemorySlot {
                    slot,
                    guest_addr,
                    source,
                }
            })?;
        }
        Ok(())
    }
}
