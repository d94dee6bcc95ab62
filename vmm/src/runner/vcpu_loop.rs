//! One vCPU thread: enter the guest, handle the exit, repeat, until the VM
//! stops. Port I/O is handled inline; what the VMM must act on goes to the
//! main loop over the bounded channel.

use std::ops::ControlFlow;
use std::sync::Arc;

use crossbeam_channel::Sender;
use kvm_bindings::KVM_EXIT_DIRTY_RING_FULL;
use kvm_ioctls::VcpuExit;

use super::StopReason;
use super::exits::{ExitCounters, ExitKind};
use super::run_state::{Next, RunState};
use crate::devices::{GuestEvent, PortDevices};
use crate::dirty::WriteWatch;
use crate::vstate::regs::RegisterDump;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vcpu_state::VcpuState;

/// How many exits finishing an instruction before a save may take.
const MAX_EXITS_TO_FINISH: usize = 64;

/// Work a parked vCPU thread does for the main loop.
pub enum ParkedTask {
    /// Finish any instruction left half done, then save the vCPU's state
    /// (`msr_list` and `xsave_size` as `VcpuState::save` takes them).
    SaveState {
        msr_list: Arc<Vec<u32>>,
        xsave_size: usize,
        reply: Sender<(u32, Result<VcpuState, String>)>,
    },
}

pub enum VcpuMessage {
    Guest(GuestEvent),
    Stopped(StopReason),
}

/// What a vCPU thread leaves behind.
pub struct VcpuReport {
    pub dump: RegisterDump,
}

/// What every vCPU thread shares.
pub struct VcpuContext {
    pub devices: Arc<PortDevices>,
    pub tx: Sender<VcpuMessage>,
    pub state: Arc<RunState>,
    pub watch: Arc<WriteWatch>,
    pub exits: Arc<ExitCounters>,
}

/// An exit, taken out of `kvm_run` so the vCPU can be borrowed again.
enum Exit {
    Io(ExitKind),
    Quiet(ExitKind),
    RingFull,
    Ends(ExitKind, StopReason),
}

pub fn vcpu_loop(mut vcpu: Vcpu, cx: &VcpuContext) -> VcpuReport {
    let index = vcpu.index;
    let i = index as usize;
    let mut slice = std::time::Instant::now();
    loop {
        cx.state.throttle_point(&mut slice);
        match cx.state.before_run(i) {
            Next::Run => {}
            Next::Stop => break,
            Next::Task(task) => {
                if let Some(message) = parked_task(&mut vcpu, cx, task) {
                    let _ = cx.tx.send(message);
                    break;
                }
                continue;
            }
        }
        let exit = classify(&mut vcpu);
        cx.state.after_run(i);
        if let Some(message) = handle(&mut vcpu, cx, exit) {
            // Every message returned here ends this vCPU; a send cannot fail
            // while the main thread still cares (it joins us before leaving).
            let _ = cx.tx.send(message);
            break;
        }
    }
    VcpuReport {
        dump: RegisterDump::capture(index, &vcpu.fd),
    }
}

/// Does `task` on this parked vCPU; returns a message if the vCPU ended.
fn parked_task(vcpu: &mut Vcpu, cx: &VcpuContext, task: ParkedTask) -> Option<VcpuMessage> {
    match task {
        ParkedTask::SaveState {
            msr_list,
            xsave_size,
            reply,
        } => {
            // An exit the VMM handled leaves its instruction unfinished
            // until the next KVM_RUN (an `out` would run again on the
            // destination): let KVM finish it, handling any exit it needs.
            // A `rep outs` of a huge count exits once per batch: give up on
            // one that does not finish within a bound.
            vcpu.set_immediate_exit(true);
            let mut ended = None;
            let mut finished = false;
            for _ in 0..MAX_EXITS_TO_FINISH {
                match classify(vcpu) {
                    Exit::Quiet(ExitKind::Signal) => {
                        finished = true;
                        break;
                    }
                    exit => {
                        ended = handle(vcpu, cx, exit);
                        if ended.is_some() {
                            break;
                        }
                    }
                }
            }
            vcpu.set_immediate_exit(false);
            let result = match (&ended, finished) {
                (Some(_), _) => Err(format!("vCPU {} ended while being saved", vcpu.index)),
                (None, false) => Err(format!(
                    "vCPU {} is in a string I/O instruction that did not finish within {MAX_EXITS_TO_FINISH} exits",
                    vcpu.index
                )),
                (None, true) => VcpuState::save(vcpu.index, &vcpu.fd, &msr_list, xsave_size)
                    .map_err(|e| e.to_string()),
            };
            let _ = reply.send((vcpu.index, result));
            ended
        }
    }
}

