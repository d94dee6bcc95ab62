//! Opening KVM and asking it what it can do.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use std::os::fd::FromRawFd;

use kvm_ioctls::{Cap, Kvm};

/// Environment variable naming another KVM device node (for tests and for
/// hosts where KVM lives elsewhere).
pub const KVM_PATH_ENV: &str = "WRITEWATCH_KVM";
const DEFAULT_KVM_PATH: &str = "/dev/kvm";

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error(
        "{0} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)"
    )]
    Missing(PathBuf),
    #[error("permission denied opening {0}: add your user to the 'kvm' group or run as root")]
    NotPermitted(PathBuf),
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a KVM device (KVM_GET_API_VERSION failed)")]
    NotKvm(PathBuf),
    #[error("KVM lacks a capability writewatch needs: {0}")]
    MissingCap(&'static str),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    Cpuid(#[source] kvm_ioctls::Error),
}

/// An open KVM system handle plus the facts the VMM reads from it once.
pub struct KvmSystem {
    pub kvm: Kvm,
    pub supported_cpuid: CpuId,
    /// The most vCPUs one VM may have on this host.
    pub max_vcpus: usize,
    /// Size of each vCPU's `kvm_run` mapping.
    pub vcpu_mmap_size: usize,
    /// The MSRs KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    pub msr_index_list: Vec<u32>,
}

impl KvmSystem {
    /// Opens the KVM device (`$WRITEWATCH_KVM` or `/dev/kvm`) and checks the
    /// capabilities the VMM relies on.
    pub fn open() -> Result<Self, KvmError> {
        let path = std::env::var_os(KVM_PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KVM_PATH));
        let kvm = open_kvm(&path)?;
        for (cap, name) in [
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::Cpuid)?;
        let max_vcpus = kvm.get_max_vcpus();
        let vcpu_mmap_size = kvm
            .get_vcpu_mmap_size()
            .map_err(|_| KvmError::MissingCap("KVM_GET_VCPU_MMAP_SIZE"))?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(|_| KvmError::MissingCap("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(KvmSystem {
            kvm,
            supported_cpuid,
            max_vcpus,
            vcpu_mmap_size,
            msr_index_list,
        })
    }

    /// The guest's physical address width from CPUID leaf 0x80000008.
    pub fn phys_bits(&self) -> u32 {
        self.supported_cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0x8000_0008)
            .map(|e| e.eax & 0xff)
            .filter(|&bits| bits >= 32)
            .unwrap_or(36)
    }
}

fn open_kvm(path: &Path) -> Result<Kvm, KvmError> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| KvmError::Missing(path.to_path_buf()))?;
    let fd = Kvm::open_with_cloexec_at(&c_path, true).map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing(path.to_path_buf()),
        libc::EACCES | libc::EPERM => KvmError::NotPermitted(path.to_path_buf()),
        errno => KvmError::Open {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        },
    })?;
    // SAFETY: `fd` was just opened by us and is owned by nobody else; `Kvm`
    // takes ownership and closes it on drop.
    let kvm = unsafe { Kvm::from_raw_fd(fd) };
    if kvm.get_api_version() != 12 {
        return Err(KvmError::NotKvm(path.to_path_buf()));
    }
    Ok(kvm)
}
