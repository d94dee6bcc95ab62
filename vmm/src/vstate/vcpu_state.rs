//! A vCPU's complete state as KVM holds it: what a snapshot or a migration
//! must carry so the vCPU continues elsewhere exactly where it stopped.
//! Saved on the vCPU's own thread while it is out of the guest; restored
//! before its thread starts.
//!
//! The order of restoring follows what KVM needs (and what QEMU and
//! Firecracker do): special registers before MSRs (EFER), the LAPIC before
//! the events that may refer to it, MP state last.

use kvm_bindings::{
    Msrs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// KVM's MSR list is bounded; this is more than any host offers.
const MAX_MSRS: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u32,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    /// Every MSR KVM reports (`KVM_GET_MSR_INDEX_LIST`), as `(index, value)`.
    pub msrs: Vec<(u32, u64)>,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

/// The legacy XSAVE area, all `kvm_xsave` holds.
const LEGACY_XSAVE: usize = std::mem::size_of::<kvm_xsave>();

/// Refuses hosts whose XSAVE state (AMX, say) does not fit `kvm_xsave`:
/// saving it would lose state, and restoring would let KVM read past it.
fn check_xsave_size(index: u32, xsave_size: usize) -> Result<(), VcpuStateError> {
    if xsave_size > LEGACY_XSAVE {
        return Err(VcpuStateError {
            index,
            what: "XSAVE state larger than 4 KiB (not supported by writewatch snapshots)",
            source: kvm_ioctls::Error::new(libc::ENOTSUP),
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{what} of vCPU {index} failed: {source}")]
pub struct VcpuStateError {
    pub index: u32,
    pub what: &'static str,
    #[source]
    pub source: kvm_ioctls::Error,
}

fn error(index: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuStateError {
    move |source| VcpuStateError {
        index,
        what,
        source,
    }
}

impl VcpuState {
    /// Reads vCPU `index`'s state from `fd`; `msr_list` is what KVM reports
    /// it can save, `xsave_size` what `KVM_CAP_XSAVE2` says the XSAVE area
    /// takes. The vCPU must be out of `KVM_RUN`.
    pub fn save(
        index: u32,
        fd: &VcpuFd,
        msr_list: &[u32],
        xsave_size: usize,
    ) -> Result<Self, VcpuStateError> {
        let e = |what| error(index, what);
        check_xsave_size(index, xsave_size)?;
        let mut msrs = Vec::with_capacity(msr_list.len());
        let mut rest = msr_list;
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(MAX_MSRS)];
            let entries: Vec<kvm_msr_entry> = chunk
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut wanted = Msrs::from_entries(&entries).map_err(|_| VcpuStateError {
                index,
                what: "building the MSR list",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let read = fd.get_msrs(&mut wanted).map_err(e("KVM_GET_MSRS"))?;
            msrs.extend(wanted.as_slice()[..read].iter().map(|m| (m.index, m.data)));
            // KVM stops at the first MSR it cannot read (listed, but not
            // for this CPU model): leave that one out and go on after it.
            rest = &rest[(read + 1).min(chunk.len())..];
        }
        Ok(VcpuState {
            index,
            regs: fd.get_regs().map_err(e("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(e("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(e("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?,
            msrs,
            lapic: fd.get_lapic().map_err(e("KVM_GET_LAPIC"))?,
            events: fd.get_vcpu_events().map_err(e("KVM_GET_VCPU_EVENTS"))?,
            mp_state: fd.get_mp_state().map_err(e("KVM_GET_MP_STATE"))?,
        })
    }

    /// Writes the state into `fd` (a fresh vCPU with its CPUID set), where
    /// KVM's XSAVE area is `xsave_size` bytes (`KVM_CAP_XSAVE2`).
    pub fn restore(&self, fd: &VcpuFd, xsave_size: usize) -> Result<(), VcpuStateError> {
        let e = |what| error(self.index, what);
        check_xsave_size(self.index, xsave_size)?;
        fd.set_sregs(&self.sregs).map_err(e("KVM_SET_SREGS"))?;
        fd.set_regs(&self.regs).map_err(e("KVM_SET_REGS"))?;
        // SAFETY: KVM_SET_XSAVE reads the vCPU's XSAVE area size from our
        // pointer; `check_xsave_size` made sure that is no more than the
        // kvm_xsave struct we pass.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(e("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(e("KVM_SET_XCRS"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        for chunk in entries.chunks(MAX_MSRS) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| VcpuStateError {
                index: self.index,
                what: "building the MSR list",
                source: kvm_ioctls::Error::new(libc::E2BIG),
            })?;
            let written = fd.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
            if written != chunk.len() {
                let failed = chunk[written].index;
                return Err(VcpuStateError {
                    index: self.index,
                    what: if failed == 0 {
                        "KVM_SET_MSRS"
                    } else {
                        "KVM_SET_MSRS (an MSR the source had)"
                    },
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        fd.set_lapic(&self.lapic).map_err(e("KVM_SET_LAPIC"))?;
        fd.set_vcpu_events(&self.events)
            .map_err(e("KVM_SET_VCPU_EVENTS"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(e("KVM_SET_MP_STATE"))
    }
}
