//! Which KVM this kernel runs on. kvm_pvm (this project's machines)
//! emulates guest ring 0 instruction by instruction while ring 3 runs
//! natively (`../shared/PLATFORM.md`), which decides where kernel work is
//! cheap; it answers its own MSR 0x4b564d11 with "PVM". Elsewhere (hardware
//! KVM, QEMU TCG) the MSR does not exist and reading it raises #GP, which
//! the probe turns into "other".

use super::extable::probe_rdmsr;

/// kvm_pvm's identification MSR and the value it reads ("PVM").
const PVM_SIGNATURE_MSR: u32 = 0x4b56_4d11;
const PVM_SIGNATURE: u64 = 0x4d_5650;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    KvmPvm,
    Other,
}

impl Platform {
    /// The word for the banner and the `ready` record.
    pub fn name(self) -> &'static str {
        match self {
            Platform::KvmPvm => "kvm_pvm",
            Platform::Other => "other",
        }
    }
}

/// Probes the platform (one `rdmsr`).
pub fn detect() -> Platform {
    match probe_rdmsr(PVM_SIGNATURE_MSR) {
        Some(PVM_SIGNATURE) => Platform::KvmPvm,
        _ => Platform::Other,
    }
}