/// Acts on one exit; returns the message that ends this vCPU, if any.
fn handle(vcpu: &mut Vcpu, cx: &VcpuContext, exit: Exit) -> Option<VcpuMessage> {
    let index = vcpu.index;
    match exit {
        Exit::Io(kind) => {
            cx.exits.count(kind);
            port_io(vcpu, cx)
        }
        Exit::Quiet(kind) => {
            cx.exits.count(kind);
            None
        }
        Exit::RingFull => {
            cx.exits.count(ExitKind::DirtyRingFull);
            // The ring must be emptied before this vCPU may run again.
            cx.watch.ring_full(index as usize).err().map(|e| {
                VcpuMessage::Stopped(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!("harvesting a full dirty ring: {e}"),
                })
            })
        }
        Exit::Ends(kind, reason) => {
            cx.exits.count(kind);
            Some(VcpuMessage::Stopped(reason))
        }
    }
}

/// Runs the vCPU once and notes what the exit was.
fn classify(vcpu: &mut Vcpu) -> Exit {
    let index = vcpu.index;
    let failure = |detail: String| StopReason::KvmFailure {
        vcpu: index,
        detail,
    };
    match vcpu.run() {
        Ok(VcpuExit::IoOut(..)) => Exit::Io(ExitKind::IoOut),
        Ok(VcpuExit::IoIn(..)) => Exit::Io(ExitKind::IoIn),
        Ok(VcpuExit::MmioRead(_, data)) => {
            // No MMIO devices: a floating bus.
            data.fill(0xff);
            Exit::Quiet(ExitKind::MmioRead)
        }
        Ok(VcpuExit::MmioWrite(..)) => Exit::Quiet(ExitKind::MmioWrite),
        Ok(VcpuExit::Hlt) => Exit::Quiet(ExitKind::Hlt),
        Ok(VcpuExit::Intr) => Exit::Quiet(ExitKind::Intr),
        Ok(VcpuExit::IrqWindowOpen) => Exit::Quiet(ExitKind::IrqWindow),
        Ok(VcpuExit::Unsupported(KVM_EXIT_DIRTY_RING_FULL)) => Exit::RingFull,
        Ok(VcpuExit::Shutdown) => {
            Exit::Ends(ExitKind::Shutdown, StopReason::TripleFault { vcpu: index })
        }
        Ok(VcpuExit::InternalError) => {
            let kind = vcpu.internal_error_kind();
            Exit::Ends(
                ExitKind::InternalError,
                failure(format!("KVM_EXIT_INTERNAL_ERROR, {kind}")),
            )
        }
        Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Ends(
            ExitKind::FailEntry,
            failure(format!(
                "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x} on host cpu {cpu})"
            )),
        ),
        Ok(VcpuExit::SystemEvent(kind, _)) => Exit::Ends(
            ExitKind::SystemEvent,
            failure(format!(
                "the guest raised system event {kind} (shutdown or reset)"
            )),
        ),
        Ok(other) => Exit::Ends(
            ExitKind::Unhandled,
            failure(format!("unhandled VM exit {other:?}")),
        ),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
            Exit::Quiet(ExitKind::Signal)
        }
        Err(e) => Exit::Ends(ExitKind::RunError, failure(format!("KVM_RUN failed: {e}"))),
    }
}

/// Performs the port access the vCPU just exited for. Events go to the main
/// thread as they happen (a `rep outsd` to the doorbell rings it once per
/// element); an exit, or the VM stopping, ends the access. Returns the
/// message that ends this vCPU, if any.
fn port_io(vcpu: &mut Vcpu, cx: &VcpuContext) -> Option<VcpuMessage> {
    let index = vcpu.index;
    let Some(access) = vcpu.pio() else {
        return Some(VcpuMessage::Stopped(StopReason::KvmFailure {
            vcpu: index,
            detail: "KVM_EXIT_IO with its data outside the kvm_run area".into(),
        }));
    };
    if !access.is_write {
        cx.devices.input(access.port, access.size, access.data);
        return None;
    }
    let mut ending = None;
    cx.devices
        .output(access.port, access.size, access.data, |event| {
            if let GuestEvent::Exit(_) = event {
                ending = Some(VcpuMessage::Guest(event));
                return ControlFlow::Break(());
            }
            let _ = cx.tx.send(VcpuMessage::Guest(event));
            if cx.state.is_stopping() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
    ending
}
