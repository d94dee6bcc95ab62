//! A vCPU: its CPUID, its entry state for a PVH boot, and one `KVM_RUN`.

use kvm_bindings::{CpuId, KVM_EXIT_IO, KVM_EXIT_IO_OUT, kvm_fpu, kvm_regs, kvm_run, kvm_segment};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::layout::PVH_START_INFO;
use crate::vstate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("creating vCPU {index} failed: {source}")]
    Create {
        index: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("setting up vCPU {index} ({what}) failed: {source}")]
    Setup {
        index: u32,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One vCPU file descriptor and its index (which is also its APIC ID).
pub struct Vcpu {
    pub index: u32,
    pub fd: VcpuFd,
    /// Size of the `kvm_run` mapping, which bounds where exit data may lie.
    run_size: usize,
}

/// The port access of the `KVM_EXIT_IO` the vCPU just returned: `count`
/// elements of `size` bytes each in `data` (more than one for `rep ins` /
/// `rep outs`). For an `in`, the VMM fills `data` before the next run.
pub struct PioAccess<'a> {
    pub port: u16,
    pub size: usize,
    pub is_write: bool,
    pub data: &'a mut [u8],
}

impl Vcpu {
    /// Creates vCPU `index` with the host's supported CPUID, made its own by
    /// giving it APIC ID `index`.
    pub fn new(vm: &Vm, index: u32, supported: &CpuId, run_size: usize) -> Result<Self, VcpuError> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let setup = |what| setup_error(index, what);
        let mut cpuid = supported.clone();
        set_apic_id(&mut cpuid, index);
        fd.set_cpuid2(&cpuid).map_err(setup("KVM_SET_CPUID2"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(setup("KVM_SET_FPU"))?;
        Ok(Vcpu {
            index,
            fd,
            run_size,
        })
    }

    /// Puts the vCPU at a PVH entry point: 32-bit protected mode with flat
    /// segments, paging off, `%ebx` at `hvm_start_info`. Only the boot vCPU
    /// starts this way; the others wait for INIT/SIPI from the guest.
    pub fn set_pvh_entry(&self, entry: u64) -> Result<(), VcpuError> {
        let setup = |what| setup_error(self.index, what);
        let mut sregs = self.fd.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
        let flat = |selector, type_| kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db: 1,
            s: 1,
            l: 0,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        sregs.cs = flat(0x08, 0xb);
        let data = flat(0x10, 0x3);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.cr0 = 0x11; // PE | ET
        sregs.cr4 = 0;
        sregs.efer = 0;
        self.fd.set_sregs(&sregs).map_err(setup("KVM_SET_SREGS"))?;
        let regs = kvm_regs {
            rip: entry,
            rbx: PVH_START_INFO,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(setup("KVM_SET_REGS"))
    }

    /// After `KVM_EXIT_INTERNAL_ERROR`: what kind of internal error it was.
    pub fn internal_error_kind(&mut self) -> &'static str {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM fills the `internal` member of the exit union when it
        // reports KVM_EXIT_INTERNAL_ERROR, which is the only time this is
        // called, and every bit pattern is a valid u32.
        let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
        match suberror {
            1 => "emulation failure (e.g. executing from a non-RAM address)",
            2 => "simultaneous exceptions",
            3 => "failure delivering an event",
            4 => "unexpected exit reason",
            _ => "unknown suberror",
        }
    }

    /// Enters the guest until the next exit that needs the VMM.
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.fd.run()
    }

    /// The next `run` returns at once (`EINTR`) after finishing whatever
    /// instruction the last exit left half done (a port or MMIO access the
    /// VMM has just handled), or with the next exit that instruction needs.
    /// State saved after such a run is at an instruction boundary.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// After `run` returned `IoIn` or `IoOut`: the access with its element
    /// size, which `VcpuExit` does not carry (it gives `size * count` bytes
    /// only, so `rep insb` and `insd` look alike). `None` if KVM's exit data
    /// lies outside the `kvm_run` mapping, which a correct KVM never does.
    pub fn pio(&mut self) -> Option<PioAccess<'_>> {
        let run_size = self.run_size;
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_IO {
            return None;
        }
        // SAFETY: KVM filled the `io` member of the exit union, as the exit
        // reason just checked says; it is plain integers, valid for any bits.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size.checked_mul(io.count as usize)?;
        let offset = usize::try_from(io.data_offset).ok()?;
        if !matches!(size, 1 | 2 | 4) || offset.checked_add(len)? > run_size {
            return None;
        }
        let base = run as *mut kvm_run as *mut u8;
        // SAFETY: kvm-ioctls maps the whole `run_size` bytes of the vCPU's
        // `kvm_run` area and `base` points at its start (this is how
        // kvm-ioctls itself builds `VcpuExit::IoIn`); `offset + len` was just
        // checked to lie within it. The slice borrows `self` mutably, so
        // nothing else touches the area (no `KVM_RUN`) while it lives.
        let data = unsafe { std::slice::from_raw_parts_mut(base.add(offset), len) };
        Some(PioAccess {
            port: io.port,
            size,
            is_write: u32::from(io.direction) == KVM_EXIT_IO_OUT,
            data,
        })
    }
}

/// Maps a failed setup ioctl `what` on vCPU `index` to its error.
fn setup_error(index: u32, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
    move |source| VcpuError::Setup {
        index,
        what,
        source,
    }
}

/// Writes `apic_id` into the CPUID leaves that report it: leaf 1 EBX[31:24]
/// and the x2APIC topology leaves 0xB/0x1F EDX.
fn set_apic_id(cpuid: &mut CpuId, apic_id: u32) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => entry.ebx = (entry.ebx & 0x00ff_ffff) | ((apic_id & 0xff) << 24),
            0xb | 0x1f => entry.edx = apic_id,
            _ => {}
        }
    }
}
