//! Wires a `VmConfig` into a runnable machine: KVM, guest memory, the kernel
//! and its boot information, the VM, its vCPUs and its devices. Every check
//! a user can fail happens here, before any guest code runs, and each
//! failure is one `BuildError` with a message saying what to change.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::config::{KernelSource, MAX_VCPUS, VmConfig, format_size};
use crate::devices::PortDevices;
use crate::devices::records::RecordChannel;
use crate::devices::serial::Console;
use crate::dirty::WriteWatch;
use crate::guest_image;
use crate::layout::{INIT_MAX_BYTES, KERNEL_MIN_WORKING_SET, SERIAL_IRQ};
use crate::loader::{self, LoadError};
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::migration::state::GuestFacts;
use crate::output::Sink;
use crate::vstate::dirty_log::{DirtyLogExt, DirtyRing};
use crate::vstate::kvm::{KvmError, KvmSystem};
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error("--vcpus {asked} is out of range: this host allows 1..={max}")]
    Vcpus { asked: u32, max: u32 },
    #[error("--mem {0} is too small: the smallest guest is 16M")]
    MemTooSmall(String),
    #[error("--init runs its program in the guest's mode=run, not mode={0}")]
    InitNeedsRunMode(String),
    #[error("cannot read the --stdin file {path}: {source}")]
    StdinFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the --init program {path}: {source}")]
    InitFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read kernel {path}: {source}")]
    KernelFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot wire the serial interrupt: {0}")]
    SerialIrq(#[source] std::io::Error),
    #[error(
        "--dirty-ring-size {entries} is not usable: {why} (this KVM offers up to {max} entries, a power of two, at least {min})"
    )]
    DirtyRingSize {
        entries: u32,
        why: &'static str,
        min: u32,
        max: u32,
    },
    #[error("{what} failed: {source}")]
    DirtyRing {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Bytes of one dirty-ring entry (`struct kvm_dirty_gfn`).
const RING_ENTRY_BYTES: u32 = 16;
/// The smallest ring worth having: KVM reserves 64 entries (576 on Intel
/// hosts with PML) for writes already in flight when the ring fills.
pub const MIN_RING_ENTRIES: u32 = 1024;

/// Enables the dirty ring with `entries` per vCPU (before any vCPU exists,
/// as KVM requires); returns its size in bytes.
fn enable_dirty_ring(vm: &Vm, entries: u32) -> Result<u32, BuildError> {
    let max = vm.fd.dirty_ring_max_bytes() / RING_ENTRY_BYTES;
    let bad = |why| BuildError::DirtyRingSize {
        entries,
        why,
        min: MIN_RING_ENTRIES,
        max,
    };
    if max == 0 {
        return Err(bad(
            "this KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING_ACQ_REL)",
        ));
    }
    if !entries.is_power_of_two() {
        return Err(bad("not a power of two"));
    }
    if entries < MIN_RING_ENTRIES {
        return Err(bad("too small"));
    }
    if entries > max {
        return Err(bad("too large for KVM"));
    }
    let bytes = entries * RING_ENTRY_BYTES;
    vm.fd
        .enable_dirty_ring(bytes)
        .map_err(|source| BuildError::DirtyRing {
            what: "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING_ACQ_REL)",
            source,
        })?;
    Ok(bytes)
}

/// Below this a guest cannot hold the boot structures, a kernel and a stack.
const MIN_MEM: u64 = 16 << 20;

/// A VM ready to run. Field order matters for drop: vCPUs and the VM go
/// before the memory they point into.
pub struct Machine {
    pub vcpus: Vec<Vcpu>,
    pub devices: Arc<PortDevices>,
    /// The write-watch layer; it holds the VM (and its dirty rings).
    pub watch: Arc<WriteWatch>,
    pub memory: GuestMemoryMmap,
    pub first_output: Arc<OnceLock<Instant>>,
    /// The guest TSC frequency, for turning guest cycle counts into time.
    pub tsc_khz: Option<u32>,
    /// The MSRs a vCPU's saved state holds (`KVM_GET_MSR_INDEX_LIST`).
    pub msr_list: Arc<Vec<u32>>,
    /// Bytes of a vCPU's XSAVE area.
    pub xsave_size: usize,
    /// What the VMM knows from the guest's records (carried by a migration).
    pub facts: GuestFacts,
}

/// How the machine's first state comes about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Load the kernel and put vCPU 0 at its PVH entry.
    Boot,
    /// Leave RAM and vCPUs empty: a migration or snapshot fills them.
    Restore,
}

/// Builds the machine `config` describes, its console printing to `stdout`.
pub fn build(config: &VmConfig, stdout: Arc<Sink>) -> Result<Machine, BuildError> {
    assemble(config, stdout, Start::Boot)
}

/// Builds the machine `config` describes with nothing loaded, for a
/// migration or a snapshot to fill (its kernel and command line are not
/// used: the guest arrives whole).
pub fn build_for_restore(config: &VmConfig, stdout: Arc<Sink>) -> Result<Machine, BuildError> {
    assemble(config, stdout, Start::Restore)
}

