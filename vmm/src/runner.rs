//! Running a built machine: one thread per vCPU, the main thread waiting for
//! an exit, a crash or the timeout, then stopping every vCPU.
//!
//! vCPU threads hand what the VMM must act on to the main thread through a
//! bounded channel: a guest that sends records faster than they are consumed
//! is held up in its `out` instruction (back-pressure), and the VMM's memory
//! does not grow. The main loop checks the deadline before every message, so
//! a channel that never empties cannot outlast `--timeout`.
//!
//! Stopping: the main thread sets a shared flag and sends a real-time signal
//! to each vCPU thread until it has left `KVM_RUN` and returned, draining the
//! channel meanwhile so that a thread blocked on a full channel gets to see
//! the flag. Repeating the signal covers the window in which a thread checked
//! the flag but had not yet entered the guest when the first signal arrived.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::builder::Machine;
use crate::devices::records::{Record, RecordError};
use crate::devices::{GuestEvent, PortDevices};
use crate::vstate::regs::RegisterDump;
use crate::vstate::vcpu::Vcpu;

/// Offset from SIGRTMIN of the signal that kicks a vCPU out of `KVM_RUN`.
const KICK_SIGNAL_OFFSET: i32 = 0;
/// Messages the vCPU threads may have queued for the main thread. Each is at
/// most one record (64 KiB), so this bounds the queue to about 1 MiB.
const CHANNEL_CAPACITY: usize = 16;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq)]
pub enum StopReason {
    /// The guest wrote this value to the exit device.
    GuestExit(u32),
    /// `--timeout` expired.
    Timeout,
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault { vcpu: u32 },
    /// KVM could not run a vCPU: internal error, failed entry, or an exit
    /// writewatch does not handle.
    KvmFailure { vcpu: u32, detail: String },
}

/// Everything a run produced besides console output.
pub struct RunOutcome {
    pub reason: StopReason,
    pub dumps: Vec<RegisterDump>,
    pub exits: BTreeMap<&'static str, u64>,
    pub first_output: Option<Instant>,
    pub ready: Option<Instant>,
    pub records: u64,
    pub bad_records: u64,
    pub tsc_khz: Option<u32>,
    /// The VM and its memory, still alive: the host kernel takes ~16 ms to
    /// destroy a VM on kvm_pvm, so the caller drops this after its output.
    pub remains: Remains,
}

/// What is left of a machine after its vCPUs have stopped.
pub struct Remains {
    _vm: crate::vstate::vm::Vm,
    _memory: crate::memory::GuestMemoryMmap,
}

enum VcpuMessage {
    Guest(GuestEvent),
    Stopped(StopReason),
}

struct VcpuReport {
    exits: BTreeMap<&'static str, u64>,
    dump: RegisterDump,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// When the main thread must stop waiting: the deadline, if any.
#[derive(Clone, Copy, Debug)]
pub struct StopCheck {
    deadline: Option<Instant>,
    /// Set once the VM is stopping: nothing is worth waiting for any more.
    stopping: bool,
}

impl StopCheck {
    /// True once whoever is waiting (for a full output, say) should give up.
    pub fn due(&self) -> bool {
        self.stopping || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

/// Runs `machine` until it stops. `on_record` sees every well-formed record
/// in arrival order, with the check that says when to stop waiting on a
/// full output; `on_bad_record` sees every malformed one.
pub fn run(
    machine: Machine,
    timeout: Option<Duration>,
    mut on_record: impl FnMut(&Record, StopCheck),
    mut on_bad_record: impl FnMut(&RecordError),
) -> RunOutcome {
    let kick = SIGRTMIN() + KICK_SIGNAL_OFFSET;
    // Registering twice (a second VM in one process) is harmless; failing to
    // register would leave kicks with their default action, so stop instead.
    let handler_ok = register_signal_handler(kick, kick_handler).is_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
    let started = Instant::now();
    let deadline = timeout.map(|t| started + t);
    let mut check = StopCheck {
        deadline,
        stopping: false,
    };
    let Machine {
        vcpus,
        devices,
        first_output,
        tsc_khz,
        memory,
        vm,
    } = machine;

    let mut spawn_error = None;
    let mut handles: Vec<JoinHandle<VcpuReport>> = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let index = vcpu.index;
        let (devices, tx, stop) = (devices.clone(), tx.clone(), stop.clone());
        match thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu_loop(vcpu, &devices, &tx, &stop))
        {
            Ok(h) => handles.push(h),
            Err(e) => {
                spawn_error = Some(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!("cannot start the vCPU thread: {e}"),
                });
                break;
            }
        }
    }
    drop(tx);

    let mut ready = None;
    let (mut records, mut bad_records) = (0u64, 0u64);
    let mut handle = |message: VcpuMessage, check: StopCheck| -> Option<StopReason> {
        match message {
            VcpuMessage::Guest(GuestEvent::Exit(code)) => Some(StopReason::GuestExit(code)),
            VcpuMessage::Guest(GuestEvent::Record(record)) => {
                records += 1;
                if record.kind == "ready" && ready.is_none() {
                    ready = Some(Instant::now());
                }
                on_record(&record, check);
                None
            }
            VcpuMessage::Guest(GuestEvent::BadRecord(err)) => {
                bad_records += 1;
                on_bad_record(&err);
                None
            }
            VcpuMessage::Stopped(reason) => Some(reason),
        }
    };
    let reason = if let Some(reason) = spawn_error {
        reason
    } else if handler_ok {
        loop {
            // Checked before every message: `recv_timeout` hands out queued
            // messages at once even after the deadline.
            if check.due() {
                break StopReason::Timeout;
            }
            let message = match deadline {
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match message {
                Ok(message) => {
                    if let Some(reason) = handle(message, check) {
                        break reason;
                    }
                }
                Err(RecvTimeoutError::Timeout) => break StopReason::Timeout,
                Err(RecvTimeoutError::Disconnected) => {
                    break StopReason::KvmFailure {
                        vcpu: 0,
                        detail: "every vCPU thread ended without a reason".into(),
                    };
                }
            }
        }
    } else {
        StopReason::KvmFailure {
            vcpu: 0,
            detail: "cannot install the vCPU kick signal handler".into(),
        }
    };

    stop.store(true, Ordering::SeqCst);
    check.stopping = true;
    // Records other vCPUs sent before they stopped still count; draining
    // also frees any vCPU thread blocked on the full channel.
    let mut drain = |rx: &mpsc::Receiver<VcpuMessage>| {
        while let Ok(message) = rx.try_recv() {
            if let VcpuMessage::Guest(event @ (GuestEvent::Record(_) | GuestEvent::BadRecord(_))) =
                message
            {
                handle(VcpuMessage::Guest(event), check);
            }
        }
    };
    while handles.iter().any(|h| !h.is_finished()) {
        for h in handles.iter().filter(|h| !h.is_finished()) {
            let _ = h.kill(kick);
        }
        drain(&rx);
        thread::sleep(Duration::from_millis(1));
    }
    drain(&rx);

    let mut exits = BTreeMap::new();
    let mut dumps = Vec::new();
    for h in handles {
        if let Ok(report) = h.join() {
            for (name, n) in report.exits {
                *exits.entry(name).or_default() += n;
            }
            dumps.push(report.dump);
        }
    }
    RunOutcome {
        reason,
        dumps,
        exits,
        first_output: first_output.get().copied(),
        ready,
        records,
        bad_records,
        tsc_khz,
        remains: Remains {
            _vm: vm,
            _memory: memory,
        },
    }
}

fn vcpu_loop(
    mut vcpu: Vcpu,
    devices: &PortDevices,
    tx: &SyncSender<VcpuMessage>,
    stop: &AtomicBool,
) -> VcpuReport {
    let mut exits: BTreeMap<&'static str, u64> = BTreeMap::new();
    let index = vcpu.index;
    let stopped = |reason| VcpuMessage::Stopped(reason);
    while !stop.load(Ordering::SeqCst) {
        let (name, message) = match vcpu.run() {
            Ok(VcpuExit::IoOut(..)) => ("io_out", port_io(&mut vcpu, devices, tx, stop)),
            Ok(VcpuExit::IoIn(..)) => ("io_in", port_io(&mut vcpu, devices, tx, stop)),
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xff);
                ("mmio_read", None)
            }
            Ok(VcpuExit::MmioWrite(..)) => ("mmio_write", None),
            Ok(VcpuExit::Hlt) => ("hlt", None),
            Ok(VcpuExit::Intr) => ("intr", None),
            Ok(VcpuExit::IrqWindowOpen) => ("irq_window", None),
            Ok(VcpuExit::Shutdown) => (
                "shutdown",
                Some(stopped(StopReason::TripleFault { vcpu: index })),
            ),
            Ok(VcpuExit::InternalError) => {
                let kind = vcpu.internal_error_kind();
                (
                    "internal_error",
                    Some(stopped(StopReason::KvmFailure {
                        vcpu: index,
                        detail: format!("KVM_EXIT_INTERNAL_ERROR, {kind}"),
                    })),
                )
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => (
                "fail_entry",
                Some(stopped(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!(
                        "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x} on host cpu {cpu})"
                    ),
                })),
            ),
            Ok(VcpuExit::SystemEvent(kind, _)) => (
                "system_event",
                Some(stopped(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!("the guest raised system event {kind} (shutdown or reset)"),
                })),
            ),
            Ok(other) => (
                "unhandled",
                Some(stopped(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!("unhandled VM exit {other:?}"),
                })),
            ),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => ("signal", None),
            Err(e) => (
                "run_error",
                Some(stopped(StopReason::KvmFailure {
                    vcpu: index,
                    detail: format!("KVM_RUN failed: {e}"),
                })),
            ),
        };
        *exits.entry(name).or_default() += 1;
        if let Some(message) = message {
            // Every message returned here ends this vCPU; a send cannot fail
            // while the main thread still cares (it joins us before leaving).
            let _ = tx.send(message);
            break;
        }
    }
    VcpuReport {
        exits,
        dump: RegisterDump::capture(index, &vcpu.fd),
    }
}

/// Performs the port access the vCPU just exited for. Events go to the main
/// thread as they happen (a `rep outsd` to the doorbell rings it once per
/// element); an exit, or the VM stopping, ends the access. Returns the
/// message that ends this vCPU, if any.
fn port_io(
    vcpu: &mut Vcpu,
    devices: &PortDevices,
    tx: &SyncSender<VcpuMessage>,
    stop: &AtomicBool,
) -> Option<VcpuMessage> {
    let index = vcpu.index;
    let Some(access) = vcpu.pio() else {
        return Some(VcpuMessage::Stopped(StopReason::KvmFailure {
            vcpu: index,
            detail: "KVM_EXIT_IO with its data outside the kvm_run area".into(),
        }));
    };
    if !access.is_write {
        devices.input(access.port, access.size, access.data);
        return None;
    }
    let mut ending = None;
    devices.output(access.port, access.size, access.data, |event| {
        if let GuestEvent::Exit(_) = event {
            ending = Some(VcpuMessage::Guest(event));
            return ControlFlow::Break(());
        }
        // The main thread only goes away after joining us, so a send cannot
        // fail while it still matters.
        let _ = tx.send(VcpuMessage::Guest(event));
        if stop.load(Ordering::SeqCst) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    ending
}