fn assemble(config: &VmConfig, stdout: Arc<Sink>, start: Start) -> Result<Machine, BuildError> {
    let kvm = KvmSystem::open()?;
    let max_vcpus = MAX_VCPUS.min(kvm.max_vcpus as u32);
    if config.vcpus == 0 || config.vcpus > max_vcpus {
        return Err(BuildError::Vcpus {
            asked: config.vcpus,
            max: max_vcpus,
        });
    }
    if config.mem_bytes < MIN_MEM {
        return Err(BuildError::MemTooSmall(format_size(config.mem_bytes)));
    }
    let memory = memory::create_guest_memory(config.mem_bytes, config.backing, kvm.phys_bits())?;
    let entry = match start {
        Start::Boot => {
            let (image, name) = kernel_image(&config.kernel)?;
            let kernel = loader::load_kernel(
                &memory,
                &image,
                &name,
                config.mem_bytes,
                KERNEL_MIN_WORKING_SET,
            )?;
            let init = config
                .init
                .as_ref()
                .map(|path| {
                    let shown = path.display().to_string();
                    if let Some(mode) = config
                        .cmdline
                        .split_ascii_whitespace()
                        .filter_map(|word| word.strip_prefix("mode="))
                        .next_back()
                        .filter(|&mode| mode != "run")
                    {
                        return Err(BuildError::InitNeedsRunMode(mode.to_string()));
                    }
                    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                    if size > INIT_MAX_BYTES {
                        return Err(BuildError::from(loader::LoadError::InitTooLarge {
                            name: shown,
                            size,
                            max: INIT_MAX_BYTES,
                        }));
                    }
                    let bytes = std::fs::read(path).map_err(|source| BuildError::InitFile {
                        path: shown.clone(),
                        source,
                    })?;
                    loader::load_init(&memory, &bytes, &shown, kernel.end, config.mem_bytes)
                        .map_err(BuildError::from)
                })
                .transpose()?;
            let input = config
                .stdin
                .as_ref()
                .map(|path| {
                    let shown = path.display().to_string();
                    let too_large = |size| loader::LoadError::InputTooLarge {
                        name: shown.clone(),
                        size,
                        max: INIT_MAX_BYTES,
                    };
                    // A size check first, so that an absurd file is not read.
                    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                    if size > INIT_MAX_BYTES {
                        return Err(BuildError::from(too_large(size)));
                    }
                    let bytes = std::fs::read(path).map_err(|source| BuildError::StdinFile {
                        path: shown.clone(),
                        source,
                    })?;
                    let after = init.map_or(kernel.end, |m| m.end());
                    loader::load_input(&memory, &bytes, &shown, after, config.mem_bytes)
                        .map_err(BuildError::from)
                })
                .transpose()?;
            Some((kernel.entry.0, init, input))
        }
        Start::Restore => None,
    };

    let vm = Vm::new(&kvm, &memory)?;
    let ring_bytes = config
        .dirty_ring_entries
        .map(|entries| enable_dirty_ring(&vm, entries))
        .transpose()?;
    let vcpus = (0..config.vcpus)
        .map(|index| Vcpu::new(&vm, index, &kvm.supported_cpuid, kvm.vcpu_mmap_size))
        .collect::<Result<Vec<_>, _>>()?;
    let rings = ring_bytes
        .map(|bytes| {
            vcpus
                .iter()
                .map(|v| {
                    DirtyRing::map(&v.fd, bytes).map_err(|source| BuildError::DirtyRing {
                        what: "mapping a vCPU's dirty ring",
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let tsc_khz = vcpus[0].fd.get_tsc_khz().ok().filter(|&khz| khz > 0);
    if let Some((entry, init, input)) = entry {
        vcpus[0].set_pvh_entry(entry)?;
        // The guest learns its CPUs from the ACPI MADT, and the TSC rate
        // from the command line.
        let tsc_word = tsc_khz
            .map(|khz| format!("tsc_khz={khz} "))
            .unwrap_or_default();
        let cmdline = format!("{tsc_word}{}", config.cmdline);
        loader::write_boot_info(
            &memory,
            config.mem_bytes,
            config.vcpus,
            cmdline.trim(),
            init,
            input,
        )?;
    }
    let xsave_size = vm.xsave_size();

    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(BuildError::SerialIrq)?;
    vm.fd
        .register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(|e| BuildError::SerialIrq(std::io::Error::from_raw_os_error(e.errno())))?;
    let first_output = Arc::new(OnceLock::new());
    let devices = Arc::new(PortDevices::new(
        Console::new(serial_irq, stdout, first_output.clone()),
        RecordChannel::new(memory.clone()),
    ));
    let watch = Arc::new(WriteWatch::new(Arc::new(vm), memory.clone(), rings));
    Ok(Machine {
        vcpus,
        devices,
        watch,
        memory,
        first_output,
        tsc_khz,
        msr_list: Arc::new(kvm.msr_index_list.clone()),
        xsave_size,
        facts: GuestFacts::default(),
    })
}

/// The kernel's bytes and the name errors use for it.
fn kernel_image(
    source: &KernelSource,
) -> Result<(std::borrow::Cow<'static, [u8]>, String), BuildError> {
    match source {
        KernelSource::BuiltIn => Ok((
            guest_image::GUEST_KERNEL.into(),
            "the built-in kernel".into(),
        )),
        KernelSource::File(path) => {
            let shown = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|source| BuildError::KernelFile {
                path: shown.clone(),
                source,
            })?;
            Ok((bytes.into(), shown))
        }
    }
}
